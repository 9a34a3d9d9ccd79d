r"""SIGTERM under load: does `serving.server` exit cleanly every time?

Each run starts `python -m serving.server` on a toy model (--model), puts
--clients threads of REST and gRPC load on it, sends SIGTERM after
--load_seconds and waits for the exit. A run is clean when the process exits
with 0 and its log has no sign of a native crash ("terminate called",
"Fatal Python error", "Segmentation fault", "core dumped"); client errors
after the signal (refused or reset connections) are expected and not counted.

Prints one JSON object (and writes it to --output_json):
  {"runs", "clean", "exit_codes": {code: count}, "failures": [{"run", "exit_code",
   "log_tail"}], "seconds_to_exit": {"median", "max"}, "server_root"}

  python bench/bench_shutdown.py --runs=20 --output_json=bench/results/shutdown.json
"""

from __future__ import annotations

import collections
import json
import os
import signal
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

from serving import client  # noqa: E402
from serving import toy_models  # noqa: E402

_RUNS = flags.DEFINE_integer("runs", 20, "Server starts, each stopped by SIGTERM under load.")
_MODEL = flags.DEFINE_enum("model", "scann", ["scann", "lookup"],
                           "Toy model served: ScaNN retrieval (ScaNN's threads too) or lookup.")
_CLIENTS = flags.DEFINE_integer("clients", 32, "Client threads (half REST, half gRPC).")
_LOAD_SECONDS = flags.DEFINE_float("load_seconds", 1.5, "Load before the signal.")
_SERVER_ROOT = flags.DEFINE_string(
    "server_root", "", "Checkout whose serving.server runs (default: this one).")
_OUTPUT_JSON = flags.DEFINE_string("output_json", "", "Also write the JSON here.")

_CRASH_SIGNS = ("terminate called", "Fatal Python error", "Segmentation fault", "core dumped",
                "Aborted")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _one_run(root: str, base: str, workdir: str, run: int) -> dict:
  rest_port, grpc_port = _free_port(), _free_port()
  log_path = os.path.join(workdir, f"server_{run}.log")
  with open(log_path, "wb") as log:
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--model_name=toy", f"--model_base_path={base}",
         f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         "--file_system_poll_wait_seconds=0", "--shutdown_grace_seconds=10"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT)
  rest, grpc_address = f"127.0.0.1:{rest_port}", f"127.0.0.1:{grpc_port}"
  deadline = time.monotonic() + 180
  while True:
    try:
      client.rest_status(rest, "toy", timeout=5)
      break
    except (OSError, client.RestError):
      if proc.poll() is not None or time.monotonic() > deadline:
        proc.kill()
        raise RuntimeError(f"server did not start; see {log_path}") from None
      time.sleep(0.2)
  stop = threading.Event()
  answered = [0]
  item = "item0" if _MODEL.value == "scann" else "a"

  def rest_worker():
    while not stop.is_set():
      try:
        client.rest_predict(rest, "toy", instances=[item], timeout=10)
        answered[0] += 1
      except Exception:  # pylint: disable=broad-except
        time.sleep(0.01)

  def grpc_worker():
    ids = {"item_ids": np.array([item.encode()], dtype=object)}
    while not stop.is_set():
      try:
        client.grpc_predict(grpc_address, "toy", ids, timeout=10)
        answered[0] += 1
      except Exception:  # pylint: disable=broad-except
        time.sleep(0.01)

  threads = [threading.Thread(target=rest_worker if i % 2 else grpc_worker, daemon=True)
             for i in range(_CLIENTS.value)]
  for thread in threads:
    thread.start()
  time.sleep(_LOAD_SECONDS.value)
  signalled = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  try:
    code = proc.wait(60)
  except subprocess.TimeoutExpired:
    proc.kill()
    code = proc.wait()
  seconds = time.monotonic() - signalled
  stop.set()
  for thread in threads:
    thread.join(15)
  with open(log_path, errors="replace") as f:
    text = f.read()
  crashed = any(sign in text for sign in _CRASH_SIGNS)
  return {"run": run, "exit_code": code, "clean": code == 0 and not crashed,
          "seconds_to_exit": seconds, "answered_before_exit": answered[0],
          "log_tail": "" if code == 0 and not crashed else text[-1500:]}


def main(argv: list[str]) -> None:
  del argv
  root = os.path.abspath(_SERVER_ROOT.value or
                         os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  runs = []
  with tempfile.TemporaryDirectory(prefix="bench_shutdown_") as workdir:
    base = os.path.join(workdir, "toy")
    if _MODEL.value == "scann":
      toy_models.build_scann_model(os.path.join(base, "1"))
    else:
      toy_models.build_lookup_model(os.path.join(base, "1"))
    for run in range(_RUNS.value):
      result = _one_run(root, base, workdir, run)
      runs.append(result)
      print(f"run {run}: exit {result['exit_code']} clean={result['clean']} "
            f"({result['seconds_to_exit']:.2f} s, {result['answered_before_exit']} answered)",
            file=sys.stderr, flush=True)
  seconds = [r["seconds_to_exit"] for r in runs]
  output = {
      "server_root": root,
      "runs": len(runs),
      "clean": sum(r["clean"] for r in runs),
      "exit_codes": dict(collections.Counter(str(r["exit_code"]) for r in runs)),
      "seconds_to_exit": {"median": round(float(np.median(seconds)), 3),
                          "max": round(float(np.max(seconds)), 3)},
      "failures": [{k: r[k] for k in ("run", "exit_code", "log_tail")}
                   for r in runs if not r["clean"]],
      "model": _MODEL.value, "clients": _CLIENTS.value, "load_seconds": _LOAD_SECONDS.value,
  }
  if _OUTPUT_JSON.value:
    atomic.write_json(_OUTPUT_JSON.value, output)
  print(json.dumps(output, indent=2))


if __name__ == "__main__":
  app.run(main)
