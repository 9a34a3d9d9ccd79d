"""Helpers for the trainer jobs' tests: run a job as a user would, tiny fixtures.

`run_module(args)` runs `python -m <args>` from the repository root;
`train_tiny_pivot_model(root)` writes a small LightGCN-format dataset, prepares
it with a validation hold-out and trains a 3-step model with pivot pairs and
item biases, returning (graph_dir, model_dir) and the trainer's output.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)

TINY_PIVOT_TRAIN_FLAGS = tuple(f"--set={override}" for override in (
    "train.epochs=1", "train.steps_per_epoch=3", "pipeline.batch_size=16",
    "pipeline.pivot_batch_size=16", "pipeline.num_negatives=8", "neighborhoods.num_neighbors=4",
    "neighborhoods.num_walks=10", "pivot_neighborhoods.num_neighbors=6", "model.hidden_dim=16",
    "model.embedding_dim=8", "model.item_bias=true", "train.loss=sampled_softmax")) + ("--quiet",)


def run_module(args, timeout: float = 600) -> subprocess.CompletedProcess:
  """`python -m *args` in the repository root, output captured as text."""
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
  """A TCP port on 127.0.0.1 that was free a moment ago."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_local_workers(args, num_workers: int = 2, timeout: float = 600,
                      env=None) -> list[tuple[int, str, str]]:
  """`python -m *args` as `num_workers` local workers of one cluster (`TF_CONFIG`).

  Each worker gets its own 127.0.0.1 port and `task.index`; all are killed if
  one does not finish within `timeout` seconds.

  Returns:
    (return code, stdout, stderr) of each worker, in index order.
  """
  cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(num_workers)]}
  procs = []
  for index in range(num_workers):
    worker_env = dict(env or ENV, TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}))
    procs.append(subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=worker_env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=timeout))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def train_tiny_pivot_model(root, *, user_without_items: bool = False,
                           validation_queries: int = 0
                           ) -> tuple[str, str, subprocess.CompletedProcess]:
  """60 users x 12 of 80 items (9 train, 3 test), 20 % of train held out for
  validation; with `user_without_items` a user 60 with no training item (an
  all-padding pivot neighborhood). Returns (graph_dir, model_dir, train run)."""
  rng = np.random.default_rng(0)
  raw = os.path.join(root, "raw")
  os.makedirs(raw)
  with open(os.path.join(raw, "train.txt"), "w") as train, \
       open(os.path.join(raw, "test.txt"), "w") as test:
    for user in range(60):
      items = rng.choice(80, size=12, replace=False)
      train.write(" ".join(map(str, [user, *sorted(items[:9])])) + "\n")
      test.write(" ".join(map(str, [user, *sorted(items[9:])])) + "\n")
    if user_without_items:
      train.write("60\n")
      test.write("60 1 2\n")
  graph_dir, model_dir = os.path.join(root, "g"), os.path.join(root, "m")
  out = run_module(["data.prepare", "--dataset=lightgcn", f"--input_dir={raw}",
                    f"--output_dir={graph_dir}", "--val_fraction=0.2"])
  assert out.returncode == 0, out.stderr[-2000:]
  out = run_module(["trainer.train", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
                    *TINY_PIVOT_TRAIN_FLAGS,
                    f"--set=train.validation_queries={validation_queries}"])
  assert out.returncode == 0, out.stderr[-2000:]
  return graph_dir, model_dir, out
