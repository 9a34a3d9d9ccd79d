"""End-to-end tests of `python -m trainer.infer` (local and Beam runners) in subprocesses.

Entry points are run as subprocesses (never imported here): their absl flags
would clash with other entry points' flags in one pytest process.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import pinsage_tf  # noqa: F401
from pinsage_tf import embeddings_io
from pinsage_tf import graph as graph_lib
from trainer import testing

NUM_ITEMS = 300
_run = testing.run_module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(graph_dir, model_dir) of a tiny model trained for 3 steps."""
  root = tmp_path_factory.mktemp("infer")
  graph_dir, model_dir = str(root / "g"), str(root / "m")
  out = _run(["data.prepare", "--dataset=synthetic", f"--output_dir={graph_dir}",
              f"--num_items={NUM_ITEMS}", "--num_boards=80", "--num_communities=5",
              "--num_pairs=2000"])
  assert out.returncode == 0, out.stderr[-2000:]
  out = _run(["trainer.train", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
              "--set=train.epochs=1", "--set=train.steps_per_epoch=3",
              "--set=pipeline.batch_size=32", "--set=pipeline.num_negatives=16",
              "--set=neighborhoods.num_neighbors=5", "--set=neighborhoods.num_walks=10",
              "--set=model.hidden_dim=16", "--set=model.embedding_dim=8",
              "--set=train.validation_queries=0", "--quiet"])
  assert out.returncode == 0, out.stderr[-2000:]
  return graph_dir, model_dir


@pytest.fixture(scope="module")
def outputs(trained, tmp_path_factory):
  """Embedding dirs written by both runners: {"local": dir, "beam": dir}."""
  graph_dir, model_dir = trained
  root = tmp_path_factory.mktemp("emb")
  dirs = {}
  for runner, extra in (("local", []),
                        ("beam", ["--", "--direct_num_workers=2",
                                  "--direct_running_mode=multi_processing"])):
    dirs[runner] = str(root / runner)
    out = _run(["trainer.infer", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
                f"--output_dir={dirs[runner]}", f"--runner={runner}", *extra])
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"wrote {NUM_ITEMS} embeddings of dim 8" in out.stdout
    assert f"({runner} runner)" in out.stdout
  return dirs


@pytest.mark.parametrize("runner", ["local", "beam"])
def test_output_directory_contract(trained, outputs, runner):
  graph_dir, model_dir = trained
  directory = outputs[runner]
  graph = graph_lib.load_graph(graph_dir)
  # load_embeddings checks checksums, norms, row order vs the graph and the fingerprint.
  emb = embeddings_io.load_embeddings(directory, graph_dir)
  assert emb.vectors.shape == (NUM_ITEMS, 8) and emb.vectors.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
  with open(os.path.join(directory, "item_ids.txt"), encoding="utf-8") as f:
    assert f.read().splitlines() == [str(i) for i in graph.item_ids]
  with open(os.path.join(directory, "manifest.json")) as f:
    manifest = json.load(f)
  assert manifest["count"] == NUM_ITEMS and manifest["dim"] == 8
  assert manifest["runner"] == runner
  assert manifest["graph_fingerprint"] == graph_lib.graph_fingerprint(graph_dir)
  assert manifest["model_checkpoint"] == os.path.join(os.path.abspath(model_dir), "model")
  projector = os.path.join(directory, "projector")
  assert sorted(os.listdir(projector)) == [
      "metadata.tsv", "projector_config.pbtxt", "vectors.tsv"]
  with open(os.path.join(projector, "vectors.tsv")) as f:
    rows = f.read().splitlines()
  assert len(rows) == NUM_ITEMS and len(rows[0].split("\t")) == 8
  np.testing.assert_allclose(np.array(rows[3].split("\t"), np.float32), emb.vectors[3],
                             atol=1e-5)


