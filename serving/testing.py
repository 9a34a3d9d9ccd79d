"""Signatures shared by the serving codec and validation tests."""

from __future__ import annotations

import tensorflow as tf

from serving import signatures as sig

# related_items-like: string ids in, [B, 2] ids and scores out.
STR_IDS = sig.Signature(
    name="serving_default", method_name=sig.PREDICT_METHOD,
    inputs={"item_ids": sig.TensorSpecInfo("item_ids", tf.string, (None,))},
    outputs={"ids": sig.TensorSpecInfo("ids", tf.string, (None, 2)),
             "scores": sig.TensorSpecInfo("scores", tf.float32, (None, 2))})
# One [B, 3] float input, one [B] float output.
FLOAT_X = sig.Signature(
    name="serving_default", method_name=sig.PREDICT_METHOD,
    inputs={"x": sig.TensorSpecInfo("x", tf.float32, (None, 3))},
    outputs={"y": sig.TensorSpecInfo("y", tf.float32, (None,))})
