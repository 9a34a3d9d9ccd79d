r"""Cost of the REST HTTP layer alone: `serving.rest.RestServer` with a constant answer.

Runs the server in a subprocess with an API object whose `handle` returns a
fixed `related_items`-sized JSON answer (no model, no JSON decoding), then
for 1 and --concurrency keep-alive clients sends the same predict request for
--seconds and reports QPS, p50 / p99 and the server's CPU time per request
(from /proc). Prints one JSON object (also to --output).

  python bench/bench_rest_layer.py
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONCURRENCY = flags.DEFINE_integer("concurrency", 32, "Clients of the concurrent phase.")
_SECONDS = flags.DEFINE_float("seconds", 5.0, "Length of each phase.")
_OUTPUT = flags.DEFINE_string("output", "", "Also write the JSON here.")
_SERVE_PORT = flags.DEFINE_integer("serve_port", 0, "Internal: run the server on this port.")

_ANSWER = b'{\n    "predictions": [{"scores": [1.0, 2.0], "neighbor_ids": ["a", "b"]}]\n}'
_BODY = b'{"signature_name": "related_items", "instances": ["pin_0001"]}'


class _ConstantApi:
  transport_deadline = None  # as rest.RestApi: no deadline for the server to enforce

  def handle(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
    del method, path, body
    return 200, "application/json", _ANSWER


def _serve(port: int) -> None:
  from serving import rest  # pylint: disable=import-outside-toplevel
  server = rest.RestServer(_ConstantApi(), port=port, num_threads=_CONCURRENCY.value)
  server.start()
  print("ready", flush=True)
  while True:
    time.sleep(3600)


def _cpu_seconds(pid: int) -> float:
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _phase(port: int, pid: int, clients: int, seconds: float) -> dict:
  latencies: list[float] = []
  lock = threading.Lock()
  stop_at = time.perf_counter() + seconds

  def worker():
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    local = []
    while time.perf_counter() < stop_at:
      start = time.perf_counter()
      connection.request("POST", "/v1/models/m:predict", body=_BODY)
      response = connection.getresponse()
      response.read()
      local.append(time.perf_counter() - start)
    connection.close()
    with lock:
      latencies.extend(local)

  cpu_before, started = _cpu_seconds(pid), time.perf_counter()
  threads = [threading.Thread(target=worker) for _ in range(clients)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  elapsed = time.perf_counter() - started
  cpu = _cpu_seconds(pid) - cpu_before
  latencies.sort()
  n = len(latencies)
  return {"clients": clients, "requests": n, "qps": round(n / elapsed, 1),
          "p50_ms": round(latencies[n // 2] * 1e3, 3),
          "p99_ms": round(latencies[int(n * 0.99)] * 1e3, 3),
          "server_cpu_us_per_request": round(cpu / n * 1e6, 1)}


def main(argv: list[str]) -> None:
  del argv
  if _SERVE_PORT.value:
    _serve(_SERVE_PORT.value)
    return
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  proc = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), f"--serve_port={port}",
       f"--concurrency={_CONCURRENCY.value}"], stdout=subprocess.PIPE)
  try:
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    _phase(port, proc.pid, 1, 1.0)  # warm-up
    result = {"phases": [_phase(port, proc.pid, c, _SECONDS.value)
                         for c in (1, _CONCURRENCY.value)],
              "machine": {"cpus": os.cpu_count(),
                          "load_average_1m": round(os.getloadavg()[0], 2)}}
  finally:
    proc.kill()
    proc.wait()
  if _OUTPUT.value:
    from pinsage_tf import atomic  # pylint: disable=import-outside-toplevel
    atomic.write_json(_OUTPUT.value, result)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
