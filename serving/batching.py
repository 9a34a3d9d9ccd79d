"""Request batching: concurrent predictions on one signature run as one call.

TF Serving's `--enable_batching`. Under load, a model server spends most of
its time per call (dispatch, conversions, thread hand-offs), not per row; a
signature whose inputs and outputs all have a batch dimension can run the rows
of many requests in one call and give each request its own rows back.

Contract:

* `BatchingParameters` mirrors TF Serving's batching_parameters_file
  (`max_batch_size`, `batch_timeout_micros`, `num_batch_threads`,
  `max_enqueued_batches`); `parameters_from_text` reads that text format
  (`max_batch_size { value: 32 }`), with errors naming the file and line.
* `is_batchable(signature)`: every input and output shape is known to start
  with an unknown (batch) dimension.
* `Batcher.run(servable, signature_name, inputs, output_filter, timeout)`
  queues the request with others of the same servable, signature, output
  filter and non-batch dimensions, and returns exactly what
  `servable.predict` would return for it alone. A batch is cut when it
  reaches `max_batch_size` rows or its oldest request has waited
  `batch_timeout_micros` (0: take whatever is queued when a batch thread is
  free, so a lone request waits for nothing). If a batched call fails, each
  of its requests runs alone, so one bad request never fails the others.
  More than `max_enqueued_batches * max_batch_size` queued rows fail fast
  with UNAVAILABLE, as TF Serving's full batch queue does.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import re
import threading
import time
from typing import Mapping, Sequence

import grpc
import numpy as np

from serving import servable as servable_lib
from serving import signatures
from serving.errors import ServingError


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
  """How requests are batched (TF Serving's BatchingParameters).

  Attributes:
    max_batch_size: most rows in one batched call.
    batch_timeout_micros: longest a request waits for others to join its
      batch; 0 = never wait (batches form only while the threads are busy).
    num_batch_threads: batched calls running at once. One by default: a
      batched call already uses every core through TensorFlow's own thread
      pools, and while it runs the next batch fills up (on 2 cores, one thread
      gave about 15 % more gRPC throughput than two at 32 clients).
    max_enqueued_batches: queue bound, in batches of max_batch_size rows.
  """
  max_batch_size: int = 64
  batch_timeout_micros: int = 0
  num_batch_threads: int = 1
  max_enqueued_batches: int = 100

  def __post_init__(self):
    for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"batching {name}={value!r}; pass an integer >= 1.")
    if not isinstance(self.batch_timeout_micros, int) or self.batch_timeout_micros < 0:
      raise ValueError(f"batching batch_timeout_micros={self.batch_timeout_micros!r}; pass an "
                       "integer >= 0.")


_WRAPPED = re.compile(r"^\s*(\w+)\s*\{\s*value\s*:\s*(-?\d+)\s*\}\s*$")
_PLAIN = re.compile(r"^\s*(\w+)\s*:\s*(-?\d+)\s*$")
_FIELDS = {f.name for f in dataclasses.fields(BatchingParameters)}
# Fields of TF Serving's format that this server reads but does not need.
_IGNORED = {"allowed_batch_sizes", "pad_variable_length_inputs", "thread_pool_name",
            "enable_large_batch_splitting", "max_execution_batch_size"}


def parameters_from_text(text: str, source: str = "<batching parameters>") -> BatchingParameters:
  """Parses TF Serving's text-format BatchingParameters.

  Raises:
    ValueError: naming `source` and the line, for an unknown field, a
      malformed line or a bad value.
  """
  values: dict[str, int] = {}
  for number, line in enumerate(text.splitlines(), start=1):
    stripped = line.split("#", 1)[0].strip()
    if not stripped:
      continue
    match = _WRAPPED.match(stripped) or _PLAIN.match(stripped)
    name = match.group(1) if match else stripped.split()[0].rstrip(":{")
    if name in _IGNORED:
      continue
    if not match:
      raise ValueError(f"{source}:{number}: cannot parse {line.strip()!r}; expected e.g. "
                       "'max_batch_size { value: 32 }'.")
    if name not in _FIELDS:
      raise ValueError(f"{source}:{number}: unknown batching parameter {name!r}; known: "
                       f"{', '.join(sorted(_FIELDS))}.")
    values[name] = int(match.group(2))
  try:
    return BatchingParameters(**values)
  except ValueError as e:
    raise ValueError(f"{source}: {e}") from None


def is_batchable(signature: signatures.Signature) -> bool:
  """Whether every input and output of `signature` has a leading batch dimension."""
  specs = list(signature.inputs.values()) + list(signature.outputs.values())
  return bool(signature.inputs) and all(
      s.shape is not None and len(s.shape) > 0 and s.shape[0] is None for s in specs)


@dataclasses.dataclass
class _Task:
  inputs: Mapping[str, np.ndarray]
  rows: int
  enqueued: float
  future: concurrent.futures.Future


class Batcher:
  """Runs batchable predictions in batches; see the module docstring."""

  def __init__(self, parameters: BatchingParameters):
    self._params = parameters
    self._max_queued_rows = parameters.max_batch_size * parameters.max_enqueued_batches
    self._cond = threading.Condition()
    self._queues: dict[tuple, collections.deque[_Task]] = {}
    self._queued_rows = 0
    self._closed = False
    self._threads = [threading.Thread(target=self._loop, name=f"batch-{i}", daemon=True)
                     for i in range(parameters.num_batch_threads)]
    for thread in self._threads:
      thread.start()

  @property
  def parameters(self) -> BatchingParameters:
    return self._params

  def run(self, servable: servable_lib.Servable, signature_name: str,
          inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = (),
          timeout_seconds: float | None = None) -> dict[str, np.ndarray]:
    """`servable.predict(signature_name, inputs, output_filter)`, batched with others.

    `inputs` must already be validated against the signature (same aliases,
    dtypes, shapes; batch >= 1).

    Raises:
      ServingError: what the request alone would raise; UNAVAILABLE when the
        queue is full or the batcher is closed; DEADLINE_EXCEEDED after
        `timeout_seconds`.
    """
    rows = int(next(iter(inputs.values())).shape[0])
    shapes = tuple(sorted((alias, array.shape[1:], array.dtype.str)
                          for alias, array in inputs.items()))
    key = (servable, signature_name, tuple(output_filter), shapes)  # servables hash by identity
    task = _Task(inputs, rows, time.monotonic(), concurrent.futures.Future())
    with self._cond:
      if self._closed:
        raise ServingError(grpc.StatusCode.UNAVAILABLE, "Server is shutting down.")
      if self._queued_rows + rows > self._max_queued_rows:
        raise ServingError(grpc.StatusCode.UNAVAILABLE,
                           "The batch scheduling queue to which this task was submitted is full")
      self._queues.setdefault(key, collections.deque()).append(task)
      self._queued_rows += rows
      self._cond.notify()
    try:
      return task.future.result(timeout=timeout_seconds)
    except concurrent.futures.TimeoutError:
      task.future.cancel()  # still queued: it will not run
      raise ServingError(
          grpc.StatusCode.DEADLINE_EXCEEDED,
          f"Prediction did not finish within {timeout_seconds * 1000:.0f} ms") from None

  def close(self) -> None:
    """Finishes the queued batches, then stops the threads."""
    with self._cond:
      self._closed = True
      self._cond.notify_all()
    for thread in self._threads:
      thread.join(timeout=60)

  def _next_batch(self) -> tuple[tuple, list[_Task]] | None:
    """Waits for a batch to cut (under the lock); None once closed and drained."""
    timeout = self._params.batch_timeout_micros / 1e6
    while True:
      now = time.monotonic()
      ready_key, wait = None, None
      for key, queue in self._queues.items():
        rows = sum(t.rows for t in queue)
        age = now - queue[0].enqueued
        if rows >= self._params.max_batch_size or age >= timeout or self._closed:
          ready_key = key
          break
        remaining = timeout - age
        wait = remaining if wait is None else min(wait, remaining)
      if ready_key is not None:
        queue = self._queues[ready_key]
        batch, rows = [queue.popleft()], 0
        rows = batch[0].rows
        while queue and rows + queue[0].rows <= self._params.max_batch_size:
          task = queue.popleft()
          batch.append(task)
          rows += task.rows
        if not queue:
          del self._queues[ready_key]
        self._queued_rows -= rows
        return ready_key, batch
      if self._closed:
        return None
      self._cond.wait(wait)

  def _loop(self) -> None:
    while True:
      with self._cond:
        picked = self._next_batch()
      if picked is None:
        return
      (servable, signature_name, output_filter, _), batch = picked
      self._run_batch(servable, signature_name, list(output_filter), batch)

  @staticmethod
  def _run_batch(servable: servable_lib.Servable, signature_name: str,
                 output_filter: list[str], batch: list[_Task]) -> None:
    live = [t for t in batch if t.future.set_running_or_notify_cancel()]
    if not live:
      return
    if len(live) > 1:
      merged = {alias: np.concatenate([t.inputs[alias] for t in live], axis=0)
                for alias in live[0].inputs}
      try:
        outputs = servable.predict(signature_name, merged, output_filter)
      except Exception:  # pylint: disable=broad-except
        outputs = None  # one request may be at fault: each runs alone below
      if outputs is not None and any(len(a) != sum(t.rows for t in live)
                                     for a in outputs.values()):
        outputs = None  # not row-aligned after all: run the requests alone
      if outputs is not None:
        start = 0
        for task in live:
          task.future.set_result({alias: array[start:start + task.rows]
                                  for alias, array in outputs.items()})
          start += task.rows
        return
    for task in live:
      try:
        task.future.set_result(servable.predict(signature_name, task.inputs, output_filter))
      except Exception as e:  # pylint: disable=broad-except
        task.future.set_exception(e)

