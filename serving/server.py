r"""Model server speaking TensorFlow Serving's REST and gRPC protocols.

Serves SavedModels laid out as TF Serving expects (`BASE/NAME/VERSION/`, integer
versions), so a client written for `tensorflow_model_server` works unchanged
against either:

  python -m serving.server --model_name=pinsage --model_base_path=/models/pinsage \
      --port=8500 --rest_api_port=8501

or with a text-format `model_config_list` (several models, version policies,
labels):

  python -m serving.server --model_config_file=models.config

Startup loads every model's versions before the ports open. Base paths are
re-scanned every --file_system_poll_wait_seconds; new versions are loaded in
the background, warmed up with their `assets.extra/tf_serving_warmup_requests`
and swapped in atomically. Version labels must name loaded versions (unless
--allow_version_labels_for_unavailable_models), or the server exits 1 at
startup. SIGTERM / SIGINT: stop accepting, finish in-flight requests (up to
--shutdown_grace_seconds), exit 0.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging

from trainer import startup  # noqa: F401  (TensorFlow's log level; before TF loads)
from serving import batching
from serving import grpc_service
from serving import model_manager as model_manager_lib
from serving import monitoring
from serving import rest
from serving import servable as servable_lib
from serving import server_config
from serving.errors import ServingError

_PORT = flags.DEFINE_integer("port", 8500, "Port for the gRPC API.")
_REST_API_PORT = flags.DEFINE_integer(
    "rest_api_port", 8501, "Port for the HTTP/REST API; 0 disables REST.")
_HOST = flags.DEFINE_string(
    "host", "127.0.0.1", "Address both APIs bind to (0.0.0.0 to serve other hosts).")
_MODEL_CONFIG_FILE = flags.DEFINE_string(
    "model_config_file", "",
    "Text-format ModelServerConfig (model_config_list). Exclusive with "
    "--model_name/--model_base_path.")
_MODEL_NAME = flags.DEFINE_string("model_name", "default", "Name of the single served model.")
_MODEL_BASE_PATH = flags.DEFINE_string(
    "model_base_path", "", "Directory with the single model's integer version subdirectories.")
_FILE_SYSTEM_POLL_WAIT_SECONDS = flags.DEFINE_integer(
    "file_system_poll_wait_seconds", 2,
    "Seconds between scans of the base paths for new versions; 0 = scan once at startup.")
_SAVED_MODEL_TAGS = flags.DEFINE_string(
    "saved_model_tags", "serve", "Comma-separated tag set of the MetaGraphDef to serve.")
_REST_API_NUM_THREADS = flags.DEFINE_integer(
    "rest_api_num_threads", 16, "REST requests processed at once (others wait).")
_REST_API_TIMEOUT_IN_MS = flags.DEFINE_integer(
    "rest_api_timeout_in_ms", 30000, "Deadline of a REST predict; 0 = none (504 when hit).")
_REST_API_MAX_CONNECTIONS = flags.DEFINE_integer(
    "rest_api_max_connections", 256,
    "Open REST connections allowed; a new one closes the longest-idle connection, and "
    "gets 503 only when every connection is in the middle of a request.")
_REST_API_READ_TIMEOUT_SECONDS = flags.DEFINE_float(
    "rest_api_read_timeout_seconds", 10.0,
    "A REST request (head and body) must arrive within this long of its first byte "
    "(else 408).")
_REST_API_IDLE_TIMEOUT_SECONDS = flags.DEFINE_float(
    "rest_api_idle_timeout_seconds", 30.0,
    "A kept-alive REST connection with no request for this long is closed.")
_MONITORING_CONFIG_FILE = flags.DEFINE_string(
    "monitoring_config_file", "",
    "Text-format MonitoringConfig; `prometheus_config { enable: true path: "
    "\"/monitoring/prometheus/metrics\" }` serves metrics on the REST port.")
_GRPC_MAX_THREADS = flags.DEFINE_integer("grpc_max_threads", 32, "gRPC handler threads.")
_MAX_REQUEST_BYTES = flags.DEFINE_integer(
    "max_request_bytes", 4 << 20,
    "Largest request body / message (REST 413, gRPC RESOURCE_EXHAUSTED).")
_MAX_BATCH_SIZE = flags.DEFINE_integer(
    "max_batch_size", 1024, "Largest batch (rows) per request; 0 = unbounded (INVALID_ARGUMENT).")
_MAX_CONCURRENT_REQUESTS = flags.DEFINE_integer(
    "max_concurrent_requests", 64, "Predictions running at once across REST and gRPC.")
_MAX_QUEUED_REQUESTS = flags.DEFINE_integer(
    "max_queued_requests", 64,
    "Predictions allowed to wait for a running slot; more get RESOURCE_EXHAUSTED "
    "(REST 429).")
_ALLOW_VERSION_LABELS_FOR_UNAVAILABLE_MODELS = flags.DEFINE_bool(
    "allow_version_labels_for_unavailable_models", False,
    "Allow version labels that name versions which are not loaded (as TF Serving's flag); "
    "otherwise such a label stops the server at startup.")
_ENABLE_BATCHING = flags.DEFINE_bool(
    "enable_batching", False,
    "Batch concurrent predictions of signatures whose inputs and outputs all have a batch "
    "dimension (one call for many requests, same results); see --batching_parameters_file.")
_BATCHING_PARAMETERS_FILE = flags.DEFINE_string(
    "batching_parameters_file", "",
    "Text-format BatchingParameters (max_batch_size { value: 64 } batch_timeout_micros "
    "{ value: 0 } num_batch_threads { value: 1 } max_enqueued_batches { value: 100 }); "
    "empty = those defaults. Implies nothing without --enable_batching.")
_SHUTDOWN_GRACE_SECONDS = flags.DEFINE_float(
    "shutdown_grace_seconds", 30.0, "How long shutdown waits for in-flight requests.")


def _parse_flag_file(flag: flags.FlagHolder, parse: Callable[..., Any]) -> Any:
  """`parse(text, source=path)` of the text file a flag names; errors are UsageErrors."""
  path = flag.value
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except OSError as e:
    raise app.UsageError(f"--{flag.name}={path}: {e}") from None
  try:
    return parse(text, source=path)
  except ValueError as e:
    raise app.UsageError(str(e)) from None


def model_configs_from_flags() -> list[server_config.ModelConfig]:
  """The served models from --model_config_file or --model_name/--model_base_path."""
  if _MODEL_CONFIG_FILE.value and _MODEL_BASE_PATH.value:
    raise app.UsageError("Pass either --model_config_file or --model_base_path, not both.")
  if _MODEL_CONFIG_FILE.value:
    return _parse_flag_file(_MODEL_CONFIG_FILE, server_config.model_configs_from_text)
  if not _MODEL_BASE_PATH.value:
    raise app.UsageError("Pass --model_base_path (with --model_name) or --model_config_file.")
  try:
    return [server_config.ModelConfig(_MODEL_NAME.value,
                                      os.path.abspath(_MODEL_BASE_PATH.value))]
  except ValueError as e:
    raise app.UsageError(str(e)) from None


def batching_parameters_from_flags() -> batching.BatchingParameters | None:
  """--enable_batching / --batching_parameters_file as parameters (None = no batching)."""
  if not _ENABLE_BATCHING.value:
    if _BATCHING_PARAMETERS_FILE.value:
      logging.warning("--batching_parameters_file is ignored without --enable_batching.")
    return None
  if not _BATCHING_PARAMETERS_FILE.value:
    return batching.BatchingParameters()
  return _parse_flag_file(_BATCHING_PARAMETERS_FILE, batching.parameters_from_text)


def prometheus_config_from_flags() -> monitoring.PrometheusConfig:
  """The metrics page settings from --monitoring_config_file (off without it)."""
  if not _MONITORING_CONFIG_FILE.value:
    return monitoring.PrometheusConfig()
  return _parse_flag_file(_MONITORING_CONFIG_FILE, monitoring.read_monitoring_config)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  configs = model_configs_from_flags()
  prometheus = prometheus_config_from_flags()
  if prometheus.enable and not _REST_API_PORT.value:
    raise app.UsageError("Prometheus metrics are served on the REST port; set --rest_api_port.")
  metrics = monitoring.ServingMetrics()
  try:
    limits = server_config.ServingLimits(
        max_concurrent_requests=_MAX_CONCURRENT_REQUESTS.value,
        max_queued_requests=_MAX_QUEUED_REQUESTS.value,
        max_batch_size=_MAX_BATCH_SIZE.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  tags = [t.strip() for t in _SAVED_MODEL_TAGS.value.split(",") if t.strip()]
  batching_parameters = batching_parameters_from_flags()

  stop = threading.Event()
  # Installed before loading so a SIGTERM during startup also exits cleanly.
  signal.signal(signal.SIGTERM, lambda *_: stop.set())
  signal.signal(signal.SIGINT, lambda *_: stop.set())

  servable_lib.import_custom_ops()
  manager = model_manager_lib.ModelManager(configs, saved_model_tags=tags, limits=limits,
                                           batching_parameters=batching_parameters,
                                           metrics=metrics)
  manager.poll_once()  # Every model's first load happens before the ports open.
  if stop.is_set():
    logging.info("Stopped during startup.")
    manager.stop(0)
    _exit(0)
  try:
    manager.apply_version_labels(_ALLOW_VERSION_LABELS_FOR_UNAVAILABLE_MODELS.value)
  except ServingError as e:
    logging.error("%s", e.message)
    manager.stop(0)
    _exit(1)

  grpc_server, grpc_port = grpc_service.create_server(
      manager, host=_HOST.value, port=_PORT.value, max_threads=_GRPC_MAX_THREADS.value,
      max_request_bytes=_MAX_REQUEST_BYTES.value, metrics=metrics)
  grpc_server.start()
  logging.info("Running gRPC ModelServer at %s:%d ...", _HOST.value, grpc_port)
  rest_server = None
  if _REST_API_PORT.value:
    timeout_ms = _REST_API_TIMEOUT_IN_MS.value
    api = rest.RestApi(manager, timeout_seconds=timeout_ms / 1000 if timeout_ms > 0 else None,
                       metrics=metrics,
                       metrics_path=prometheus.path if prometheus.enable else None,
                       answer_at_deadline=False)  # RestServer answers 504 itself
    rest_server = rest.RestServer(
        api, host=_HOST.value, port=_REST_API_PORT.value,
        num_threads=_REST_API_NUM_THREADS.value, max_request_bytes=_MAX_REQUEST_BYTES.value,
        max_connections=_REST_API_MAX_CONNECTIONS.value,
        idle_timeout_seconds=_REST_API_IDLE_TIMEOUT_SECONDS.value,
        read_timeout_seconds=_REST_API_READ_TIMEOUT_SECONDS.value)
    rest_server.start()
    logging.info("Exporting HTTP/REST API at:%s:%d ...", _HOST.value, rest_server.port)
    if prometheus.enable:
      logging.info("Prometheus metrics at http://%s:%d%s", _HOST.value, rest_server.port,
                   prometheus.path)
  manager.start_polling(_FILE_SYSTEM_POLL_WAIT_SECONDS.value)

  while not stop.wait(0.5):
    pass

  grace = _SHUTDOWN_GRACE_SECONDS.value
  logging.info("Shutting down: no new requests; waiting up to %.0fs for in-flight ones.", grace)
  drained = True
  if rest_server is not None:
    drained &= rest_server.stop(grace)
  grpc_server.stop(grace).wait(grace + 1)
  drained &= manager.stop(grace)
  if not drained:
    logging.warning("Some requests were still running after %.0fs.", grace)
  logging.info("Server stopped.")
  _exit(0)


def _exit(code: int) -> None:
  """Ends the process once every answer is out, without interpreter teardown.

  After the drain nothing is left to do, but TensorFlow's and gRPC's native
  threads (thread pools, completion queues) can still be inside C++ code while
  Python's finalisation destroys the objects they use, which once in a few
  shutdowns aborts the process ("terminate called ..."). Skipping the
  teardown avoids that race; logs and stdio are flushed first.
  """
  logging.flush()
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  os._exit(code)  # pylint: disable=protected-access


def run() -> None:
  """Console-script entry point (`pinsage-serve`)."""
  app.run(main)


if __name__ == "__main__":
  run()
