"""TF Serving's REST JSON encoding of tensors (tensorflow_serving/util/json_tensor.cc).

Contract:

* `parse_json_predict(body, lookup_signature)` reads a REST `:predict` body.
  Row format `{"signature_name"?, "instances": [...]}` stacks the per-instance
  values of each input into one array `[len(instances), ...]`; columnar format
  `{"inputs": ...}` takes each input as given. A single-input signature may use
  plain (unnamed) values; `{"b64": "..."}` carries bytes for DT_STRING inputs.
  The result holds `{input alias: np.ndarray}` with the signature's dtype
  (DT_STRING -> numpy object array of `bytes`) and the format, which the
  response repeats.
* `outputs_to_json(outputs, fmt)` writes `{"predictions": [...]}` (row) or
  `{"outputs": ...}` (columnar); float values are printed the way TF Serving
  prints them (shortest of %g / %.9g that round-trips, whole numbers get ".0",
  NaN / Infinity as bare words); DT_STRING outputs whose alias ends in
  "_bytes" are written as `{"b64": ...}`.
* `error_json(message)` is the error body `{ "error": "<message>" }`.

Every rejection is a `ServingError` with TF Serving's code and message
(INVALID_ARGUMENT, or UNIMPLEMENTED for a dtype JSON cannot carry). Messages
quote request values cut to a bounded length.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import json
import math
import re
from typing import Any, Callable, Mapping, Sequence

import grpc
import numpy as np

import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from serving import errors
from serving import signatures
from serving.errors import ServingError

_B64_KEY = "b64"
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
_BYTES_SUFFIX = "_bytes"
# Deeper nesting than this is never a real tensor; the bound keeps the
# recursive walkers far from Python's recursion limit.
_MAX_RANK = 32
# Error messages quote request values; long ones are cut so an error body
# never echoes a whole multi-megabyte request.
_MAX_QUOTED_CHARS = 256


class RequestFormat(enum.Enum):
  """Which JSON layout a predict request used; the response uses the same."""
  ROW = "row"  # "instances" in, "predictions" out.
  COLUMNAR = "columnar"  # "inputs" in, "outputs" out.


@dataclasses.dataclass(frozen=True)
class JsonPredictRequest:
  """A parsed REST predict body.

  Attributes:
    signature_name: as sent ("" when absent; the caller defaults it).
    inputs: input alias -> array with the signature's dtype.
    format: ROW or COLUMNAR.
  """
  signature_name: str
  inputs: dict[str, np.ndarray]
  format: RequestFormat


def _quote(value: Any) -> str:
  try:
    text = json.dumps(value, ensure_ascii=False, allow_nan=True)
  except (TypeError, ValueError, RecursionError):
    text = repr(value)
  if len(text) > _MAX_QUOTED_CHARS:
    text = text[:_MAX_QUOTED_CHARS] + "...(truncated)"
  return text


def _json_type(value: Any) -> str:
  if value is None:
    return "Null"
  if value is True:
    return "True"
  if value is False:
    return "False"
  if isinstance(value, dict):
    return "Object"
  if isinstance(value, list):
    return "Array"
  if isinstance(value, str):
    return "String"
  return "Number"


def _format_error(value: Any, *parts: str) -> ServingError:
  return errors.invalid_argument("JSON Value: " + _quote(value) + " " + "".join(parts))


def _type_error(value: Any, dtype: tf.dtypes.DType) -> ServingError:
  return errors.invalid_argument(
      f"JSON Value: {_quote(value)} Type: {_json_type(value)} is not of "
      f"expected type: {signatures.data_type_string(dtype)}")


def _is_b64_object(value: Any) -> bool:
  return (isinstance(value, dict) and len(value) == 1 and
          isinstance(value.get(_B64_KEY), str))


def _decode_b64(value: Any) -> bytes:
  if not _is_b64_object(value):
    raise errors.invalid_argument(
        f"JSON Value: {_quote(value)} not formatted correctly for base64 data")
  text = value[_B64_KEY]
  try:
    return base64.b64decode(text.encode("ascii"), validate=True)
  except (binascii.Error, UnicodeEncodeError, ValueError):
    pass
  try:
    # Clients that base64-encode with the URL-safe alphabet are common.
    return base64.b64decode(text.translate(_URLSAFE_TO_STANDARD).encode("ascii"),
                            validate=True)
  except (binascii.Error, UnicodeEncodeError, ValueError):
    raise errors.invalid_argument("Unable to base64 decode") from None


_INT_RANGES = {
    tf.int8: (-(1 << 7), (1 << 7) - 1),
    tf.uint8: (0, (1 << 8) - 1),
    tf.int16: (-(1 << 15), (1 << 15) - 1),
    tf.int32: (-(1 << 31), (1 << 31) - 1),
    tf.int64: (-(1 << 63), (1 << 63) - 1),
    tf.uint32: (0, (1 << 32) - 1),
    tf.uint64: (0, (1 << 64) - 1),
}
_FLOAT_MAX_INT = {tf.float32: (1 << 24) - 1, tf.float64: (1 << 53) - 1}
_FLOAT_FINFO = {tf.float32: np.finfo(np.float32), tf.float64: np.finfo(np.float64)}


def _is_json_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _json_scalar(value: Any, dtype: tf.dtypes.DType) -> Any:
  """One leaf value converted for `dtype`, with TF Serving's type rules."""
  if dtype == tf.string:
    if isinstance(value, str):
      try:
        return value.encode("utf-8")
      except UnicodeEncodeError:
        # Only a lone \uD800-\uDFFF escape gets here; send raw bytes as {"b64": ...}.
        raise errors.invalid_argument(
            f"JSON Value: {_quote(value)} is not a valid UTF-8 string (lone surrogate "
            "escape); send binary data as {\"b64\": ...}") from None
    if isinstance(value, dict):
      return _decode_b64(value)
    raise _type_error(value, dtype)
  if isinstance(value, dict):
    raise _type_error(value, dtype)
  if dtype in _FLOAT_MAX_INT:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise _type_error(value, dtype)
    target = "float" if dtype == tf.float32 else "double"
    if _is_json_int(value):
      if abs(value) > _FLOAT_MAX_INT[dtype]:
        raise errors.invalid_argument(
            f"Cannot convert JSON value: {_quote(value)} to {target} without loss of precision.")
    elif math.isfinite(value):
      finfo = _FLOAT_FINFO[dtype]
      if not float(finfo.min) <= value <= float(finfo.max):
        raise errors.invalid_argument(
            f"Cannot convert JSON value: {_quote(value)} to {target} without loss of precision.")
    return value
  if dtype in _INT_RANGES:
    lo, hi = _INT_RANGES[dtype]
    if not _is_json_int(value) or not lo <= value <= hi:
      raise _type_error(value, dtype)
    return value
  if dtype == tf.bool:
    if not isinstance(value, bool):
      raise _type_error(value, dtype)
    return value
  raise ServingError(
      grpc.StatusCode.UNIMPLEMENTED,
      f"Conversion of JSON Value: {_quote(value)} to type: {signatures.data_type_string(dtype)}")


