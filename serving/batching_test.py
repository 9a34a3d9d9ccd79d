"""Tests for serving.batching: batches form under load, each request gets its own rows."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from pinsage_tf.export import warmup as export_warmup
from serving import batching
from serving import model_manager
from serving import server_config
from serving import signatures as sig
from serving import toy_models
from serving.errors import ServingError


class _Doubler:
  """A servable whose predict doubles x [B, 2], recording each call's batch size."""

  def __init__(self, delay: float = 0.05):
    self.calls: list[int] = []
    self._delay = delay
    self._lock = threading.Lock()

  def predict(self, signature_name, inputs, output_filter=(), max_batch_size=0):
    del signature_name, max_batch_size
    x = inputs["x"]
    with self._lock:
      self.calls.append(len(x))
    time.sleep(self._delay)
    if (x < 0).any():
      raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "x must be >= 0")
    out = {"y": 2 * x, "n": np.full([len(x)], len(x))}
    return {k: v for k, v in out.items() if not output_filter or k in output_filter}


def _concurrently(call, requests):
  """call(request) for every request, each in its own thread at once; results in order.

  A ServingError raised by a call is its result.
  """
  results = [None] * len(requests)
  barrier = threading.Barrier(len(requests))

  def one(i):
    barrier.wait()
    try:
      results[i] = call(requests[i])
    except ServingError as e:
      results[i] = e

  threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(30)
  return results


def _batched(batcher, servable, output_filter=()):
  return lambda x: batcher.run(servable, "s", {"x": x}, output_filter)


def test_concurrent_requests_share_calls_and_get_their_own_rows():
  batcher = batching.Batcher(batching.BatchingParameters(max_batch_size=8, num_batch_threads=1))
  servable = _Doubler()
  requests = [np.full([1 + i % 2, 2], float(i), np.float32) for i in range(12)]
  results = _concurrently(_batched(batcher, servable, output_filter=["y"]), requests)
  batcher.close()
  for request, result in zip(requests, results):
    np.testing.assert_array_equal(result["y"], 2 * request)
    assert set(result) == {"y"}
  assert sum(servable.calls) == sum(len(r) for r in requests)  # every row ran once
  assert len(servable.calls) < len(requests)  # some shared a call
  assert max(servable.calls) <= 8


def test_a_bad_request_in_a_batch_fails_alone():
  batcher = batching.Batcher(batching.BatchingParameters(max_batch_size=16, num_batch_threads=1,
                                                         batch_timeout_micros=500_000))
  servable = _Doubler(delay=0.0)
  requests = [np.ones([1, 2], np.float32), -np.ones([1, 2], np.float32),
              3 * np.ones([2, 2], np.float32)]
  results = _concurrently(_batched(batcher, servable), requests)
  batcher.close()
  assert servable.calls[0] == 4  # tried together (the timeout let all three join) ...
  np.testing.assert_array_equal(results[0]["y"], 2 * requests[0])  # ... then each alone
  assert isinstance(results[1], ServingError) and results[1].message == "x must be >= 0"
  np.testing.assert_array_equal(results[2]["y"], 2 * requests[2])
  assert results[2]["n"].tolist() == [2, 2]  # computed alone, not sliced from the batch


def test_lone_request_waits_for_nothing_with_timeout_zero():
  batcher = batching.Batcher(batching.BatchingParameters(max_batch_size=64))
  servable = _Doubler(delay=0.0)
  result = batcher.run(servable, "s", {"x": np.ones([1, 2], np.float32)})
  batcher.close()
  assert servable.calls == [1] and result["n"].tolist() == [1]


def test_full_queue_is_unavailable_and_expired_requests_never_run():
  batcher = batching.Batcher(batching.BatchingParameters(
      max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1))
  servable = _Doubler(delay=0.5)
  busy = threading.Thread(target=batcher.run, args=(servable, "s", {"x": np.ones([1, 2])}))
  busy.start()
  time.sleep(0.1)  # the only thread is busy for 0.5 s
  with pytest.raises(ServingError) as info:
    batcher.run(servable, "s", {"x": np.ones([1, 2])}, timeout_seconds=0.05)
  assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
  with pytest.raises(ServingError) as info:
    batcher.run(servable, "s", {"x": np.ones([3, 2])})  # 3 rows > 2 x 1 allowed queued
  assert info.value.code == grpc.StatusCode.UNAVAILABLE
  busy.join(10)
  batcher.close()
  assert servable.calls == [1]  # the expired request was dropped from the queue


