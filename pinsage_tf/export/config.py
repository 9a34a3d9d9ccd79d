"""What `export_models` builds: the served model names and `ExportConfig`."""

from __future__ import annotations

import dataclasses

from pinsage_tf import scann_index

RETRIEVAL = "pinsage_retrieval"
RETRIEVAL_EXACT = "pinsage_retrieval_exact"
EMBEDDER = "pinsage_embedder"
ALL_MODELS = (RETRIEVAL, RETRIEVAL_EXACT, EMBEDDER)
# How a version built from a previous version's graph is checked (`ExportConfig.verify_reused`).
VERIFY_ARTIFACTS = "artifacts"
VERIFY_LOAD = "load"
VERIFY_MODES = (VERIFY_ARTIFACTS, VERIFY_LOAD)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """What `export_models` builds.

  Attributes:
    num_neighbors: k, neighbors returned by the retrieval signatures.
    scann: the ScaNN index settings (automatic by corpus size by default;
      with `target_recall`, the automatic query-time knobs are tuned on
      `tuning_queries` items outside the recall sample).
    recall_queries: items sampled to measure the ScaNN model's recall@k
      against exact search (0 disables it).
    seed: seed of that sample.
    exact_block_size: corpus rows scored per step by the exact model (bounds
      its memory to ~`B * exact_block_size` floats).
    batch_size: items per block of the export-time layer-wise pass.
    consistency_sample: items whose final embedding is recomputed from the
      stored layer tables and compared with the given embeddings.
    consistency_tolerance: largest allowed absolute difference there.
    models: which of `ALL_MODELS` to export.
    verify_reused: how a version built from the previous version's graph
      (`export_models(reuse_graphs=True)`, what a refresh does) is checked
      before it is published. "artifacts": its files are read back and
      compared with the module, and the check queries are answered from
      them without loading the version through TensorFlow
      (`artifact_checks`; its graph was loaded and queried when it was
      traced). "load": it is loaded and queried like a traced version. A
      traced version is always loaded.
  """

  num_neighbors: int = 10
  scann: scann_index.ScannConfig = dataclasses.field(default_factory=scann_index.ScannConfig)
  recall_queries: int = 1000
  seed: int = 0
  exact_block_size: int = 32768
  batch_size: int = 8192
  consistency_sample: int = 1000
  consistency_tolerance: float = 1e-3
  models: tuple[str, ...] = ALL_MODELS
  verify_reused: str = VERIFY_ARTIFACTS

  def __post_init__(self):
    for name in ("num_neighbors", "exact_block_size", "batch_size"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"ExportConfig.{name} must be a positive int, got {value!r}.")
    for name in ("recall_queries", "consistency_sample"):
      if getattr(self, name) < 0:
        raise ValueError(f"ExportConfig.{name} must be >= 0, got {getattr(self, name)!r}.")
    if self.verify_reused not in VERIFY_MODES:
      raise ValueError(f"ExportConfig.verify_reused must be one of {VERIFY_MODES}, got "
                       f"{self.verify_reused!r}.")
    unknown = sorted(set(self.models) - set(ALL_MODELS))
    if unknown or not self.models:
      raise ValueError(f"ExportConfig.models must be a non-empty subset of {ALL_MODELS}, "
                       f"got {self.models!r}.")
