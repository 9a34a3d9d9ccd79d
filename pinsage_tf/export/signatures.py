"""The served signatures: their documentation and how a report describes them.

`SIGNATURES[name]` documents each signature's inputs and outputs (shapes with
B = batch, k = neighbors, dim = embedding width, D = dense feature width); the
export report of every version copies it, with `input_specs` of the saved
function.
"""

from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf

DEFAULT_SIGNATURE = "serving_default"

SIGNATURES: Mapping[str, Mapping[str, Any]] = {
    "related_items": {
        "doc": "The k most similar other items of each query item (inner product of the "
               "embeddings); the query itself is excluded.",
        "inputs": {"item_ids": "string [B]: raw item ids of the exported corpus."},
        "outputs": {"neighbor_ids": "string [B, k]: raw item ids, most similar first.",
                    "scores": "float32 [B, k]: inner products, descending."},
    },
    "related_items_by_embedding": {
        "doc": "The k corpus items with the largest inner product with each query embedding.",
        "inputs": {"embeddings": "float32 [B, dim]: query embeddings."},
        "outputs": {"neighbor_ids": "string [B, k]", "scores": "float32 [B, k]"},
    },
    "embed_items": {
        "doc": "The PinSage embedding of existing items (the inference job's output rows).",
        "inputs": {"item_ids": "string [B]: raw item ids."},
        "outputs": {"embeddings": "float32 [B, dim], L2-normalised."},
    },
    "embed_new_items": {
        "doc": "Cold start: the embedding of NEW items from their features and the pivots "
               "they are attached to, computed inductively by the trained model over a "
               "one-hop importance neighborhood (see pinsage_tf/export/embedder.py).",
        "inputs": {"dense": "float32 [B, D] dense features (absent when D = 0).",
                   "sparse_<feature>": "int32 [B, L] ids of each sparse feature, -1 padding.",
                   "pivot_ids": "string [B, P] raw pivot ids, \"\" padding."},
        "outputs": {"embeddings": "float32 [B, dim], L2-normalised."},
    },
    "items_for_pivot": {
        "doc": "The k items scored highest for each known pivot (user, board) by its stored "
               "pivot embedding (z_p . z_i + b_i); the pivot's graph items are excluded. "
               "Only for models trained with the pivot objective.",
        "inputs": {"pivot_ids": "string [B]: raw pivot ids of the exported graph."},
        "outputs": {"neighbor_ids": "string [B, k]: raw item ids, best first (\"\" when "
                                    "fewer than k items are eligible).",
                    "scores": "float32 [B, k]: descending (-inf on padding)."},
    },
    "items_for_item_set": {
        "doc": "The k items scored highest for a pivot given at request time by its items: "
               "embedded by the model's last convolution and head from the items' h^{K-1}, "
               "uniform weights over the given (non-padding) ids; the given items are "
               "excluded. Only for models trained with the pivot objective.",
        "inputs": {"item_ids": "string [B, L]: raw item ids, \"\" padding; every row needs "
                               "at least one id."},
        "outputs": {"neighbor_ids": "string [B, k]: raw item ids, best first (\"\" when "
                                    "fewer than k items are eligible).",
                    "scores": "float32 [B, k]: descending (-inf on padding)."},
    },
}


def input_specs(fn) -> dict[str, str]:
  """Input name -> "dtype [shape]" of a concrete function (flat or dict input)."""
  args, kwargs = fn.structured_input_signature
  specs = dict(kwargs)
  for arg in args:
    if isinstance(arg, Mapping):
      specs.update(arg)
    elif isinstance(arg, tf.TensorSpec):
      specs[arg.name] = arg
  return {name: f"{spec.dtype.name} {[d if d is not None else -1 for d in spec.shape.as_list()]}"
          for name, spec in sorted(specs.items())}


def default_signature_key(signatures: Mapping[str, Any]) -> str | None:
  """The key whose function `serving_default` also serves (None if none)."""
  default = signatures.get(DEFAULT_SIGNATURE)
  for key, fn in signatures.items():
    if key != DEFAULT_SIGNATURE and fn is default:
      return key
  return None
