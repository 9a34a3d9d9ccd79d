"""Loads SavedModel versions, keeps the right ones serving, and runs requests.

This is the server's core, the role `ServerCore` plays in TF Serving:

* Layout: each model has a base path `BASE/NAME/` whose integer-named
  subdirectories are versions (`BASE/NAME/1/saved_model.pb`). Other entries
  (e.g. `.tmp-2` while an exporter is still writing) are ignored, so exporters
  must build a version elsewhere and rename it into place.
* Version policy (per model, from `ModelConfig`): `latest` (the N highest
  versions, default 1), `all`, or `specific` versions. A version that failed
  to load is left out of the choice, so with `latest` the previous version
  keeps serving; the failure is logged and shown in the model's status
  (state END, the load error's code and message). It is retried only after its
  directory changes.
* Hot swap: `poll_once()` (called every `--file_system_poll_wait_seconds` by
  `start_polling`) loads new versions first and then publishes a new immutable
  {version: Servable} map with one assignment. A request looks the map up once
  and keeps a reference to its `Servable`, so it finishes on the version it
  started with even if that version is unloaded meanwhile; nothing is dropped.
* Requests: `predict()` bounds concurrency (at most `max_concurrent_requests`
  running, at most `max_queued_requests` waiting, others get
  RESOURCE_EXHAUSTED) and optionally a deadline (DEADLINE_EXCEEDED).
* Status and metadata answers are the TF Serving protos
  (`GetModelStatusResponse`, `GetModelMetadataResponse` with the MetaGraphDef's
  SignatureDefMap packed in an Any under "signature_def").

All request errors are `tensor_codec.ServingError` with TF Serving's codes and
messages ("Servable not found for request: Latest(name)", ...).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gc
import os
import re
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from absl import logging
import grpc
import numpy as np

import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from google.protobuf import message as protobuf_message
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import tensor_codec
from serving.tensor_codec import ServingError

_VERSION_DIR = re.compile(r"^\d+$")
_State = get_model_status_pb2.ModelVersionStatus.State


def import_custom_ops() -> bool:
  """Registers ScaNN's TF ops, which SavedModels with ScaNN retrieval need.

  Returns:
    True if scann was imported; False (logged) if it is not installed, in which
    case only models without ScaNN ops load.
  """
  try:
    import scann  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    logging.warning("scann is not importable (%s); SavedModels using ScaNN ops "
                    "will fail to load.", e)
    return False
  return True


# ---------------------------------------------------------------------------
# Configuration.


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


# ---------------------------------------------------------------------------
# One loaded version.


def _clean_tf_message(message: str) -> str:
  """Drops eager-runtime decoration so the message reads like TF Serving's."""
  message = re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", message)
  lines = message.split("\n")
  if lines and lines[0].startswith("Graph execution error:"):
    lines = lines[1:]
    while lines and not lines[0].strip():
      lines = lines[1:]
    if lines and lines[0].startswith("Detected at node"):
      lines = lines[1:]
      while lines and (lines[0].startswith(" ") or lines[0] == "<stack traces unavailable>"):
        lines = lines[1:]
  return "\n".join(lines).strip() or message


