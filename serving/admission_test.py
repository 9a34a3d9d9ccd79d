"""Tests for serving.admission: the slot limit, the queue bound, deadlines."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from serving import admission
from serving.errors import ServingError


def _wait_until(condition, timeout=30.0):
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, "condition not reached"
    time.sleep(0.01)


def test_full_queue_fails_fast_and_a_queued_holder_gets_the_freed_slot():
  gate = admission.Admission(limit=1, max_waiting=1)
  gate.acquire(None)
  queued = threading.Thread(target=gate.acquire, args=(None,))
  queued.start()
  _wait_until(lambda: gate.waiting == 1)
  with pytest.raises(ServingError) as info:
    gate.acquire(None)
  assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
  assert info.value.message == ("Server is at its limit of 1 concurrent requests with "
                                "1 more queued; retry later.")
  gate.release()
  queued.join(30)
  assert (gate.in_flight, gate.waiting) == (1, 0)
  gate.release()
  assert gate.wait_idle(0)


def test_deadline_while_queued():
  gate = admission.Admission(limit=1, max_waiting=1)
  gate.acquire(None)
  with pytest.raises(ServingError) as info:
    gate.acquire(time.monotonic() + 0.05)
  assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
  assert gate.waiting == 0
  assert not gate.wait_idle(0.01)  # the first holder still has its slot
  gate.release()
  assert gate.wait_idle(0)
