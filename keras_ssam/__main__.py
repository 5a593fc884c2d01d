import sys

from keras_ssam.cli import main

main(sys.argv[1:])