def _error_from_exception(e: BaseException) -> ServingError:
  if isinstance(e, ServingError):
    return e
  if isinstance(e, tf.errors.OpError):
    return ServingError(tensor_codec.status_code_from_number(e.error_code),
                        _clean_tf_message(e.message))
  if isinstance(e, (ValueError, TypeError)):
    return tensor_codec.invalid_argument(str(e))
  return ServingError(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")


class Servable:
  """One loaded version of a model.

  Attributes:
    name: model name.
    version: version number.
    path: the version directory.
    signatures: every SignatureDef of the served MetaGraphDef, by name.
    signature_def_map: the same as a `tensorflow.serving.SignatureDefMap` proto.
  """

  def __init__(self, name: str, version: int, path: str, tags: Sequence[str]):
    self.name = name
    self.version = version
    self.path = path
    meta_graph = read_meta_graph(path, tags)
    self.signature_def_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature_def in meta_graph.signature_def.items():
      self.signature_def_map.signature_def[key].CopyFrom(signature_def)
    self.signatures = {
        key: tensor_codec.signature_from_proto(key, signature_def)
        for key, signature_def in meta_graph.signature_def.items()
    }
    self._loaded = tf.saved_model.load(path, tags=list(tags))
    self._functions = dict(self._loaded.signatures.items())

  def signature(self, name: str) -> tensor_codec.Signature:
    """The named signature ("" -> serving_default) for gRPC requests.

    Raises:
      ServingError: FAILED_PRECONDITION 'Serving signature key "X" not found.'
    """
    key = name or tensor_codec.DEFAULT_SIGNATURE
    if key not in self.signatures:
      raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                         f'Serving signature key "{key}" not found.')
    return self.signatures[key]

  def rest_signature(self, name: str) -> tensor_codec.Signature:
    """Like `signature`, with the REST API's INVALID_ARGUMENT message."""
    key = name or tensor_codec.DEFAULT_SIGNATURE
    if key not in self.signatures:
      raise tensor_codec.invalid_argument(
          f'Serving signature name: "{key}" not found in signature def')
    return self.signatures[key]

  def predict(self, signature_name: str, inputs: Mapping[str, np.ndarray],
              output_filter: Sequence[str] = (), max_batch_size: int = 0
              ) -> dict[str, np.ndarray]:
    """Validates the inputs and runs the signature.

    Args:
      signature_name: "" means serving_default.
      inputs: alias -> array ([B, ...] for batched inputs).
      output_filter: aliases to return; empty = all outputs.
      max_batch_size: see `tensor_codec.validate_inputs`.

    Returns:
      alias -> output array (DT_STRING outputs as object arrays of bytes).

    Raises:
      ServingError: validation failures, and errors raised by the graph itself
        (e.g. tf.debugging assertions -> INVALID_ARGUMENT with their message).
    """
    signature = self.signature(signature_name)
    tensor_codec.check_signature_is_runnable(signature)
    tensor_codec.validate_inputs(signature, inputs, max_batch_size=max_batch_size)
    aliases = tensor_codec.check_output_filter(signature, output_filter)
    function = self._functions.get(signature.name)
    if function is None:
      raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                         f'Serving signature key "{signature.name}" is not callable.')
    try:
      feeds = {alias: tf.constant(array, dtype=signature.inputs[alias].dtype)
               for alias, array in inputs.items()}
      results = function(**feeds)
      return {alias: results[alias].numpy() for alias in aliases}
    except Exception as e:  # pylint: disable=broad-except
      raise _error_from_exception(e) from None


def read_meta_graph(path: str, tags: Sequence[str]) -> Any:
  """The MetaGraphDef in `path` (saved_model.pb or .pbtxt) whose tag set equals `tags`.

  Raises:
    ServingError: NOT_FOUND if there is no SavedModel file or no such tag set,
      DATA_LOSS if the file does not parse.
  """
  saved_model = saved_model_pb2.SavedModel()
  pb_path = os.path.join(path, "saved_model.pb")
  pbtxt_path = os.path.join(path, "saved_model.pbtxt")
  try:
    if os.path.exists(pb_path):
      with open(pb_path, "rb") as f:
        saved_model.ParseFromString(f.read())
    elif os.path.exists(pbtxt_path):
      with open(pbtxt_path, encoding="utf-8") as f:
        text_format.Parse(f.read(), saved_model)
    else:
      raise ServingError(grpc.StatusCode.NOT_FOUND,
                         f"SavedModel file does not exist at: {pb_path}")
  except (protobuf_message.DecodeError, text_format.ParseError, UnicodeDecodeError) as e:
    raise ServingError(grpc.StatusCode.DATA_LOSS,
                       f"Can't parse the SavedModel in {path}: {e}") from None
  wanted = set(tags)
  for meta_graph in saved_model.meta_graphs:
    if set(meta_graph.meta_info_def.tags) == wanted:
      return meta_graph
  available = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
  raise ServingError(
      grpc.StatusCode.NOT_FOUND,
      f"Could not find meta graph def matching supplied tags: {{ {' '.join(sorted(wanted))} }}. "
      f"Available tag sets: {available}")


# ---------------------------------------------------------------------------
# Admission control.


