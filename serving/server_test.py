"""End-to-end tests: `python -m serving.server` in a subprocess, stock clients.

One server per module (started by the `server` fixture on free ports of
127.0.0.1) serves four models from a model_config_file:
  lookup  (toy lookup model, score offset 0, label "stable" -> 1)
  float   (toy float model: serving_default, multi, bytes, slow)
  swap    (toy lookup model; starts at version 1 with offset 100, the hot-swap
           test adds version 2 with offset 200, another test a corrupt version 9)
  scann   (toy retrieval through tensorflow-recommenders' ScaNN layer)
Clients are plain urllib / http.client and the unchanged
`tensorflow_serving.apis` gRPC stubs. Results are compared with the same
SavedModels loaded in-process. The SIGTERM test runs last and stops the server.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from serving import client
from serving import servable as servable_lib
from serving import testing
from serving import toy_models
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MAX_BATCH = 8
_MAX_REQUEST_BYTES = 64 << 10
_REST_TIMEOUT_MS = 4000
_METRICS_PATH = "/monitoring/prometheus/metrics"
# Offsets added to every score by the versions of the "swap" model.
_SWAP_OFFSETS = {1: 100.0, 2: 200.0}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@dataclasses.dataclass
class _Server:
  proc: subprocess.Popen
  rest: str
  grpc: str
  base: str
  log_path: str

  def log(self) -> str:
    with open(self.log_path, errors="replace") as f:
      return f.read()[-5000:]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  base = tmp_path_factory.mktemp("models")
  toy_models.build_lookup_model(base / "lookup" / "1", 0.0)
  toy_models.build_float_model(base / "float" / "1")
  toy_models.build_lookup_model(base / "swap" / "1", _SWAP_OFFSETS[1])
  toy_models.build_scann_model(base / "scann" / "1")
  (base / "models.config").write_text(f"""
