"""Tests for serving.validation: the checks run before a signature runs."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import pinsage_tf  # noqa: F401

from serving import signatures as sig
from serving import testing
from serving import validation
from serving.errors import ServingError

_STR_IDS = testing.STR_IDS
_FLOAT_X = testing.FLOAT_X


def test_validate_inputs_messages():
  good = {"x": np.zeros([2, 3], np.float32)}
  validation.validate_inputs(_FLOAT_X, good, max_batch_size=2)
  cases = [
      ({"x": np.zeros([2, 3], np.float64)}, "has dtype double but signature "
       "'serving_default' expects float"),
      ({"x": np.zeros([2, 4], np.float32)}, "has shape [2,4] but signature "
       "'serving_default' expects [-1,3]"),
      ({"x": np.zeros([0, 3], np.float32)}, "empty batch"),
      ({"x": np.zeros([3, 3], np.float32)}, "--max_batch_size=2"),
      ({"x": good["x"], "z": good["x"]}, "Sent extra: {z}. Missing but required: {}."),
      ({"z": good["x"]}, "input tensor alias not found in signature: z."),
      ({}, "Missing but required: {x}."),
  ]
  for inputs, expected in cases:
    with pytest.raises(ServingError) as info:
      validation.validate_inputs(_FLOAT_X, inputs, max_batch_size=2)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in info.value.message


@pytest.mark.parametrize("signature,inputs,accepted", [
    (_FLOAT_X, {"x": np.zeros([2, 3], np.float32)}, True),
    (_STR_IDS, {"item_ids": np.array([b"a", b"b"], object)}, True),
    (_STR_IDS, {"item_ids": np.array(["a", "b"])}, True),
    (_STR_IDS, {"item_ids": np.array([b"a", b"b"])}, True),
    (_FLOAT_X, {"x": np.zeros([2, 3], np.float64)}, False),
    (_FLOAT_X, {"x": np.zeros([2, 3], ">f4")}, False),  # a float, but left to the full check
    (_STR_IDS, {"item_ids": np.zeros([2], np.float32)}, False),
    (_FLOAT_X, {"x": np.zeros([2, 4], np.float32)}, False),
    (_FLOAT_X, {"x": np.zeros([2, 3, 1], np.float32)}, False),
    (_FLOAT_X, {"x": np.zeros([0, 3], np.float32)}, False),
    (_FLOAT_X, {"x": np.zeros([3, 3], np.float32)}, False),
    (_FLOAT_X, {"z": np.zeros([2, 3], np.float32)}, False),
    (_FLOAT_X, {"x": np.zeros([2, 3], np.float32), "z": np.zeros([2, 3], np.float32)}, False),
    (_FLOAT_X, {}, False),
])
def test_quick_check_accepts_only_what_the_full_check_accepts(signature, inputs, accepted):
  assert validation._conforms(signature, inputs, max_batch_size=2) == accepted
  if accepted:
    validation.validate_descriptions(
        signature, {a: validation.describe_array(v) for a, v in inputs.items()},
        max_batch_size=2)


def test_output_filter():
  assert validation.check_output_filter(_STR_IDS, []) == ["ids", "scores"]
  assert validation.check_output_filter(_STR_IDS, ["scores"]) == ["scores"]
  with pytest.raises(ServingError, match="output tensor alias not found in signature: z"):
    validation.check_output_filter(_STR_IDS, ["z"])
  with pytest.raises(ServingError, match="duplicate output tensor alias: ids"):
    validation.check_output_filter(_STR_IDS, ["ids", "ids"])


def test_signature_method_name_check():
  init_op = sig.Signature("__saved_model_init_op", "", {}, {})
  with pytest.raises(ServingError) as info:
    validation.check_signature_is_runnable(init_op)
  assert info.value.code == grpc.StatusCode.INTERNAL
  assert info.value.message == (
      "Expected prediction signature method_name to be one of {tensorflow/serving/predict, "
      "tensorflow/serving/classify, tensorflow/serving/regress}. Was: ")


@pytest.mark.parametrize("method", [sig.PREDICT_METHOD, sig.CLASSIFY_METHOD, sig.REGRESS_METHOD])
def test_predict_classify_and_regress_signatures_run(method):
  validation.check_signature_is_runnable(sig.Signature("s", method, {}, {}))
