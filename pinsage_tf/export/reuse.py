"""A new version of a model from a previous version's graph: no tracing, no `tf.saved_model.save`.

A refresh exports the same model over a grown corpus. The exported modules
hold every corpus-sized table in a variable with an unknown leading dimension
and read sizes from the tensors at run time (`module_parts`), so what changes
from one version to the next is only the values of the variables and the id
vocabularies. `write_version` therefore builds the new version from the
previous one's `saved_model.pb` (copied as it is), a new checkpoint of the
module's current variable values under the previous checkpoint's keys and
object graph (written with `SaveV2`), and the module's vocabulary files as
the assets of the same names. TensorFlow's loaders (Python, TF Serving)
restore it like any SavedModel.

Reuse is safe only when both modules trace to the same graph. Each module's
`graph_spec()` lists every Python value its signatures depend on;
`reusable_spec` adds the TensorFlow version, and the previous version is
reused only when its report records the same spec. `write_version` still
refuses (`GraphMismatch`, nothing written) when a checkpoint key, dtype or
declared shape, or an asset name, does not fit the module. The export checks
then read the new version back and query its files (`artifact_checks`), or
load and query it like a freshly saved one (`ExportConfig.verify_reused`).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.core.protobuf import trackable_object_graph_pb2

# TensorFlow's names inside a SavedModel directory and its checkpoint.
SAVED_MODEL = "saved_model.pb"
VARIABLES = os.path.join("variables", "variables")
ASSETS = "assets"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


class GraphMismatch(ValueError):
  """The previous version's graph cannot serve the module's variables or assets."""


def reusable_spec(module: tf.Module) -> dict[str, Any]:
  """`module.graph_spec()` with the TensorFlow version that traces it, as JSON reads it back."""
  return json.loads(json.dumps({**module.graph_spec(), "tensorflow": tf.__version__}))


def checkpoint_variables(module: tf.Module) -> dict[str, tf.Variable]:
  """Checkpoint key -> variable of `module`, as `tf.saved_model.save` names them.

  A key is the attribute path from the module (list positions as numbers)
  followed by `/.ATTRIBUTES/VARIABLE_VALUE`, e.g.
  `scann/dataset/.ATTRIBUTES/VARIABLE_VALUE`.
  """
  out = {}
  for path, variable in module._flatten(  # pylint: disable=protected-access
      predicate=lambda v: isinstance(v, tf.Variable), with_path=True):
    names = [str(p).replace(".", ".S").replace("/", "./") for p in path]  # TF's escaping
    out["/".join(names) + VALUE_SUFFIX] = variable
  return out


def module_assets(module: tf.Module) -> dict[str, str]:
  """Base name -> path of every `tf.saved_model.Asset` of `module`."""
  out = {}
  for asset in module._flatten(  # pylint: disable=protected-access
      predicate=lambda v: isinstance(v, tf.saved_model.Asset)):
    path = os.fsdecode(asset.asset_path.numpy())
    out[os.path.basename(path)] = path
  return out


def _declared_shapes(proto: saved_model_pb2.SavedModel, object_graph: bytes
                     ) -> dict[str, tuple[Any, Any]]:
  """Checkpoint key -> (declared shape, dtype) of each variable of a SavedModel.

  The checkpoint's object graph and the SavedModel's object graph number
  their nodes alike (TensorFlow's loader restores by these ids).
  """
  nodes = proto.meta_graphs[0].object_graph_def.nodes
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(object_graph)
  out = {}
  for node_id, node in enumerate(graph.nodes):
    for attribute in node.attributes:
      if attribute.checkpoint_key.endswith(VALUE_SUFFIX) and node_id < len(nodes):
        saved = nodes[node_id]
        if saved.WhichOneof("kind") == "variable":
          out[attribute.checkpoint_key] = (tf.TensorShape(saved.variable.shape),
                                           tf.dtypes.as_dtype(saved.variable.dtype))
  return out


def write_version(previous_dir: str, module: tf.Module, dest_dir: str) -> None:
  """Writes `module` into `dest_dir` as the graph of `previous_dir` with its own values.

  Args:
    previous_dir: a published version whose module had the same
      `reusable_spec` as `module`.
    module: the module to export (its functions are never traced).
    dest_dir: an empty directory; receives `saved_model.pb`, `variables/`,
      `assets/` and `fingerprint.pb`.

  Raises:
    GraphMismatch: the previous graph does not fit `module` (the checkpoint
      keys, a dtype or declared shape, or the asset names differ); `dest_dir`
      is left empty.
  """
  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(previous_dir, SAVED_MODEL), "rb") as f:
    proto.ParseFromString(f.read())
  reader = tf.train.load_checkpoint(os.path.join(previous_dir, VARIABLES))
  object_graph = reader.get_tensor(OBJECT_GRAPH_KEY)
  declared = _declared_shapes(proto, object_graph)
  variables = checkpoint_variables(module)
  keys = set(reader.get_variable_to_shape_map()) - {OBJECT_GRAPH_KEY}
  if keys != set(variables) or keys != set(declared):
    raise GraphMismatch(f"{previous_dir}: checkpoint keys differ from the module's "
                        f"(only before: {sorted(keys - set(variables))[:5]}, only now: "
                        f"{sorted(set(variables) - keys)[:5]}).")
  for key, variable in variables.items():
    shape, dtype = declared[key]
    if dtype != variable.dtype or not shape.is_compatible_with(variable.shape):
      raise GraphMismatch(f"{previous_dir}: {key} is declared {dtype.name} {shape}, the module "
                          f"holds {variable.dtype.name} {variable.shape}.")
  assets = module_assets(module)
  previous_assets = {a.filename for a in proto.meta_graphs[0].asset_file_def}
  if previous_assets != set(assets):
    raise GraphMismatch(f"{previous_dir}: assets {sorted(previous_assets)} differ from the "
                        f"module's {sorted(assets)}.")
  try:
    shutil.copyfile(os.path.join(previous_dir, SAVED_MODEL),
                    os.path.join(dest_dir, SAVED_MODEL))
    os.makedirs(os.path.join(dest_dir, ASSETS))
    for name, path in assets.items():
      shutil.copyfile(path, os.path.join(dest_dir, ASSETS, name))
    os.makedirs(os.path.join(dest_dir, "variables"))
    names = sorted(variables)
    tf.raw_ops.SaveV2(
        prefix=os.path.join(dest_dir, VARIABLES),
        tensor_names=[*names, OBJECT_GRAPH_KEY], shape_and_slices=[""] * (len(names) + 1),
        tensors=[*(variables[n].read_value() for n in names),
                 tf.constant(object_graph, tf.string)])
    _write_fingerprint(dest_dir)
  except BaseException:
    for name in os.listdir(dest_dir):
      path = os.path.join(dest_dir, name)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    raise


def _write_fingerprint(version_dir: str) -> None:
  """`fingerprint.pb` of the new checkpoint, as `tf.saved_model.save` writes it."""
  # pylint: disable=g-import-not-at-top
  from tensorflow.python.saved_model import fingerprinting_utils  # not in the public API
  fingerprinting_utils.write_fingerprint(version_dir)


def previous_report_fields(report: Mapping[str, Any]) -> dict[str, Any]:
  """What a reused graph keeps of the previous version's report: signatures and ops."""
  return {key: report[key] for key in ("signatures", "default_signature", "custom_ops")}
