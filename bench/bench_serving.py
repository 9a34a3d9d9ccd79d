r"""Load test of serving.server over REST and gRPC, against the in-process model.

Starts `python -m serving.server` in a subprocess on free 127.0.0.1 ports,
serving either a toy lookup model (built in a temp dir) or the SavedModel
version directory given by --saved_model_dir, then for each protocol runs
--concurrency client threads (each with its own keep-alive HTTP connection /
gRPC channel) until --num_requests requests have been answered. The same
request is sent every time (REST body and PredictRequest built once, as a tuned
client would). The in-process baseline calls the loaded signature function
directly, sequentially and with the same concurrency.

Prints one JSON object:
  {"rest": {"requests", "errors", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "qps"},
   "grpc": {...},
   "in_process": {"sequential": {...}, "concurrent": {...}},
   "overhead_ms": {"rest_p50", "grpc_p50", ...}  # served minus in-process (same concurrency)
   ...}
Exits 1 if any request failed.

  python bench/bench_serving.py
  python bench/bench_serving.py --saved_model_dir=exports/pinsage/3 \
      --request_json=request.json --signature_name=serving_default
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags
import grpc
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pinsage_tf  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from pinsage_tf import atomic  # noqa: E402
import tensorflow as tf  # noqa: E402

from serving import client  # noqa: E402
from serving import json_codec  # noqa: E402
from serving import servable as servable_lib  # noqa: E402
from serving import signatures as signatures_lib  # noqa: E402
from serving import toy_models  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402

_SAVED_MODEL_DIR = flags.DEFINE_string(
    "saved_model_dir", "", "A SavedModel version directory; empty = build the toy lookup model.")
_REQUEST_JSON = flags.DEFINE_string(
    "request_json", "",
    "File with the REST predict body to send (required with --saved_model_dir).")
_SIGNATURE_NAME = flags.DEFINE_string("signature_name", "", "Signature; empty = serving_default.")
_NUM_REQUESTS = flags.DEFINE_integer("num_requests", 10000, "Measured requests per protocol.")
_CONCURRENCY = flags.DEFINE_integer("concurrency", 32, "Concurrent client threads.")
_WARMUP_REQUESTS = flags.DEFINE_integer("warmup_requests", 300, "Unmeasured requests first.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1, "Query ids per request (toy model only).")
_OUTPUT = flags.DEFINE_string("output", "", "Also write the JSON here (atomically).")

_MODEL_NAME = "bench"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _summary(latencies: list[float], errors: int, seconds: float) -> dict:
  ms = np.array(latencies) * 1000.0
  return {
      "requests": len(latencies) + errors,
      "errors": errors,
      "p50_ms": round(float(np.percentile(ms, 50)), 3) if len(ms) else None,
      "p90_ms": round(float(np.percentile(ms, 90)), 3) if len(ms) else None,
      "p99_ms": round(float(np.percentile(ms, 99)), 3) if len(ms) else None,
      "mean_ms": round(float(ms.mean()), 3) if len(ms) else None,
      "qps": round(len(latencies) / seconds, 1),
  }


def _load(make_call, total: int, concurrency: int) -> dict:
  """Runs `total` calls over `concurrency` threads; each thread gets make_call()."""
  latencies: list[float] = []
  errors: list[str] = []
  lock = threading.Lock()
  counter = iter(range(total))

  def worker():
    call, close = make_call()
    local, local_errors = [], []
    try:
      while True:
        with lock:
          if next(counter, None) is None:
            break
        start = time.perf_counter()
        try:
          call()
          local.append(time.perf_counter() - start)
        except Exception as e:  # pylint: disable=broad-except
          local_errors.append(repr(e)[:200])
    finally:
      close()
      with lock:
        latencies.extend(local)
        errors.extend(local_errors)

  threads = [threading.Thread(target=worker) for _ in range(concurrency)]
  started = time.perf_counter()
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  result = _summary(latencies, len(errors), time.perf_counter() - started)
  if errors:
    result["first_errors"] = sorted(set(errors))[:5]
  return result


def _rest_caller(port: int, path: str, body: bytes):
  def make():
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call():
      connection.request("POST", path, body=body,
                         headers={"Content-Type": "application/json"})
      response = connection.getresponse()
      payload = response.read()
      if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
    return call, connection.close
  return make


def _grpc_caller(port: int, request):
  def make():
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return (lambda: stub.Predict(request, timeout=60)), channel.close
  return make


def _prepare_model(workdir: str) -> tuple[str, bytes]:
  """(version dir, REST body) for the toy model or the flags' SavedModel."""
  if _SAVED_MODEL_DIR.value:
    if not _REQUEST_JSON.value:
      raise app.UsageError("--saved_model_dir needs --request_json (a REST predict body).")
    with open(_REQUEST_JSON.value, "rb") as f:
      body = f.read()
    return os.path.abspath(_SAVED_MODEL_DIR.value), body
  version_dir = toy_models.build_lookup_model(os.path.join(workdir, "toy", "1"))
  vocab = toy_models.LOOKUP_VOCAB
  ids = [vocab[i % len(vocab)] for i in range(_BATCH_SIZE.value)]
  payload = {"instances": ids}
  if _SIGNATURE_NAME.value:
    payload["signature_name"] = _SIGNATURE_NAME.value
  return version_dir, json.dumps(payload).encode()


