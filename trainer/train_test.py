"""End-to-end tests of `python -m trainer.train` in real subprocesses.

Entry points are run as subprocesses (never imported here): their absl flags
would clash with other entry points' flags in one pytest process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from trainer import testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)


def _run(args, timeout=600, **kwargs):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=kwargs.pop("env", ENV),
                        capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("graph") / "g")
  out = _run(["data.prepare", "--dataset=synthetic", f"--output_dir={path}", "--num_items=400",
              "--num_boards=120", "--num_communities=8", "--num_pairs=4000"])
  assert out.returncode == 0, out.stderr[-2000:]
  return path


def _sets(*overrides: str) -> list[str]:
  return [f"--set={override}" for override in overrides]


SMALL = _sets("neighborhoods.num_neighbors=5", "neighborhoods.num_walks=20",
              "pipeline.batch_size=32", "pipeline.num_negatives=32", "model.hidden_dim=32",
              "model.embedding_dim=16", "train.validation_queries=100") + ["--quiet"]


def _last_json(stdout: str) -> dict:
  starts = [m.start() for m in re.finditer(r"(?m)^\{$", stdout)]
  assert starts, stdout[-2000:]
  return json.loads(stdout[starts[-1]:])


def test_sigkill_mid_run_then_rerun_resumes_from_checkpoint(graph_dir, tmp_path):
  model_dir = str(tmp_path / "m")
  args = ["trainer.train", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}", *SMALL,
          *_sets("train.epochs=2", "train.steps_per_epoch=200",
                 "train.checkpoint_every_steps=20", "pipeline.max_hard_negatives=1")]
  proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt_dir = os.path.join(model_dir, "checkpoints")
  deadline = time.time() + 300
  killed_after = None
  try:
    while time.time() < deadline and proc.poll() is None:
      names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
      steps = [int(m.group(1)) for n in names if (m := re.match(r"ckpt-(\d+)\.index$", n))]
      if steps and max(steps) >= 40:
        killed_after = max(steps)
        proc.send_signal(signal.SIGKILL)
        break
      time.sleep(0.2)
  finally:
    if proc.poll() is None:
      proc.kill()
    proc.wait()
  assert killed_after is not None, "no checkpoint appeared before the deadline"
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.isdir(os.path.join(model_dir, "model")), "killed run must not publish"

  out = _run(args)
  assert out.returncode == 0, out.stderr[-3000:]
  match = re.search(r"Resumed from \S+ckpt-(\d+) at step (\d+), epoch (\d+)", out.stderr)
  assert match, out.stderr[-3000:]
  resumed_step = int(match.group(2))
  assert resumed_step >= killed_after and resumed_step % 20 == 0
  summary = _last_json(out.stdout)
  assert summary["steps"] == 400
  assert set(summary["validation"]) <= {"1", "2"}
  with open(os.path.join(model_dir, "train_summary.json")) as f:
    assert json.load(f) == summary
  assert os.path.isfile(os.path.join(model_dir, "model", "config.json"))
  with open(os.path.join(model_dir, "experiment.json")) as f:
    assert json.load(f)["train"]["steps_per_epoch"] == 200


def test_multi_worker_two_local_processes(graph_dir, tmp_path):
  model_dir = str(tmp_path / "mw")
  results = testing.run_local_workers(
      ["trainer.train", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}", *SMALL,
       *_sets("strategy=multi_worker_mirrored", "train.epochs=1", "train.steps_per_epoch=4",
              "train.validation_queries=0")], timeout=400, env=ENV)
  for returncode, stdout, stderr in results:
    assert returncode == 0, stderr[-3000:]
    assert "2 replica(s)" in stderr
    assert _last_json(stdout)["steps"] == 4
  # Only the chief (worker 0) publishes the model and the config.
  assert os.path.isfile(os.path.join(model_dir, "model", "config.json"))
  assert os.path.isdir(os.path.join(model_dir, "workers", "worker_1", "checkpoints"))


def _error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_bad_inputs_fail_clearly(graph_dir, tmp_path):
  out = _run(["trainer.train", f"--graph_dir={graph_dir}", f"--model_dir={tmp_path}/m",
              "--set=pipeline.batch_size=100000", "--quiet"])
  assert out.returncode == 2
  assert "lower pipeline.batch_size" in out.stderr
  out = _run(["trainer.train", f"--graph_dir={tmp_path}/missing", f"--model_dir={tmp_path}/m"])
  assert out.returncode == 2
  assert "no graph manifest" in out.stderr


@pytest.mark.parametrize("args,message", [
    (["--set=train.keep_checkpoint=3"],
     "error: unknown key 'train.keep_checkpoint': train has checkpoint_every_steps, clip_norm, "),
    (["--set=train.keep_checkpoints=three"],
     "error: train.keep_checkpoints: expected an int, got 'three'."),
    (["--set=model.encoder.use_id_embedding=auto"],
     "error: model.encoder.use_id_embedding: expected true/false/1/0 or none, got 'auto'."),
    (["--set=train.loss=hinge"], "error: train.loss=hinge: TrainConfig.loss must be one of "),
    (["--set=epochs=3"], "error: unknown key 'epochs': valid top-level keys are "
                         "hard_negatives.*, model.*, "),
    (["train.epochs=3"], "error: unexpected arguments ['train.epochs=3']; a config override is "
                         "--set=section.field=value."),
])
def test_bad_override_is_one_line_naming_the_key(tmp_path, args, message):
  # The config is checked before the graph is read: no graph needed.
  out = _run(["trainer.train", f"--graph_dir={tmp_path}/g", f"--model_dir={tmp_path}/m",
              *args])
  assert out.returncode == 2, out.stderr[-2000:]
  errors = _error_lines(out.stderr)
  assert len(errors) == 1 and errors[0].startswith(message), out.stderr[-2000:]
  assert not os.path.exists(f"{tmp_path}/m")


def test_bad_config_json_names_the_file(tmp_path):
  path = tmp_path / "config.json"
  path.write_text(json.dumps({"train": {"epoch": 3}}))
  out = _run(["trainer.train", f"--graph_dir={tmp_path}/g", f"--model_dir={tmp_path}/m",
              f"--config_json={path}"])
  assert out.returncode == 2
  assert _error_lines(out.stderr) == [
      f"error: {path}: ExperimentConfig.train: unknown keys ['epoch']; expected a subset of "
      "['checkpoint_every_steps', 'clip_norm', 'decay_rate', 'decay_steps', 'epochs', "
      "'in_batch_negatives', 'keep_checkpoints', 'learning_rate', 'log_every_steps', "
      "'logq_correction', 'loss', 'margin', 'pivot_loss_weight', 'steps_per_epoch', "
      "'temperature', 'validation_queries', 'warmup_steps']."]


def test_overrides_reach_fields_without_flags_and_experiment_json_round_trips(graph_dir,
                                                                            tmp_path):
  first, second = str(tmp_path / "first"), str(tmp_path / "second")
  out = _run(["trainer.train", f"--graph_dir={graph_dir}", f"--model_dir={first}", *SMALL,
              *_sets("train.epochs=1", "train.steps_per_epoch=3", "train.keep_checkpoints=1",
                     "train.checkpoint_every_steps=1", "train.log_every_steps=1",
                     "model.encoder.use_id_embedding=false", "model.num_layers=1",
                     "pipeline.negative_sampling=degree", "train.validation_queries=0",
                     "strategy=one_device")])
  assert out.returncode == 0, out.stderr[-2000:]
  # keep_checkpoints reached the checkpoint manager: of ckpt-1..3 only the last is kept.
  kept = sorted(n for n in os.listdir(os.path.join(first, "checkpoints")) if n.endswith(".index"))
  assert kept == ["ckpt-3.index"]
  with open(os.path.join(first, "experiment.json")) as f:
    saved = json.load(f)
  assert saved["train"]["keep_checkpoints"] == 1 and saved["train"]["log_every_steps"] == 1
  assert saved["model"]["encoder"]["use_id_embedding"] is False
  assert saved["model"]["num_layers"] == saved["pipeline"]["num_layers"] == 1
  assert saved["strategy"] == "one_device"
  # The saved config reproduces the run's config exactly.
  out = _run(["trainer.train", f"--graph_dir={graph_dir}", f"--model_dir={second}",
              f"--config_json={first}/experiment.json", "--quiet"])
  assert out.returncode == 0, out.stderr[-2000:]
  with open(os.path.join(second, "experiment.json")) as f:
    assert json.load(f) == saved
  assert _last_json(out.stdout)["steps"] == 3


def test_hard_negative_seed_decouples_the_pool_from_the_training_seed(graph_dir, tmp_path):
  model_dir = f"{tmp_path}/m"
  out = _run(["trainer.train", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
              "--seed=3", "--set=hard_negatives.seed=0", "--set=pipeline.max_hard_negatives=1",
              "--set=train.epochs=2", "--set=train.steps_per_epoch=2", *SMALL])
  assert out.returncode == 0, out.stderr[-2000:]
  with open(os.path.join(model_dir, "experiment.json")) as f:
    config = json.load(f)
  assert config["hard_negatives"]["seed"] == 0
  assert config["pipeline"]["seed"] == config["neighborhoods"]["seed"] == 3
  assert config["positives"]["seed"] == config["pivot_neighborhoods"]["seed"] == 3
  pools = os.listdir(os.path.join(graph_dir, "hard_negatives"))
  assert any(p.endswith("-s0") for p in pools), pools


def test_in_batch_negatives_with_logq_correction_trains_and_is_recorded(graph_dir, tmp_path):
  model_dir = f"{tmp_path}/m"
  out = _run(["trainer.train", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
              *_sets("train.loss=sampled_softmax", "train.in_batch_negatives=true",
                     "train.logq_correction=true", "train.epochs=1", "train.steps_per_epoch=3"),
              *SMALL])
  assert out.returncode == 0, out.stderr[-2000:]
  assert _last_json(out.stdout)["steps"] == 3
  with open(os.path.join(model_dir, "experiment.json")) as f:
    train = json.load(f)["train"]
  assert train["in_batch_negatives"] is True and train["logq_correction"] is True
  # The paper's max-margin loss has no logQ correction: refused before training.
  out = _run(["trainer.train", f"--graph_dir={graph_dir}", f"--model_dir={tmp_path}/m2",
              "--set=train.loss=max_margin", "--set=train.logq_correction=true", *SMALL])
  assert out.returncode != 0
  assert "logq_correction applies to loss='sampled_softmax' only" in out.stderr
  assert not os.path.exists(os.path.join(f"{tmp_path}/m2", "checkpoints"))
