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
