"""TF Serving's REST API: the request dispatcher and its HTTP/1.1 server.

Endpoints (paths matched case-insensitively with TF Serving's own regexes from
model_servers/http_rest_api_util.cc):

  GET  /v1/models/NAME[/versions/N | /labels/L]           -> GetModelStatusResponse
  GET  /v1/models/NAME[/versions/N | /labels/L]/metadata  -> {"model_spec", "metadata":
                                                              {"signature_def": {...}}}
  POST /v1/models/NAME[/versions/N | /labels/L]:predict   -> {"predictions"} / {"outputs"}
  GET  <metrics path> (when monitoring is on)             -> Prometheus text format

Errors are `{ "error": "<message>" }` with TF Serving's HTTP code for the
status (400 INVALID_ARGUMENT / FAILED_PRECONDITION, 404 NOT_FOUND, 429
RESOURCE_EXHAUSTED, 501 UNIMPLEMENTED (:classify, :regress), 503 UNAVAILABLE,
504 DEADLINE_EXCEEDED, 500 otherwise), plus 413 for a body larger than
`max_request_bytes` and 400 / 408 / 431 for requests the HTTP layer cannot
frame (see `RestServer`). Every request gets an answer; no request can stop
the server.

`RestApi.handle(method, path, body)` is the transport-free dispatcher;
`RestServer` serves it over HTTP/1.1 from an asyncio event loop (reading and
writing) and a pool of worker threads (decoding, running, encoding).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
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
from serving import monitoring
from serving.errors import ServingError

_JSON = "application/json"
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
  if len(text) > 19 or int(text) > _INT64_MAX:
    raise errors.invalid_argument(f"Failed to convert version: {text[:32]} to numeric.")
  return int(text)


def _unquote(text: str) -> str:
  # Percent-decoding may give bytes that are not UTF-8; they are kept as
  # replacement characters (the name then matches no model: 404).
  return urllib.parse.unquote(text, errors="replace")


def _message_json(message: Any) -> str:
  # TF Serving prints these with always_print_primitive_fields.
  return json_format.MessageToJson(message, always_print_fields_with_no_presence=True,
                                   preserving_proto_field_name=True, indent=1)


class RestApi:
  """Maps (method, path, body) to (HTTP status, content type, body) like TF Serving."""

  def __init__(self, manager: model_manager_lib.ModelManager,
               timeout_seconds: float | None = None,
               metrics: monitoring.ServingMetrics | None = None,
               metrics_path: str | None = None, answer_at_deadline: bool = True):
    """Creates the dispatcher.

    Args:
      manager: the model core.
      timeout_seconds: predict deadline (None = none).
      metrics: where predictions are counted and timed (None = not recorded).
      metrics_path: GET path of the Prometheus page (needs `metrics`; None = no page).
      answer_at_deadline: True: a predict runs on the model manager's thread
        and `handle` returns 504 at the deadline. False: it runs in the
        calling thread (one thread hand-off less per request) and the caller
        answers at the deadline (`RestServer` does, see `transport_deadline`).
    """
    if metrics_path is not None and metrics is None:
      raise ValueError("metrics_path needs metrics=monitoring.ServingMetrics(...).")
    self._manager = manager
    self._timeout = timeout_seconds
    self._metrics = metrics
    self._metrics_path = metrics_path
    self._answer_at_deadline = answer_at_deadline

  @property
  def transport_deadline(self) -> float | None:
    """Seconds after which the transport must answer 504 itself (None = never)."""
    return None if self._answer_at_deadline else self._timeout

  def handle(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
    """Answers one request; never raises."""
    try:
      if self._metrics_path is not None and method == "GET" and path == self._metrics_path:
        assert self._metrics is not None
        return 200, monitoring.CONTENT_TYPE, self._metrics.registry.render().encode("utf-8")
      return 200, _JSON, self._dispatch(method, path, body)
    except ServingError as e:
      status = e.http_status or errors.http_status(e.code)
      if status >= 500:
        logging.warning("REST %s %s failed: %s", method, path, e)
      return status, _JSON, json_codec.error_json(e.message)
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("REST %s %s: internal error", method, path)
      return 500, _JSON, json_codec.error_json(f"Internal error: {type(e).__name__}: {e}")

  def _dispatch(self, method: str, path: str, body: bytes) -> bytes:
    if not _API_PATH.fullmatch(path):
      raise ServingError(grpc.StatusCode.NOT_FOUND, f"Not found: {method} {path[:256]}")
    malformed = errors.invalid_argument(f"Malformed request: {method} {path[:256]}")
    if method == "POST":
      match = _PREDICT_PATH.fullmatch(path)
      if not match:
        raise malformed
      name, version_text, label, verb = match.groups()
      name = _unquote(name)
      if verb.lower() != "predict":
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                           f"The :{verb.lower()} API is not supported by this server; "
                           "use :predict with the model's signature.")
      started = time.perf_counter()
      code, signature_name = grpc.StatusCode.OK, ""
      try:
        version = _parse_version(version_text)
        label = _unquote(label) if label else None
        response, signature_name = self._predict(name, version, label, body)
        return response
      except ServingError as e:
        code = e.code
        raise
      except Exception:
        code = grpc.StatusCode.INTERNAL
        raise
      finally:
        if self._metrics is not None:
          self._metrics.record_predict(name, signature_name, "REST", code,
                                       time.perf_counter() - started)
    if method == "GET":
      match = _STATUS_PATH.fullmatch(path)
      if not match:
        raise malformed
      name, version_text, label, metadata = match.groups()
      if not name:
        raise errors.invalid_argument("Missing model name in request.")
      name = _unquote(name)
      version = _parse_version(version_text)
      label = _unquote(label) if label else None
      if metadata:
        return self._metadata(name, version, label)
      response = self._manager.get_model_status(name, version, label)
      return _message_json(response).encode("utf-8")
    raise malformed

  def _predict(self, name: str, version: int | None, label: str | None,
               body: bytes) -> tuple[bytes, str]:
    # One handle for the whole request: parsing and running see the same version.
    servable = self._manager.get_servable(name, version, label)
    request = json_codec.parse_json_predict(body, servable.rest_signature)
    outputs = self._manager.predict(servable, request.signature_name, request.inputs,
                                    timeout_seconds=self._timeout,
                                    answer_at_deadline=self._answer_at_deadline)
    return json_codec.outputs_to_json(outputs, request.format), request.signature_name

  def _metadata(self, name: str, version: int | None, label: str | None) -> bytes:
    response = self._manager.get_model_metadata(name, version, label)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_defs)
    # TF Serving prints the two parts separately and joins them (see
    # http_rest_api_util.cc ToJsonString), so the layout matches it.
    return ("{\n\"model_spec\":" + _message_json(response.model_spec) + ",\n" +
            "\"metadata\": {\"signature_def\": " + _message_json(signature_defs) +
            "}\n}\n").encode("utf-8")


_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    408: "Request Timeout", 409: "Conflict", 411: "Length Required",
    413: "Payload Too Large", 417: "Expectation Failed", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 499: "Client Closed Request",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    504: "Gateway Timeout",
}
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HTTP_VERSION = re.compile(rb"HTTP/1\.[01]")
_MAX_HEADERS = 100


class _BadRequest(Exception):
  """A request the HTTP layer rejects before the API sees it; the connection closes."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


