"""Admission control: how many predictions run at once, and how many may wait.

Contract: `Admission(limit, max_waiting)` lets at most `limit` holders in at a
time. `acquire(deadline)` takes a slot, waiting in a queue of at most
`max_waiting` threads; a full queue fails fast with RESOURCE_EXHAUSTED, and a
waiter still queued at `deadline` (a `time.monotonic()` value; None = wait
indefinitely) gets DEADLINE_EXCEEDED. Every successful `acquire` must be paired
with one `release`.
"""

from __future__ import annotations

import threading
import time

import grpc

from serving.errors import ServingError


class Admission:
  """At most `limit` holders; at most `max_waiting` threads wait for a slot."""

  def __init__(self, limit: int, max_waiting: int):
    self._limit = limit
    self._max_waiting = max_waiting
    self._in_flight = 0
    self._waiting = 0
    self._cond = threading.Condition()

  def acquire(self, deadline: float | None) -> None:
    """Takes a slot, queueing until `deadline` (monotonic time; None = no limit).

    Raises:
      ServingError: RESOURCE_EXHAUSTED when the queue is full, DEADLINE_EXCEEDED
        when the deadline passes while queued.
    """
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
    """Frees a slot taken by `acquire`."""
    with self._cond:
      self._in_flight -= 1
      self._cond.notify_all()

  def wait_idle(self, timeout: float) -> bool:
    """Waits until no slot is held and nobody queues. False on timeout."""
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
    """Slots held now."""
    return self._in_flight

  @property
  def waiting(self) -> int:
    """Threads queued for a slot now."""
    return self._waiting
