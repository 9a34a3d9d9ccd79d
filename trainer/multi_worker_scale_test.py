"""Two local workers train on a 1M-item synthetic graph (the multi-worker recipe).

The recipe of docs/design.md ("Multi-worker training") on the scale it is for:
`data.prepare` writes a 1M-item graph (300k boards, 8M pairs), the tables
are built once before the workers start, then two `trainer.train` processes
with their own `TF_CONFIG` train the same steps synchronously
(`strategy=multi_worker_mirrored`, 127.0.0.1 ports). Checked: both finish
with 2 replicas and the same step count, only the chief publishes the
model, and no worker rewrote the shared graph directory (both loaded the
tables instead of walking again). A few minutes on 2 cores, ~2 GB per worker.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from trainer import testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
CONFIG = os.path.join(REPO, "trainer", "configs", "synthetic.json")
NUM_ITEMS = 1_000_000
STEPS = 10
SETTINGS = [f"--set={s}" for s in (
    "strategy=multi_worker_mirrored", "train.epochs=1", f"train.steps_per_epoch={STEPS}",
    "train.validation_queries=0", "pipeline.max_hard_negatives=0")]

# Builds the tables trainer.train loads, once, as step 2 of the recipe says.
_BUILD_TABLES = """
import json, sys
from trainer import startup
import pinsage_tf
from pinsage_tf import training
with open(sys.argv[2]) as f:
  config = training.ExperimentConfig.from_dict(json.load(f)).with_overrides(sys.argv[3:])
inputs = training.prepare_inputs(sys.argv[1], config, hard_negatives=False)
print(inputs.graph.num_items)
"""


def _listing(path: str) -> dict[str, tuple[int, int]]:
  return {os.path.relpath(os.path.join(root, name), path):
          (os.stat(os.path.join(root, name)).st_size,
           os.stat(os.path.join(root, name)).st_mtime_ns)
          for root, _, files in os.walk(path) for name in files}


def _last_json(stdout: str) -> dict:
  starts = [m.start() for m in re.finditer(r"(?m)^\{$", stdout)]
  assert starts, stdout[-2000:]
  return json.loads(stdout[starts[-1]:])


def test_two_workers_on_a_million_item_graph(tmp_path):
  graph_dir, model_dir = str(tmp_path / "graph"), str(tmp_path / "model")
  out = subprocess.run(
      [sys.executable, "-m", "data.prepare", "--dataset=synthetic", f"--num_items={NUM_ITEMS}",
       f"--num_boards={int(0.3 * NUM_ITEMS)}", f"--num_pairs={8 * NUM_ITEMS}",
       f"--output_dir={graph_dir}"],
      cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-2000:]
  overrides = [s[len("--set="):] for s in SETTINGS]
  out = subprocess.run([sys.executable, "-c", _BUILD_TABLES, graph_dir, CONFIG, *overrides],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=1200)
  assert out.returncode == 0, out.stderr[-2000:]
  assert int(out.stdout.split()[-1]) == NUM_ITEMS
  before = _listing(graph_dir)

  results = testing.run_local_workers(
      ["trainer.train", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
       f"--config_json={CONFIG}", "--quiet", *SETTINGS], timeout=1200, env=ENV)
  for returncode, stdout, stderr in results:
    assert returncode == 0, stderr[-3000:]
    assert "2 replica(s)" in stderr
    summary = _last_json(stdout)
    assert summary["steps"] == STEPS and summary["final_loss"] == summary["final_loss"]
  assert os.path.isfile(os.path.join(model_dir, "model", "config.json"))
  assert os.path.isdir(os.path.join(model_dir, "workers", "worker_1", "checkpoints"))
  assert not os.path.exists(os.path.join(model_dir, "workers", "worker_1", "model"))
  # The workers loaded the shared tables: nothing in the graph directory changed.
  assert _listing(graph_dir) == before