def main(argv: list[str]) -> None:
  del argv
  concurrency, total = _CONCURRENCY.value, _NUM_REQUESTS.value
  with tempfile.TemporaryDirectory(prefix="bench_serving_") as workdir:
    version_dir, body = _prepare_model(workdir)
    base = os.path.join(workdir, "base", _MODEL_NAME)
    os.makedirs(base)
    os.symlink(version_dir, os.path.join(base, "1"))

    # The same request as arrays, for gRPC and the in-process baseline.
    loaded = tf.saved_model.load(version_dir)
    signatures = {
        k: signatures_lib.signature_from_proto(k, v)
        for k, v in servable_lib.read_meta_graph(version_dir, ["serve"]).signature_def.items()
    }
    request = json_codec.parse_json_predict(
        body, lambda name: signatures[name or signatures_lib.DEFAULT_SIGNATURE])
    signature_name = request.signature_name or signatures_lib.DEFAULT_SIGNATURE
    function = loaded.signatures[signature_name]
    feeds = {k: tf.constant(v, dtype=signatures[signature_name].inputs[k].dtype)
             for k, v in request.inputs.items()}
    grpc_request = predict_pb2.PredictRequest()
    grpc_request.model_spec.name = _MODEL_NAME
    grpc_request.model_spec.signature_name = signature_name
    for alias, array in request.inputs.items():
      grpc_request.inputs[alias].CopyFrom(tf.make_tensor_proto(array))

    def in_process_caller():
      return (lambda: {k: v.numpy() for k, v in function(**feeds).items()}), (lambda: None)

    _load(in_process_caller, _WARMUP_REQUESTS.value, 1)
    in_process = {
        "sequential": _load(in_process_caller, min(total, 3000), 1),
        "concurrent": _load(in_process_caller, total, concurrency),
    }

    rest_port, grpc_port = _free_port(), _free_port()
    log = open(os.path.join(workdir, "server.log"), "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.server", f"--model_name={_MODEL_NAME}",
         f"--model_base_path={base}", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         "--file_system_poll_wait_seconds=0", f"--max_concurrent_requests={concurrency * 2}",
         f"--rest_api_num_threads={concurrency}", f"--grpc_max_threads={concurrency}"],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        stdout=log, stderr=subprocess.STDOUT)
    try:
      deadline = time.monotonic() + 180
      while True:
        try:
          client.rest_status(f"127.0.0.1:{rest_port}", _MODEL_NAME, timeout=5)
          break
        except (OSError, client.RestError):
          if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("server did not start; see its log") from None
          time.sleep(0.3)
      path = f"/v1/models/{_MODEL_NAME}:predict"
      rest_call = _rest_caller(rest_port, path, body)
      grpc_call = _grpc_caller(grpc_port, grpc_request)
      _load(rest_call, _WARMUP_REQUESTS.value, concurrency)
      rest_result = _load(rest_call, total, concurrency)
      _load(grpc_call, _WARMUP_REQUESTS.value, concurrency)
      grpc_result = _load(grpc_call, total, concurrency)
    finally:
      proc.terminate()
      exit_code = proc.wait(60)
      log.close()

  concurrent = in_process["concurrent"]
  result = {
      "model": _SAVED_MODEL_DIR.value or "toy lookup model (serving/toy_models.py)",
      "signature_name": signature_name,
      "request_bytes": len(body),
      "concurrency": concurrency,
      "requests_per_protocol": total,
      "rest": rest_result,
      "grpc": grpc_result,
      "in_process": in_process,
      "overhead_ms": {
          "rest_p50": round(rest_result["p50_ms"] - concurrent["p50_ms"], 3),
          "rest_p99": round(rest_result["p99_ms"] - concurrent["p99_ms"], 3),
          "grpc_p50": round(grpc_result["p50_ms"] - concurrent["p50_ms"], 3),
          "grpc_p99": round(grpc_result["p99_ms"] - concurrent["p99_ms"], 3),
          "note": "served latency minus in-process latency at the same concurrency",
      },
      "server_exit_code_after_sigterm": exit_code,
      "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
  }
  if _OUTPUT.value:
    atomic.write_json(_OUTPUT.value, result)
  print(json.dumps(result, indent=2))
  if rest_result["errors"] or grpc_result["errors"] or exit_code != 0:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