def _dense_shape(value: Any) -> list[int]:
  """Shape implied by following the first element of each nested list."""
  shape = []
  while isinstance(value, list):
    shape.append(len(value))
    if len(shape) > _MAX_RANK:
      raise errors.invalid_argument(f"JSON list nesting deeper than {_MAX_RANK} levels")
    if not value:
      break
    value = value[0]
  return shape


def _fill(value: Any, level: int, shape: Sequence[int], dtype: tf.dtypes.DType,
          out: list) -> None:
  rank = len(shape)
  if not isinstance(value, list):
    if level != rank:
      raise errors.invalid_argument(
          f"JSON Value: {_quote(value)} found at incorrect level: {level + 1} "
          f"in the JSON DOM. Expected at level: {rank}")
    out.append(_json_scalar(value, dtype))
    return
  if level >= rank:
    raise errors.invalid_argument(
        f"Encountered list at unexpected level: {level} expected < {rank}")
  if len(value) != shape[level]:
    raise errors.invalid_argument(
        f"Encountered list at unexpected size: {len(value)} at level: {level} "
        f"expected size: {shape[level]}")
  for item in value:
    _fill(item, level + 1, shape, dtype, out)


def _to_array(values: list, shape: Sequence[int], dtype: tf.dtypes.DType) -> np.ndarray:
  if dtype == tf.string:
    array = np.empty(len(values), dtype=object)
    array[:] = values
  else:
    array = np.array(values, dtype=dtype.as_numpy_dtype)
  return array.reshape(shape)


