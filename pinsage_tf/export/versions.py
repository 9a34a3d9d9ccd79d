"""EXPORT_BASE on disk: integer version directories and the model server config files.

A version directory `EXPORT_BASE/<model>/<version>/` is immutable once
published; `publish` renames finished temporary directories (names TF Serving
ignores) to their version all at once. `write_models_config` lists the served
models in `models.config` and, restricted to those whose export report
records no custom ops, in `models_stock.config`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping, Sequence

from absl import logging
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from pinsage_tf import atomic
from pinsage_tf.export import config as config_lib

MODELS_CONFIG = "models.config"
MODELS_STOCK_CONFIG = "models_stock.config"
REPORT_FILE = os.path.join("assets.extra", "export_report.json")
# Readable by a model server running as another user.
DIR_MODE = 0o755
FILE_MODE = 0o644
_VERSION_DIR = re.compile(r"^\d+$")


def list_versions(model_base: str | os.PathLike) -> list[int]:
  """Integer version subdirectories of `model_base`, ascending ([] if absent)."""
  try:
    names = os.listdir(model_base)
  except FileNotFoundError:
    return []
  return sorted(int(n) for n in names
                if _VERSION_DIR.match(n) and os.path.isdir(os.path.join(model_base, n)))


def next_version(export_base: str | os.PathLike, models: Sequence[str] = config_lib.ALL_MODELS
                 ) -> int:
  """1 + the highest version of any of `models` under `export_base` (1 if none).

  One number for all models keeps the versions of one export in lockstep.
  """
  latest = [max(list_versions(os.path.join(export_base, m)), default=0) for m in models]
  return max(latest, default=0) + 1


def latest_version_dir(model_base: str | os.PathLike) -> str | None:
  """The directory of the highest version under `model_base` (None if none)."""
  versions = list_versions(model_base)
  return os.path.join(os.fspath(model_base), str(versions[-1])) if versions else None


def read_report(version_dir: str) -> dict[str, Any] | None:
  """The export report of a version directory (None if missing or unreadable)."""
  try:
    with open(os.path.join(version_dir, REPORT_FILE), encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def served_scann_settings(export_base: str, config: config_lib.ExportConfig
                          ) -> config_lib.ExportConfig:
  """`config` with the ScaNN query-time settings of the newest `pinsage_retrieval` version.

  The knobs `config.scann` leaves automatic take the values that version was
  built with (its report's `search.scann`), so the refresh skips the tuning;
  the new version's recall is still measured. Unchanged when there is no
  such version or report, or it holds no ScaNN settings.
  """
  base = os.path.join(export_base, config_lib.RETRIEVAL)
  versions = list_versions(base)
  if not versions:
    return config
  path = os.path.join(base, str(versions[-1]), REPORT_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      served = json.load(f)["search"]["scann"]
  except (OSError, ValueError, KeyError, TypeError):
    logging.warning("%s: no ScaNN settings readable; the refresh tunes them again.", path)
    return config
  requested = config.scann
  keep = {}
  for name in ("num_leaves", "num_leaves_to_search", "reorder_num_neighbors"):
    if getattr(requested, name) is None and isinstance(served.get(name), int):
      keep[name] = served[name]
  if requested.algorithm == "auto" and served.get("algorithm") in ("brute_force", "ah",
                                                                    "tree_ah"):
    keep["algorithm"] = served["algorithm"]
  if not keep:
    return config
  logging.info("ScaNN settings of %s kept: %s", path, keep)
  return dataclasses.replace(config, scann=dataclasses.replace(requested, **keep))


def write_models_config(export_base: str | os.PathLike) -> dict[str, list[str]]:
  """Atomically (re)writes `models.config` and `models_stock.config`.

  `models.config` lists every subdirectory of `export_base` holding at least
  one integer version (a `model_config_list` for `--model_config_file`);
  `models_stock.config` only those whose latest version's export report
  records no custom ops (loadable by stock TensorFlow Serving).

  Returns:
    {"all": [names], "stock": [names]}.
  """
  export_base = os.path.abspath(os.fspath(export_base))
  names = sorted(n for n in os.listdir(export_base)
                 if not n.startswith(".") and os.path.isdir(os.path.join(export_base, n))
                 and list_versions(os.path.join(export_base, n)))
  stock = []
  for name in names:
    latest = max(list_versions(os.path.join(export_base, name)))
    report = read_report(os.path.join(export_base, name, str(latest)))
    if report is not None and report.get("custom_ops") == []:
      stock.append(name)
  for file, selected in ((MODELS_CONFIG, names), (MODELS_STOCK_CONFIG, stock)):
    config = model_server_config_pb2.ModelServerConfig()
    for name in selected:
      entry = config.model_config_list.config.add()
      entry.name = name
      entry.base_path = os.path.join(export_base, name)
      entry.model_platform = "tensorflow"
    with atomic.atomic_file(os.path.join(export_base, file)) as f:
      os.chmod(f.name, FILE_MODE)  # mkstemp's 0600 would hide it from a server user
      f.write(text_format.MessageToString(config))
  return {"all": names, "stock": stock}


def publish(built: Mapping[str, str], export_base: str, version: int) -> dict[str, str]:
  """Renames every built temporary directory to its integer version name.

  All-or-nothing as far as the file system allows: a failed rename moves the
  already published versions back out of sight before re-raising.
  """
  done: list[tuple[str, str]] = []
  try:
    for name, tmp in built.items():
      dest = os.path.join(export_base, name, str(version))
      if os.path.exists(dest):
        raise FileExistsError(f"{dest} appeared during the export (concurrent exporter?).")
      os.rename(tmp, dest)
      done.append((tmp, dest))
  except BaseException:
    for tmp, dest in reversed(done):
      os.rename(dest, tmp)
    raise
  return {name: os.path.join(export_base, name, str(version)) for name in built}
