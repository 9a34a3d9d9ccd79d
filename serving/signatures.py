"""The SignatureDefs of a SavedModel, as the server validates requests against them.

Contract:

* `signature_from_proto(name, signature_def)` gives a `Signature` whose
  `inputs` / `outputs` map each alias (sorted) to a `TensorSpecInfo`: its
  dtype (None for DT_INVALID) and its shape (None for an unknown dimension,
  shape None for an unknown rank).
* `data_type_string` and `shape_string` write dtypes and shapes the way TF
  Serving's messages do ("float", "int64", "string"; "[2,-1]").
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


def data_type_string(dtype: tf.dtypes.DType | int) -> str:
  """TF's DataTypeString: "float", "int64", "string" (not numpy's names)."""
  enum_value = dtype if isinstance(dtype, int) else dtype.as_datatype_enum
  name = types_pb2.DataType.Name(enum_value)
  return name[3:].lower() if name.startswith("DT_") else name.lower()


def shape_string(dims: Sequence[int | None]) -> str:
  """Dims as TF Serving prints them: "[2,3]", with -1 for an unknown size."""
  return "[" + ",".join("-1" if d is None else str(d) for d in dims) + "]"


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
    return "[?]" if self.shape is None else shape_string(self.shape)


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