@pytest.mark.parametrize("text, message", [
    ("max_batch_size { value: 0 }", "max_batch_size=0; pass an integer >= 1"),
    ("max_batch_size { value: 8 }\nbatch_size { value: 3 }", "f.txt:2: unknown batching "
                                                             "parameter 'batch_size'"),
    ("max_batch_size { value: eight }", "f.txt:1: cannot parse"),
])
def test_bad_parameters_files_name_the_line(text, message):
  with pytest.raises(ValueError, match=message):
    batching.parameters_from_text(text, source="f.txt")


def test_parameters_file_like_tf_serving():
  params = batching.parameters_from_text(
      "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 500 }  # comment\n"
      "num_batch_threads { value: 4 }\npad_variable_length_inputs: true\n", source="f.txt")
  assert params == batching.BatchingParameters(max_batch_size=32, batch_timeout_micros=500,
                                               num_batch_threads=4)


def test_is_batchable():
  spec = sig.TensorSpecInfo
  batched = sig.Signature("s", sig.PREDICT_METHOD, {"x": spec("x", tf.float32, (None, 3))},
                          {"y": spec("y", tf.float32, (None,))})
  assert batching.is_batchable(batched)
  fixed = sig.Signature("s", sig.PREDICT_METHOD, {"x": spec("x", tf.float32, (2, 3))},
                        {"y": spec("y", tf.float32, (None,))})
  assert not batching.is_batchable(fixed)
  summary = sig.Signature("s", sig.PREDICT_METHOD, {"x": spec("x", tf.float32, (None, 3))},
                          {"y": spec("y", tf.float32, ())})
  assert not batching.is_batchable(summary)


def test_manager_with_batching_answers_like_without(tmp_path):
  toy_models.build_lookup_model(tmp_path / "m" / "1")
  config = server_config.ModelConfig("m", str(tmp_path / "m"))
  plain = model_manager.ModelManager([config])
  batched = model_manager.ModelManager(
      [config], batching_parameters=batching.BatchingParameters(batch_timeout_micros=100_000))
  for manager in (plain, batched):
    manager.poll_once()
  requests = [np.array([v], dtype=object) for v in (b"a", b"b", b"c", b"d", b"e", b"zz")]
  results = _concurrently(
      lambda ids: batched.predict(batched.get_servable("m"), "", {"item_ids": ids}), requests)
  for request, result in zip(requests[:-1], results[:-1]):
    alone = plain.predict(plain.get_servable("m"), "", {"item_ids": request})
    assert result.keys() == alone.keys()
    for alias in alone:
      np.testing.assert_array_equal(result[alias], alone[alias])
  assert isinstance(results[-1], ServingError)
  assert results[-1].code == grpc.StatusCode.INVALID_ARGUMENT and "unknown item id" in str(
      results[-1])
  for manager in (plain, batched):
    manager.stop(5)


def test_pinsage_retrieval_with_pybind_assets_batches_and_warms_up(tmp_path):
  # The pybind path answers batched requests (and the warm-up replay) as the
  # SavedModel answers each request alone.
  toy_models.build_pinsage_retrieval(tmp_path / "fast" / "1")
  toy_models.build_pinsage_retrieval(tmp_path / "plain" / "1", with_pybind=False)
  export_warmup.write_warmup_requests(
      str(tmp_path / "fast" / "1"), "m",
      [("related_items", {"item_ids": np.array([b"item3", b"item4"], dtype=object)}),
       ("related_items_by_embedding", {"embeddings": np.ones((2, 8), np.float32)})])
  plain = model_manager.ModelManager([server_config.ModelConfig("m", str(tmp_path / "plain"))])
  batched = model_manager.ModelManager(
      [server_config.ModelConfig("m", str(tmp_path / "fast"))],
      batching_parameters=batching.BatchingParameters(batch_timeout_micros=100_000))
  for manager in (plain, batched):
    manager.poll_once()
  status = batched.get_model_status("m").model_version_status[0]
  assert status.state == status.AVAILABLE and not status.status.error_message
  assert batched.get_servable("m").pybind_signatures
  requests = [np.array([f"item{i}".encode(), f"item{i + 7}".encode()], dtype=object)
              for i in range(6)] + [np.array([b"nope"], dtype=object)]
  results = _concurrently(lambda ids: batched.predict(
      batched.get_servable("m"), "related_items", {"item_ids": ids}), requests)
  for ids, result in zip(requests, results):
    try:
      alone = plain.predict(plain.get_servable("m"), "related_items", {"item_ids": ids})
    except ServingError as e:
      assert isinstance(result, ServingError)
      assert (result.code, result.message) == (e.code, e.message)
      continue
    for alias in alone:
      np.testing.assert_array_equal(result[alias], alone[alias])
  for manager in (plain, batched):
    manager.stop(5)
