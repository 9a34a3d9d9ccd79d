"""Keras layers of PinSage: the input encoder and the convolution (CONVOLVE)."""

from pinsage_tf.layers.convolve import POOLINGS, PinSageConv
from pinsage_tf.layers.encoders import ItemEncoder, bag_embedding

__all__ = ["POOLINGS", "PinSageConv", "ItemEncoder", "bag_embedding"]
