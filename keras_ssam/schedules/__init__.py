"""Schedules of the neighbourhood radius rho (Keras callbacks, no retracing)."""

from keras_ssam.schedules.linked_rho_scheduler import LinkedRhoScheduler
from keras_ssam.schedules.rho_scheduler import RhoScheduler
from keras_ssam.schedules.rho_window import RhoWindow

__all__ = ["LinkedRhoScheduler", "RhoScheduler", "RhoWindow"]