class _Admission:
  """At most `limit` holders; at most `max_waiting` threads wait for a slot."""

  def __init__(self, limit: int, max_waiting: int):
    self._limit = limit
    self._max_waiting = max_waiting
    self._in_flight = 0
    self._waiting = 0
    self._cond = threading.Condition()

  def acquire(self, deadline: float | None) -> None:
    with self._cond:
      if self._in_flight < self._limit:
        self._in_flight += 1
        return
      if self._waiting >= self._max_waiting:
        raise ServingError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Server is at its limit of {self._limit} concurrent requests with "
            f"{self._waiting} more queued; retry later.")
      self._waiting += 1
      try:
        while self._in_flight >= self._limit:
          remaining = None if deadline is None else deadline - time.monotonic()
          if remaining is not None and remaining <= 0:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "Deadline exceeded while queued for a free request slot.")
          self._cond.wait(remaining)
        self._in_flight += 1
      finally:
        self._waiting -= 1

  def release(self) -> None:
    with self._cond:
      self._in_flight -= 1
      self._cond.notify_all()

  def wait_idle(self, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with self._cond:
      while self._in_flight or self._waiting:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
          return False
        self._cond.wait(remaining)
    return True

  @property
  def in_flight(self) -> int:
    return self._in_flight

  @property
  def waiting(self) -> int:
    return self._waiting


# ---------------------------------------------------------------------------
# The manager.


@dataclasses.dataclass
class _VersionStatus:
  state: int
  code: grpc.StatusCode = grpc.StatusCode.OK
  message: str = ""


def _dir_fingerprint(path: str) -> tuple:
  """Cheap identity of a version directory's contents (names, sizes, mtimes)."""
  entries = []
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files):
      try:
        st = os.stat(os.path.join(root, name))
      except OSError:
        continue
      entries.append((os.path.relpath(os.path.join(root, name), path), st.st_size,
                      st.st_mtime_ns))
    if len(entries) > 10000:
      break
  return tuple(entries)


