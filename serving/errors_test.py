"""Tests for serving.errors: status codes and translated exceptions."""

from __future__ import annotations

import grpc
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from serving import errors
from serving.errors import ServingError


def test_http_status_table():
  assert errors.http_status(grpc.StatusCode.INVALID_ARGUMENT) == 400
  assert errors.http_status(grpc.StatusCode.NOT_FOUND) == 404
  assert errors.http_status(grpc.StatusCode.FAILED_PRECONDITION) == 400
  assert errors.http_status(grpc.StatusCode.RESOURCE_EXHAUSTED) == 429
  assert errors.http_status(grpc.StatusCode.UNIMPLEMENTED) == 501
  assert errors.http_status(grpc.StatusCode.UNAVAILABLE) == 503
  assert errors.http_status(grpc.StatusCode.DEADLINE_EXCEEDED) == 504


def test_serving_error_fields_and_str():
  error = ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too big", http_status=413)
  assert (error.code, error.message, error.http_status) == (
      grpc.StatusCode.RESOURCE_EXHAUSTED, "too big", 413)
  assert str(error) == "RESOURCE_EXHAUSTED: too big"
  assert errors.invalid_argument("bad").code == grpc.StatusCode.INVALID_ARGUMENT
  assert errors.invalid_argument("bad").http_status is None


def test_status_code_from_number():
  # OpError.error_code numbers: 3 = INVALID_ARGUMENT, 15 = DATA_LOSS.
  assert errors.status_code_from_number(3) == grpc.StatusCode.INVALID_ARGUMENT
  assert errors.status_code_from_number(15) == grpc.StatusCode.DATA_LOSS
  assert errors.status_code_from_number(999) == grpc.StatusCode.UNKNOWN


def test_op_error_keeps_its_code_without_eager_decoration():
  message = ("Graph execution error:\n\n"
             "Detected at node assert defined at (most recent call last):\n"
             '  File "model.py", line 1, in top2\n'
             "<stack traces unavailable>\n"
             "unknown item id [Op:__inference_signature_wrapper_123]")
  error = errors.error_from_exception(tf.errors.InvalidArgumentError(None, None, message))
  assert error.code == grpc.StatusCode.INVALID_ARGUMENT
  assert error.message == "unknown item id"


@pytest.mark.parametrize("exception, code, message", [
    (ValueError("bad shape"), grpc.StatusCode.INVALID_ARGUMENT, "bad shape"),
    (TypeError("bad type"), grpc.StatusCode.INVALID_ARGUMENT, "bad type"),
    (RuntimeError("boom"), grpc.StatusCode.INTERNAL, "RuntimeError: boom"),
    (tf.errors.DataLossError(None, None, "corrupt"), grpc.StatusCode.DATA_LOSS, "corrupt"),
])
def test_other_exceptions(exception, code, message):
  error = errors.error_from_exception(exception)
  assert (error.code, error.message) == (code, message)


def test_serving_errors_pass_through():
  error = ServingError(grpc.StatusCode.NOT_FOUND, "gone")
  assert errors.error_from_exception(error) is error
