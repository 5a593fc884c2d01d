import sys

from keras_ssam.cli import main

sys.exit(main(sys.argv[1:]))