@dataclasses.dataclass
class _Request:
  method: str
  target: str
  version: bytes
  headers: dict[str, str]


def _parse_head(head: bytes) -> _Request:
  """Request line and headers (`head` ends with the blank line)."""
  lines = head.split(b"\r\n")
  parts = lines[0].split(b" ")
  if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
    raise _BadRequest(400, f"Malformed HTTP request line: {_quote_bytes(lines[0])}")
  method, target, version = parts
  if not _HTTP_VERSION.fullmatch(version):
    raise _BadRequest(400, f"Unsupported HTTP version: {_quote_bytes(version)}; "
                      "use HTTP/1.1 or HTTP/1.0.")
  headers: dict[str, str] = {}
  fields = [line for line in lines[1:] if line]
  if len(fields) > _MAX_HEADERS:
    raise _BadRequest(431, f"More than {_MAX_HEADERS} header fields.")
  for line in fields:
    name, sep, value = line.partition(b":")
    if not sep or not _TOKEN.fullmatch(name):
      # Also rejects obsolete line folding (a line starting with whitespace).
      raise _BadRequest(400, f"Malformed HTTP header line: {_quote_bytes(line)}")
    key = name.decode("ascii").lower()
    text = value.strip(b" \t").decode("latin-1")
    if key in headers:
      if key == "content-length" and headers[key] != text:
        raise _BadRequest(400, "Conflicting Content-Length headers.")
      headers[key] = headers[key] + ", " + text
    else:
      headers[key] = text
  try:
    target_text = target.decode("ascii")
  except UnicodeDecodeError:
    raise _BadRequest(400, "Request target is not ASCII; percent-encode it.") from None
  return _Request(method.decode("ascii"), target_text, version, headers)