def json_value_to_array(value: Any, dtype: tf.dtypes.DType) -> np.ndarray:
  """A (possibly nested-list) JSON value as a dense array of `dtype`.

  Raises:
    ServingError: INVALID_ARGUMENT for ragged lists or values of the wrong
      JSON type, with TF Serving's message.
  """
  shape = _dense_shape(value)
  values: list = []
  _fill(value, 0, shape, dtype, values)
  return _to_array(values, shape, dtype)


def _instances_to_arrays(instances: list,
                         signature: signatures.Signature) -> dict[str, np.ndarray]:
  specs = signature.inputs
  first = instances[0]
  if not isinstance(first, dict) and len(specs) > 1:
    raise errors.invalid_argument(
        "instances is a plain list, but expecting list of objects as multiple "
        "input tensors required as per tensorinfo_map")
  named = isinstance(first, dict) and not _is_b64_object(first)
  values: dict[str, list] = {}
  shapes: dict[str, list[int]] = {}

  def add_item(item: Any, name: str) -> None:
    if name not in specs:
      raise errors.invalid_argument(f"JSON object: does not have named input: {name}")
    shape = _dense_shape(item)
    flat: list = []
    _fill(item, 0, shape, specs[name].dtype, flat)
    if name not in shapes:
      shapes[name] = shape
      values[name] = []
    elif math.prod(shapes[name]) != len(flat):
      raise errors.invalid_argument(
          f"Expecting tensor size: {math.prod(shapes[name])} but got: {len(flat)}")
    elif shapes[name] != shape:
      raise errors.invalid_argument(
          f"Expecting shape {signatures.shape_string(shapes[name])} but got: "
          f"{signatures.shape_string(shape)}")
    values[name].extend(flat)

  for index, element in enumerate(instances):
    element_named = isinstance(element, dict) and not _is_b64_object(element)
    if named:
      if not element_named:
        raise errors.invalid_argument(
            f"Expecting object but got list at item {index} of input list")
      for name, item in element.items():
        try:
          add_item(item, name)
        except ServingError as e:
          raise errors.invalid_argument(
              f"Failed to process element: {index} key: {name} of 'instances' "
              f"list. Error: {e}") from None
      if set(element) != set(specs):
        raise errors.invalid_argument(
            f"Failed to process element: {index} of 'instances' list. JSON "
            f"object: {_quote(element)} must only have keys: {','.join(sorted(specs))}")
    else:
      if element_named:
        raise errors.invalid_argument(
            f"Expecting value/list but got object at item {index} of input list")
      name = next(iter(specs))
      try:
        add_item(element, name)
      except ServingError as e:
        raise errors.invalid_argument(
            f"Failed to process element: {index} of 'instances' list. "
            f"Error: {e}") from None
  return {name: _to_array(values[name], [len(instances)] + shapes[name], specs[name].dtype)
          for name in values}


def _inputs_to_arrays(value: Any, signature: signatures.Signature) -> dict[str, np.ndarray]:
  specs = signature.inputs
  if not isinstance(value, dict) or _is_b64_object(value):
    if len(specs) > 1:
      raise errors.invalid_argument(
          "inputs is a plain value/list, but expecting an object as multiple "
          "input tensors required as per tensorinfo_map")
    name, spec = next(iter(specs.items()))
    return {name: json_value_to_array(value, spec.dtype)}
  arrays = {}
  # Like TF Serving, keys that are not inputs of the signature are ignored.
  for name, spec in specs.items():
    if name not in value:
      raise errors.invalid_argument(f"Missing named input: {name} in 'inputs' object.")
    arrays[name] = json_value_to_array(value[name], spec.dtype)
  return arrays


class _NumberTooBig(ValueError):
  pass


# A \uD800-\uDFFF escape in the raw body: only then are strings checked for
# lone surrogates (which Python's parser accepts and RapidJSON rejects).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value: Any) -> bool:
  stack = [value]
  while stack:
    item = stack.pop()
    if isinstance(item, str):
      try:
        item.encode("utf-8")
      except UnicodeEncodeError:
        return True
    elif isinstance(item, list):
      stack.extend(item)
    elif isinstance(item, dict):
      stack.extend(item.keys())
      stack.extend(item.values())
  return False


# Integers longer than this are parsed as doubles, as RapidJSON (TF Serving's
# parser) does; no int64 / uint64 has more digits.
_MAX_INT_DIGITS = 20