def test_local_and_beam_runners_agree(outputs):
  local = np.load(os.path.join(outputs["local"], "embeddings.npy"), allow_pickle=False)
  beam = np.load(os.path.join(outputs["beam"], "embeddings.npy"), allow_pickle=False)
  np.testing.assert_allclose(beam, local, atol=1e-5)
  # Not a constant output: the items' embeddings differ.
  assert np.abs(local - local[0]).max() > 1e-2


def _error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_missing_model_dir_fails_cleanly(trained, tmp_path):
  graph_dir, _ = trained
  out_dir = str(tmp_path / "out")
  out = _run(["trainer.infer", f"--graph_dir={graph_dir}",
              f"--model_dir={tmp_path / 'no_such_model'}", f"--output_dir={out_dir}",
              "--runner=beam"])
  assert out.returncode != 0
  errors = _error_lines(out.stderr)
  assert len(errors) == 1 and "no_such_model" in errors[0], out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert not os.path.exists(out_dir)
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".out")]  # no temporaries


def test_existing_output_needs_overwrite(trained, outputs):
  graph_dir, model_dir = trained
  target = outputs["local"]
  manifest = os.path.join(target, "manifest.json")
  with open(manifest) as f:
    before = f.read()
  out = _run(["trainer.infer", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
              f"--output_dir={target}"])
  assert out.returncode != 0
  errors = _error_lines(out.stderr)
  assert len(errors) == 1 and "already exists" in errors[0], out.stderr[-2000:]
  with open(manifest) as f:
    assert f.read() == before


def test_checkpoint_step_embeds_a_training_checkpoint(trained, outputs, tmp_path):
  graph_dir, model_dir = trained
  # The 3-step run's only checkpoint is its epoch end, step 3: the final weights.
  target = str(tmp_path / "ckpt3")
  out = _run(["trainer.infer", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
              f"--output_dir={target}", "--checkpoint_step=3"])
  assert out.returncode == 0, out.stderr[-3000:]
  got = np.load(os.path.join(target, "embeddings.npy"), allow_pickle=False)
  final = np.load(os.path.join(outputs["local"], "embeddings.npy"), allow_pickle=False)
  np.testing.assert_allclose(got, final, atol=1e-6)
  with open(os.path.join(target, "manifest.json")) as f:
    assert json.load(f)["model_checkpoint"].endswith(os.path.join("checkpoints", "ckpt-3"))
  # A step without a checkpoint: one error line naming the steps there are.
  missing = str(tmp_path / "ckpt2")
  out = _run(["trainer.infer", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
              f"--output_dir={missing}", "--checkpoint_step=2"])
  assert out.returncode == 2
  errors = _error_lines(out.stderr)
  assert len(errors) == 1 and "ckpt-2" in errors[0] and "[3]" in errors[0], out.stderr[-2000:]
  assert not os.path.exists(missing)


