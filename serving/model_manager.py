"""Keeps the configured versions of each model loaded and answers requests on them.

This is the role `ServerCore` plays in TF Serving. Contract:

* Layout: each model's base path holds integer-named version directories
  (`BASE/NAME/1/saved_model.pb`); other entries (e.g. `.tmp-2`) are ignored.
* `poll_once()` (every `interval_seconds` after `start_polling`) loads the
  versions the model's `VersionPolicy` chooses among the loadable ones, then
  publishes the new {version: Servable} map with one assignment. A version
  that failed to load is left out of the choice (with `latest`, the previous
  version keeps serving), shows state END with its error in the status, and
  is retried only after its directory changes.
* A version's `assets.extra/tf_serving_warmup_requests` are replayed
  (`serving.warmup`) before it becomes AVAILABLE; a version whose warm-up
  fails is not served (state END with the error).
* Version labels take effect with `apply_version_labels()`, after the first
  load, and must name loaded versions unless explicitly allowed (TF Serving's
  rule); before that no label resolves.
* `get_servable(name, version | label)` returns the `Servable` a request
  should keep for its lifetime; unloading a version never breaks a request
  that holds it.
* `predict(servable, ...)` runs within `ServingLimits` (admission control,
  batch bound) and an optional deadline; with `batching_parameters`,
  concurrent predictions of a batchable signature share one call
  (`serving.batching`), with the same results as alone.
* `get_model_status` / `get_model_metadata` answer with TF Serving's protos
  (`GetModelStatusResponse`; `GetModelMetadataResponse` with the SignatureDefMap
  packed in an Any under "signature_def").

Every request error is an `errors.ServingError` with TF Serving's code and
message ("Servable not found for request: Latest(name)", ...).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gc
import os
import re
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import grpc
import numpy as np

from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2

from serving import admission
from serving import batching
from serving import errors
from serving import monitoring
from serving import servable as servable_lib
from serving import server_config
from serving import validation
from serving import warmup
from serving.errors import ServingError

_VERSION_DIR = re.compile(r"^\d+$")
_State = get_model_status_pb2.ModelVersionStatus.State

# Builds a Servable from (model name, version, version directory, tags).
ServableLoader = Callable[[str, int, str, Sequence[str]], servable_lib.Servable]


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

  def __init__(self, configs: Sequence[server_config.ModelConfig], *,
               saved_model_tags: Sequence[str] = ("serve",),
               limits: server_config.ServingLimits | None = None,
               loader: ServableLoader = servable_lib.Servable,
               batching_parameters: batching.BatchingParameters | None = None,
               metrics: monitoring.ServingMetrics | None = None):
    """Creates the manager; nothing is loaded until `poll_once()`.

    Args:
      configs: the served models (unique names).
      saved_model_tags: tag set of the MetaGraphDef to serve.
      limits: concurrency and batch bounds.
      loader: builds a Servable (name, version, path, tags); tests replace it.
      batching_parameters: batch concurrent predictions of batchable
        signatures (`serving.batching`); None = every request runs alone.
      metrics: where load attempts and version states are recorded (None = nowhere).
    """
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
      raise ValueError(f"model names must be unique, got {names}")
    self._configs = {c.name: c for c in configs}
    self._tags = tuple(saved_model_tags)
    self._limits = limits or server_config.ServingLimits()
    self._loader = loader
    self._metrics = metrics
    # name -> {version: Servable}; replaced as a whole, never mutated.
    self._serving: Mapping[str, Mapping[int, servable_lib.Servable]] = {c.name: {} for c in configs}
    self._status: dict[str, dict[int, _VersionStatus]] = {c.name: {} for c in configs}
    self._failed: dict[str, dict[int, tuple]] = {c.name: {} for c in configs}
    self._lock = threading.Lock()
    self._poll_lock = threading.Lock()
    self._stop = threading.Event()
    self._poller: threading.Thread | None = None
    self._admission = admission.Admission(self._limits.max_concurrent_requests,
                                          self._limits.max_queued_requests)
    self._executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=self._limits.max_concurrent_requests, thread_name_prefix="inference")
    self._warned_empty: set[str] = set()
    self._batcher = (batching.Batcher(batching_parameters)
                     if batching_parameters is not None else None)
    self._labels: Mapping[str, Mapping[str, int]] = {}  # set by apply_version_labels

  @property
  def limits(self) -> server_config.ServingLimits:
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

  def _versions_on_disk(self, config: server_config.ModelConfig) -> dict[int, str]:
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
    if self._metrics is not None:
      self._metrics.set_version_state(name, version, _State.Name(state))

  def _poll_model(self, config: server_config.ModelConfig) -> None:
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
        servable = self._loader(name, version, path, self._tags)
        replayed = warmup.replay(servable, max_batch_size=self._limits.max_batch_size)
        if replayed:
          logging.info("Finished reading warmup data for model at %s. Number of warmup "
                       "records read: %d.", path, replayed)
        loaded[version] = servable
      except Exception as e:  # pylint: disable=broad-except
        if self._metrics is not None:
          self._metrics.record_load(path, False, time.monotonic() - started)
        error = errors.error_from_exception(e)
        if error.code == grpc.StatusCode.OK:
          error = ServingError(grpc.StatusCode.UNKNOWN, str(e))
        failed[version] = _dir_fingerprint(path)
        self._set_status(name, version, _State.END, error.code, error.message)
        logging.error("Loading servable: {name: %s version: %d} failed: %s", name,
                      version, error)
        continue
      if self._metrics is not None:
        self._metrics.record_load(path, True, time.monotonic() - started)
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
    if self._batcher is not None:
      self._batcher.close()
    self._executor.shutdown(wait=idle)
    return idle

  # -- lookups ----------------------------------------------------------------

  def apply_version_labels(self, allow_unavailable: bool = False) -> None:
    """Puts the configured version labels into effect, as TF Serving does after loading.

    Until this succeeds no label resolves. Call it after the first `poll_once`.

    Args:
      allow_unavailable: TF Serving's
        --allow_version_labels_for_unavailable_models: labels may name
        versions that are not loaded (requests on them get NOT_FOUND).

    Raises:
      ServingError: FAILED_PRECONDITION "Request to assign label to version V
        of model M, which is not currently available for inference" (nothing
        is applied).
    """
    for name, config in sorted(self._configs.items()):
      available = self._serving.get(name) or {}
      for version in sorted(config.version_labels.values()):
        if not allow_unavailable and version not in available:
          raise ServingError(
              grpc.StatusCode.FAILED_PRECONDITION,
              f"Request to assign label to version {version} of model {name}, which is "
              "not currently available for inference")
    with self._lock:
      self._labels = {name: dict(config.version_labels)
                      for name, config in self._configs.items()}

  def _resolve_label(self, name: str, label: str) -> int:
    labels = self._labels.get(name, {})
    if label not in labels:
      raise errors.invalid_argument(f"Unrecognized servable version label: {label}")
    return labels[label]

  def get_servable(self, name: str, version: int | None = None,
                   label: str | None = None) -> servable_lib.Servable:
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
      raise errors.invalid_argument(
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

  def predict(self, servable: servable_lib.Servable, signature_name: str,
              inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = (),
              timeout_seconds: float | None = None, answer_at_deadline: bool = True
              ) -> dict[str, np.ndarray]:
    """Runs `servable.predict` within the concurrency bound and the deadline.

    Args:
      servable: from `get_servable` (the request keeps it for its lifetime).
      signature_name, inputs, output_filter: see `Servable.predict`.
      timeout_seconds: None = no deadline; otherwise the call fails with
        DEADLINE_EXCEEDED after that long (the graph run itself cannot be
        interrupted: it finishes in the background and keeps its slot). A
        request whose deadline passes while it waits for a slot never runs.
      answer_at_deadline: with a deadline, run on another thread so the
        caller gets DEADLINE_EXCEEDED on time even while the graph runs (REST
        answers 504). False runs in the caller's thread and bounds only the
        waiting: for callers whose client enforces its own deadline (gRPC),
        which saves a thread hand-off per request.

    Raises:
      ServingError: RESOURCE_EXHAUSTED when the queue is full, DEADLINE_EXCEEDED,
        and everything `Servable.predict` raises.
    """
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    self._admission.acquire(deadline)
    if self._batcher is not None:
      try:
        signature = servable.signature(signature_name)
      except ServingError:
        self._admission.release()
        raise
      if batching.is_batchable(signature):
        try:
          validation.check_signature_is_runnable(signature)
          validation.validate_inputs(signature, inputs,
                                     max_batch_size=self._limits.max_batch_size)
          aliases = validation.check_output_filter(signature, output_filter)
          remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
          return self._batcher.run(servable, signature.name, inputs, aliases, remaining)
        finally:
          self._admission.release()

    def run() -> dict[str, np.ndarray]:
      return servable.predict(signature_name, inputs, output_filter,
                              self._limits.max_batch_size)

    if deadline is None or not answer_at_deadline:
      try:
        if deadline is not None and time.monotonic() >= deadline:
          raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                             "Deadline exceeded before the prediction started.")
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
