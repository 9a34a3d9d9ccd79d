"""TF Serving's REST API over the standard library's HTTP server.

Endpoints (paths matched case-insensitively with TF Serving's own regexes from
model_servers/http_rest_api_util.cc):

  GET  /v1/models/NAME[/versions/N | /labels/L]           -> GetModelStatusResponse
  GET  /v1/models/NAME[/versions/N | /labels/L]/metadata  -> {"model_spec", "metadata":
                                                              {"signature_def": {...}}}
  POST /v1/models/NAME[/versions/N | /labels/L]:predict   -> {"predictions"} / {"outputs"}

Errors are `{ "error": "<message>" }` with TF Serving's HTTP code for the
status (400 INVALID_ARGUMENT / FAILED_PRECONDITION, 404 NOT_FOUND, 429
RESOURCE_EXHAUSTED, 501 UNIMPLEMENTED (:classify, :regress), 503 UNAVAILABLE,
504 DEADLINE_EXCEEDED, 500 otherwise), plus 413 for a body larger than
`max_request_bytes`. Every request gets an answer; no request can stop the
server.

`RestApi.handle(method, path, body)` is the transport-free dispatcher;
`RestServer` binds it to a socket: one thread per connection (HTTP/1.1
keep-alive), at most `num_threads` requests processed at once (others wait),
at most `max_connections` open connections (others get 503), idle
connections closed after `idle_timeout_seconds`.
"""

from __future__ import annotations

import http.server
import re
import socket
import threading
import time
import urllib.parse
from typing import Any

from absl import logging
import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from serving import errors
from serving import json_codec
from serving import model_manager as model_manager_lib
from serving.errors import ServingError

_API_PATH = re.compile(r"/v1/.*", re.IGNORECASE)
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE)
_INT64_MAX = (1 << 63) - 1


def _parse_version(text: str | None) -> int | None:
  if not text:
    return None
  version = int(text)
  if version > _INT64_MAX:
    raise errors.invalid_argument(f"Failed to convert version: {text} to numeric.")
  return version


def _message_json(message: Any) -> str:
  # TF Serving prints these with always_print_primitive_fields.
  return json_format.MessageToJson(message, always_print_fields_with_no_presence=True,
                                   preserving_proto_field_name=True, indent=1)


class RestApi:
  """Maps (method, path, body) to (HTTP status, JSON body) like TF Serving."""

  def __init__(self, manager: model_manager_lib.ModelManager,
               timeout_seconds: float | None = None):
    """Args: manager: the model core; timeout_seconds: predict deadline (None = none)."""
    self._manager = manager
    self._timeout = timeout_seconds

  def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
    """Answers one request; never raises."""
    try:
      return 200, self._dispatch(method, path, body)
    except ServingError as e:
      status = e.http_status or errors.http_status(e.code)
      if status >= 500:
        logging.warning("REST %s %s failed: %s", method, path, e)
      return status, json_codec.error_json(e.message)
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("REST %s %s: internal error", method, path)
      return 500, json_codec.error_json(f"Internal error: {type(e).__name__}: {e}")

  def _dispatch(self, method: str, path: str, body: bytes) -> bytes:
    if not _API_PATH.fullmatch(path):
      raise ServingError(grpc.StatusCode.NOT_FOUND, f"Not found: {method} {path}")
    malformed = errors.invalid_argument(f"Malformed request: {method} {path}")
    if method == "POST":
      match = _PREDICT_PATH.fullmatch(path)
      if not match:
        raise malformed
      name, version_text, label, verb = match.groups()
      name = urllib.parse.unquote(name)
      version = _parse_version(version_text)
      label = urllib.parse.unquote(label) if label else None
      if verb.lower() != "predict":
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                           f"The :{verb.lower()} API is not supported by this server; "
                           "use :predict with the model's signature.")
      return self._predict(name, version, label, body)
    if method == "GET":
      match = _STATUS_PATH.fullmatch(path)
      if not match:
        raise malformed
      name, version_text, label, metadata = match.groups()
      if not name:
        raise errors.invalid_argument("Missing model name in request.")
      name = urllib.parse.unquote(name)
      version = _parse_version(version_text)
      label = urllib.parse.unquote(label) if label else None
      if metadata:
        return self._metadata(name, version, label)
      response = self._manager.get_model_status(name, version, label)
      return _message_json(response).encode("utf-8")
    raise malformed

  def _predict(self, name: str, version: int | None, label: str | None,
               body: bytes) -> bytes:
    # One handle for the whole request: parsing and running see the same version.
    servable = self._manager.get_servable(name, version, label)
    request = json_codec.parse_json_predict(body, servable.rest_signature)
    outputs = self._manager.predict(servable, request.signature_name, request.inputs,
                                    timeout_seconds=self._timeout)
    return json_codec.outputs_to_json(outputs, request.format)

  def _metadata(self, name: str, version: int | None, label: str | None) -> bytes:
    response = self._manager.get_model_metadata(name, version, label)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_defs)
    # TF Serving prints the two parts separately and joins them (see
    # http_rest_api_util.cc ToJsonString), so the layout matches it.
    return ("{\n\"model_spec\":" + _message_json(response.model_spec) + ",\n" +
            "\"metadata\": {\"signature_def\": " + _message_json(signature_defs) +
            "}\n}\n").encode("utf-8")


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"
  server: "_HttpServer"

  def setup(self):
    super().setup()
    self.connection.settimeout(self.server.idle_timeout_seconds)

  def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
    logging.vlog(1, "REST %s - %s", self.address_string(), format % args)

  def _reply(self, status: int, body: bytes) -> None:
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(body)))
    if self.close_connection or self.server.closing:
      self.send_header("Connection", "close")
      self.close_connection = True
    self.end_headers()
    self.wfile.write(body)

  def _read_body(self) -> bytes:
    limit = self.server.max_request_bytes
    too_large = ServingError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"Request body is larger than this server's --max_request_bytes={limit}.",
        http_status=413)
    if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
      chunks, total = [], 0
      while True:
        size_line = self.rfile.readline(1024)
        try:
          size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
          raise errors.invalid_argument("Malformed chunked request body.") from None
        if size == 0:
          while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass
          return b"".join(chunks)
        total += size
        if total > limit:
          self.close_connection = True
          raise too_large
        chunks.append(self.rfile.read(size))
        self.rfile.readline(1024)
    length_text = self.headers.get("Content-Length")
    if length_text is None:
      return b""
    try:
      length = int(length_text)
    except ValueError:
      raise errors.invalid_argument(f"Bad Content-Length: {length_text!r}") from None
    if length < 0:
      raise errors.invalid_argument(f"Bad Content-Length: {length_text!r}")
    if length > limit:
      # The body is not read, so the connection cannot be reused.
      self.close_connection = True
      raise too_large
    return self.rfile.read(length)

  def _handle(self) -> None:
    path = urllib.parse.urlsplit(self.path).path
    server = self.server
    try:
      body = self._read_body() if self.command == "POST" else b""
    except ServingError as e:
      self._reply(e.http_status or errors.http_status(e.code),
                  json_codec.error_json(e.message))
      return
    server.begin_request()
    try:
      with server.processing_slots:
        status, payload = server.api.handle(self.command, path, body)
      self._reply(status, payload)
    finally:
      server.end_request()

  do_GET = _handle
  do_POST = _handle
  do_PUT = _handle
  do_DELETE = _handle
  do_PATCH = _handle


