"""The op types a SavedModel uses, and which of them are custom ops.

A model with custom ops (ScaNN's "Scann>..." ops) loads only in a process that
registered them (`import scann`), not in stock TensorFlow Serving.
"""

from __future__ import annotations

import os
from typing import Sequence

from tensorflow.core.protobuf import saved_model_pb2


def saved_model_ops(path: str | os.PathLike) -> list[str]:
  """Every op type used by a SavedModel: graph nodes and all library functions."""
  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(os.fspath(path), "saved_model.pb"), "rb") as f:
    proto.ParseFromString(f.read())
  ops = set()
  for meta_graph in proto.meta_graphs:
    ops.update(node.op for node in meta_graph.graph_def.node)
    for function in meta_graph.graph_def.library.function:
      ops.update(node.op for node in function.node_def)
  return sorted(ops)


def custom_ops(ops: Sequence[str]) -> list[str]:
  """The custom ops among `ops`."""
  # Custom-op libraries register namespaced ops ("Scann>ScannSearch").
  return sorted(op for op in ops if ">" in op or op.startswith("Scann"))
