"""Tests for serving.rest: TF Serving's REST behaviour over the asyncio HTTP server.

The servers run in this process on free 127.0.0.1 ports over the toy models
(serving/toy_models.py): "lookup" (item_ids string [B]) and "float" (x float32
[B, 3]; multi: a float32 [B, 2], b int64 [B]; bytes: data_bytes string [B]).
Requests are raw bytes on a socket, so malformed framing can be sent as is.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import threading
import time

import pytest

import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)

from serving import model_manager as model_manager_lib
from serving import monitoring
from serving import rest
from serving import server_config
from serving import toy_models

_MAX_BATCH = 8
_MAX_REQUEST_BYTES = 16 << 10
_READ_TIMEOUT = 1.5
_METRICS_PATH = "/monitoring/prometheus/metrics"


@dataclasses.dataclass
class _Reply:
  status: int
  headers: dict[str, str]
  body: bytes

  def json(self) -> dict:
    return json.loads(self.body)


def _read_reply(sock: socket.socket) -> _Reply:
  """One HTTP response from `sock` (framed by Content-Length); skips 100 Continue."""
  data = b""
  while True:
    while b"\r\n\r\n" not in data:
      chunk = sock.recv(65536)
      if not chunk:
        raise ConnectionError(f"closed before a full response head: {data!r}")
      data += chunk
    head, _, data = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}
    if status == 100:
      continue
    length = int(headers.get("content-length", "0"))
    while len(data) < length:
      chunk = sock.recv(65536)
      if not chunk:
        raise ConnectionError("closed before the full body")
      data += chunk
    return _Reply(status, headers, data[:length])


def _connect(port: int, timeout: float = 30.0) -> socket.socket:
  sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
  sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
  return sock


def _send(port: int, raw: bytes) -> _Reply:
  with _connect(port) as sock:
    sock.sendall(raw)
    return _read_reply(sock)


def _request(method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> bytes:
  lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
  if body is not None:
    lines.append(f"Content-Length: {len(body)}")
  lines.extend(f"{k}: {v}" for k, v in (headers or {}).items())
  return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def _predict(model: str, body: bytes | str, signature_path: str = "") -> bytes:
  data = body.encode("utf-8") if isinstance(body, str) else body
  return _request("POST", f"/v1/models/{model}{signature_path}:predict", data)


def _is_closed(sock: socket.socket, timeout: float) -> bool:
  sock.settimeout(timeout)
  try:
    return sock.recv(1) == b""
  except ConnectionResetError:
    return True
  except socket.timeout:
    return False


def _wait_for(predicate, timeout: float = 20.0) -> bool:
  """Polls `predicate` until it holds (True) or `timeout` passes (False)."""
  deadline = time.monotonic() + timeout
  while not predicate():
    if time.monotonic() > deadline:
      return False
    time.sleep(0.02)
  return True


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
  base = tmp_path_factory.mktemp("models")
  toy_models.build_lookup_model(base / "lookup" / "1", 0.0)
  toy_models.build_float_model(base / "float" / "1")
  metrics = monitoring.ServingMetrics()
  manager = model_manager_lib.ModelManager(
      [server_config.ModelConfig("lookup", str(base / "lookup")),
       server_config.ModelConfig("float", str(base / "float"))],
      limits=server_config.ServingLimits(max_batch_size=_MAX_BATCH), metrics=metrics)
  manager.poll_once()
  manager.metrics = metrics  # the test's handle on the same registry
  yield manager
  manager.stop(5)


def _start(manager, timeout_seconds: float = 10, answer_at_deadline: bool = True,
           **kwargs) -> rest.RestServer:
  api = rest.RestApi(manager, timeout_seconds=timeout_seconds, metrics=manager.metrics,
                     metrics_path=_METRICS_PATH, answer_at_deadline=answer_at_deadline)
  options = dict(port=0, num_threads=2, max_request_bytes=_MAX_REQUEST_BYTES,
                 max_connections=512, read_timeout_seconds=_READ_TIMEOUT)
  options.update(kwargs)
  server = rest.RestServer(api, **options)
  server.start()
  return server


@pytest.fixture(scope="module")
def port(manager):
  server = _start(manager)
  yield server.port
  server.stop(5)


_OK_LOOKUP = _predict("lookup", '{"instances": ["a"]}')


def test_predict_status_and_metadata_answer_200(port):
  reply = _send(port, _OK_LOOKUP)
  assert reply.status == 200 and reply.headers["content-type"] == "application/json"
  assert reply.json()["predictions"][0]["ids"][0] == "d"
  assert _send(port, _request("GET", "/v1/models/lookup")).json()[
      "model_version_status"][0]["state"] == "AVAILABLE"
  assert "signature_def" in _send(port, _request("GET", "/v1/models/float/metadata")).json()[
      "metadata"]


def test_keep_alive_serves_many_requests_on_one_connection(port):
  with _connect(port) as sock:
    for _ in range(5):
      sock.sendall(_OK_LOOKUP)
      reply = _read_reply(sock)
      assert reply.status == 200 and "connection" not in reply.headers
    # Pipelined: two requests in one send, two answers in order.
    sock.sendall(_OK_LOOKUP + _predict("float", '{"instances": [[1, 1, 1]]}'))
    assert _read_reply(sock).json()["predictions"][0]["ids"][0] == "d"
    assert _read_reply(sock).json() == {"predictions": [6.5]}


def test_connection_close_and_http10_close_after_the_answer(port):
  with _connect(port) as sock:
    sock.sendall(_request("GET", "/v1/models/lookup", headers={"Connection": "close"}))
    reply = _read_reply(sock)
    assert reply.status == 200 and reply.headers["connection"] == "close"
    assert _is_closed(sock, 5)
  with _connect(port) as sock:
    sock.sendall(b"GET /v1/models/lookup HTTP/1.0\r\n\r\n")
    assert _read_reply(sock).status == 200
    assert _is_closed(sock, 5)
  with _connect(port) as sock:
    sock.sendall(b"GET /v1/models/lookup HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    reply = _read_reply(sock)
    assert reply.status == 200 and reply.headers["connection"] == "keep-alive"
    sock.sendall(b"GET /v1/models/lookup HTTP/1.0\r\n\r\n")
    assert _read_reply(sock).status == 200
    assert _is_closed(sock, 5)


def test_chunked_body_and_expect_continue(port):
  body = b'{"instances": ["a"]}'
  chunked = (b"POST /v1/models/lookup:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" +
             b"5\r\n" + body[:5] + b"\r\n" + f"{len(body) - 5:x}".encode() + b";ext=1\r\n" +
             body[5:] + b"\r\n0\r\nTrailer: x\r\n\r\n")
  assert _send(port, chunked).status == 200
  with _connect(port) as sock:
    sock.sendall(b"POST /v1/models/lookup:predict HTTP/1.1\r\nExpect: 100-continue\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    sock.sendall(body)
    assert _read_reply(sock).status == 200


def test_head_answers_without_body(port):
  with _connect(port) as sock:
    sock.sendall(_request("HEAD", "/v1/models/lookup"))
    data = b""
    while b"\r\n\r\n" not in data:
      data += sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 400 ") and data.endswith(b"\r\n\r\n")
    sock.sendall(_request("GET", "/v1/models/lookup"))
    assert _read_reply(sock).status == 200  # nothing stray was left on the connection


# ---------------------------------------------------------------------------
# Malformed requests: each gets a 4xx with a `{ "error": ... }` body in TF
# Serving's wording, and the server keeps answering.

_BIG_DIGITS = "1" * 5000
_DEEP = "[" * 5000 + "]" * 5000
_MULTI = "/versions/1"  # any path suffix works; signatures are named in the body
_M = '"signature_name": "multi", '
_B = '"signature_name": "bytes", '


def _header_block(n: int) -> dict[str, str]:
  return {f"X-H{i}": "v" for i in range(n)}


_MALFORMED = [
    # -- JSON syntax and encoding
    ("truncated_json", _predict("float", '{"instances": [[1, 2, 3]'), 400, "JSON Parse error"),
    ("trailing_garbage", _predict("float", '{"instances": [[1, 2, 3]]} x'), 400,
     "JSON Parse error"),
    ("single_quotes", _predict("float", "{'instances': [[1, 2, 3]]}"), 400, "JSON Parse error"),
    ("trailing_comma", _predict("float", '{"instances": [[1, 2, 3],]}'), 400, "JSON Parse error"),
    ("lowercase_nan", _predict("float", '{"instances": [[nan, 2, 3]]}'), 400, "JSON Parse error"),
    ("empty_body", _predict("float", ""), 400, "JSON Parse error: The document is empty"),
    ("whitespace_body", _predict("float", "  \n "), 400, "The document is empty"),
    ("top_level_list", _predict("float", "[[1, 2, 3]]"), 400, "Is not object"),
    ("top_level_string", _predict("float", '"x"'), 400, "Is not object"),
    ("top_level_null", _predict("float", "null"), 400, "Is not object"),
    ("lone_surrogate_value", _predict("lookup", '{"instances": ["\\ud800"]}'), 400,
     "The surrogate pair in string is invalid"),
    ("lone_low_surrogate", _predict("lookup", '{"instances": ["a\\udc00b"]}'), 400,
     "The surrogate pair in string is invalid"),
    ("lone_surrogate_signature", _predict("lookup",
                                          '{"signature_name": "\\ud800", "instances": ["a"]}'),
     400, "The surrogate pair in string is invalid"),
    ("lone_surrogate_key", _predict("float", '{"\\udbff": 1, "instances": [[1, 2, 3]]}'), 400,
     "The surrogate pair in string is invalid"),
    ("non_utf8_body", _predict("lookup", b'{"instances": ["\xff\xfe"]}'), 400,
     "Invalid encoding in string"),
    ("utf16_body", _predict("lookup", '{"instances": ["a"]}'.encode("utf-16")), 400,
     "Invalid encoding in string"),
    ("utf8_bom", _predict("lookup", b'\xef\xbb\xbf{"instances": ["a"]}'), 400,
     "JSON Parse error"),
    ("nesting_5000_deep", _predict("float", '{"instances": ' + _DEEP + "}"), 400,
     "nesting too deep"),
    ("nesting_40_deep", _predict("float", '{"instances": ' + "[" * 40 + "1" + "]" * 40 + "}"),
     400, "nesting deeper than 32"),
    # -- numbers
    ("int_5000_digits_float", _predict("float", '{"instances": [[' + _BIG_DIGITS + ", 1, 2]]}"),
     400, "Number too big to be stored in double"),
    ("int_5000_digits_int64", _predict("float", "{" + _M + '"instances": [{"a": [1, 2], "b": '
                                       + _BIG_DIGITS + "}]}"), 400, "Number too big"),
    ("negative_5000_digits", _predict("float", '{"instances": [[-' + _BIG_DIGITS + ", 1, 2]]}"),
     400, "Number too big"),
    ("float_1e400", _predict("float", '{"instances": [[1e400, 1, 2]]}'), 400, "Number too big"),
    ("float_minus_1e400", _predict("float", '{"instances": [[-1e400, 1, 2]]}'), 400,
     "Number too big"),
    ("float32_overflow", _predict("float", '{"instances": [[1e39, 1, 2]]}'), 400,
     "Cannot convert JSON value: 1e+39 to float without loss of precision"),
    ("int_too_big_for_float32", _predict("float", '{"instances": [[16777217, 1, 2]]}'), 400,
     "to float without loss of precision"),
    ("int64_overflow", _predict("float", "{" + _M + '"instances": [{"a": [1, 2], '
                                '"b": 9223372036854775808}]}'), 400,
     "is not of expected type: int64"),
    ("int_25_digits_int64", _predict("float", "{" + _M + '"instances": [{"a": [1, 2], '
                                     '"b": 1234567890123456789012345}]}'), 400,
     "is not of expected type: int64"),
    ("float_for_int64", _predict("float", "{" + _M + '"instances": [{"a": [1, 2], "b": 1.5}]}'),
     400, "Type: Number is not of expected type: int64"),
    ("nan_for_int64", _predict("float", "{" + _M + '"instances": [{"a": [1, 2], "b": NaN}]}'),
     400, "is not of expected type: int64"),
    ("nan_for_string", _predict("lookup", '{"instances": [NaN]}'), 400,
     "is not of expected type: string"),
    ("infinity_for_string", _predict("lookup", '{"instances": [Infinity]}'), 400,
     "is not of expected type: string"),
    # -- wrong JSON types per field
    ("string_for_float", _predict("float", '{"instances": [["a", 1, 2]]}'), 400,
     "Type: String is not of expected type: float"),
    ("bool_for_float", _predict("float", '{"instances": [[true, 1, 2]]}'), 400,
     "Type: True is not of expected type: float"),
    ("null_for_float", _predict("float", '{"instances": [[null, 1, 2]]}'), 400,
     "Type: Null is not of expected type: float"),
    ("object_for_float", _predict("float", '{"instances": [[{"v": 1}, 1, 2]]}'), 400,
     "is not of expected type: float"),
    ("number_for_string", _predict("lookup", '{"instances": [1]}'), 400,
     "Type: Number is not of expected type: string"),
    ("bool_for_string", _predict("lookup", '{"instances": [false]}'), 400,
     "Type: False is not of expected type: string"),
    ("null_instance", _predict("float", '{"instances": [null]}'), 400,
     "is not of expected type: float"),
    ("null_inputs", _predict("float", '{"inputs": null}'), 400, "is not of expected type: float"),
    ("signature_name_number", _predict("float", '{"signature_name": 5, "instances": [[1, 2, 3]]}'),
     400, "'signature_name' key must be a string value"),
    ("instances_object", _predict("float", '{"instances": {"x": [1, 2, 3]}}'), 400,
     "Excepting 'instances' to be an list/array"),
    ("instances_string", _predict("float", '{"instances": "x"}'), 400,
     "Excepting 'instances' to be an list/array"),
    ("instances_null", _predict("float", '{"instances": null}'), 400,
     "Excepting 'instances' to be an list/array"),
    # -- shapes
    ("rank_too_low", _predict("float", '{"instances": [1, 2, 3]}'), 400,
     "expects [-1,3]"),
    ("rank_too_high", _predict("float", '{"instances": [[[1, 2, 3]]]}'), 400, "expects [-1,3]"),
    ("wrong_width", _predict("float", '{"instances": [[1, 2]]}'), 400, "expects [-1,3]"),
    ("ragged_rows", _predict("float", '{"instances": [[1, 2, 3], [1, 2]]}'), 400,
     "Expecting tensor size: 3 but got: 2"),
    ("ragged_depth", _predict("float", '{"instances": [[1, [2], 3]]}'), 400,
     "Encountered list at unexpected level"),
    ("list_then_scalar", _predict("float", '{"instances": [[1, 2, 3], 5]}'), 400,
     "Expecting tensor size: 3 but got: 1"),
    ("ragged_columnar", _predict("float", '{"inputs": [[1, 2, 3], [1, 2]]}'), 400,
     "Encountered list at unexpected size"),
    ("string_list_for_vector", _predict("lookup", '{"instances": [["a"]]}'), 400,
     "expects [-1]"),
    ("empty_instances", _predict("float", '{"instances": []}'), 400,
     "No values in 'instances' array"),
    ("empty_inner_list", _predict("float", '{"instances": [[]]}'), 400, "expects [-1,3]"),
    ("empty_inputs", _predict("float", '{"inputs": []}'), 400, "expects [-1,3]"),
    ("batch_over_limit", _predict("float", json.dumps({"instances": [[1, 2, 3]] * 9})), 400,
     f"--max_batch_size={_MAX_BATCH}"),
    # -- request layout
    ("instances_and_inputs", _predict("float", '{"instances": [[1, 2, 3]], "inputs": [[1, 2, 3]]}'),
     400, "expecting only one of 'inputs' or 'instances' keys to exist"),
    ("neither_instances_nor_inputs", _predict("float", '{"signature_name": "serving_default"}'),
     400, "Missing 'inputs' or 'instances' key"),
    ("unknown_signature", _predict("float", '{"signature_name": "nope", "instances": [1]}'), 400,
     'Serving signature name: "nope" not found in signature def'),
    ("multi_missing_key", _predict("float", "{" + _M + '"instances": [{"a": [1, 2]}]}'), 400,
     "must only have keys: a,b"),
    ("multi_extra_key", _predict("float", "{" + _M + '"instances": [{"a": [1, 2], "b": 1, '
                                 '"c": 0}]}'), 400, "does not have named input: c"),
    ("multi_plain_list", _predict("float", "{" + _M + '"instances": [[1, 2]]}'), 400,
     "expecting list of objects as multiple input tensors"),
    ("multi_object_then_list", _predict("float", "{" + _M + '"instances": [{"a": [1, 2], '
                                        '"b": 1}, [1, 2]]}'), 400, "Expecting object but got list"),
    ("single_list_then_object", _predict("float", '{"instances": [[1, 2, 3], {"x": [1, 2, 3]}]}'),
     400, "Expecting value/list but got object"),
    ("multi_columnar_missing", _predict("float", "{" + _M + '"inputs": {"a": [[1, 2]]}}'), 400,
     "Missing named input: b in 'inputs' object."),
    ("multi_columnar_plain", _predict("float", "{" + _M + '"inputs": [[1, 2]]}'), 400,
     "inputs is a plain value/list, but expecting an object"),
    ("multi_columnar_float_for_int64", _predict("float", "{" + _M + '"inputs": {"a": [[1, 2]], '
                                                '"b": [1.5]}}'), 400,
     "is not of expected type: int64"),
    # -- base64
    ("bad_base64", _predict("float", "{" + _B + '"instances": [{"b64": "!!!"}]}'), 400,
     "Unable to base64 decode"),
    ("base64_not_padded", _predict("float", "{" + _B + '"instances": [{"b64": "aGk"}]}'), 400,
     "Unable to base64 decode"),
    ("base64_non_ascii", _predict("float", "{" + _B + '"instances": [{"b64": "\u00e9"}]}'), 400,
     "Unable to base64 decode"),
    ("base64_number", _predict("float", "{" + _B + '"instances": [{"b64": 5}]}'), 400,
     "does not have named input: b64"),
    ("base64_extra_key", _predict("float", "{" + _B + '"inputs": [{"b64": "aGk=", "x": 1}]}'),
     400, "not formatted correctly for base64 data"),
    ("base64_for_float", _predict("float", '{"inputs": [[{"b64": "aGk="}, 1, 2]]}'), 400,
     "is not of expected type: float"),
    ("unknown_item_id", _predict("lookup", '{"instances": ["zz"]}'), 400, "unknown item id"),
    # -- paths and versions
    ("unknown_model", _predict("nope", '{"instances": [1]}'), 404,
     "Servable not found for request: Latest(nope)"),
    ("missing_version", _predict("lookup", '{"instances": ["a"]}', "/versions/7"), 404,
     "Specific(lookup, 7)"),
    ("version_not_a_number", _predict("lookup", '{"instances": ["a"]}', "/versions/abc"), 400,
     "Malformed request: POST"),
    ("version_negative", _predict("lookup", '{"instances": ["a"]}', "/versions/-1"), 400,
     "Malformed request: POST"),
    ("version_overflow", _predict("lookup", '{"instances": ["a"]}', "/versions/" + "9" * 25),
     400, "Failed to convert version"),
    ("unknown_label", _predict("lookup", '{"instances": ["a"]}', "/labels/nope"), 400,
     "Unrecognized servable version label: nope"),
    ("version_and_label", _predict("lookup", '{"instances": ["a"]}', "/versions/1/labels/x"), 400,
     "Malformed request: POST"),
    ("unknown_verb", _request("POST", "/v1/models/lookup:explode", b"{}"), 400,
     "Malformed request: POST"),
    ("no_verb", _request("POST", "/v1/models/lookup", b"{}"), 400, "Malformed request: POST"),
    ("path_traversal", _request("POST", "/v1/models/../etc:predict", b"{}"), 400,
     "Malformed request: POST"),
    ("percent_garbage_name", _request("POST", "/v1/models/%ff%fe:predict", b'{"instances": [1]}'),
     404, "Servable not found"),
    ("missing_model_name", _request("GET", "/v1/models"), 400, "Missing model name in request."),
    ("status_unknown_model", _request("GET", "/v1/models/nope"), 404,
     "Could not find any versions of model nope"),
    ("status_bad_suffix", _request("GET", "/v1/models/lookup/nope"), 400, "Malformed request: GET"),
    ("get_predict_path", _request("GET", "/v1/models/lookup:predict"), 400,
     "Malformed request: GET"),
    ("not_api_path", _request("GET", "/v2/models/lookup"), 404, "Not found: GET /v2/models/lookup"),
    ("root_path", _request("GET", "/"), 404, "Not found"),
    ("absolute_form_target", _request("GET", "http://localhost/v1/models"), 400,
     "Missing model name"),
    # -- methods
    ("put", _request("PUT", "/v1/models/lookup", b"{}"), 400, "Malformed request: PUT"),
    ("delete", _request("DELETE", "/v1/models/lookup"), 400, "Malformed request: DELETE"),
    ("patch", _request("PATCH", "/v1/models/lookup:predict", b"{}"), 400,
     "Malformed request: PATCH"),
    ("options", _request("OPTIONS", "*"), 404, "Not found: OPTIONS *"),
    ("unknown_method", _request("BREW", "/v1/models/lookup"), 400, "Malformed request: BREW"),
    ("method_bad_chars", b"GE(T /v1/models/lookup HTTP/1.1\r\n\r\n", 400,
     "Malformed HTTP request line"),
    # -- HTTP framing
    ("content_length_text", _request("POST", "/v1/models/lookup:predict", None,
                                     {"Content-Length": "abc"}), 400, "Bad Content-Length"),
    ("content_length_negative", _request("POST", "/v1/models/lookup:predict", None,
                                         {"Content-Length": "-5"}), 400, "Bad Content-Length"),
    ("content_length_huge_number", _request("POST", "/v1/models/lookup:predict", None,
                                            {"Content-Length": "9" * 40}), 400,
     "Bad Content-Length"),
    ("content_length_conflict", b"POST /v1/models/lookup:predict HTTP/1.1\r\nContent-Length: 2"
     b"\r\nContent-Length: 3\r\n\r\n{}", 400, "Conflicting Content-Length"),
    ("content_length_and_chunked", b"POST /v1/models/lookup:predict HTTP/1.1\r\nContent-Length: "
     b"2\r\nTransfer-Encoding: chunked\r\n\r\n{}", 400, "Both Transfer-Encoding and"),
    ("content_length_beyond_body", _request("POST", "/v1/models/lookup:predict", None,
                                            {"Content-Length": "100"}) + b'{"instances"', 408,
     "Request not received within"),
    ("transfer_encoding_gzip", _request("POST", "/v1/models/lookup:predict", None,
                                        {"Transfer-Encoding": "gzip"}), 400,
     "Unsupported Transfer-Encoding"),
    ("chunk_size_not_hex", _request("POST", "/v1/models/lookup:predict", None,
                                    {"Transfer-Encoding": "chunked"}) + b"zz\r\n{}\r\n0\r\n\r\n",
     400, "Malformed chunked request body"),
    ("chunk_size_overflow", _request("POST", "/v1/models/lookup:predict", None,
                                     {"Transfer-Encoding": "chunked"}) + b"f" * 20 + b"\r\n",
     400, "Malformed chunked request body"),
    ("chunk_missing_crlf", _request("POST", "/v1/models/lookup:predict", None,
                                    {"Transfer-Encoding": "chunked"}) + b"2\r\n{}XX0\r\n\r\n",
     400, "Malformed chunked request body"),
    ("chunked_bad_json", _request("POST", "/v1/models/lookup:predict", None,
                                  {"Transfer-Encoding": "chunked"}) + b"2\r\n{]\r\n0\r\n\r\n",
     400, "JSON Parse error"),
    ("chunked_too_large", _request("POST", "/v1/models/lookup:predict", None,
                                   {"Transfer-Encoding": "chunked"}) +
     f"{_MAX_REQUEST_BYTES + 1:x}\r\n".encode(), 413, "--max_request_bytes"),
    ("body_too_large", _predict("lookup", json.dumps({"instances": ["x" * _MAX_REQUEST_BYTES]})),
     413, f"--max_request_bytes={_MAX_REQUEST_BYTES}"),
    ("header_without_colon", b"GET /v1/models/lookup HTTP/1.1\r\nNoColonHere\r\n\r\n", 400,
     "Malformed HTTP header line"),
    ("header_line_folding", b"GET /v1/models/lookup HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n",
     400, "Malformed HTTP header line"),
    ("too_many_headers", _request("GET", "/v1/models/lookup", None, _header_block(101)), 431,
     "More than 100 header fields"),
    ("header_too_large", _request("GET", "/v1/models/lookup", None, {"X-Big": "x" * (70 << 10)}),
     431, "Request head is larger than"),
    ("http_2_version", b"GET /v1/models/lookup HTTP/2.0\r\n\r\n", 400,
     "Unsupported HTTP version"),
    ("http_0_9_request", b"GET /v1/models/lookup\r\n\r\n", 400, "Malformed HTTP request line"),
    ("extra_spaces_request_line", b"GET  /v1/models/lookup HTTP/1.1\r\n\r\n", 400,
     "Malformed HTTP request line"),
    ("tls_hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
     400, "Malformed HTTP request line"),
    ("non_ascii_target", b"GET /v1/models/\xc3\xa9 HTTP/1.1\r\n\r\n", 400,
     "Request target is not ASCII"),
    ("unsupported_expect", _request("POST", "/v1/models/lookup:predict", b"{}",
                                    {"Expect": "200-ok"}), 417, "Unsupported Expect"),
    ("head_closed_early", b"POST /v1/models/lookup:predict HTTP/1.1\r\nContent-", 400,
     "Connection closed in the middle of the request head"),
]


@pytest.mark.parametrize("raw, status, message", [c[1:] for c in _MALFORMED],
                         ids=[c[0] for c in _MALFORMED])
def test_malformed_request_gets_4xx_with_tf_serving_message(port, raw, status, message):
  with _connect(port) as sock:
    sock.sendall(raw)
    if raw.endswith(b"Content-"):
      sock.shutdown(socket.SHUT_WR)
    reply = _read_reply(sock)
  assert 400 <= reply.status < 500
  body = reply.json()
  assert list(body) == ["error"] and isinstance(body["error"], str), body
  assert (reply.status, message in body["error"]) == (status, True), body
  assert _send(port, _OK_LOOKUP).status == 200


def test_malformed_table_is_large_and_unique():
  names = [c[0] for c in _MALFORMED]
  assert len(names) >= 60 and len(set(names)) == len(names)


# ---------------------------------------------------------------------------
# Idle and slow connections never lock others out.


def test_new_client_is_served_while_300_idle_connections_are_open(port):
  idle = [_connect(port) for _ in range(300)]
  try:
    time.sleep(0.5)  # most are accepted by now; the test holds either way
    assert _send(port, _OK_LOOKUP).status == 200
    for sock in idle[::60]:  # the idle ones still work
      sock.sendall(_OK_LOOKUP)
      assert _read_reply(sock).status == 200
  finally:
    for sock in idle:
      sock.close()


def test_260_idle_connections_at_the_default_limit_do_not_lock_out_a_new_client(manager):
  server = _start(manager, max_connections=rest.RestServer.DEFAULT_MAX_CONNECTIONS)
  idle = []
  try:
    idle = [_connect(server.port) for _ in range(260)]
    limit = rest.RestServer.DEFAULT_MAX_CONNECTIONS
    assert _wait_for(lambda: server.open_connections == limit)
    for _ in range(3):
      assert _send(server.port, _OK_LOOKUP).status == 200
  finally:
    for sock in idle:
      sock.close()
    server.stop(5)


def test_at_the_connection_limit_the_longest_idle_connection_makes_room(manager):
  server = _start(manager, max_connections=8)
  try:
    idle = [_connect(server.port) for _ in range(8)]
    assert _wait_for(lambda: server.open_connections == 8)
    assert _send(server.port, _OK_LOOKUP).status == 200
    assert _is_closed(idle[0], 5)  # the oldest idle one was closed
    assert server.open_connections <= 8
    for sock in idle:
      sock.close()
  finally:
    server.stop(5)


def test_when_every_connection_is_mid_request_a_new_one_gets_503(manager):
  server = _start(manager, max_connections=4, read_timeout_seconds=30)
  try:
    busy = [_connect(server.port) for _ in range(4)]
    for sock in busy:
      sock.sendall(b"POST /v1/models/lookup:predict HTTP/1.1\r\n")  # head not finished
    assert _wait_for(lambda: server.open_connections == 4 and server.idle_connections == 0)
    reply = _send(server.port, _OK_LOOKUP)
    assert reply.status == 503 and "Too many open connections" in reply.json()["error"]
    for sock in busy:
      sock.close()
    assert _wait_for(lambda: server.open_connections == 0)
    assert _send(server.port, _OK_LOOKUP).status == 200
  finally:
    server.stop(5)


def test_slow_sender_is_cut_off_at_the_read_deadline(port):
  request = _OK_LOOKUP
  sent = 0
  with _connect(port) as sock:
    sock.settimeout(0.25)
    reply_data = b""
    while sent < len(request):
      # One byte every 0.25 s: the whole request would take ~20 s.
      try:
        sock.sendall(request[sent:sent + 1])
        sent += 1
      except (BrokenPipeError, ConnectionResetError):
        break
      try:
        chunk = sock.recv(4096)
        reply_data += chunk
        if not chunk or b"\r\n\r\n" in reply_data:
          break
      except socket.timeout:
        pass
    assert sent < len(request) // 2, "the server waited for the whole slow request"
    assert reply_data.startswith(b"HTTP/1.1 408 ")
  assert _send(port, _OK_LOOKUP).status == 200


def test_idle_connection_is_closed_after_the_idle_timeout(manager):
  server = _start(manager, idle_timeout_seconds=0.3)
  try:
    with _connect(server.port) as sock:
      sock.sendall(_OK_LOOKUP)
      assert _read_reply(sock).status == 200
      assert _is_closed(sock, 10)
  finally:
    server.stop(5)


def test_idle_connections_use_no_thread(manager):
  server = _start(manager, num_threads=1)
  try:
    assert _send(server.port, _OK_LOOKUP).status == 200  # the worker thread exists now
    before = set(threading.enumerate())
    idle = [_connect(server.port) for _ in range(20)]
    assert _wait_for(lambda: server.open_connections == 20)
    assert set(threading.enumerate()) - before == set()
    for sock in idle:
      sock.close()
  finally:
    server.stop(5)


def test_stop_finishes_the_running_request_and_closes_idle_connections(manager):
  server = _start(manager)
  idle = _connect(server.port)
  results = []
  slow = _predict("float", '{"signature_name": "slow", "instances": [{"x": [1, 1, 1], '
                  '"delay_us": 1000000}]}')

  def call():
    with _connect(server.port) as sock:
      sock.sendall(slow)
      results.append(_read_reply(sock))

  worker = threading.Thread(target=call)
  worker.start()
  assert _wait_for(lambda: server.requests_in_flight == 1)
  assert server.stop(10) is True
  worker.join(10)
  assert [r.status for r in results] == [200]
  assert results[0].headers.get("connection") == "close"
  assert _is_closed(idle, 5)
  idle.close()
  with pytest.raises(OSError):
    _send(server.port, _OK_LOOKUP)


@pytest.mark.parametrize("answer_at_deadline", [True, False])
def test_predict_past_the_deadline_gets_504_and_others_are_served(manager, answer_at_deadline):
  server = _start(manager, timeout_seconds=0.5, answer_at_deadline=answer_at_deadline)
  slow = _predict("float", '{"signature_name": "slow", "instances": [{"x": [1, 1, 1], '
                  '"delay_us": 2000000}]}')
  try:
    reply = _send(server.port, slow)
    assert reply.status == 504
    assert "Prediction did not finish within 500 ms" in reply.json()["error"]
    assert _send(server.port, _OK_LOOKUP).status == 200
  finally:
    assert server.stop(10) is True  # waits for the slow call to end


def test_constructor_rejects_bad_limits(manager):
  api = rest.RestApi(manager)
  for kwargs in ({"num_threads": 0}, {"max_connections": 0}, {"read_timeout_seconds": 0},
                 {"idle_timeout_seconds": -1}, {"max_request_bytes": 0}):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
      rest.RestServer(api, port=0, **kwargs)
  with pytest.raises(ValueError, match="metrics_path needs metrics"):
    rest.RestApi(manager, metrics_path="/m")


# ---------------------------------------------------------------------------
# Metrics page.


def _sample(text: str, name: str, **labels: str) -> float:
  """The value of the sample `name{labels...}` (labels in any order, all given)."""
  for line in text.splitlines():
    match = re.fullmatch(r"(\S+?)(\{.*\})? (\S+)", line)
    if not match or match.group(1) != name:
      continue
    found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
    if found == labels:
      return float(match.group(3))
  raise AssertionError(f"no sample {name}{labels} in:\n{text[:3000]}")


def test_metrics_page_counts_rest_predictions_by_status(port, manager):
  page = lambda: _send(port, _request("GET", _METRICS_PATH)).body.decode()  # noqa: E731
  before = page()

  def count(status, text):
    try:
      return _sample(text, ":tensorflow:serving:request_count", model_name="float", status=status)
    except AssertionError:
      return 0.0

  def latency_count(text):
    try:
      return _sample(text, ":tensorflow:serving:request_latency_count", model_name="float",
                     API="Predict", entrypoint="REST")
    except AssertionError:
      return 0.0

  assert _send(port, _predict("float", '{"instances": [[1, 2, 3]]}')).status == 200
  assert _send(port, _predict("float", '{"instances": [[1, 2]]}')).status == 400
  assert _send(port, _predict("float", '{"instances": [[1, 2]]}')).status == 400
  reply = _send(port, _request("GET", _METRICS_PATH))
  assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
  after = reply.body.decode()
  assert count("OK", after) - count("OK", before) == 1
  assert count("INVALID_ARGUMENT", after) - count("INVALID_ARGUMENT", before) == 2
  assert latency_count(after) - latency_count(before) == 3
  assert "# TYPE :tensorflow:serving:request_latency histogram" in after
  assert _sample(after, ":pinsage:serving:model_version_state", model_name="lookup",
                 version="1", state="AVAILABLE") == 1
  assert _sample(after, ":pinsage:serving:model_version_state", model_name="lookup",
                 version="1", state="LOADING") == 0
  paths = [line for line in after.splitlines()
           if line.startswith(":tensorflow:cc:saved_model:load_attempt_count{")]
  assert len(paths) == 2 and all('status="success"} 1' in p for p in paths), paths
