"""Convert tensorflow/tpu ResNet-RS checkpoints to Keras weights and check them."""

__version__ = "0.1.0"