class _HttpServer(http.server.ThreadingHTTPServer):
  daemon_threads = True
  allow_reuse_address = True
  request_queue_size = 128

  def __init__(self, address, api: RestApi, *, num_threads: int,
               max_request_bytes: int, max_connections: int,
               idle_timeout_seconds: float):
    self.api = api
    self.max_request_bytes = max_request_bytes
    self.max_connections = max_connections
    self.idle_timeout_seconds = idle_timeout_seconds
    self.processing_slots = threading.BoundedSemaphore(num_threads)
    self.closing = False
    self._connections = 0
    self._active = 0
    self._cond = threading.Condition()
    super().__init__(address, _Handler)

  def process_request(self, request, client_address):
    with self._cond:
      over = self._connections >= self.max_connections or self.closing
      if not over:
        self._connections += 1
    if over:
      self._refuse(request)
      return
    super().process_request(request, client_address)

  def _refuse(self, request: socket.socket) -> None:
    body = json_codec.error_json("Too many open connections; retry later.")
    try:
      request.settimeout(1.0)
      request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                      b"Connection: close\r\nContent-Length: " + str(len(body)).encode() +
                      b"\r\n\r\n" + body)
    except OSError:
      pass
    self.shutdown_request(request)

  def handle_error(self, request, client_address):
    # Mostly clients that hung up mid-answer; not worth a traceback on stderr.
    logging.vlog(1, "REST connection from %s ended with an error", client_address,
                 exc_info=True)

  def process_request_thread(self, request, client_address):
    try:
      super().process_request_thread(request, client_address)
    finally:
      with self._cond:
        self._connections -= 1

  def begin_request(self) -> None:
    with self._cond:
      self._active += 1

  def end_request(self) -> None:
    with self._cond:
      self._active -= 1
      self._cond.notify_all()

  def wait_idle(self, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with self._cond:
      while self._active:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
          return False
        self._cond.wait(remaining)
    return True


class RestServer:
  """The REST endpoint: `start()` serves in a background thread, `stop()` drains."""

  def __init__(self, api: RestApi, *, host: str = "127.0.0.1", port: int = 8501,
               num_threads: int = 16, max_request_bytes: int = 4 << 20,
               max_connections: int = 256, idle_timeout_seconds: float = 30.0):
    if num_threads < 1:
      raise ValueError(f"num_threads={num_threads}; pass >= 1.")
    if max_request_bytes < 1:
      raise ValueError(f"max_request_bytes={max_request_bytes}; pass >= 1.")
    self._server = _HttpServer((host, port), api, num_threads=num_threads,
                               max_request_bytes=max_request_bytes,
                               max_connections=max_connections,
                               idle_timeout_seconds=idle_timeout_seconds)
    self._thread: threading.Thread | None = None

  @property
  def port(self) -> int:
    return self._server.server_address[1]

  def start(self) -> None:
    self._thread = threading.Thread(target=self._server.serve_forever,
                                    kwargs={"poll_interval": 0.2}, name="rest-accept",
                                    daemon=True)
    self._thread.start()

  def stop(self, grace_seconds: float) -> bool:
    """Stops accepting, lets running requests finish. True if all finished."""
    self._server.closing = True
    self._server.shutdown()
    self._server.server_close()
    return self._server.wait_idle(grace_seconds)