def _parse_int(text: str) -> int | float:
  if len(text.lstrip("-")) > _MAX_INT_DIGITS:
    return _parse_float(text)
  return int(text)


def _parse_float(text: str) -> float:
  value = float(text)
  if math.isinf(value):
    raise _NumberTooBig(text)
  return value


def parse_json(body: bytes) -> dict:
  """Parses a request body; errors use TF Serving's "JSON Parse error" form.

  Numbers follow RapidJSON's rules: integers too long for 64 bits become
  doubles, a number beyond the double range is an error, and the literals
  NaN / Infinity / -Infinity are accepted (TF Serving parses with
  kParseNanAndInfFlag).
  """
  if not body or not body.strip():
    raise errors.invalid_argument("JSON Parse error: The document is empty")
  try:
    text = body.decode("utf-8")
  except UnicodeDecodeError as e:
    raise errors.invalid_argument(
        f"JSON Parse error: Invalid encoding in string. at offset: {e.start}") from None
  try:
    doc = json.loads(text, parse_int=_parse_int, parse_float=_parse_float)
  except json.JSONDecodeError as e:
    raise errors.invalid_argument(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
  except _NumberTooBig as e:
    raise errors.invalid_argument(
        f"JSON Parse error: Number too big to be stored in double: {_quote(str(e))}") from None
  except RecursionError:
    raise errors.invalid_argument("JSON Parse error: nesting too deep") from None
  if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(doc):
    raise errors.invalid_argument(
        "JSON Parse error: The surrogate pair in string is invalid.")
  if not isinstance(doc, dict):
    raise _format_error(doc, "Is not object")
  return doc


def parse_json_predict(
    body: bytes, lookup_signature: Callable[[str], signatures.Signature]
) -> JsonPredictRequest:
  """Parses a REST predict body against the signature it names.

  Args:
    body: the raw HTTP body.
    lookup_signature: maps the request's signature name ("" -> default) to its
      `Signature`, raising ServingError if the model has none by that name.

  Returns:
    The request's signature name, its input arrays and its format.

  Raises:
    ServingError: INVALID_ARGUMENT with TF Serving's message for malformed JSON,
      both or neither of "instances"/"inputs", an empty "instances" list, wrong
      value types, ragged lists, or instance objects with missing/extra keys.
  """
  doc = parse_json(body)
  signature_name = doc.get("signature_name", "")
  if not isinstance(signature_name, str):
    raise _format_error(
        doc, "not formatted correctly. 'signature_name' key must be a string value.")
  signature = lookup_signature(signature_name)
  if not signature.inputs:
    raise errors.invalid_argument(
        f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
  has_instances = "instances" in doc
  has_inputs = "inputs" in doc
  if has_instances and has_inputs:
    raise _format_error(
        doc, "Not formatted correctly expecting only one of 'inputs' or "
        "'instances' keys to exist ")
  if has_instances:
    instances = doc["instances"]
    if not isinstance(instances, list):
      raise _format_error(doc, "Excepting 'instances' to be an list/array")
    if not instances:
      raise _format_error(doc, "No values in 'instances' array")
    return JsonPredictRequest(signature_name, _instances_to_arrays(instances, signature),
                              RequestFormat.ROW)
  if has_inputs:
    return JsonPredictRequest(signature_name, _inputs_to_arrays(doc["inputs"], signature),
                              RequestFormat.COLUMNAR)
  raise errors.invalid_argument("Missing 'inputs' or 'instances' key")


def _format_decimals(array: np.ndarray) -> list[str]:
  """TF Serving's WriteDecimal for every element of a float array (flat)."""
  flat = np.ascontiguousarray(array).ravel()
  if flat.dtype not in (np.float32, np.float64):
    flat = flat.astype(np.float32)
  max_digits = "%.9g" if flat.dtype == np.float32 else "%.17g"
  as_double = flat.astype(np.float64).tolist()
  short = ["%g" % v for v in as_double]
  round_trip = np.array(short, dtype=np.float64).astype(flat.dtype)
  with np.errstate(invalid="ignore"):
    exact = (round_trip == flat).tolist()
  result = []
  for value, text, ok in zip(as_double, short, exact):
    if not math.isfinite(value):
      text = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    else:
      if not ok:
        text = max_digits % value
      if "." not in text and "e" not in text:
        text += ".0"
    result.append(text)
  return result


def _format_strings(array: np.ndarray, as_bytes: bool) -> list[str]:
  result = []
  for value in np.ravel(array).tolist():
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
    if not as_bytes:
      try:
        result.append(json.dumps(raw.decode("utf-8"), ensure_ascii=False))
        continue
      except UnicodeDecodeError:
        # TF Serving would write invalid JSON here; base64 keeps it parseable.
        pass
    result.append('{"b64": "' + base64.b64encode(raw).decode("ascii") + '"}')
  return result


def _leaf_strings(name: str, array: np.ndarray) -> list[str]:
  kind = array.dtype.kind
  if kind == "f":
    return _format_decimals(array)
  if kind in ("i", "u"):
    return [str(v) for v in np.ravel(array).tolist()]
  if kind == "b":
    return ["true" if v else "false" for v in np.ravel(array).tolist()]
  if kind in ("O", "S", "U"):
    return _format_strings(array, as_bytes=name.endswith(_BYTES_SUFFIX))
  raise errors.invalid_argument(f"Failed to write JSON value for tensor type: {array.dtype}")


def _nest(leaves: list[str], shape: Sequence[int], start: int = 0) -> tuple[str, int]:
  """JSON text of a tensor of `shape` whose flat leaves begin at `start`."""
  if not shape:
    return leaves[start], start + 1
  parts = []
  for _ in range(shape[0]):
    text, start = _nest(leaves, shape[1:], start)
    parts.append(text)
  return "[" + ", ".join(parts) + "]", start


def outputs_to_json(outputs: Mapping[str, np.ndarray], fmt: RequestFormat) -> bytes:
  """Writes a predict response body in the layout of the request.

  Args:
    outputs: output alias -> array (rank >= 1 for the row format).
    fmt: ROW -> {"predictions": [one item per batch row]}, an item being the
      value itself for one output or {alias: value} for several; COLUMNAR ->
      {"outputs": value or {alias: value}}.

  Raises:
    ServingError: INVALID_ARGUMENT when the row format is asked for outputs
      without a batch dimension or with different batch sizes.
  """
  if not outputs:
    raise errors.invalid_argument("Cannot convert empty tensor map to JSON")
  names = sorted(outputs)
  leaves = {name: _leaf_strings(name, outputs[name]) for name in names}
  if fmt == RequestFormat.COLUMNAR:
    texts = {name: _nest(leaves[name], outputs[name].shape)[0] for name in names}
    if len(names) == 1:
      body = texts[names[0]]
    else:
      body = "{" + ", ".join(f"{json.dumps(n)}: {texts[n]}" for n in names) + "}"
    return ('{\n    "outputs": ' + body + "\n}").encode("utf-8")
  batch_size = 0
  for name in names:
    shape = outputs[name].shape
    if not shape:
      raise errors.invalid_argument(f"Tensor name: {name} has no shape information ")
    if shape[0] < 1:
      raise errors.invalid_argument(f"Tensor name: {name} has invalid batch size: {shape[0]}")
    if batch_size and shape[0] != batch_size:
      raise errors.invalid_argument(
          f"Tensor name: {name} has inconsistent batch size: {shape[0]} "
          f"expecting: {batch_size}")
    batch_size = shape[0]
  offsets = dict.fromkeys(names, 0)
  rows = []
  for _ in range(batch_size):
    items = []
    for name in names:
      text, offsets[name] = _nest(leaves[name], outputs[name].shape[1:], offsets[name])
      items.append(text if len(names) == 1 else f"{json.dumps(name)}: {text}")
    rows.append(items[0] if len(names) == 1 else "{" + ", ".join(items) + "}")
  return ('{\n    "predictions": [' + ",\n        ".join(rows) + "\n    ]\n}").encode("utf-8")


def error_json(message: str) -> bytes:
  """TF Serving's error body: {"error": "<message>"}; always valid UTF-8 JSON."""
  # A message may quote a lone surrogate from the request; "\\ud800" is kept
  # as an escape (JSON) rather than written as bytes UTF-8 cannot hold.
  text = json.dumps(message, ensure_ascii=False)
  try:
    data = text.encode("utf-8")
  except UnicodeEncodeError:
    data = json.dumps(message, ensure_ascii=True).encode("ascii")
  return b'{ "error": ' + data + b" }"
