"""Export an SSAM-trained model for TF Serving and query it the way TF Serving would.

Runs offline in seconds: trains on digits, exports the inner model, loads the
SavedModel back with plain TensorFlow and prints the REST request body that
`tensorflow_model_server --rest_api_port=8501 --model_name=ssam
--model_base_path=/abs/path/serving` accepts at POST /v1/models/ssam:predict.
"""

import json
import sys

import tensorflow as tf
from sklearn.datasets import load_digits

from keras_ssam import cli

out = sys.argv[1] if len(sys.argv) > 1 else "runs/export-demo"
cli.run(["train", "--epochs", "3", "--verbose", "0", "--out", out, "--export", f"{out}/serving/1"])

digits = load_digits()
images = (digits.images[:4] / 16.0).astype("float32")[..., None]
print("REST body:", json.dumps({"instances": images.tolist()})[:100], "...")

served = tf.saved_model.load(f"{out}/serving/1").signatures["serving_default"]
logits = list(served(tf.constant(images)).values())[0].numpy()
print("predicted:", logits.argmax(-1), "true:", digits.target[:4])
