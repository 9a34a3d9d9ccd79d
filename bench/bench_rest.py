r"""REST layer benchmark: this repository's server beside another checkout's, one run.

Starts `python -m serving.server` from this repository and, with
--baseline_repo, the same command from another checkout (e.g. an older
commit), both on the same --model_config_file, on free 127.0.0.1 ports. Then,
for each server in turn (alternating, so machine noise hits both alike):

  keepalive_1   one client, one kept-open connection: p50 / p99
  new_conn_1    one client, a new connection per request: p50 / p99
  keepalive_N   --concurrency clients with kept-open connections for
                --seconds: QPS, p50 / p99, errors
  in_process    the same request through the loaded signature function (once)

Prints one JSON object (also to --output, atomically). Exits 1 on any error.

  python bench/bench_rest.py --model_config_file=out/synthetic/exports/models.config \
      --model=pinsage_retrieval --signature_name=related_items \
      --request_json='{"signature_name": "related_items", "instances": ["pin_0001"]}' \
      --baseline_repo=/path/to/older/checkout
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
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pinsage_tf  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from pinsage_tf import atomic  # noqa: E402

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MODEL_CONFIG_FILE = flags.DEFINE_string("model_config_file", None, "Served models.")
_MODEL = flags.DEFINE_string("model", None, "Model name in the config.")
_REQUEST_JSON = flags.DEFINE_string("request_json", None, "The REST predict body.")
_SIGNATURE_NAME = flags.DEFINE_string(
    "signature_name", "", "Signature for the in-process baseline (empty = serving_default).")
_BASELINE_REPO = flags.DEFINE_string("baseline_repo", "", "Another checkout to compare with.")
_CONCURRENCY = flags.DEFINE_integer("concurrency", 32, "Clients of the concurrent phase.")
_SECONDS = flags.DEFINE_float("seconds", 20.0, "Length of the concurrent phase.")
_SEQUENTIAL_REQUESTS = flags.DEFINE_integer(
    "sequential_requests", 300, "Requests of each one-client phase.")
_OUTPUT = flags.DEFINE_string("output", "", "Also write the JSON here.")
flags.mark_flags_as_required(["model_config_file", "model", "request_json"])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _stats(latencies: list[float]) -> dict:
  ms = np.array(latencies) * 1000.0
  if not len(ms):
    return {"p50_ms": None, "p99_ms": None}
  return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
          "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def _post(connection: http.client.HTTPConnection, path: str, body: bytes) -> None:
  connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
  response = connection.getresponse()
  payload = response.read()
  if response.status != 200:
    raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")


def _sequential(port: int, path: str, body: bytes, n: int, new_connection: bool) -> dict:
  latencies, errors = [], 0
  connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
  for _ in range(n):
    start = time.perf_counter()
    try:
      if new_connection:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
      _post(connection, path, body)
      latencies.append(time.perf_counter() - start)
    except Exception:  # pylint: disable=broad-except
      errors += 1
      connection.close()
      connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    if new_connection:
      connection.close()
  connection.close()
  return {"requests": n, "errors": errors, **_stats(latencies)}


def _concurrent(port: int, path: str, body: bytes, clients: int, seconds: float) -> dict:
  latencies: list[float] = []
  errors: list[str] = []
  lock = threading.Lock()
  stop_at = time.perf_counter() + seconds

  def worker():
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    local, local_errors = [], []
    while time.perf_counter() < stop_at:
      start = time.perf_counter()
      try:
        _post(connection, path, body)
        local.append(time.perf_counter() - start)
      except Exception as e:  # pylint: disable=broad-except
        local_errors.append(repr(e)[:200])
        connection.close()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.close()
    with lock:
      latencies.extend(local)
      errors.extend(local_errors)

  threads = [threading.Thread(target=worker) for _ in range(clients)]
  started = time.perf_counter()
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  elapsed = time.perf_counter() - started
  result = {"clients": clients, "requests": len(latencies) + len(errors),
            "errors": len(errors), "qps": round(len(latencies) / elapsed, 1),
            **_stats(latencies)}
  if errors:
    result["first_errors"] = sorted(set(errors))[:3]
  return result


def _start(repo: str, workdir: str, tag: str) -> tuple[subprocess.Popen, int, str]:
  rest_port, grpc_port = _free_port(), _free_port()
  log_path = os.path.join(workdir, f"{tag}.log")
  clients = _CONCURRENCY.value
  with open(log_path, "wb") as log:
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.server", f"--model_config_file={_MODEL_CONFIG_FILE.value}",
         f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         "--file_system_poll_wait_seconds=0", f"--max_concurrent_requests={clients * 2}",
         f"--max_queued_requests={clients * 2}", f"--rest_api_num_threads={clients}"],
        cwd=repo, stdout=log, stderr=subprocess.STDOUT)
  return proc, rest_port, log_path


def _wait_ready(proc: subprocess.Popen, port: int, log_path: str) -> None:
  deadline = time.monotonic() + 300
  while True:
    if proc.poll() is not None:
      with open(log_path, errors="replace") as f:
        raise RuntimeError(f"server exited:\n{f.read()[-3000:]}")
    try:
      connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
      connection.request("GET", f"/v1/models/{_MODEL.value}")
      if connection.getresponse().status == 200:
        return
    except OSError:
      pass
    if time.monotonic() > deadline:
      raise RuntimeError("server not ready after 300 s")
    time.sleep(0.5)


def _in_process(body: bytes) -> dict:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from serving import server_config  # pylint: disable=import-outside-toplevel
  from serving import json_codec  # pylint: disable=import-outside-toplevel
  from serving import servable as servable_lib  # pylint: disable=import-outside-toplevel
  servable_lib.import_custom_ops()  # ScaNN exports need the ops registered
  with open(_MODEL_CONFIG_FILE.value, encoding="utf-8") as f:
    configs = server_config.model_configs_from_text(f.read())
  config = next(c for c in configs if c.name == _MODEL.value)
  versions = sorted(int(v) for v in os.listdir(config.base_path) if v.isdigit())
  loaded = tf.saved_model.load(os.path.join(config.base_path, str(versions[-1])))
  function = loaded.signatures[_SIGNATURE_NAME.value or "serving_default"]
  instances = json_codec.parse_json(body)["instances"]
  feeds = {next(iter(function.structured_input_signature[1])): tf.constant(instances)}
  latencies = []
  for _ in range(_SEQUENTIAL_REQUESTS.value + 50):
    start = time.perf_counter()
    {k: v.numpy() for k, v in function(**feeds).items()}  # pylint: disable=expression-not-assigned
    latencies.append(time.perf_counter() - start)
  return _stats(latencies[50:])


def main(argv: list[str]) -> None:
  del argv
  body = _REQUEST_JSON.value.encode("utf-8")
  path = f"/v1/models/{_MODEL.value}:predict"
  repos = {"this": _REPO}
  if _BASELINE_REPO.value:
    repos["baseline"] = os.path.abspath(_BASELINE_REPO.value)
  results: dict = {name: {} for name in repos}
  failed = False
  with tempfile.TemporaryDirectory(prefix="bench_rest_") as workdir:
    servers = {name: _start(repo, workdir, name) for name, repo in repos.items()}
    try:
      for proc, port, log_path in servers.values():
        _wait_ready(proc, port, log_path)
        _sequential(port, path, body, 50, False)  # warm-up
      phases = [
          ("keepalive_1", lambda p: _sequential(p, path, body, _SEQUENTIAL_REQUESTS.value, False)),
          ("new_conn_1", lambda p: _sequential(p, path, body, _SEQUENTIAL_REQUESTS.value, True)),
          (f"keepalive_{_CONCURRENCY.value}",
           lambda p: _concurrent(p, path, body, _CONCURRENCY.value, _SECONDS.value)),
      ]
      for phase, run in phases:
        for name, (_, port, _) in servers.items():
          results[name][phase] = run(port)
          failed |= bool(results[name][phase]["errors"])
          print(name, phase, json.dumps(results[name][phase]), file=sys.stderr, flush=True)
    finally:
      for proc, _, _ in servers.values():
        proc.terminate()
        proc.wait(60)
  result = {"model": _MODEL.value, "request": _REQUEST_JSON.value, "servers": repos,
            "results": results, "in_process": _in_process(body),
            "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}}
  if _OUTPUT.value:
    atomic.write_json(_OUTPUT.value, result)
  print(json.dumps(result, indent=2))
  if failed:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
