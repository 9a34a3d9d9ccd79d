r"""Serving latency and throughput: in-process vs REST (keep-alive, new connection) vs gRPC.

Starts `python -m serving.server` in a subprocess on free 127.0.0.1 ports and,
in one run, measures for each client count of --clients (default 1, 8, 32):

* `in_process`: the loaded signature called directly in this process;
* `rest_keepalive`: each client thread keeps one HTTP/1.1 connection open;
* `rest_new_connection`: a new TCP connection per request;
* `grpc`: each client thread has its own channel, stock stubs.

Every client sends the same request, prepared once as bytes (the REST body,
the serialised PredictRequest), from --client_processes load generator
processes (bench/loadgen.py, no TensorFlow): a single Python client process
would be limited by its own GIL before the server is.
Served overhead = served latency minus in-process latency at the same client
count. Besides: `first_request_ms`, the first request on the freshly loaded
version (what warm-up replay is for), and `amplification`: one gRPC request of
a few bytes declaring a [2e6, ...] tensor with a single value (to
related_items_by_embedding when the model has it), with the server's answer,
its wall time and the server's resident-memory growth (now and at its peak). --server_root runs
another checkout's server (before/after comparisons in one run of the client).

The model is a pinsage_retrieval export (--export_base, signature
related_items, one id per request), a SavedModel with a request body
(--saved_model_dir, --request_json), or the toy lookup model.

Prints one JSON object (and writes it to --output):
  {"model", "signature_name", "request_bytes", "first_request_ms",
   "levels": [{"clients": C, "in_process": {...}, "rest_keepalive": {...},
               "rest_new_connection": {...}, "grpc": {...},
               "overhead_ms": {"rest_keepalive_p50", "rest_new_connection_p50", "grpc_p50", ...}}],
   "amplification": {...}, "server_exit_code_after_sigterm", "machine"}
each protocol entry {"requests", "errors", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "qps"}.
Exits 1 if any request failed.

  python bench/bench_serving.py --export_base=out/synthetic/exports --output=bench/results/serving.json
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import grpc
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pinsage_tf  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from pinsage_tf import atomic  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import tensor_pb2  # noqa: E402

from serving import client  # noqa: E402
from serving import json_codec  # noqa: E402
from serving import servable as servable_lib  # noqa: E402
from serving import signatures as signatures_lib  # noqa: E402
from serving import toy_models  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadgen  # noqa: E402  (bench/loadgen.py: the client load loop)

_EXPORT_BASE = flags.DEFINE_string(
    "export_base", "", "An export base (trainer.export --export_base): serve the latest "
    "pinsage_retrieval version, related_items of one id per request.")
_SAVED_MODEL_DIR = flags.DEFINE_string(
    "saved_model_dir", "", "A SavedModel version directory (with --request_json).")
_REQUEST_JSON = flags.DEFINE_string(
    "request_json", "", "File with the REST predict body to send (with --saved_model_dir).")
_CLIENTS = flags.DEFINE_list("clients", ["1", "8", "32"], "Client counts, each measured.")
_SECONDS = flags.DEFINE_float("seconds", 5.0, "Measured seconds per protocol and client count.")
_WARMUP_SECONDS = flags.DEFINE_float("warmup_seconds", 1.0, "Unmeasured load first.")
_SERVER_ROOT = flags.DEFINE_string(
    "server_root", "", "Checkout whose serving.server runs (default: this one), e.g. an older "
    "commit's worktree for a before/after comparison.")
_CLIENT_PROCESSES = flags.DEFINE_integer(
    "client_processes", 2, "Load generator processes the client threads are spread over "
    "(bench/loadgen.py: prepared bytes, no TensorFlow), so one client's GIL is not the limit.")
_SERVER_FLAGS = flags.DEFINE_multi_string(
    "server_flag", [], "Extra flag for the server, e.g. --server_flag=--enable_batching.")
_OUTPUT = flags.DEFINE_string("output", "", "Also write the JSON here (atomically).")

_MODEL_NAME = "bench"
_LOADGEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loadgen.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _summary(latencies: list[float], errors: int, seconds: float) -> dict:
  ms = np.array(latencies) * 1000.0
  pct = lambda q: round(float(np.percentile(ms, q)), 3) if len(ms) else None  # noqa: E731
  return {"requests": len(latencies) + errors, "errors": errors, "p50_ms": pct(50),
          "p90_ms": pct(90), "p99_ms": pct(99),
          "mean_ms": round(float(ms.mean()), 3) if len(ms) else None,
          "qps": round(len(latencies) / seconds, 1)}


def _load(make_call, seconds: float, clients: int) -> dict:
  """Runs `clients` threads in this process for `seconds` (bench/loadgen.py's loop)."""
  start_at = time.time() + 0.2  # every thread has made its call by then
  latencies, errors = loadgen.run_threads(make_call, clients, start_at, start_at + seconds)
  result = _summary(latencies, len(errors), seconds)
  if errors:
    result["first_errors"] = sorted(set(errors))[:5]
  return result


def _served_load(protocol: str, port: int, path: str, request_file: str, seconds: float,
                 clients: int, processes: int) -> dict:
  """`clients` threads spread over `processes` bench/loadgen.py processes for `seconds`."""
  processes = max(1, min(processes, clients))
  start_at = time.time() + 3.0  # every process imported and connected by then
  stop_at = start_at + seconds
  procs = []
  for i in range(processes):
    threads = clients // processes + (1 if i < clients % processes else 0)
    procs.append(subprocess.Popen(
        [sys.executable, _LOADGEN, f"--protocol={protocol}", f"--port={port}", f"--path={path}",
         f"--request_file={request_file}", f"--threads={threads}", f"--start_at={start_at}",
         f"--stop_at={stop_at}"], stdout=subprocess.PIPE, text=True))
  latencies, errors, error_count = [], [], 0
  for proc in procs:
    out, _ = proc.communicate(timeout=seconds + 120)
    if proc.returncode != 0:
      raise RuntimeError(f"load generator failed with {proc.returncode}")
    result = json.loads(out)
    latencies += result["latencies"]
    errors += result["errors"]
    error_count += result["error_count"]
  summary = _summary(latencies, error_count, seconds)
  if errors:
    summary["first_errors"] = sorted(set(errors))[:5]
  return summary


def _prepare_model(workdir: str) -> tuple[str, bytes, str]:
  """(version dir, REST body, description) for the model the flags choose."""
  if _EXPORT_BASE.value:
    base = os.path.join(_EXPORT_BASE.value, "pinsage_retrieval")
    versions = sorted(int(v) for v in os.listdir(base) if v.isdigit())
    if not versions:
      raise app.UsageError(f"no versions under {base}")
    version_dir = os.path.join(base, str(versions[-1]))
    with open(os.path.join(version_dir, "assets", "item_ids.txt"), encoding="utf-8") as f:
      first_id = f.readline().strip()
    body = json.dumps({"signature_name": "related_items", "instances": [first_id]}).encode()
    return os.path.abspath(version_dir), body, f"{version_dir} related_items, 1 id"
  if _SAVED_MODEL_DIR.value:
    if not _REQUEST_JSON.value:
      raise app.UsageError("--saved_model_dir needs --request_json (a REST predict body).")
    with open(_REQUEST_JSON.value, "rb") as f:
      body = f.read()
    return os.path.abspath(_SAVED_MODEL_DIR.value), body, _SAVED_MODEL_DIR.value
  version_dir = toy_models.build_lookup_model(os.path.join(workdir, "toy", "1"))
  return version_dir, json.dumps({"instances": ["a"]}).encode(), "toy lookup model"


def _memory_mb(pid: int, field: str) -> float:
  """A /proc/PID/status field in MB: VmRSS (resident now) or VmHWM (resident peak)."""
  with open(f"/proc/{pid}/status", encoding="utf-8") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024.0
  return float("nan")


def _amplification(port: int, pid: int, signature: signatures_lib.Signature) -> dict:
  """One small request declaring a [2e6, ...] tensor: answer, time, server memory growth."""
  alias = sorted(signature.inputs)[0]
  spec = signature.inputs[alias]
  request = predict_pb2.PredictRequest()
  request.model_spec.name = _MODEL_NAME
  request.model_spec.signature_name = signature.name
  proto = tensor_pb2.TensorProto(dtype=spec.dtype.as_datatype_enum)
  dims = [2_000_000] + [64 if d is None else d for d in (spec.shape or (None,))[1:]]
  for size in dims:
    proto.tensor_shape.dim.add(size=size)
  if spec.dtype == tf.string:
    proto.string_val.append(b"x")
  else:
    proto.CopyFrom(tf.make_tensor_proto(np.zeros([1], spec.dtype.as_numpy_dtype)))
    del proto.tensor_shape.dim[:]
    for size in dims:
      proto.tensor_shape.dim.add(size=size)
  request.inputs[alias].CopyFrom(proto)
  rss_before, peak_before = _memory_mb(pid, "VmRSS"), _memory_mb(pid, "VmHWM")
  with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    started = time.perf_counter()
    try:
      stub.Predict(request, timeout=60)
      code, details = "OK", ""
    except grpc.RpcError as e:
      code, details = e.code().name, e.details()
    seconds = time.perf_counter() - started
  return {"request_bytes": request.ByteSize(), "declared_shape": dims, "code": code,
          "details": details[:300], "seconds": round(seconds, 4),
          "server_rss_growth_mb": round(_memory_mb(pid, "VmRSS") - rss_before, 1),
          "server_peak_rss_growth_mb": round(_memory_mb(pid, "VmHWM") - peak_before, 1)}


def main(argv: list[str]) -> None:
  del argv
  levels = [int(c) for c in _CLIENTS.value]
  with tempfile.TemporaryDirectory(prefix="bench_serving_") as workdir:
    version_dir, body, description = _prepare_model(workdir)
    base = os.path.join(workdir, "base", _MODEL_NAME)
    os.makedirs(base)
    os.symlink(version_dir, os.path.join(base, "1"))

    servable_lib.import_custom_ops()  # a ScaNN export needs ScaNN's ops
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

    def in_process():
      return (lambda: {k: v.numpy() for k, v in function(**feeds).items()}), (lambda: None)

    server_root = os.path.abspath(_SERVER_ROOT.value or
                                  os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    rest_port, grpc_port = _free_port(), _free_port()
    log = open(os.path.join(workdir, "server.log"), "wb")
    top = max(levels)
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.server", f"--model_name={_MODEL_NAME}",
         f"--model_base_path={base}", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         "--file_system_poll_wait_seconds=0", f"--max_concurrent_requests={top * 2}",
         f"--max_queued_requests={top * 2}", f"--rest_api_num_threads={top}",
         f"--grpc_max_threads={top}", *_SERVER_FLAGS.value],
        cwd=server_root, stdout=log, stderr=subprocess.STDOUT)
    path = f"/v1/models/{_MODEL_NAME}:predict"
    try:
      deadline = time.monotonic() + 300
      while True:
        try:
          client.rest_status(f"127.0.0.1:{rest_port}", _MODEL_NAME, timeout=5)
          break
        except (OSError, client.RestError):
          if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("server did not start; see its log") from None
          time.sleep(0.1)
      request_file = os.path.join(workdir, "request.json")
      grpc_file = os.path.join(workdir, "request.bin")
      with open(request_file, "wb") as f:
        f.write(body)
      with open(grpc_file, "wb") as f:
        f.write(grpc_request.SerializeToString())
      started = time.perf_counter()
      connection = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=60)
      connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
      first = connection.getresponse()
      first.read()
      connection.close()
      first_request_ms = round((time.perf_counter() - started) * 1000, 2)
      if first.status != 200:
        raise RuntimeError(f"first request: HTTP {first.status}")
      results = []
      files = {"rest_keepalive": request_file, "rest_new_connection": request_file,
               "grpc": grpc_file}
      ports = {"rest_keepalive": rest_port, "rest_new_connection": rest_port, "grpc": grpc_port}
      for clients in levels:
        level = {"clients": clients}
        _load(in_process, _WARMUP_SECONDS.value, clients)
        level["in_process"] = _load(in_process, _SECONDS.value, clients)
        for name in files:
          level[name] = _served_load(name, ports[name], path, files[name], _SECONDS.value,
                                     clients, _CLIENT_PROCESSES.value)
        for name in ("in_process", *files):
          print(f"{clients} clients {name}: p50 {level[name]['p50_ms']} ms, "
                f"{level[name]['qps']} q/s, {level[name]['errors']} errors",
                file=sys.stderr, flush=True)
        base_level = level["in_process"]
        level["overhead_ms"] = {
            f"{name}_{q}": round(level[name][f"{q}_ms"] - base_level[f"{q}_ms"], 3)
            for name in files for q in ("p50", "p99")}
        results.append(level)
      # A float input shows the amplification best; related_items_by_embedding has one.
      target = signatures.get("related_items_by_embedding", signatures[signature_name])
      amplification = _amplification(grpc_port, proc.pid, target)
    finally:
      proc.terminate()
      exit_code = proc.wait(60)
      log.close()

  output = {
      "model": description, "server_root": server_root, "server_flags": _SERVER_FLAGS.value,
      "signature_name": signature_name, "request_bytes": len(body),
      "first_request_ms": first_request_ms, "seconds_per_measurement": _SECONDS.value,
      "client_processes": _CLIENT_PROCESSES.value,
      "levels": results, "amplification": amplification,
      "server_exit_code_after_sigterm": exit_code,
      "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
  }
  if _OUTPUT.value:
    atomic.write_json(_OUTPUT.value, output)
  print(json.dumps(output, indent=2))
  failed = any(level[name]["errors"] for level in results
               for name in ("rest_keepalive", "rest_new_connection", "grpc"))
  if failed or exit_code != 0:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
