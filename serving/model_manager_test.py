"""Tests for serving.model_manager: version policy, hot swap, failures, limits."""

from __future__ import annotations

import os
import re
import shutil
import threading

import grpc
import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from serving import model_manager
from serving import servable as servable_lib
from serving import server_config
from serving import toy_models
from serving import warmup
from serving.errors import ServingError
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

_IDS = {"item_ids": np.array([b"a"], dtype=object)}
# Item "a" = (1, 0): its best match is "d" = (2, 0.5) with score 2, then "a"
# itself with 1 (see toy_models.LOOKUP_EMBEDDINGS); versions add their offset.
_TOP_SCORES_A = np.array([[2.0, 1.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  """Two exported versions of the lookup model: v1 offset 0, v2 offset 10."""
  root = tmp_path_factory.mktemp("exports")
  return {1: toy_models.build_lookup_model(root / "v1", 0.0),
          2: toy_models.build_lookup_model(root / "v2", 10.0)}


def _install(exports, base, version, source_version=None):
  """Copies an export into BASE/version the way exporters must: temp + rename."""
  tmp = os.path.join(base, f".tmp-{version}")
  shutil.copytree(exports[source_version or version], tmp)
  os.rename(tmp, os.path.join(base, str(version)))


def _manager(base, policy=None, labels=None, limits=None, loader=servable_lib.Servable):
  config = server_config.ModelConfig("m", str(base), policy or server_config.VersionPolicy(),
                                     labels or {})
  return model_manager.ModelManager([config], limits=limits, loader=loader)


def _states(manager, name="m"):
  response = manager.get_model_status(name)
  return {s.version: (get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
                      s.status.error_code, s.status.error_message)
          for s in response.model_version_status}

def test_latest_policy_serves_highest_version_and_ignores_other_dirs(exports, tmp_path):
  _install(exports, tmp_path, 1)
  _install(exports, tmp_path, 2)
  shutil.copytree(exports[2], tmp_path / ".tmp-3")  # an exporter still writing
  (tmp_path / "notes").mkdir()
  manager = _manager(tmp_path)
  manager.poll_once()
  servable = manager.get_servable("m")
  assert servable.version == 2
  np.testing.assert_allclose(servable.predict("", _IDS)["scores"], _TOP_SCORES_A + 10)
  with pytest.raises(ServingError, match=r"Servable not found for request: Specific\(m, 1\)"):
    manager.get_servable("m", version=1)
  assert _states(manager) == {2: ("AVAILABLE", 0, "")}


def test_all_policy_and_version_labels(exports, tmp_path):
  _install(exports, tmp_path, 1)
  _install(exports, tmp_path, 2)
  manager = _manager(tmp_path, server_config.VersionPolicy("all"), {"stable": 1, "canary": 2})
  manager.poll_once()
  manager.apply_version_labels()
  assert manager.get_servable("m").version == 2  # no version -> latest
  assert manager.get_servable("m", version=1).version == 1
  assert manager.get_servable("m", label="stable").version == 1
  assert manager.get_servable("m", label="canary").version == 2
  with pytest.raises(ServingError) as info:
    manager.get_servable("m", label="beta")
  assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
  assert info.value.message == "Unrecognized servable version label: beta"
  assert manager.get_model_status("m", label="stable").model_version_status[0].version == 1


def test_label_on_a_version_that_is_not_loaded_is_rejected_like_tf_serving(exports, tmp_path):
  _install(exports, tmp_path, 1)
  _install(exports, tmp_path, 2)
  manager = _manager(tmp_path, server_config.VersionPolicy("all"), {"stable": 1, "next": 3})
  manager.poll_once()
  with pytest.raises(ServingError) as info:
    manager.apply_version_labels()
  assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
  assert info.value.message == ("Request to assign label to version 3 of model m, which is "
                                "not currently available for inference")
  with pytest.raises(ServingError, match="Unrecognized servable version label: stable"):
    manager.get_servable("m", label="stable")  # nothing was applied
  # TF Serving's --allow_version_labels_for_unavailable_models.
  manager.apply_version_labels(allow_unavailable=True)
  assert manager.get_servable("m", label="stable").version == 1
  with pytest.raises(ServingError) as info:
    manager.get_servable("m", label="next")
  assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_hot_swap_keeps_in_flight_servable_usable(exports, tmp_path):
  _install(exports, tmp_path, 1)
  manager = _manager(tmp_path)
  manager.poll_once()
  in_flight = manager.get_servable("m")  # a request that started on v1
  _install(exports, tmp_path, 2)
  manager.poll_once()
  assert manager.get_servable("m").version == 2
  # v1 is unloaded from the map but the request holding it still completes.
  np.testing.assert_allclose(in_flight.predict("", _IDS)["scores"], _TOP_SCORES_A)
  assert _states(manager) == {1: ("END", 0, ""), 2: ("AVAILABLE", 0, "")}


def test_failed_version_keeps_previous_serving_until_fixed(exports, tmp_path):
  calls = []

  def counting_loader(*args):
    calls.append(args[1])
    return servable_lib.Servable(*args)

  _install(exports, tmp_path, 1)
  manager = _manager(tmp_path, loader=counting_loader)
  manager.poll_once()
  broken = tmp_path / ".tmp-2"
  broken.mkdir()
  (broken / "saved_model.pb").write_bytes(b"\x0a\xff\xff not a proto")
  os.rename(broken, tmp_path / "2")
  manager.poll_once()
  assert manager.get_servable("m").version == 1
  states = _states(manager)
  assert states[1] == ("AVAILABLE", 0, "")
  assert states[2][0] == "END"
  assert states[2][1] == grpc.StatusCode.DATA_LOSS.value[0]
  assert "Can't parse" in states[2][2]
  manager.poll_once()  # unchanged broken directory: not retried
  assert calls == [1, 2]
  shutil.rmtree(tmp_path / "2")
  _install(exports, tmp_path, 2)
  manager.poll_once()
  assert calls == [1, 2, 2]
  assert manager.get_servable("m").version == 2
  assert _states(manager)[2] == ("AVAILABLE", 0, "")


def test_unknown_model_and_missing_base_path(tmp_path):
  manager = _manager(tmp_path / "does-not-exist")
  manager.poll_once()  # logs a warning, does not raise
  with pytest.raises(ServingError, match=r"Servable not found for request: Latest\(m\)"):
    manager.get_servable("m")
  with pytest.raises(ServingError, match="Could not find any versions of model m"):
    manager.get_model_status("m")
  with pytest.raises(ServingError, match="Could not find version 4 of model m"):
    manager.get_model_status("m", version=4)
  with pytest.raises(ServingError, match=r"Latest\(other\)"):
    manager.get_servable("other")


def test_metadata_packs_signature_def_map(exports, tmp_path):
  _install(exports, tmp_path, 1)
  manager = _manager(tmp_path)
  manager.poll_once()
  response = manager.get_model_metadata("m")
  assert (response.model_spec.name, response.model_spec.version.value) == ("m", 1)
  signature_defs = get_model_metadata_pb2.SignatureDefMap()
  assert response.metadata["signature_def"].Unpack(signature_defs)
  serving = signature_defs.signature_def["serving_default"]
  assert serving.method_name == "tensorflow/serving/predict"
  assert set(serving.inputs) == {"item_ids"}
  assert set(serving.outputs) == {"ids", "scores"}
  assert "embed" in signature_defs.signature_def


class _BlockingServable:
  """Stands in for a Servable whose predict waits until released."""

  def __init__(self):
    self.entered = threading.Semaphore(0)
    self.release = threading.Event()

  def predict(self, signature_name, inputs, output_filter, max_batch_size):
    self.entered.release()
    assert self.release.wait(30)
    return {"y": np.ones([1])}


def test_concurrency_bound_rejects_beyond_queue_and_queues_within():
  limits = server_config.ServingLimits(max_concurrent_requests=1, max_queued_requests=1)
  manager = model_manager.ModelManager([], limits=limits)
  servable = _BlockingServable()
  results = []
  first = threading.Thread(target=lambda: results.append(manager.predict(servable, "", {})))
  first.start()
  assert servable.entered.acquire(timeout=30)  # first holds the only slot
  second = threading.Thread(target=lambda: results.append(manager.predict(servable, "", {})))
  second.start()
  # The second waits in the queue (size 1); a third finds the queue full.
  for _ in range(3000):
    if manager.requests_queued == 1:
      break
    threading.Event().wait(0.01)
  with pytest.raises(ServingError) as info:
    manager.predict(servable, "", {})
  assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
  servable.release.set()
  first.join(30)
  second.join(30)
  assert len(results) == 2  # the queued request ran once a slot was free
  assert manager.stop(drain_timeout=30)


def test_deadline_exceeded_when_prediction_is_too_slow():
  manager = model_manager.ModelManager(
      [], limits=server_config.ServingLimits(max_concurrent_requests=2))
  servable = _BlockingServable()
  with pytest.raises(ServingError) as info:
    manager.predict(servable, "", {}, timeout_seconds=0.05)
  assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
  servable.release.set()
  assert manager.stop(drain_timeout=30)  # the background run still finishes


def test_max_batch_size_limit_applies_to_predict(exports, tmp_path):
  _install(exports, tmp_path, 1)
  manager = _manager(tmp_path, limits=server_config.ServingLimits(max_batch_size=2))
  manager.poll_once()
  servable = manager.get_servable("m")
  with pytest.raises(ServingError, match="--max_batch_size=2"):
    manager.predict(servable, "", {"item_ids": np.array([b"a"] * 3, dtype=object)})
  outputs = manager.predict(servable, "", {"item_ids": np.array([b"a"] * 2, dtype=object)})
  np.testing.assert_allclose(outputs["scores"], np.repeat(_TOP_SCORES_A, 2, axis=0))


def _write_warmup(version_dir, logs):
  path = os.path.join(version_dir, warmup.WARMUP_FILE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path) as writer:
    for log in logs:
      writer.write(log.SerializeToString())


def _predict_log(ids):
  request = predict_pb2.PredictRequest()
  request.model_spec.name = "m"
  request.inputs["item_ids"].CopyFrom(tf.make_tensor_proto(np.array(ids, dtype=object)))
  return prediction_log_pb2.PredictionLog(
      predict_log=prediction_log_pb2.PredictLog(request=request))


def _recording_loader(calls, managers):
  """Servables whose predict calls record (version, its state in managers[0] then)."""

  def load(name, version, path, tags):
    servable = servable_lib.Servable(name, version, path, tags)
    predict = servable.predict

    def recorded(*args, **kwargs):
      calls.append((version, _states(managers[0])[version][0]))
      return predict(*args, **kwargs)

    servable.predict = recorded
    return servable

  return load


def test_warmup_requests_run_before_the_version_is_available(exports, tmp_path):
  _install(exports, tmp_path, 1)
  _write_warmup(tmp_path / "1", [_predict_log([b"a"]), _predict_log([b"b", b"c"])])
  calls, managers = [], []
  managers.append(_manager(tmp_path, loader=_recording_loader(calls, managers)))
  managers[0].poll_once()
  assert calls == [(1, "LOADING"), (1, "LOADING")]  # both records, replayed while loading
  assert _states(managers[0]) == {1: ("AVAILABLE", 0, "")}


@pytest.mark.parametrize("logs, message", [
    ([_predict_log([b"zz"])], r"warmup record 1 of .*tf_serving_warmup_requests failed: "
                              r".*unknown item id"),
    ([prediction_log_pb2.PredictionLog(
        classify_log=prediction_log_pb2.ClassifyLog())],
     r"Unsupported log_type for warmup: classify_log"),
    ([_predict_log([b"a"])] * (warmup.MAX_RECORDS + 1),
     r"Number of warmup records exceeds the maximum \(1000\)"),
])
def test_failing_warmup_fails_the_load_and_previous_version_keeps_serving(
    exports, tmp_path, logs, message):
  _install(exports, tmp_path, 1)
  manager = _manager(tmp_path)
  manager.poll_once()
  _install(exports, tmp_path, 2)
  _write_warmup(tmp_path / "2", logs)
  manager.poll_once()
  assert manager.get_servable("m").version == 1
  states = _states(manager)
  assert states[1] == ("AVAILABLE", 0, "")
  assert states[2][0] == "END" and states[2][1] != 0
  assert re.search(message, states[2][2]), states[2][2]
