"""The checks TF Serving runs on a predict request before the session runs.

Contract (servables/tensorflow/predict_util.cc, plus this server's batch bound):

* `check_signature_is_runnable` accepts predict, classify and regress
  signatures only (INTERNAL otherwise, as TF Serving).
* `validate_inputs` checks the set of input aliases, each input's dtype and
  shape against the signature, and the batch size (dimension 0 of inputs whose
  signature shape starts with an unknown size): not empty, at most
  `max_batch_size`.
* `check_output_filter` returns the output aliases to compute: the filter as
  given, or every output (sorted) for an empty filter.

Every rejection is a `ServingError` whose message names the alias, what was
sent and what the signature expects.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import grpc
import numpy as np

import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from serving import errors
from serving import signatures
from serving.errors import ServingError

_RUNNABLE_METHODS = (signatures.PREDICT_METHOD, signatures.CLASSIFY_METHOD,
                     signatures.REGRESS_METHOD)


def check_signature_is_runnable(signature: signatures.Signature) -> None:
  """TF Serving's VerifySignature: only predict/classify/regress signatures run."""
  if signature.method_name not in _RUNNABLE_METHODS:
    raise ServingError(
        grpc.StatusCode.INTERNAL,
        "Expected prediction signature method_name to be one of "
        f"{{{', '.join(_RUNNABLE_METHODS)}}}. Was: {signature.method_name}")


def _compatible(shape: tuple[int, ...], expected: tuple[int | None, ...] | None) -> bool:
  if expected is None:
    return True
  return len(shape) == len(expected) and all(
      e is None or e == s for s, e in zip(shape, expected))


def validate_inputs(signature: signatures.Signature, inputs: Mapping[str, np.ndarray], *,
                    max_batch_size: int = 0) -> None:
  """Checks request arrays against the signature before running it.

  Args:
    signature: the signature the request names.
    inputs: alias -> array, as decoded from JSON or TensorProtos.
    max_batch_size: if > 0, the largest dimension 0 accepted for inputs whose
      signature shape starts with an unknown (batch) dimension.

  Raises:
    ServingError: INVALID_ARGUMENT naming the input, what was sent and what the
      signature expects (missing or extra aliases, dtype, shape, empty or
      oversized batch).
  """
  expected = set(signature.inputs)
  sent = set(inputs)
  if len(sent) != len(expected):
    raise errors.invalid_argument(
        f"input size does not match signature: {len(sent)}!={len(expected)} "
        f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
        f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
        f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")
  unknown = sorted(sent - expected)
  if unknown:
    raise errors.invalid_argument(
        f"input tensor alias not found in signature: {unknown[0]}. Inputs expected "
        f"to be in the set {{{','.join(sorted(expected))}}}.")
  for alias in sorted(inputs):
    spec = signature.inputs[alias]
    array = inputs[alias]
    if spec.dtype == tf.string:
      dtype_ok = array.dtype.kind in ("O", "S", "U")
      got = "string" if dtype_ok else signatures.data_type_string(tf.dtypes.as_dtype(array.dtype))
    else:
      try:
        got_dtype = tf.dtypes.as_dtype(array.dtype)
      except TypeError:
        got_dtype = None
      dtype_ok = got_dtype == spec.dtype
      got = signatures.data_type_string(got_dtype) if got_dtype is not None else str(array.dtype)
    if not dtype_ok:
      raise errors.invalid_argument(
          f"input '{alias}' has dtype {got} but signature '{signature.name}' "
          f"expects {signatures.data_type_string(spec.dtype)}")
    if not _compatible(array.shape, spec.shape):
      raise errors.invalid_argument(
          f"input '{alias}' has shape {signatures.shape_string(array.shape)} but signature "
          f"'{signature.name}' expects {spec.shape_string()} (-1 = any size)")
    batched = spec.shape is not None and len(spec.shape) > 0 and spec.shape[0] is None
    if batched and array.shape[0] == 0:
      raise errors.invalid_argument(f"input '{alias}' has an empty batch (dimension 0 is 0)")
    if batched and max_batch_size > 0 and array.shape[0] > max_batch_size:
      raise errors.invalid_argument(
          f"input '{alias}' has batch size {array.shape[0]}, more than this "
          f"server's --max_batch_size={max_batch_size}; split the request")


def check_output_filter(signature: signatures.Signature, output_filter: Sequence[str]) -> list[str]:
  """Output aliases to return: the filter (validated) or all of them."""
  seen: set[str] = set()
  for alias in output_filter:
    if alias not in signature.outputs:
      raise errors.invalid_argument(
          f"output tensor alias not found in signature: {alias} Outputs expected "
          f"to be in the set {{{','.join(sorted(signature.outputs))}}}.")
    if alias in seen:
      raise errors.invalid_argument(f"duplicate output tensor alias: {alias}")
    seen.add(alias)
  return list(output_filter) if output_filter else sorted(signature.outputs)
