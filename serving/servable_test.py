"""Tests for serving.servable: reading, loading and running one SavedModel version."""

from __future__ import annotations

import os

import grpc
import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from serving import servable as servable_lib
from serving import toy_models
from serving.errors import ServingError

_IDS = {"item_ids": np.array([b"a"], dtype=object)}
# Item "a" = (1, 0): its best match is "d" = (2, 0.5) with score 2, then "a"
# itself with 1 (see toy_models.LOOKUP_EMBEDDINGS); the model adds its offset 10.
_TOP_SCORES_A = np.array([[12.0, 11.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def lookup(tmp_path_factory):
  path = toy_models.build_lookup_model(tmp_path_factory.mktemp("lookup") / "1", 10.0)
  return servable_lib.Servable("m", 1, path, ["serve"])


def test_predict_runs_the_named_signature(lookup):
  outputs = lookup.predict("", _IDS)
  assert sorted(outputs) == ["ids", "scores"]
  assert outputs["ids"].tolist() == [[b"d", b"a"]]
  np.testing.assert_allclose(outputs["scores"], _TOP_SCORES_A)
  embedded = lookup.predict("embed", _IDS, output_filter=["embeddings"])
  np.testing.assert_allclose(embedded["embeddings"], [[1.0, 0.0]])


def test_signatures_come_from_the_meta_graph(lookup):
  assert (lookup.name, lookup.version) == ("m", 1)
  assert {"serving_default", "embed"} <= set(lookup.signatures)
  assert set(lookup.signature_def_map.signature_def) == set(lookup.signatures)
  default = lookup.signature("")
  assert default.name == "serving_default"
  assert default.inputs["item_ids"].dtype == tf.string
  assert default.inputs["item_ids"].shape == (None,)


def test_unknown_signature_messages_differ_by_api(lookup):
  with pytest.raises(ServingError) as info:
    lookup.signature("nope")
  assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
  assert info.value.message == 'Serving signature key "nope" not found.'
  with pytest.raises(ServingError) as info:
    lookup.rest_signature("nope")
  assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
  assert info.value.message == 'Serving signature name: "nope" not found in signature def'


def test_graph_errors_map_to_status_codes(lookup):
  with pytest.raises(ServingError) as info:
    lookup.predict("", {"item_ids": np.array([b"a", b"zz"], dtype=object)})
  assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
  assert "unknown item id" in info.value.message
  assert "Graph execution error" not in info.value.message
  with pytest.raises(ServingError, match="--max_batch_size=2"):
    lookup.predict("", {"item_ids": np.array([b"a"] * 3, dtype=object)}, max_batch_size=2)
  with pytest.raises(ServingError) as info:
    lookup.predict("nope", _IDS)
  assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
  assert info.value.message == 'Serving signature key "nope" not found.'


def test_read_meta_graph_errors(lookup, tmp_path):
  with pytest.raises(ServingError) as info:
    servable_lib.read_meta_graph(str(tmp_path), ["serve"])
  assert info.value.code == grpc.StatusCode.NOT_FOUND
  assert info.value.message == ("SavedModel file does not exist at: "
                                f"{os.path.join(tmp_path, 'saved_model.pb')}")
  (tmp_path / "saved_model.pb").write_bytes(b"\x0a\xff\xff not a proto")
  with pytest.raises(ServingError) as info:
    servable_lib.read_meta_graph(str(tmp_path), ["serve"])
  assert info.value.code == grpc.StatusCode.DATA_LOSS
  assert info.value.message.startswith(f"Can't parse the SavedModel in {tmp_path}: ")
  with pytest.raises(ServingError) as info:
    servable_lib.read_meta_graph(lookup.path, ["serve", "gpu"])
  assert info.value.code == grpc.StatusCode.NOT_FOUND
  assert info.value.message == ("Could not find meta graph def matching supplied tags: "
                                "{ gpu serve }. Available tag sets: [['serve']]")


# --- pinsage_retrieval with ScaNN's pybind assets -------------------------------------


@pytest.fixture(scope="module")
def retrieval_pair(tmp_path_factory):
  """The same pinsage_retrieval version with and without the pybind assets."""
  root = tmp_path_factory.mktemp("retrieval")
  servable_lib.import_custom_ops()
  fast = toy_models.build_pinsage_retrieval(root / "fast" / "1")
  plain = toy_models.build_pinsage_retrieval(root / "plain" / "1", with_pybind=False)
  return (servable_lib.Servable("pinsage_retrieval", 1, fast, ["serve"]),
          servable_lib.Servable("pinsage_retrieval", 1, plain, ["serve"]))


def _item_ids(rows) -> np.ndarray:
  return np.array([f"item{r}".encode() for r in rows], dtype=object)


@pytest.mark.parametrize("batch", [1, 3, 100])
def test_pybind_path_answers_as_the_saved_model(retrieval_pair, batch):
  fast, plain = retrieval_pair
  assert fast.pybind_signatures == {"related_items", "serving_default",
                                    "related_items_by_embedding"}
  assert plain.pybind_signatures == frozenset()
  rng = np.random.default_rng(batch)
  requests = [("related_items", {"item_ids": _item_ids(rng.choice(2000, batch))}),
              ("", {"item_ids": _item_ids(rng.choice(2000, batch))}),
              ("related_items_by_embedding",
               {"embeddings": rng.standard_normal((batch, 8)).astype(np.float32)})]
  for signature, inputs in requests:
    got, want = fast.predict(signature, inputs), plain.predict(signature, inputs)
    assert sorted(got) == sorted(want) == ["neighbor_ids", "scores"]
    for alias in want:
      assert got[alias].dtype == want[alias].dtype and got[alias].shape == (batch, 5)
      np.testing.assert_array_equal(got[alias], want[alias])
  filtered = fast.predict("related_items", requests[0][1], output_filter=["scores"])
  assert list(filtered) == ["scores"]


@pytest.mark.parametrize("signature,inputs", [
    ("related_items", {"item_ids": np.array([b"item1", b"nope", b"zz"], dtype=object)}),
    ("related_items_by_embedding", {"embeddings": np.array([[np.nan] * 8], np.float32)}),
    ("related_items_by_embedding", {"embeddings": np.zeros((1, 3), np.float32)}),
    ("related_items", {"item_ids": np.array([1, 2], np.int64)}),
    ("related_items", {"item_ids": np.zeros([0], dtype=object)}),
])
def test_pybind_path_keeps_the_saved_model_errors(retrieval_pair, signature, inputs):
  fast, plain = retrieval_pair
  errors = []
  for servable in (fast, plain):
    with pytest.raises(ServingError) as info:
      servable.predict(signature, inputs)
    errors.append((info.value.code, info.value.message))
  assert errors[0] == errors[1]
  assert errors[0][0] == grpc.StatusCode.INVALID_ARGUMENT

