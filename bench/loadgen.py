r"""Load generator process for bench/bench_serving.py: no TensorFlow, minimal client work.

Runs --threads client threads against one server endpoint until --stop_at
(a `time.time()` value), starting together at --start_at, and prints one
JSON object: {"latencies": [seconds, ...], "errors": [first messages],
"error_count"}. Requests are sent as prepared bytes: the REST body as given,
the gRPC PredictRequest already serialised (a generic unary call with no
client-side proto work), so the server, not the client, is what is measured.
`run_threads` is the load loop, for in-process callers too.

  python bench/loadgen.py --protocol=grpc --port=8500 --request_file=req.bin \
      --threads=16 --start_at=... --stop_at=...
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from typing import Any, Callable

import grpc

_PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


def _rest_keepalive(port: int, path: str, body: bytes):
  connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

  def call():
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
      raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
  return call, connection.close


def _rest_new_connection(port: int, path: str, body: bytes):
  def call():
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
      connection.request("POST", path, body=body,
                         headers={"Content-Type": "application/json", "Connection": "close"})
      response = connection.getresponse()
      payload = response.read()
      if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
    finally:
      connection.close()
  return call, lambda: None


def _grpc(port: int, path: str, body: bytes):
  del path
  channel = grpc.insecure_channel(f"127.0.0.1:{port}")
  predict = channel.unary_unary(_PREDICT_METHOD)  # bytes in, bytes out
  return (lambda: predict(body, timeout=60)), channel.close


_PROTOCOLS = {"rest_keepalive": _rest_keepalive, "rest_new_connection": _rest_new_connection,
              "grpc": _grpc}


def run_threads(make_call: Callable[[], tuple[Callable[[], Any], Callable[[], None]]],
                threads: int, start_at: float, stop_at: float) -> tuple[list[float], list[str]]:
  """`threads` threads calling from `start_at` to `stop_at` (`time.time()` values).

  Each thread gets its (call, close) pair from `make_call()` before the start.

  Returns:
    (latency in seconds of every answered call, error message of every failed one).
  """
  latencies: list[float] = []
  errors: list[str] = []
  lock = threading.Lock()

  def worker():
    call, close = make_call()
    local, local_errors = [], []
    time.sleep(max(0.0, start_at - time.time()))
    try:
      while time.time() < stop_at:
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

  workers = [threading.Thread(target=worker) for _ in range(threads)]
  for thread in workers:
    thread.start()
  for thread in workers:
    thread.join()
  return latencies, errors


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--protocol", choices=sorted(_PROTOCOLS), required=True)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--path", default="")
  parser.add_argument("--request_file", required=True)
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--start_at", type=float, required=True)
  parser.add_argument("--stop_at", type=float, required=True)
  args = parser.parse_args()
  with open(args.request_file, "rb") as f:
    body = f.read()
  latencies, errors = run_threads(
      lambda: _PROTOCOLS[args.protocol](args.port, args.path, body), args.threads,
      args.start_at, args.stop_at)
  print(json.dumps({"latencies": latencies, "errors": sorted(set(errors))[:5],
                    "error_count": len(errors)}))


if __name__ == "__main__":
  main()