def _quote_bytes(data: bytes) -> str:
  text = data[:200].decode("latin-1")
  return repr(text) + ("...(truncated)" if len(data) > 200 else "")


def _keep_alive(request: _Request) -> bool:
  tokens = {t.strip().lower() for t in request.headers.get("connection", "").split(",")}
  if request.version == b"HTTP/1.0":
    return "keep-alive" in tokens
  return "close" not in tokens


def _response_bytes(status: int, content_type: str, body: bytes, *, close: bool,
                    head_only: bool = False, http10: bool = False) -> bytes:
  # Headers and body in one buffer, written with one send: a response split
  # over two sends meets Nagle's algorithm and the client's delayed ACK.
  if close:
    connection = "Connection: close\r\n"
  else:  # HTTP/1.0 clients assume close unless told otherwise
    connection = "Connection: keep-alive\r\n" if http10 else ""
  head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
          f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n" +
          connection + "\r\n").encode("ascii")
  return head if head_only else head + body


@dataclasses.dataclass(eq=False)
class _Connection:
  writer: asyncio.StreamWriter
  # Waiting for the first byte of a request: may be evicted for a new client.
  idle: bool = True
  idle_since: float = 0.0


class RestServer:
  """The REST endpoint on an asyncio event loop; `start()` serves, `stop()` drains.

  One event-loop thread accepts connections and reads requests; complete
  requests run on `num_threads` worker threads (`RestApi.handle`), so an idle
  or slow connection costs a socket and a coroutine, never a worker. When
  `api.transport_deadline` is set, a request not answered by then gets 504
  from the loop while its worker finishes in the background.

  * Keep-alive (HTTP/1.1 default; HTTP/1.0 with `Connection: keep-alive`),
    `Expect: 100-continue`, `Content-Length` or chunked bodies.
  * A request (head and body) must arrive within `read_timeout_seconds` of
    its first byte, else 408 and the connection closes; a connection with no
    request for `idle_timeout_seconds` is closed.
  * At most `max_connections` open connections: a new one first evicts the
    longest-idle connection; only when every connection is mid-request does
    it get 503.
  * Heads over `max_header_bytes` get 431, bodies over `max_request_bytes`
    413 (before they are read), malformed framing 400; each closes the
    connection. Every error body is `{ "error": "..." }`.
  """

  DEFAULT_MAX_CONNECTIONS = 256

  def __init__(self, api: RestApi, *, host: str = "127.0.0.1", port: int = 8501,
               num_threads: int = 16, max_request_bytes: int = 4 << 20,
               max_connections: int = DEFAULT_MAX_CONNECTIONS,
               idle_timeout_seconds: float = 30.0,
               read_timeout_seconds: float = 10.0, max_header_bytes: int = 64 << 10):
    for name, value in (("num_threads", num_threads), ("max_request_bytes", max_request_bytes),
                        ("max_connections", max_connections),
                        ("max_header_bytes", max_header_bytes)):
      if value < 1:
        raise ValueError(f"{name}={value}; pass >= 1.")
    for name, value in (("idle_timeout_seconds", idle_timeout_seconds),
                        ("read_timeout_seconds", read_timeout_seconds)):
      if not value > 0:
        raise ValueError(f"{name}={value}; pass a positive number of seconds.")
    self._api = api
    self._max_request_bytes = max_request_bytes
    self._max_connections = max_connections
    self._idle_timeout = idle_timeout_seconds
    self._read_timeout = read_timeout_seconds
    self._max_header_bytes = max_header_bytes
    # Bound here so a busy port fails in the constructor, like the old server.
    self._socket = socket.create_server((host, port), backlog=1024,
                                        family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    self._pool = concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="rest")
    self._loop = asyncio.new_event_loop()
    self._server: asyncio.AbstractServer | None = None
    self._thread: threading.Thread | None = None
    self._connections: dict[_Connection, None] = {}  # insertion-ordered set
    self._active = 0  # requests handed to the workers and not yet answered
    self._closing = False
    self._idle_event: asyncio.Event | None = None

  @property
  def port(self) -> int:
    return self._socket.getsockname()[1]

  @property
  def open_connections(self) -> int:
    """Connections open now (read from any thread; approximate while changing)."""
    return len(self._connections)

  @property
  def idle_connections(self) -> int:
    """Open connections waiting for their next request."""
    return sum(1 for c in list(self._connections) if c.idle)

  @property
  def requests_in_flight(self) -> int:
    """Requests read and not yet answered."""
    return self._active

  def start(self) -> None:
    ready = threading.Event()

    def run() -> None:
      asyncio.set_event_loop(self._loop)
      self._idle_event = asyncio.Event()
      self._idle_event.set()
      self._server = self._loop.run_until_complete(asyncio.start_server(
          self._serve_connection, sock=self._socket, limit=self._max_header_bytes,
          backlog=1024))
      ready.set()
      self._loop.run_forever()

    self._thread = threading.Thread(target=run, name="rest-loop", daemon=True)
    self._thread.start()
    ready.wait()

  def stop(self, grace_seconds: float) -> bool:
    """Stops accepting, lets running requests finish. True if all finished."""
    if self._thread is None:
      self._socket.close()
      self._pool.shutdown(wait=False)
      return True
    future = asyncio.run_coroutine_threadsafe(self._shutdown(grace_seconds), self._loop)
    try:
      drained = future.result(grace_seconds + 10)
    except concurrent.futures.TimeoutError:
      drained = False
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join(10)
    self._pool.shutdown(wait=False, cancel_futures=True)
    return drained

  async def _shutdown(self, grace_seconds: float) -> bool:
    self._closing = True
    assert self._server is not None and self._idle_event is not None
    self._server.close()
    for connection in list(self._connections):
      if connection.idle:
        connection.writer.close()
    try:
      await asyncio.wait_for(self._idle_event.wait(), grace_seconds)
      drained = True
    except asyncio.TimeoutError:
      drained = False
    for connection in list(self._connections):
      connection.writer.close()
    return drained

  # -- connections ------------------------------------------------------------

  def _admit(self, connection: _Connection) -> bool:
    if len(self._connections) >= self._max_connections:
      idle = [c for c in self._connections if c.idle]
      if not idle:
        return False
      victim = min(idle, key=lambda c: c.idle_since)
      del self._connections[victim]
      victim.writer.close()
      logging.vlog(1, "REST: closed the longest-idle connection for a new client")
    self._connections[connection] = None
    return True

  async def _serve_connection(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
      with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection = _Connection(writer, idle=True, idle_since=self._loop.time())
    if self._closing or not self._admit(connection):
      body = json_codec.error_json("Server is shutting down." if self._closing else
                                   "Too many open connections; retry later.")
      writer.write(_response_bytes(503, _JSON, body, close=True))
      await self._close(writer)
      return
    try:
      while not self._closing and connection in self._connections:
        connection.idle, connection.idle_since = True, self._loop.time()
        if not await self._serve_one(reader, writer, connection):
          break
    except (ConnectionError, asyncio.IncompleteReadError, OSError):
      pass  # the client went away
    except Exception:  # pylint: disable=broad-except
      logging.exception("REST connection failed; closing it")
    finally:
      self._connections.pop(connection, None)
      await self._close(writer)

  async def _close(self, writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
      await writer.wait_closed()

  async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       connection: _Connection) -> bool:
    """Reads and answers one request; False when the connection should close."""
    try:
      async with asyncio.timeout(self._idle_timeout):
        first = await reader.readexactly(1)
        while first in (b"\r", b"\n"):  # stray line breaks between requests are allowed
          first = await reader.readexactly(1)
    except (TimeoutError, asyncio.IncompleteReadError):
      return False
    connection.idle = False
    deadline = self._loop.time() + self._read_timeout
    try:
      async with asyncio.timeout_at(deadline):
        request, body = await self._read_request(first, reader, writer)
    except _BadRequest as e:
      writer.write(_response_bytes(e.status, _JSON, json_codec.error_json(e.message),
                                   close=True))
      await writer.drain()
      await self._linger(reader, writer)
      return False
    except TimeoutError:
      message = (f"Request not received within {self._read_timeout:g} s "
                 "(--rest_api_read_timeout_seconds).")
      writer.write(_response_bytes(408, _JSON, json_codec.error_json(message), close=True))
      with contextlib.suppress(Exception):
        await writer.drain()
      return False
    keep_alive = _keep_alive(request)
    path = urllib.parse.urlsplit(request.target).path
    try:
      future = self._loop.run_in_executor(self._pool, self._api.handle, request.method, path,
                                          body)
    except RuntimeError:  # the pool is shut down
      status, content_type, payload = 503, _JSON, json_codec.error_json(
          "Server is shutting down.")
    else:
      # Counted until the worker is done, even if the client was answered at
      # the deadline: shutdown waits for it.
      self._begin()
      future.add_done_callback(lambda _: self._end())
      deadline = self._api.transport_deadline
      try:
        if deadline is None:
          status, content_type, payload = await future
        else:
          status, content_type, payload = await asyncio.wait_for(asyncio.shield(future),
                                                                 deadline)
      except TimeoutError:
        # The model call cannot be interrupted; it finishes on its worker.
        status, content_type, payload = 504, _JSON, json_codec.error_json(
            f"Prediction did not finish within {deadline * 1000:.0f} ms")
    close = not keep_alive or self._closing
    writer.write(_response_bytes(status, content_type, payload, close=close,
                                 head_only=request.method == "HEAD",
                                 http10=request.version == b"HTTP/1.0"))
    await writer.drain()
    return not close

  async def _linger(self, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
    # Closing with unread request bytes makes the kernel send a reset, which
    # can destroy the error answer before the client reads it; so read and
    # drop what the client still sends, for a bounded time and amount.
    with contextlib.suppress(Exception):
      if writer.can_write_eof():
        writer.write_eof()
      async with asyncio.timeout(1.0):
        dropped = 0
        while dropped <= 2 * self._max_request_bytes:
          data = await reader.read(65536)
          if not data:
            break
          dropped += len(data)

  def _begin(self) -> None:
    self._active += 1
    assert self._idle_event is not None
    self._idle_event.clear()

  def _end(self) -> None:
    self._active -= 1
    if not self._active:
      assert self._idle_event is not None
      self._idle_event.set()

  async def _read_request(self, first: bytes, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> tuple[_Request, bytes]:
    try:
      head = first + await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
      raise _BadRequest(431, f"Request head is larger than {self._max_header_bytes} "
                        "bytes.") from None
    except asyncio.IncompleteReadError as e:
      if e.partial:
        raise _BadRequest(400, "Connection closed in the middle of the request head.") from None
      raise
    request = _parse_head(head)
    headers = request.headers
    limit = self._max_request_bytes
    too_large = _BadRequest(
        413, f"Request body is larger than this server's --max_request_bytes={limit}.")
    encoding = headers.get("transfer-encoding")
    length_text = headers.get("content-length")
    if encoding is not None:
      if length_text is not None:
        raise _BadRequest(400, "Both Transfer-Encoding and Content-Length are set.")
      if encoding.strip().lower() != "chunked":
        raise _BadRequest(400, f"Unsupported Transfer-Encoding: {encoding!r}; only "
                          "'chunked' is accepted.")
      self._continue(request, writer)
      return request, await self._read_chunked(reader, limit, too_large)
    if length_text is None:
      return request, b""
    if not length_text.isdigit() or len(length_text) > 18:
      raise _BadRequest(400, f"Bad Content-Length: {length_text!r}")
    length = int(length_text)
    if length > limit:
      raise too_large
    self._continue(request, writer)
    return request, await reader.readexactly(length) if length else b""

  @staticmethod
  def _continue(request: _Request, writer: asyncio.StreamWriter) -> None:
    expect = request.headers.get("expect")
    if expect is None:
      return
    if expect.strip().lower() != "100-continue":
      raise _BadRequest(417, f"Unsupported Expect: {expect!r}")
    if request.version == b"HTTP/1.1":
      writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

  @staticmethod
  async def _read_chunked(reader: asyncio.StreamReader, limit: int,
                          too_large: _BadRequest) -> bytes:
    chunks, total = [], 0
    malformed = _BadRequest(400, "Malformed chunked request body.")
    while True:
      try:
        size_line = await reader.readuntil(b"\r\n")
      except (asyncio.LimitOverrunError, asyncio.IncompleteReadError):
        raise malformed from None
      size_text = size_line[:-2].split(b";")[0].strip()
      if not size_text or len(size_text) > 16 or not re.fullmatch(rb"[0-9A-Fa-f]+", size_text):
        raise malformed
      size = int(size_text, 16)
      if size == 0:
        while True:  # trailer fields, ignored, up to the blank line
          try:
            line = await reader.readuntil(b"\r\n")
          except (asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            raise malformed from None
          if line == b"\r\n":
            return b"".join(chunks)
      total += size
      if total > limit:
        raise too_large
      try:
        data = await reader.readexactly(size + 2)
      except asyncio.IncompleteReadError:
        raise malformed from None
      if data[-2:] != b"\r\n":
        raise malformed
      chunks.append(data[:-2])
