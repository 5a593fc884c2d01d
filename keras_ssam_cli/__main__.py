import sys

from keras_ssam_cli import main

sys.exit(main(sys.argv[1:]))
