"""What the server serves, and within which bounds.

Contract:

* `ModelConfig` names one model, its base path (`BASE/NAME/` holding integer
  version subdirectories), its `VersionPolicy` and its version labels.
* `VersionPolicy.choose(candidates)` picks the versions to serve among the
  loadable ones on disk: `latest` (the N highest, default 1), `all`, or
  `specific` versions.
* `model_configs_from_text` reads TF Serving's text-format ModelServerConfig
  (`model_config_list { config { ... } }`); relative base paths are made
  absolute against the working directory.
* `ServingLimits` bounds inference work: concurrent and queued predictions,
  batch size.

Invalid values raise `ValueError` saying what to pass instead.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Mapping

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
  """Which versions on disk to serve (TF Serving's ServableVersionPolicy).

  Attributes:
    kind: "latest", "all" or "specific".
    num_versions: for "latest", how many of the highest versions.
    versions: for "specific", the version numbers.
  """
  kind: str = "latest"
  num_versions: int = 1
  versions: tuple[int, ...] = ()

  def __post_init__(self):
    if self.kind not in ("latest", "all", "specific"):
      raise ValueError(f"version policy kind {self.kind!r}; pass 'latest', 'all' or 'specific'.")
    if self.kind == "latest" and self.num_versions < 1:
      raise ValueError(f"latest num_versions={self.num_versions}; pass 1 or more.")
    if self.kind == "specific" and not self.versions:
      raise ValueError("a 'specific' version policy needs at least one version number.")

  def choose(self, candidates: Iterable[int]) -> set[int]:
    """The versions to serve among loadable versions on disk."""
    ordered = sorted(set(candidates))
    if self.kind == "latest":
      return set(ordered[-self.num_versions:])
    if self.kind == "all":
      return set(ordered)
    return set(ordered) & set(self.versions)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """One served model.

  Attributes:
    name: model name used in requests.
    base_path: directory holding the integer version subdirectories.
    version_policy: which versions to serve.
    version_labels: label -> version, for `/labels/L` and
      `ModelSpec.version_label`.
  """
  name: str
  base_path: str
  version_policy: VersionPolicy = dataclasses.field(default_factory=VersionPolicy)
  version_labels: Mapping[str, int] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not self.name or "/" in self.name or ":" in self.name:
      raise ValueError(f"model name {self.name!r}; pass a non-empty name without '/' or ':'.")
    if not self.base_path:
      raise ValueError(f"model {self.name!r} has no base_path; pass the directory "
                       "that holds its integer version subdirectories.")


def model_configs_from_text(text: str, source: str = "<model_config>") -> list[ModelConfig]:
  """Parses a text-format ModelServerConfig (`model_config_list { config {...} }`).

  Args:
    text: the file contents.
    source: file name used in error messages.

  Raises:
    ValueError: naming `source` (and the line, for syntax errors) if the text
      does not parse, uses a custom_model_config, a platform other than
      tensorflow, or repeats a model name.
  """
  config = model_server_config_pb2.ModelServerConfig()
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    raise ValueError(f"{source}: not a text-format ModelServerConfig: {e}") from None
  if config.WhichOneof("config") != "model_config_list":
    raise ValueError(f"{source}: expected a model_config_list {{ config {{ ... }} }} block.")
  configs = []
  for model in config.model_config_list.config:
    if model.model_platform not in ("", "tensorflow"):
      raise ValueError(f"{source}: model {model.name!r} has model_platform "
                       f"{model.model_platform!r}; only 'tensorflow' is served.")
    policy = model.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
      version_policy = VersionPolicy("all")
    elif which == "specific":
      version_policy = VersionPolicy("specific", versions=tuple(policy.specific.versions))
    else:
      version_policy = VersionPolicy("latest", num_versions=max(1, policy.latest.num_versions))
    # Like TF Serving, a relative base_path is relative to the working directory.
    base_path = os.path.abspath(model.base_path) if model.base_path else ""
    try:
      configs.append(ModelConfig(model.name, base_path, version_policy,
                                 dict(model.version_labels)))
    except ValueError as e:
      raise ValueError(f"{source}: {e}") from None
  names = [c.name for c in configs]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"{source}: model names repeated: {duplicates}")
  if not configs:
    raise ValueError(f"{source}: the model_config_list has no config entries.")
  return configs


@dataclasses.dataclass(frozen=True)
class ServingLimits:
  """Bounds on inference work.

  Attributes:
    max_concurrent_requests: predict calls running at once (REST + gRPC).
    max_queued_requests: calls allowed to wait for a slot; beyond that a
      request fails fast with RESOURCE_EXHAUSTED.
    max_batch_size: largest batch (dimension 0) accepted; 0 = unbounded.
  """
  max_concurrent_requests: int = 64
  max_queued_requests: int = 64
  max_batch_size: int = 1024

  def __post_init__(self):
    if self.max_concurrent_requests < 1:
      raise ValueError(f"max_concurrent_requests={self.max_concurrent_requests}; pass >= 1.")
    if self.max_queued_requests < 0:
      raise ValueError(f"max_queued_requests={self.max_queued_requests}; pass >= 0.")
    if self.max_batch_size < 0:
      raise ValueError(f"max_batch_size={self.max_batch_size}; pass >= 0 (0 = unbounded).")