model_config_list {{
  config {{ name: "lookup" base_path: "{base / 'lookup'}" model_platform: "tensorflow"
           version_labels {{ key: "stable" value: 1 }} }}
  config {{ name: "float" base_path: "{base / 'float'}" model_platform: "tensorflow" }}
  config {{ name: "swap" base_path: "{base / 'swap'}" model_platform: "tensorflow" }}
  config {{ name: "scann" base_path: "{base / 'scann'}" model_platform: "tensorflow" }}
}}
""")
  (base / "monitoring.config").write_text(
      f'prometheus_config {{ enable: true path: "{_METRICS_PATH}" }}\n')
  return base


@pytest.fixture(scope="module")
def server(models):
  rest_port, grpc_port = _free_port(), _free_port()
  log_path = str(models / "server.log")
  with open(log_path, "wb") as log:
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.server",
         f"--model_config_file={models / 'models.config'}",
         f"--monitoring_config_file={models / 'monitoring.config'}",
         f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         "--file_system_poll_wait_seconds=1",
         f"--max_batch_size={_MAX_BATCH}", f"--max_request_bytes={_MAX_REQUEST_BYTES}",
         "--max_concurrent_requests=2", "--max_queued_requests=2",
         f"--rest_api_timeout_in_ms={_REST_TIMEOUT_MS}", "--shutdown_grace_seconds=20"],
        cwd=_REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
  srv = _Server(proc, f"127.0.0.1:{rest_port}", f"127.0.0.1:{grpc_port}", str(models),
                log_path)
  deadline = time.monotonic() + 180
  while True:
    if proc.poll() is not None:
      pytest.fail(f"server exited with {proc.returncode}:\n{srv.log()}")
    try:
      client.rest_status(srv.rest, "swap", timeout=5)
      client.grpc_status(srv.grpc, "swap", timeout=5)
      break
    except (OSError, client.RestError, grpc.RpcError):
      if time.monotonic() > deadline:
        proc.kill()
        pytest.fail(f"server not ready after 180 s:\n{srv.log()}")
      time.sleep(0.3)
  yield srv
  if proc.poll() is None:
    proc.send_signal(signal.SIGTERM)
    try:
      proc.wait(60)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def _http(address: str, method: str, path: str, body: bytes | None = None,
          headers: dict | None = None) -> tuple[int, dict]:
  host, port = address.split(":")
  connection = http.client.HTTPConnection(host, int(port), timeout=30)
  try:
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    payload = response.read()
    return response.status, json.loads(payload) if payload else {}
  finally:
    connection.close()


def _post(srv: _Server, path: str, payload: dict | bytes) -> tuple[int, dict]:
  body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
  return _http(srv.rest, "POST", path, body)


# ---------------------------------------------------------------------------
# Results equal the in-process SavedModel.

_CASES = {
    "lookup_default": ("lookup", "", {"item_ids": np.array([b"a", b"d", b"e"], dtype=object)}),
    "float_default": ("float", "", {"x": np.array([[0.1, 0.2, 0.3], [1, 2, 3]], np.float32)}),
    "float_multi": ("float", "multi", {"a": np.array([[1.5, 2], [0, -1]], np.float32),
                                       "b": np.array([3, 4], np.int64)}),
    "float_bytes": ("float", "bytes",
                    {"data_bytes": np.array([b"\x00\xffbin", b"hi"], dtype=object)}),
    # ScaNN custom ops: the server must `import scann` before loading.
    "scann_default": ("scann", "", {"item_ids": np.array([b"item1", b"item7"], dtype=object)}),
}


@pytest.fixture(scope="module")
def expected(models):
  """Outputs of each case computed by tf.saved_model.load in this process."""
  servable_lib.import_custom_ops()  # the ScaNN model needs its ops registered
  results = {}
  for case, (model, signature, inputs) in _CASES.items():
    loaded = tf.saved_model.load(str(models / model / "1"))
    function = loaded.signatures[signature or "serving_default"]
    outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
    results[case] = {k: v.numpy() for k, v in outputs.items()}
  return results


def _json_value(array: np.ndarray) -> list:
  if array.dtype == object:
    return [_json_value(a) for a in array] if array.ndim > 1 else [
        {"b64": base64.b64encode(v).decode()} for v in array]
  return array.tolist()


def _from_json(value, like: np.ndarray, alias: str) -> np.ndarray:
  if like.dtype == object:
    def decode(v):
      if isinstance(v, list):
        return [decode(x) for x in v]
      return base64.b64decode(v["b64"]) if alias.endswith("_bytes") else v.encode()
    return np.array(decode(value), dtype=object)
  return np.array(value, dtype=like.dtype)


@pytest.mark.parametrize("case", sorted(_CASES))
def test_rest_row_columnar_and_grpc_equal_in_process_results(server, expected, case):
  model, signature, inputs = _CASES[case]
  want = expected[case]
  names = sorted(inputs)
  rows = len(next(iter(inputs.values())))
  if len(names) == 1:
    instances = _json_value(inputs[names[0]])
  else:
    columns = {n: _json_value(inputs[n]) for n in names}
    instances = [{n: columns[n][i] for n in names} for i in range(rows)]
  row = client.rest_predict(server.rest, model, instances=instances,
                            signature_name=signature or None)["predictions"]
  columnar = client.rest_predict(
      server.rest, model, inputs={n: _json_value(inputs[n]) for n in names}
      if len(names) > 1 else _json_value(inputs[names[0]]),
      signature_name=signature or None)["outputs"]
  grpc_out, spec = client.grpc_predict(server.grpc, model, inputs,
                                       signature_name=signature or None)
  assert spec.name == model and spec.version.value == 1
  assert spec.signature_name == (signature or "serving_default")
  for alias, value in want.items():
    if len(want) == 1:
      row_value, col_value = row, columnar
    else:
      row_value, col_value = [r[alias] for r in row], columnar[alias]
    # TF Serving prints floats so they parse back to the identical float32.
    np.testing.assert_array_equal(_from_json(row_value, value, alias), value)
    np.testing.assert_array_equal(_from_json(col_value, value, alias), value)
    np.testing.assert_array_equal(grpc_out[alias], value)


def test_lookup_results_are_the_hand_computed_top2(server):
  # "a" = (1, 0): scores with a,b,c,d,e are 1, 0, 1, 2, -1 -> top 2 = d (2), a or c (1).
  # "e" = (-1, 0): scores -1, 0, -1, -2, 1 -> top 2 = e (1), b (0).
  predictions = client.rest_predict(server.rest, "lookup", instances=["a", "e"])["predictions"]
  assert predictions[0]["ids"][0] == "d" and predictions[0]["scores"] == [2.0, 1.0]
  assert predictions[1] == {"ids": ["e", "b"], "scores": [1.0, 0.0]}
  by_label = client.rest_predict(server.rest, "lookup", instances=["e"], label="stable")
  assert by_label["predictions"] == [{"ids": ["e", "b"], "scores": [1.0, 0.0]}]


def test_status_and_metadata(server):
  assert client.rest_status(server.rest, "lookup") == {"model_version_status": [{
      "version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
  assert client.rest_status(server.rest, "lookup", version=1)["model_version_status"][0][
      "state"] == "AVAILABLE"
  metadata = client.rest_request(server.rest, "GET", "/v1/models/lookup/versions/1/metadata")
  assert metadata["model_spec"] == {"name": "lookup", "version": "1", "signature_name": ""}
  serving = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
  assert serving["method_name"] == "tensorflow/serving/predict"
  assert serving["inputs"]["item_ids"]["dtype"] == "DT_STRING"
  assert serving["inputs"]["item_ids"]["tensor_shape"]["dim"][0]["size"] == "-1"
  assert serving["outputs"]["scores"]["dtype"] == "DT_FLOAT"
  response = client.grpc_metadata(server.grpc, "float")
  signature_defs = get_model_metadata_pb2.SignatureDefMap()
  assert response.metadata["signature_def"].Unpack(signature_defs)
  assert {"serving_default", "multi", "bytes", "slow"} <= set(signature_defs.signature_def)
  status = client.grpc_status(server.grpc, "float")
  available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
  assert [(s.version, s.state) for s in status.model_version_status] == [(1, available)]


# ---------------------------------------------------------------------------
# Bad requests: right code, a message, and the server keeps answering.

_BIG = json.dumps({"instances": ["x" * (_MAX_REQUEST_BYTES + 10)]}).encode()

_REST_BAD = [
    ("POST", "/v1/models/nope:predict", b'{"instances": ["a"]}', 404,
     "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/lookup/versions/7:predict", b'{"instances": ["a"]}', 404,
     "Servable not found for request: Specific(lookup, 7)"),
    ("POST", "/v1/models/lookup/labels/nope:predict", b'{"instances": ["a"]}', 400,
     "Unrecognized servable version label: nope"),
    ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    ("GET", "/v1/models/lookup/versions/9", None, 404, "Could not find version 9 of model lookup"),
    ("GET", "/v1/models/nope/metadata", None, 404, "Servable not found for request: Latest(nope)"),
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ("POST", "/v1/models/lookup:predict", b'{"signature_name": "nope", "instances": ["a"]}',
     400, 'Serving signature name: "nope" not found in signature def'),
    ("POST", "/v1/models/lookup:predict", b'{"instances": [1, 2]}', 400,
     "JSON Value: 1 Type: Number is not of expected type: string"),
    ("POST", "/v1/models/float:predict", b'{"instances": [[1, 2]]}', 400,
     "input 'x' has shape [1,2] but signature 'serving_default' expects [-1,3]"),
    ("POST", "/v1/models/float:predict", b'{"instances": [[1, 2, 3], [1, 2]]}', 400,
     "Expecting tensor size: 3 but got: 2"),
    ("POST", "/v1/models/float:predict",
     b'{"signature_name": "multi", "instances": [{"a": [1, 2]}]}', 400,
     "must only have keys: a,b"),
    ("POST", "/v1/models/float:predict",
     b'{"signature_name": "multi", "instances": [{"a": [1, 2], "b": 1, "c": 0}]}', 400,
     "does not have named input: c"),
    ("POST", "/v1/models/float:predict",
     b'{"signature_name": "multi", "inputs": {"a": [[1, 2]]}}', 400,
     "Missing named input: b in 'inputs' object."),
    ("POST", "/v1/models/float:predict", b'{"instances": [[1, 2, 3]], "inputs": [[1, 2, 3]]}',
     400, "expecting only one of 'inputs' or 'instances' keys to exist"),
    ("POST", "/v1/models/float:predict", b'{"signature_name": "serving_default"}', 400,
     "Missing 'inputs' or 'instances' key"),
    ("POST", "/v1/models/float:predict", b'{"instances": [[1, 2, 3]', 400, "JSON Parse error"),
    ("POST", "/v1/models/float:predict", b"", 400, "JSON Parse error: The document is empty"),
    ("POST", "/v1/models/float:predict", b'{"instances": []}', 400,
     "No values in 'instances' array"),
    ("POST", "/v1/models/float:predict", b'{"inputs": []}', 400, "expects [-1,3]"),
    ("POST", "/v1/models/float:predict",
     json.dumps({"instances": [[1, 2, 3]] * (_MAX_BATCH + 1)}).encode(), 400,
     f"--max_batch_size={_MAX_BATCH}"),
    ("POST", "/v1/models/lookup:predict", b'{"instances": ["a", "no-such-item"]}', 400,
     "unknown item id"),
    ("POST", "/v1/models/lookup:predict", _BIG, 413, "--max_request_bytes"),
    ("POST", "/v1/models/lookup:classify", b'{"examples": []}', 501, "not supported"),
    ("POST", "/v1/models/lookup/versions/1", b"{}", 400, "Malformed request: POST"),
    ("PUT", "/v1/models/lookup", b"{}", 400, "Malformed request: PUT"),
    ("GET", "/not/an/api", None, 404, "Not found"),
]


@pytest.mark.parametrize("method, path, body, status, message", _REST_BAD,
                         ids=[f"{i}-{c[3]}" for i, c in enumerate(_REST_BAD)])
def test_rest_bad_requests(server, method, path, body, status, message):
  got_status, payload = _http(server.rest, method, path, body)
  assert (got_status, message in payload.get("error", "")) == (status, True), payload
  assert client.rest_predict(server.rest, "lookup", instances=["a"])["predictions"]


def _grpc_error(srv: _Server, request) -> grpc.RpcError:
  with grpc.insecure_channel(srv.grpc) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
      stub.Predict(request, timeout=30)
  return info.value


_request = testing.predict_request


_IDS = {"item_ids": np.array([b"a"], dtype=object)}
_X = {"x": np.ones([1, 3], np.float32)}
_GRPC_BAD = [
    (_request("nope", _IDS), grpc.StatusCode.NOT_FOUND, "Latest(nope)"),
    (_request("lookup", _IDS, version=5), grpc.StatusCode.NOT_FOUND, "Specific(lookup, 5)"),
    (_request("lookup", _IDS, label="nope"), grpc.StatusCode.INVALID_ARGUMENT,
     "Unrecognized servable version label: nope"),
    (_request("lookup", _IDS, signature="nope"), grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "nope" not found.'),
    (_request("float", {"x": np.ones([1, 3], np.float64)}), grpc.StatusCode.INVALID_ARGUMENT,
     "has dtype double but signature 'serving_default' expects float"),
    (_request("float", {"x": np.ones([1, 4], np.float32)}), grpc.StatusCode.INVALID_ARGUMENT,
     "expects [-1,3]"),
    (_request("float", {"a": np.ones([1, 2], np.float32)}, signature="multi"),
     grpc.StatusCode.INVALID_ARGUMENT, "Missing but required: {b}."),
    (_request("float", {**_X, "z": np.ones([1])}), grpc.StatusCode.INVALID_ARGUMENT,
     "Sent extra: {z}."),
    (_request("float", {"x": np.ones([_MAX_BATCH + 1, 3], np.float32)}),
     grpc.StatusCode.INVALID_ARGUMENT, f"--max_batch_size={_MAX_BATCH}"),
    (_request("float", {"x": np.ones([0, 3], np.float32)}), grpc.StatusCode.INVALID_ARGUMENT,
     "empty batch"),
    (_request("lookup", {"item_ids": np.array([b"zz"], dtype=object)}),
     grpc.StatusCode.INVALID_ARGUMENT, "unknown item id"),
    (_request("lookup", _IDS, output_filter=["nope"]), grpc.StatusCode.INVALID_ARGUMENT,
     "output tensor alias not found in signature: nope"),
    (_request("lookup", {"item_ids": np.array([b"x" * (_MAX_REQUEST_BYTES + 10)], dtype=object)}),
     grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    (predict_pb2.PredictRequest(), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
]


@pytest.mark.parametrize("request_, code, message", _GRPC_BAD,
                         ids=[f"{i}-{c[1].name}" for i, c in enumerate(_GRPC_BAD)])
def test_grpc_bad_requests(server, request_, code, message):
  error = _grpc_error(server, request_)
  assert error.code() == code, error.details()
  assert message in error.details()
  outputs, _ = client.grpc_predict(server.grpc, "float", _X, output_filter=["y"])
  assert outputs["y"].tolist() == [6.5]  # 1 + 2 + 3 + 0.5


def test_grpc_outputs_fill_typed_fields_like_tf_serving(server):
  # Clients written for TF Serving often read .float_val / .string_val directly.
  with grpc.insecure_channel(server.grpc) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(_request("lookup", _IDS), timeout=30)
  assert list(response.outputs["scores"].float_val) == [2.0, 1.0]
  assert response.outputs["ids"].string_val[0] == b"d"
  assert [d.size for d in response.outputs["scores"].tensor_shape.dim] == [1, 2]


def test_grpc_metadata_requires_signature_def_field(server):
  with grpc.insecure_channel(server.grpc) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "float"
    with pytest.raises(grpc.RpcError) as info:
      stub.GetModelMetadata(request, timeout=30)
  assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert "at least one metadata_field" in info.value.details()


def _metric(srv: _Server, prefix: str) -> float:
  """The value of the one sample line starting with `prefix` (0 if none)."""
  host, port = srv.rest.split(":")
  connection = http.client.HTTPConnection(host, int(port), timeout=30)
  try:
    connection.request("GET", _METRICS_PATH)
    response = connection.getresponse()
    text = response.read().decode()
  finally:
    connection.close()
  assert response.status == 200 and response.getheader("Content-Type").startswith("text/plain")
  values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(prefix)]
  assert len(values) <= 1, values
  return values[0] if values else 0.0


def test_metrics_page_counts_grpc_and_rest_predictions(server):
  ok = ':tensorflow:serving:request_count{model_name="float",status="OK"}'
  bad = ':tensorflow:serving:request_count{model_name="float",status="INVALID_ARGUMENT"}'
  grpc_latency = (':tensorflow:serving:request_latency_count{model_name="float",API="Predict",'
                  'entrypoint="GRPC"}')
  before = {key: _metric(server, key) for key in (ok, bad, grpc_latency)}
  client.grpc_predict(server.grpc, "float", _X)
  _grpc_error(server, _request("float", {"x": np.ones([1, 4], np.float32)}))
  assert client.rest_predict(server.rest, "float", instances=[[1, 2, 3]])
  assert _metric(server, ok) - before[ok] == 2
  assert _metric(server, bad) - before[bad] == 1
  assert _metric(server, grpc_latency) - before[grpc_latency] == 2
  assert _metric(server, ':pinsage:serving:model_version_state{model_name="float",version="1",'
                 'state="AVAILABLE"}') == 1


# ---------------------------------------------------------------------------
# Load limits.


def _slow(srv: _Server, delay_us: int) -> tuple[int, dict]:
  return _post(srv, "/v1/models/float:predict", {
      "signature_name": "slow", "instances": [{"x": [1, 1, 1], "delay_us": delay_us}]})


def test_concurrency_bound_answers_429_beyond_the_queue(server):
  # 2 may run and 2 may wait (server flags); a 5th concurrent request is refused.
  # The queued ones finish after ~3 s, within the 4 s REST deadline.
  results = []
  threads = [threading.Thread(target=lambda: results.append(_slow(server, 1_500_000)))
             for _ in range(5)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(60)
  statuses = sorted(status for status, _ in results)
  assert len(statuses) == 5
  assert 429 in statuses
  assert statuses.count(200) >= 2
  assert all(s in (200, 429) for s in statuses), results
  refused = next(body for status, body in results if status == 429)
  assert "concurrent requests" in refused["error"]


def test_rest_deadline_answers_504(server):
  status, body = _slow(server, (_REST_TIMEOUT_MS + 500) * 1000)
  assert status == 504
  assert "did not finish" in body["error"]
  assert _slow(server, 0) == (200, {"predictions": [6.5]})


# ---------------------------------------------------------------------------
# Versions: hot swap under load, a corrupt version.


def _swap_version_from_scores(scores: list) -> int:
  # Query "a": top score is 2 + the version's offset.
  return {2.0 + offset: v for v, offset in _SWAP_OFFSETS.items()}[scores[0]]


def test_hot_swap_under_load_drops_nothing(server):
  stop = threading.Event()
  seen: dict[str, list] = {}
  failures: list = []

  def grpc_worker(key):
    with grpc.insecure_channel(server.grpc) as channel:
      while not stop.is_set():
        try:
          _, spec = client.grpc_predict(channel, "swap", _IDS)
          seen[key].append(spec.version.value)
        except Exception as e:  # pylint: disable=broad-except
          failures.append(repr(e))

  def rest_worker(key):
    while not stop.is_set():
      try:
        prediction = client.rest_predict(server.rest, "swap", instances=["a"])
        seen[key].append(_swap_version_from_scores(prediction["predictions"][0]["scores"]))
      except Exception as e:  # pylint: disable=broad-except
        failures.append(repr(e))

  workers = []
  for i, target in enumerate([grpc_worker, grpc_worker, rest_worker]):
    seen[str(i)] = []
    workers.append(threading.Thread(target=target, args=(str(i),)))
  started = time.monotonic()
  for worker in workers:
    worker.start()
  try:
    time.sleep(0.5)  # v1 under load first
    # Exporter behaviour: build beside the base path, rename into place.
    tmp = os.path.join(server.base, "swap", ".tmp-2")
    toy_models.build_lookup_model(tmp, _SWAP_OFFSETS[2])
    os.rename(tmp, os.path.join(server.base, "swap", "2"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(s and s[-1] == 2 for s in seen.values()):
      time.sleep(0.1)
    # Keep the load on after the swap, for about 3 s of traffic in all.
    time.sleep(max(1.0, 3.0 - (time.monotonic() - started)))
  finally:
    stop.set()
    for worker in workers:
      worker.join(60)
  assert failures == []
  for versions in seen.values():
    assert versions[0] == 1 and versions[-1] == 2, versions
    # Each client is sequential, so it never goes back to the old version.
    assert versions == sorted(versions)
  statuses = {s["version"]: s["state"]
              for s in client.rest_status(server.rest, "swap")["model_version_status"]}
  assert (statuses["1"], statuses["2"]) == ("END", "AVAILABLE")


def test_label_naming_an_unloaded_version_stops_startup(models, tmp_path):
  config = tmp_path / "labels.config"
  config.write_text(f"""
