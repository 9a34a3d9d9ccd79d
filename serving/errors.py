"""Request failures as TF Serving reports them: a gRPC status code and a message.

Contract:

* Every failure a client sees is a `ServingError(code, message)`; REST and
  gRPC send `message` unchanged.
* `http_status(code)` is TF Serving's HTTP status for a code (400 for
  INVALID_ARGUMENT, 404 for NOT_FOUND, ..., 500 for unmapped codes);
  `ServingError.http_status` overrides it for one error.
* `error_from_exception(e)` turns anything raised while loading or running a
  SavedModel into a `ServingError`: TensorFlow's `OpError` keeps its code and
  loses the eager runtime's decoration ("Graph execution error:", "[Op:...]"),
  `ValueError` / `TypeError` become INVALID_ARGUMENT, anything else INTERNAL.
"""

from __future__ import annotations

import re

import grpc

import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

# TF Serving's ToHTTPStatusCode (model_servers/http_server.cc).
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
  """A request failure with a canonical (gRPC) status code.

  Attributes:
    code: `grpc.StatusCode`, e.g. INVALID_ARGUMENT for a malformed request.
    message: the human-readable explanation sent to the client.
    http_status: overrides `http_status(code)` for REST (413 for a body over
      --max_request_bytes, which TF Serving's code table has no entry for).
  """

  def __init__(self, code: grpc.StatusCode, message: str,
               http_status: int | None = None):
    super().__init__(message)
    self.code = code
    self.message = message
    self.http_status = http_status

  def __str__(self) -> str:
    return f"{self.code.name}: {self.message}"


def invalid_argument(message: str) -> ServingError:
  return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def http_status(code: grpc.StatusCode) -> int:
  """TF Serving's HTTP status for a canonical code (500 if unmapped)."""
  return _HTTP_STATUS.get(code, 500)


def status_code_from_number(number: int) -> grpc.StatusCode:
  """Canonical code from its number (TF's `OpError.error_code` uses the same)."""
  return _CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


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


def error_from_exception(e: BaseException) -> ServingError:
  """The `ServingError` a client sees for an exception raised by a SavedModel."""
  if isinstance(e, ServingError):
    return e
  if isinstance(e, tf.errors.OpError):
    return ServingError(status_code_from_number(e.error_code), _clean_tf_message(e.message))
  if isinstance(e, (ValueError, TypeError)):
    return invalid_argument(str(e))
  return ServingError(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
