"""Tensors on the wire: TF Serving's JSON and TensorProto encodings, and checks.

Contract (mirrors tensorflow_serving/util/json_tensor.cc and
servables/tensorflow/predict_util.cc, so that clients written for TF Serving
see the same codes, shapes and messages):

* `parse_json_predict(body, lookup)` reads a REST `:predict` body. Row format
  `{"signature_name"?, "instances": [...]}` stacks the per-instance values of
  each input into one array `[len(instances), ...]`; columnar format
  `{"inputs": ...}` takes each input as given. A single-input signature may use
  plain (unnamed) values; `{"b64": "..."}` carries bytes for DT_STRING inputs.
  The result is `{input alias: np.ndarray}` with the signature's dtype
  (DT_STRING -> numpy object array of `bytes`).
* `outputs_to_json(outputs, fmt)` writes `{"predictions": [...]}` (row) or
  `{"outputs": ...}` (columnar); float values are printed the way TF Serving
  prints them (shortest of %g / %.9g that round-trips, whole numbers get ".0",
  NaN / Infinity as bare words); DT_STRING outputs whose alias ends in
  "_bytes" are written as `{"b64": ...}`.
* `validate_inputs(signature, inputs, ...)` applies the checks TF Serving runs
  before a session: input alias set, dtype, shape against the SignatureDef,
  plus this server's batch bounds.
* `tensor_proto_to_array` / `array_to_tensor_proto` convert for gRPC.

Every rejection is a `ServingError(code, message)` with a gRPC status code;
`http_status(code)` gives TF Serving's HTTP code for it (400 for
INVALID_ARGUMENT, 404 for NOT_FOUND, ...).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import json
import math
from typing import Any, Callable, Mapping, Sequence

import grpc
import numpy as np

import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

_B64_KEY = "b64"
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
_BYTES_SUFFIX = "_bytes"
# Deeper nesting than this is never a real tensor; the bound keeps the
# recursive walkers far from Python's recursion limit.
_MAX_RANK = 32
# Error messages quote request values; long ones are cut so an error body
# never echoes a whole multi-megabyte request.
_MAX_QUOTED_CHARS = 256

# TF Serving's ToHTTPStatusCode (model_servers/http_server.cc).
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
  """A request failure with a canonical (gRPC) status code.

  Attributes:
    code: `grpc.StatusCode`, e.g. INVALID_ARGUMENT for a malformed request.
    message: the human-readable explanation sent to the client.
    http_status: overrides `http_status(code)` for REST (413 for a body over
      --max_request_bytes, which TF Serving's code table has no entry for).
  """

  def __init__(self, code: grpc.StatusCode, message: str,
               http_status: int | None = None):
    super().__init__(message)
    self.code = code
    self.message = message
    self.http_status = http_status

  def __str__(self) -> str:
    return f"{self.code.name}: {self.message}"


def invalid_argument(message: str) -> ServingError:
  return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def http_status(code: grpc.StatusCode) -> int:
  """TF Serving's HTTP status for a canonical code (500 if unmapped)."""
  return _HTTP_STATUS.get(code, 500)


def status_code_from_number(number: int) -> grpc.StatusCode:
  """Canonical code from its number (TF's `OpError.error_code` uses the same)."""
  return _CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def data_type_string(dtype: tf.dtypes.DType | int) -> str:
  """TF's DataTypeString: "float", "int64", "string" (not numpy's names)."""
  enum_value = dtype if isinstance(dtype, int) else dtype.as_datatype_enum
  name = types_pb2.DataType.Name(enum_value)
  return name[3:].lower() if name.startswith("DT_") else name.lower()


# ---------------------------------------------------------------------------
# Signatures.


@dataclasses.dataclass(frozen=True)
class TensorSpecInfo:
  """One input or output of a SignatureDef.

  Attributes:
    alias: the key in the SignatureDef map (what clients name it).
    dtype: element type (None for DT_INVALID).
    shape: dims with None for unknown sizes; None when the rank is unknown.
  """
  alias: str
  dtype: tf.dtypes.DType | None
  shape: tuple[int | None, ...] | None

  def shape_string(self) -> str:
    if self.shape is None:
      return "[?]"
    return "[" + ",".join("-1" if d is None else str(d) for d in self.shape) + "]"


@dataclasses.dataclass(frozen=True)
class Signature:
  """A SignatureDef of a loaded SavedModel, as the server validates against it."""
  name: str
  method_name: str
  inputs: Mapping[str, TensorSpecInfo]
  outputs: Mapping[str, TensorSpecInfo]


def _spec_from_tensor_info(alias: str, info: meta_graph_pb2.TensorInfo) -> TensorSpecInfo:
  shape_proto = info.tensor_shape
  if shape_proto.unknown_rank:
    shape = None
  else:
    shape = tuple(None if d.size < 0 else int(d.size) for d in shape_proto.dim)
  # The "__saved_model_init_op" pseudo-signature has a DT_INVALID output.
  dtype = tf.dtypes.as_dtype(info.dtype) if info.dtype != types_pb2.DT_INVALID else None
  return TensorSpecInfo(alias=alias, dtype=dtype, shape=shape)


def signature_from_proto(name: str, signature_def: meta_graph_pb2.SignatureDef) -> Signature:
  """Builds a `Signature` from a SignatureDef proto of the MetaGraphDef."""
  return Signature(
      name=name,
      method_name=signature_def.method_name,
      inputs={k: _spec_from_tensor_info(k, v) for k, v in sorted(signature_def.inputs.items())},
      outputs={k: _spec_from_tensor_info(k, v) for k, v in sorted(signature_def.outputs.items())},
  )


# ---------------------------------------------------------------------------
# JSON -> tensors.


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
  except (TypeError, ValueError):
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
  return invalid_argument("JSON Value: " + _quote(value) + " " + "".join(parts))


def _type_error(value: Any, dtype: tf.dtypes.DType) -> ServingError:
  return invalid_argument(
      f"JSON Value: {_quote(value)} Type: {_json_type(value)} is not of "
      f"expected type: {data_type_string(dtype)}")


def _is_b64_object(value: Any) -> bool:
  return (isinstance(value, dict) and len(value) == 1 and
          isinstance(value.get(_B64_KEY), str))


def _decode_b64(value: Any) -> bytes:
  if not _is_b64_object(value):
    raise invalid_argument(
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
    raise invalid_argument("Unable to base64 decode") from None


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
      return value.encode("utf-8")
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
        raise invalid_argument(
            f"Cannot convert JSON value: {_quote(value)} to {target} without loss of precision.")
    elif math.isfinite(value):
      finfo = _FLOAT_FINFO[dtype]
      if not float(finfo.min) <= value <= float(finfo.max):
        raise invalid_argument(
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
      f"Conversion of JSON Value: {_quote(value)} to type: {data_type_string(dtype)}")


def _dense_shape(value: Any) -> list[int]:
  """Shape implied by following the first element of each nested list."""
  shape = []
  while isinstance(value, list):
    shape.append(len(value))
    if len(shape) > _MAX_RANK:
      raise invalid_argument(f"JSON list nesting deeper than {_MAX_RANK} levels")
    if not value:
      break
    value = value[0]
  return shape


def _fill(value: Any, level: int, shape: Sequence[int], dtype: tf.dtypes.DType,
          out: list) -> None:
  rank = len(shape)
  if not isinstance(value, list):
    if level != rank:
      raise invalid_argument(
          f"JSON Value: {_quote(value)} found at incorrect level: {level + 1} "
          f"in the JSON DOM. Expected at level: {rank}")
    out.append(_json_scalar(value, dtype))
    return
  if level >= rank:
    raise invalid_argument(
        f"Encountered list at unexpected level: {level} expected < {rank}")
  if len(value) != shape[level]:
    raise invalid_argument(
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


def _shape_string(shape: Sequence[int]) -> str:
  return "[" + ",".join(str(d) for d in shape) + "]"


def _instances_to_arrays(instances: list, signature: Signature) -> dict[str, np.ndarray]:
  specs = signature.inputs
  first = instances[0]
  if not isinstance(first, dict) and len(specs) > 1:
    raise invalid_argument(
        "instances is a plain list, but expecting list of objects as multiple "
        "input tensors required as per tensorinfo_map")
  named = isinstance(first, dict) and not _is_b64_object(first)
  values: dict[str, list] = {}
  shapes: dict[str, list[int]] = {}

  def add_item(item: Any, name: str) -> None:
    if name not in specs:
      raise invalid_argument(f"JSON object: does not have named input: {name}")
    shape = _dense_shape(item)
    flat: list = []
    _fill(item, 0, shape, specs[name].dtype, flat)
    if name not in shapes:
      shapes[name] = shape
      values[name] = []
    elif math.prod(shapes[name]) != len(flat):
      raise invalid_argument(
          f"Expecting tensor size: {math.prod(shapes[name])} but got: {len(flat)}")
    elif shapes[name] != shape:
      raise invalid_argument(
          f"Expecting shape {_shape_string(shapes[name])} but got: {_shape_string(shape)}")
    values[name].extend(flat)

  for index, element in enumerate(instances):
    element_named = isinstance(element, dict) and not _is_b64_object(element)
    if named:
      if not element_named:
        raise invalid_argument(
            f"Expecting object but got list at item {index} of input list")
      for name, item in element.items():
        try:
          add_item(item, name)
        except ServingError as e:
          raise invalid_argument(
              f"Failed to process element: {index} key: {name} of 'instances' "
              f"list. Error: {e}") from None
      if set(element) != set(specs):
        raise invalid_argument(
            f"Failed to process element: {index} of 'instances' list. JSON "
            f"object: {_quote(element)} must only have keys: {','.join(sorted(specs))}")
    else:
      if element_named:
        raise invalid_argument(
            f"Expecting value/list but got object at item {index} of input list")
      name = next(iter(specs))
      try:
        add_item(element, name)
      except ServingError as e:
        raise invalid_argument(
            f"Failed to process element: {index} of 'instances' list. "
            f"Error: {e}") from None
  return {name: _to_array(values[name], [len(instances)] + shapes[name], specs[name].dtype)
          for name in values}


def _inputs_to_arrays(value: Any, signature: Signature) -> dict[str, np.ndarray]:
  specs = signature.inputs
  if not isinstance(value, dict) or _is_b64_object(value):
    if len(specs) > 1:
      raise invalid_argument(
          "inputs is a plain value/list, but expecting an object as multiple "
          "input tensors required as per tensorinfo_map")
    name, spec = next(iter(specs.items()))
    return {name: json_value_to_array(value, spec.dtype)}
  arrays = {}
  # Like TF Serving, keys that are not inputs of the signature are ignored.
  for name, spec in specs.items():
    if name not in value:
      raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
    arrays[name] = json_value_to_array(value[name], spec.dtype)
  return arrays


def parse_json(body: bytes) -> dict:
  """Parses a request body; errors use TF Serving's "JSON Parse error" form."""
  if not body or not body.strip():
    raise invalid_argument("JSON Parse error: The document is empty")
  try:
    doc = json.loads(body)
  except json.JSONDecodeError as e:
    raise invalid_argument(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
  except UnicodeDecodeError as e:
    raise invalid_argument(
        f"JSON Parse error: Invalid encoding in string. at offset: {e.start}") from None
  except RecursionError:
    raise invalid_argument("JSON Parse error: nesting too deep") from None
  if not isinstance(doc, dict):
    raise _format_error(doc, "Is not object")
  return doc


def parse_json_predict(body: bytes,
                       lookup_signature: Callable[[str], Signature]) -> JsonPredictRequest:
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
    raise invalid_argument(
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
  raise invalid_argument("Missing 'inputs' or 'instances' key")


# ---------------------------------------------------------------------------
# Tensors -> JSON.


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
  raise invalid_argument(f"Failed to write JSON value for tensor type: {array.dtype}")


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
    raise invalid_argument("Cannot convert empty tensor map to JSON")
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
      raise invalid_argument(f"Tensor name: {name} has no shape information ")
    if shape[0] < 1:
      raise invalid_argument(f"Tensor name: {name} has invalid batch size: {shape[0]}")
    if batch_size and shape[0] != batch_size:
      raise invalid_argument(
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
  """TF Serving's error body: {"error": "<message>"}."""
  return ('{ "error": ' + json.dumps(message, ensure_ascii=False) + " }").encode("utf-8")


# ---------------------------------------------------------------------------
# gRPC TensorProtos.


def tensor_proto_to_array(alias: str, proto: Any) -> np.ndarray:
  """A request TensorProto as an array; DT_STRING -> object array of bytes.

  Raises:
    ServingError: INVALID_ARGUMENT "tensor parsing error: <alias>" when the
      proto is not a valid tensor (unknown dtype, content of the wrong size).
  """
  try:
    if proto.dtype == types_pb2.DT_INVALID:
      raise ValueError("DT_INVALID")
    array = tf.make_ndarray(proto)
  except Exception:  # make_ndarray raises several types for bad protos.
    raise invalid_argument(f"tensor parsing error: {alias}") from None
  if array.dtype.kind in ("S", "U"):
    array = array.astype(object)
  return array


# TF Serving answers with Tensor::AsProtoField: values in the typed repeated
# field, not in tensor_content. Clients that read e.g. `.float_val` rely on it.
_TYPED_FIELDS = {
    types_pb2.DT_FLOAT: ("float_val", None),
    types_pb2.DT_DOUBLE: ("double_val", None),
    types_pb2.DT_INT32: ("int_val", None),
    types_pb2.DT_INT16: ("int_val", None),
    types_pb2.DT_INT8: ("int_val", None),
    types_pb2.DT_UINT8: ("int_val", None),
    types_pb2.DT_UINT16: ("int_val", None),
    types_pb2.DT_INT64: ("int64_val", None),
    types_pb2.DT_UINT32: ("uint32_val", None),
    types_pb2.DT_UINT64: ("uint64_val", None),
    types_pb2.DT_BOOL: ("bool_val", None),
    types_pb2.DT_HALF: ("half_val", np.uint16),
    types_pb2.DT_BFLOAT16: ("half_val", np.uint16),
    types_pb2.DT_COMPLEX64: ("scomplex_val", np.float32),
    types_pb2.DT_COMPLEX128: ("dcomplex_val", np.float64),
}


def array_to_tensor_proto(array: np.ndarray) -> Any:
  """An output array as a TensorProto laid out like TF Serving's responses.

  Built with tf.make_tensor_proto; numeric values are then moved from
  `tensor_content` into the typed field (`float_val`, `int64_val`, ...) as
  TF Serving's Tensor::AsProtoField does. tf.make_ndarray reads either form.
  """
  proto = tf.make_tensor_proto(array)
  typed = _TYPED_FIELDS.get(proto.dtype)
  if typed is not None and proto.tensor_content:
    field, view = typed
    flat = tf.make_ndarray(proto).ravel()
    if view is not None:
      flat = flat.view(view)
    proto.ClearField("tensor_content")
    getattr(proto, field).extend(flat.tolist())
  return proto


# ---------------------------------------------------------------------------
# Validation against a signature.


def check_signature_is_runnable(signature: Signature) -> None:
  """TF Serving's VerifySignature: only predict/classify/regress signatures run."""
  if signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
    raise ServingError(
        grpc.StatusCode.INTERNAL,
        "Expected prediction signature method_name to be one of "
        f"{{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. "
        f"Was: {signature.method_name}")


def _compatible(shape: tuple[int, ...], expected: tuple[int | None, ...] | None) -> bool:
  if expected is None:
    return True
  return len(shape) == len(expected) and all(
      e is None or e == s for s, e in zip(shape, expected))


def validate_inputs(signature: Signature, inputs: Mapping[str, np.ndarray], *,
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
    raise invalid_argument(
        f"input size does not match signature: {len(sent)}!={len(expected)} "
        f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
        f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
        f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")
  unknown = sorted(sent - expected)
  if unknown:
    raise invalid_argument(
        f"input tensor alias not found in signature: {unknown[0]}. Inputs expected "
        f"to be in the set {{{','.join(sorted(expected))}}}.")
  for alias in sorted(inputs):
    spec = signature.inputs[alias]
    array = inputs[alias]
    if spec.dtype == tf.string:
      dtype_ok = array.dtype.kind in ("O", "S", "U")
      got = "string" if dtype_ok else data_type_string(tf.dtypes.as_dtype(array.dtype))
    else:
      try:
        got_dtype = tf.dtypes.as_dtype(array.dtype)
      except TypeError:
        got_dtype = None
      dtype_ok = got_dtype == spec.dtype
      got = data_type_string(got_dtype) if got_dtype is not None else str(array.dtype)
    if not dtype_ok:
      raise invalid_argument(
          f"input '{alias}' has dtype {got} but signature '{signature.name}' "
          f"expects {data_type_string(spec.dtype)}")
    if not _compatible(array.shape, spec.shape):
      raise invalid_argument(
          f"input '{alias}' has shape {_shape_string(array.shape)} but signature "
          f"'{signature.name}' expects {spec.shape_string()} (-1 = any size)")
    batched = spec.shape is not None and len(spec.shape) > 0 and spec.shape[0] is None
    if batched and array.shape[0] == 0:
      raise invalid_argument(f"input '{alias}' has an empty batch (dimension 0 is 0)")
    if batched and max_batch_size > 0 and array.shape[0] > max_batch_size:
      raise invalid_argument(
          f"input '{alias}' has batch size {array.shape[0]}, more than this "
          f"server's --max_batch_size={max_batch_size}; split the request")


def check_output_filter(signature: Signature, output_filter: Sequence[str]) -> list[str]:
  """Output aliases to return: the filter (validated) or all of them."""
  seen: set[str] = set()
  for alias in output_filter:
    if alias not in signature.outputs:
      raise invalid_argument(
          f"output tensor alias not found in signature: {alias} Outputs expected "
          f"to be in the set {{{','.join(sorted(signature.outputs))}}}.")
    if alias in seen:
      raise invalid_argument(f"duplicate output tensor alias: {alias}")
    seen.add(alias)
  return list(output_filter) if output_filter else sorted(signature.outputs)