def test_item_bias_model_writes_its_biases_beside_the_embeddings(trained, tmp_path):
  graph_dir, _ = trained
  model_dir = str(tmp_path / "biased")
  out = _run(["trainer.train", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
              "--set=train.epochs=1", "--set=train.steps_per_epoch=3",
              "--set=pipeline.batch_size=32", "--set=pipeline.num_negatives=16",
              "--set=neighborhoods.num_neighbors=5", "--set=neighborhoods.num_walks=10",
              "--set=model.hidden_dim=16", "--set=model.embedding_dim=8",
              "--set=train.validation_queries=0", "--quiet", "--set=model.item_bias=true",
              "--set=train.learning_rate=0.01"])
  assert out.returncode == 0, out.stderr[-2000:]
  target = str(tmp_path / "emb")
  out = _run(["trainer.infer", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
              f"--output_dir={target}"])
  assert out.returncode == 0, out.stderr[-3000:]
  loaded = embeddings_io.load_embeddings(target, graph_dir)
  assert loaded.item_bias is not None and loaded.item_bias.shape == (NUM_ITEMS,)
  # Trained away from the zero initialisation, and item-dependent.
  assert np.ptp(loaded.item_bias) > 1e-4
  # The same numbers as recomputing them in-process from the saved model.
  from pinsage_tf import inference, model as model_lib, training  # pylint: disable=g-import-not-at-top
  config = training.ExperimentConfig.load(model_dir)
  inputs = training.prepare_inputs(graph_dir, config, hard_negatives=False)
  model = model_lib.load_model(os.path.join(model_dir, training.MODEL_DIR))
  vectors, bias = inference.layerwise_outputs(model, inputs.tables)
  np.testing.assert_allclose(loaded.vectors, vectors, atol=1e-6)
  np.testing.assert_allclose(loaded.item_bias, bias, atol=1e-6)
  # The Beam runner writes the same biases.
  beam_dir = str(tmp_path / "beam")
  out = _run(["trainer.infer", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
              f"--output_dir={beam_dir}", "--runner=beam"])
  assert out.returncode == 0, out.stderr[-2000:]
  from_beam = embeddings_io.load_embeddings(beam_dir, graph_dir)
  np.testing.assert_allclose(from_beam.vectors, vectors, atol=1e-5)
  np.testing.assert_allclose(from_beam.item_bias, bias, atol=1e-5)


@pytest.fixture(scope="module")
def pivot_outputs(tmp_path_factory):
  """(graph_dir, {"local": dir, "beam": dir}) for a tiny model trained with
  pivot pairs on LightGCN-format data with a validation hold-out; user 60 has
  no training items (an all-padding pivot neighborhood)."""
  root = tmp_path_factory.mktemp("pivots")
  graph_dir, model_dir, _ = testing.train_tiny_pivot_model(str(root), user_without_items=True)
  dirs = {}
  for runner in ("local", "beam"):
    dirs[runner] = str(root / runner)
    out = _run(["trainer.infer", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
                f"--output_dir={dirs[runner]}", f"--runner={runner}"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "61 pivot embeddings (graph, graph+validation)" in out.stdout, out.stdout
    assert f"({runner} runner)" in out.stdout
  return graph_dir, dirs


def test_beam_runner_writes_the_local_runners_pivot_files(pivot_outputs):
  graph_dir, dirs = pivot_outputs
  local, beam = dirs["local"], dirs["beam"]
  names = sorted(os.listdir(local))
  assert sorted(os.listdir(beam)) == names
  assert {"pivot_ids.txt", "pivot_embeddings_graph.npy",
          "pivot_embeddings_graph_validation.npy", "item_bias.npy"} <= set(names)
  for name in names:
    if name.endswith(".npy"):
      want = np.load(os.path.join(local, name), allow_pickle=False)
      got = np.load(os.path.join(beam, name), allow_pickle=False)
      assert got.shape == want.shape and got.dtype == want.dtype, name
      np.testing.assert_allclose(got, want, atol=1e-5, err_msg=name)
  for name in ("item_ids.txt", "pivot_ids.txt"):
    with open(os.path.join(local, name)) as a, open(os.path.join(beam, name)) as b:
      assert a.read() == b.read()
  # Both load as complete embeddings directories with both pivot histories.
  emb = embeddings_io.load_embeddings(beam, graph_dir)
  assert sorted(emb.pivot_vectors) == ["graph", "graph+validation"]
  assert emb.pivot_vectors["graph"].shape == (61, 8)
  # The histories differ for users with validation items, not for user 60.
  graph = graph_lib.load_graph(graph_dir)
  with_validation = np.flatnonzero(graph.heldout.validation.degrees() > 0)
  assert with_validation.size and 60 not in with_validation
  diff = np.abs(emb.pivot_vectors["graph"] - emb.pivot_vectors["graph+validation"]).max(axis=1)
  assert diff[with_validation].max() > 1e-3
  np.testing.assert_allclose(emb.pivot_vectors["graph"][60],
                             emb.pivot_vectors["graph+validation"][60], atol=1e-6)