model_config_list {{
  config {{ name: "lookup" base_path: "{models / 'lookup'}" model_platform: "tensorflow"
           version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "next" value: 2 }} }}
}}
""")
  out = subprocess.run(
      [sys.executable, "-m", "serving.server", f"--model_config_file={config}",
       f"--port={_free_port()}", f"--rest_api_port={_free_port()}",
       "--file_system_poll_wait_seconds=0"],
      cwd=_REPO_ROOT, capture_output=True, text=True, timeout=180)
  assert out.returncode == 1, out.stderr[-3000:]
  assert ("Request to assign label to version 2 of model lookup, which is not currently "
          "available for inference") in out.stderr


def test_corrupt_version_is_reported_and_previous_keeps_serving(server):
  _, spec = client.grpc_predict(server.grpc, "swap", _IDS)
  serving_before = spec.version.value  # 1 or 2, whether or not the hot-swap test ran
  base = os.path.join(server.base, "swap")
  tmp = os.path.join(base, ".tmp-9")
  os.makedirs(tmp)
  with open(os.path.join(tmp, "saved_model.pb"), "wb") as f:
    f.write(b"\x0a\xff\xff this is not a SavedModel")
  os.rename(tmp, os.path.join(base, "9"))
  deadline = time.monotonic() + 60
  status = {}
  while time.monotonic() < deadline:
    with contextlib.suppress(client.RestError):
      status = client.rest_status(server.rest, "swap", version=9)["model_version_status"][0]
      if status["state"] == "END":
        break
    time.sleep(0.2)
  assert status["state"] == "END"
  assert status["status"]["error_code"] == "DATA_LOSS"
  assert "Can't parse" in status["status"]["error_message"]
  _, spec = client.grpc_predict(server.grpc, "swap", _IDS)
  assert spec.version.value == serving_before
  prediction = client.rest_predict(server.rest, "swap", instances=["a"])
  assert _swap_version_from_scores(prediction["predictions"][0]["scores"]) == serving_before
  assert client.rest_status(server.rest, "swap", version=serving_before)[
      "model_version_status"][0]["state"] == "AVAILABLE"
  shutil.rmtree(os.path.join(base, "9"))


# ---------------------------------------------------------------------------
# Runs last: stops the module's server.


def test_zz_sigterm_finishes_in_flight_request_and_exits_zero(server):
  result = []
  worker = threading.Thread(target=lambda: result.append(_slow(server, 2_500_000)))
  worker.start()
  time.sleep(1.0)  # let the slow request reach the model
  server.proc.send_signal(signal.SIGTERM)
  worker.join(60)
  assert result == [(200, {"predictions": [6.5]})]
  assert server.proc.wait(60) == 0, server.log()
  with pytest.raises(OSError):
    _http(server.rest, "GET", "/v1/models/float")