class ModelManager:
  """Serves the configured models; see the module docstring for the contract."""

  def __init__(self, configs: Sequence[ModelConfig], *,
               saved_model_tags: Sequence[str] = ("serve",),
               limits: ServingLimits | None = None,
               loader: Callable[[str, int, str, Sequence[str]], Servable] = Servable):
    """Creates the manager; nothing is loaded until `poll_once()`.

    Args:
      configs: the served models (unique names).
      saved_model_tags: tag set of the MetaGraphDef to serve.
      limits: concurrency and batch bounds.
      loader: builds a Servable (name, version, path, tags); tests replace it.
    """
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
      raise ValueError(f"model names must be unique, got {names}")
    self._configs = {c.name: c for c in configs}
    self._tags = tuple(saved_model_tags)
    self._limits = limits or ServingLimits()
    self._loader = loader
    # name -> {version: Servable}; replaced as a whole, never mutated.
    self._serving: Mapping[str, Mapping[int, Servable]] = {c.name: {} for c in configs}
    self._status: dict[str, dict[int, _VersionStatus]] = {c.name: {} for c in configs}
    self._failed: dict[str, dict[int, tuple]] = {c.name: {} for c in configs}
    self._lock = threading.Lock()
    self._poll_lock = threading.Lock()
    self._stop = threading.Event()
    self._poller: threading.Thread | None = None
    self._admission = _Admission(self._limits.max_concurrent_requests,
                                 self._limits.max_queued_requests)
    self._executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=self._limits.max_concurrent_requests, thread_name_prefix="inference")
    self._warned_empty: set[str] = set()

  @property
  def limits(self) -> ServingLimits:
    return self._limits

  @property
  def model_names(self) -> list[str]:
    return sorted(self._configs)

  @property
  def requests_in_flight(self) -> int:
    """Predictions running now."""
    return self._admission.in_flight

  @property
  def requests_queued(self) -> int:
    """Predictions waiting for a running slot."""
    return self._admission.waiting

  # -- loading --------------------------------------------------------------

  def _versions_on_disk(self, config: ModelConfig) -> dict[int, str]:
    try:
      entries = os.listdir(config.base_path)
    except OSError:
      entries = []
    versions = {}
    for entry in entries:
      path = os.path.join(config.base_path, entry)
      if _VERSION_DIR.match(entry) and os.path.isdir(path):
        versions[int(entry)] = path
    if not versions and config.name not in self._warned_empty:
      self._warned_empty.add(config.name)
      logging.warning(
          "No versions of servable %s found under base path %s. Did you forget to "
          "name your leaf directory as a number (eg. '/1/')?", config.name, config.base_path)
    elif versions:
      self._warned_empty.discard(config.name)
    return versions

  def _set_status(self, name: str, version: int, state: int,
                  code: grpc.StatusCode = grpc.StatusCode.OK, message: str = "") -> None:
    with self._lock:
      self._status[name][version] = _VersionStatus(state, code, message)

  def _poll_model(self, config: ModelConfig) -> None:
    name = config.name
    on_disk = self._versions_on_disk(config)
    failed = self._failed[name]
    for version in list(failed):
      # A broken version is retried once its directory changes (or it is gone).
      if version not in on_disk or _dir_fingerprint(on_disk[version]) != failed[version]:
        del failed[version]
    current = dict(self._serving.get(name, {}))
    loaded = dict(current)
    while True:
      aspired = config.version_policy.choose(v for v in on_disk if v not in failed)
      to_load = sorted(aspired - set(loaded), reverse=True)
      if not to_load:
        break
      version = to_load[0]
      path = on_disk[version]
      self._set_status(name, version, _State.LOADING)
      logging.info("Loading servable: {name: %s version: %d} from %s", name, version, path)
      started = time.monotonic()
      try:
        loaded[version] = self._loader(name, version, path, self._tags)
      except Exception as e:  # pylint: disable=broad-except
        error = _error_from_exception(e)
        if error.code == grpc.StatusCode.OK:
          error = ServingError(grpc.StatusCode.UNKNOWN, str(e))
        failed[version] = _dir_fingerprint(path)
        self._set_status(name, version, _State.END, error.code, error.message)
        logging.error("Loading servable: {name: %s version: %d} failed: %s", name,
                      version, error)
        continue
      self._set_status(name, version, _State.AVAILABLE)
      logging.info("Successfully loaded servable version {name: %s version: %d} in %.2fs",
                   name, version, time.monotonic() - started)
    serving = {v: s for v, s in loaded.items() if v in aspired}
    if serving.keys() == current.keys():
      return
    with self._lock:
      new_map = dict(self._serving)
      new_map[name] = serving
      self._serving = new_map  # the atomic swap
    for version in sorted(set(current) - set(serving)):
      # In-flight requests still hold the Servable; it is freed after them.
      self._set_status(name, version, _State.UNLOADING)
      logging.info("Unloading servable version {name: %s version: %d}", name, version)
      self._set_status(name, version, _State.END)
    if set(current) - set(serving):
      del current, loaded
      gc.collect()

  def poll_once(self) -> None:
    """Scans every base path once, loading / unloading versions as the policy says."""
    with self._poll_lock:
      for config in self._configs.values():
        try:
          self._poll_model(config)
        except Exception:  # pylint: disable=broad-except
          logging.exception("Polling model %s failed; will retry.", config.name)

  def start_polling(self, interval_seconds: float) -> None:
    """Polls in a daemon thread every `interval_seconds` until `stop()`."""
    if interval_seconds <= 0 or self._poller is not None:
      return

    def loop():
      while not self._stop.wait(interval_seconds):
        self.poll_once()

    self._poller = threading.Thread(target=loop, name="model-poller", daemon=True)
    self._poller.start()

  def stop(self, drain_timeout: float = 30.0) -> bool:
    """Stops polling and waits for running predictions. True if all finished."""
    self._stop.set()
    if self._poller is not None:
      self._poller.join(timeout=60)
    idle = self._admission.wait_idle(drain_timeout)
    self._executor.shutdown(wait=idle)
    return idle

  # -- lookups ----------------------------------------------------------------

  def _resolve_label(self, name: str, label: str) -> int:
    config = self._configs.get(name)
    labels = config.version_labels if config else {}
    if label not in labels:
      raise tensor_codec.invalid_argument(f"Unrecognized servable version label: {label}")
    return labels[label]

  def get_servable(self, name: str, version: int | None = None,
                   label: str | None = None) -> Servable:
    """The loaded version a request should use.

    Args:
      name: model name.
      version: a specific version, or None for the latest loaded one.
      label: a version label (exclusive with `version`).

    Raises:
      ServingError: NOT_FOUND "Servable not found for request: Latest(name)" /
        "Specific(name, v)"; INVALID_ARGUMENT for an unknown label or both
        version and label.
    """
    if version is not None and label is not None:
      raise tensor_codec.invalid_argument(
          f"Both model version ({version}) and model version label ({label}) "
          "cannot be supplied.")
    if label is not None:
      version = self._resolve_label(name, label)
    versions = self._serving.get(name) or {}
    if version is None:
      if not versions:
        raise ServingError(grpc.StatusCode.NOT_FOUND,
                           f"Servable not found for request: Latest({name})")
      return versions[max(versions)]
    servable = versions.get(version)
    if servable is None:
      raise ServingError(grpc.StatusCode.NOT_FOUND,
                         f"Servable not found for request: Specific({name}, {version})")
    return servable

  def get_model_status(self, name: str, version: int | None = None,
                       label: str | None = None) -> Any:
    """A `GetModelStatusResponse` for all versions, or the one asked for.

    Raises:
      ServingError: NOT_FOUND "Could not find version V of model M" /
        "Could not find any versions of model M".
    """
    if label is not None:
      version = self._resolve_label(name, label)
    with self._lock:
      statuses = dict(self._status.get(name, {}))
    if version is not None:
      if version not in statuses:
        raise ServingError(grpc.StatusCode.NOT_FOUND,
                           f"Could not find version {version} of model {name}")
      statuses = {version: statuses[version]}
    elif not statuses:
      raise ServingError(grpc.StatusCode.NOT_FOUND,
                         f"Could not find any versions of model {name}")
    response = get_model_status_pb2.GetModelStatusResponse()
    for v in sorted(statuses, reverse=True):
      status = statuses[v]
      entry = response.model_version_status.add()
      entry.version = v
      entry.state = status.state
      entry.status.error_code = status.code.value[0]
      entry.status.error_message = status.message
    return response

  def get_model_metadata(self, name: str, version: int | None = None,
                         label: str | None = None) -> Any:
    """A `GetModelMetadataResponse` with the SignatureDefMap under "signature_def"."""
    servable = self.get_servable(name, version, label)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.metadata["signature_def"].Pack(servable.signature_def_map)
    return response

  # -- inference ----------------------------------------------------------------

  def predict(self, servable: Servable, signature_name: str,
              inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = (),
              timeout_seconds: float | None = None) -> dict[str, np.ndarray]:
    """Runs `servable.predict` within the concurrency bound and the deadline.

    Args:
      servable: from `get_servable` (the request keeps it for its lifetime).
      signature_name, inputs, output_filter: see `Servable.predict`.
      timeout_seconds: None = no deadline; otherwise the call fails with
        DEADLINE_EXCEEDED after that long (the graph run itself cannot be
        interrupted: it finishes in the background and keeps its slot).

    Raises:
      ServingError: RESOURCE_EXHAUSTED when the queue is full, DEADLINE_EXCEEDED,
        and everything `Servable.predict` raises.
    """
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    self._admission.acquire(deadline)
    run = lambda: servable.predict(signature_name, inputs, output_filter,
                                   self._limits.max_batch_size)
    if deadline is None:
      try:
        return run()
      finally:
        self._admission.release()
    try:
      future = self._executor.submit(run)
    except RuntimeError:
      self._admission.release()
      raise ServingError(grpc.StatusCode.UNAVAILABLE, "Server is shutting down.") from None
    future.add_done_callback(lambda _: self._admission.release())
    try:
      return future.result(timeout=max(0.0, deadline - time.monotonic()))
    except concurrent.futures.TimeoutError:
      raise ServingError(
          grpc.StatusCode.DEADLINE_EXCEEDED,
          f"Prediction did not finish within {timeout_seconds * 1000:.0f} ms") from None
