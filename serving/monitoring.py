r"""Server metrics in Prometheus' text format, named and labelled as TF Serving's.

Contract:

* `Registry` holds counters, gauges and histograms, each with a fixed list of
  label names. Updates (`Counter.inc`, `Gauge.set`, `Histogram.observe`) are
  thread-safe and cost one dict lookup under a per-metric lock; `render()`
  writes Prometheus' text exposition format 0.0.4 (`# HELP`, `# TYPE`, one
  sample per label set; histograms as cumulative `_bucket{le=...}`, `_sum`,
  `_count`), metrics sorted by name and samples by label values.
* `ServingMetrics(registry)` creates TF Serving's metrics ("/" in TF Serving's
  names becomes ":", as its Prometheus exporter writes them):

    :tensorflow:serving:request_count{model_name, status}     counter
        Predict requests by canonical status name ("OK", "INVALID_ARGUMENT", ...).
    :tensorflow:serving:request_latency{model_name, API, entrypoint}   histogram
        Wall time of a request in microseconds; API "Predict", entrypoint
        "REST" or "GRPC"; buckets 10 * 1.8^i, i = 0..32 (TF Serving's).
    :tensorflow:cc:saved_model:load_attempt_count{model_path, status}  counter
        SavedModel loads, status "success" or "fail" (TensorFlow's metric).
    :tensorflow:cc:saved_model:load_latency{model_path}       counter
        Total microseconds spent in successful loads (TensorFlow's metric).

  and two of this server's own, for what TF Serving's page leaves out:

    :pinsage:serving:signature_latency{model_name, signature_name, entrypoint}
        histogram: predict wall time per signature, same buckets.
    :pinsage:serving:model_version_state{model_name, version, state}   gauge
        1 for the state a version is in now (START, LOADING, AVAILABLE,
        UNLOADING, END), 0 for the states it left.

* `read_monitoring_config(text)` parses TF Serving's --monitoring_config_file
  (text-format `MonitoringConfig`: `prometheus_config { enable: true
  path: "/monitoring/prometheus/metrics" }`) into a `PrometheusConfig`.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import threading
from typing import Sequence

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import text_format

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_PATH = "/monitoring/prometheus/metrics"
# TF Serving's request latency buckets: Buckets::Exponential(10, 1.8, 33) us.
LATENCY_BUCKETS_US = tuple(10.0 * 1.8 ** i for i in range(33))
VERSION_STATES = ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")


def _escape(value: str) -> str:
  return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
  if math.isinf(value):
    return "+Inf" if value > 0 else "-Inf"
  if math.isnan(value):
    return "NaN"
  if float(value).is_integer() and abs(value) < 1 << 53:
    return str(int(value))
  return repr(float(value))


def _labels_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
  parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
  if extra:
    parts.append(extra)
  return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
  kind = ""

  def __init__(self, name: str, help_text: str, label_names: Sequence[str]):
    self.name = name
    self.help = help_text
    self.label_names = tuple(label_names)
    self._lock = threading.Lock()

  def _key(self, labels: Sequence[str]) -> tuple[str, ...]:
    if len(labels) != len(self.label_names):
      raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
    return tuple(str(v) for v in labels)

  def render(self) -> list[str]:
    lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
    lines.extend(self._samples())
    return lines

  def _samples(self) -> list[str]:
    raise NotImplementedError


class Counter(_Metric):
  """A monotonically increasing value per label set."""
  kind = "counter"

  def __init__(self, name: str, help_text: str, label_names: Sequence[str]):
    super().__init__(name, help_text, label_names)
    self._values: dict[tuple[str, ...], float] = {}

  def inc(self, *labels: str, amount: float = 1.0) -> None:
    if amount < 0:
      raise ValueError(f"{self.name}: a counter only goes up, got amount={amount}")
    key = self._key(labels)
    with self._lock:
      self._values[key] = self._values.get(key, 0.0) + amount

  def value(self, *labels: str) -> float:
    with self._lock:
      return self._values.get(self._key(labels), 0.0)

  def _samples(self) -> list[str]:
    with self._lock:
      items = sorted(self._values.items())
    return [f"{self.name}{_labels_text(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(Counter):
  """A value per label set that can go up and down."""
  kind = "gauge"

  def set(self, *labels: str, value: float) -> None:
    key = self._key(labels)
    with self._lock:
      self._values[key] = float(value)


class Histogram(_Metric):
  """Counts of observations at or below each bucket bound, their sum and count."""
  kind = "histogram"

  def __init__(self, name: str, help_text: str, label_names: Sequence[str],
               buckets: Sequence[float]):
    super().__init__(name, help_text, label_names)
    if list(buckets) != sorted(set(buckets)) or not buckets:
      raise ValueError(f"{name}: buckets must be strictly increasing, got {buckets}")
    self.buckets = tuple(float(b) for b in buckets)
    # label values -> [per-bucket counts (+ overflow), sum]
    self._cells: dict[tuple[str, ...], list] = {}

  def observe(self, *labels: str, value: float) -> None:
    key = self._key(labels)
    index = bisect.bisect_left(self.buckets, value)
    with self._lock:
      cell = self._cells.get(key)
      if cell is None:
        cell = self._cells[key] = [[0] * (len(self.buckets) + 1), 0.0]
      cell[0][index] += 1
      cell[1] += value

  def count(self, *labels: str) -> int:
    with self._lock:
      cell = self._cells.get(self._key(labels))
      return sum(cell[0]) if cell else 0

  def _samples(self) -> list[str]:
    with self._lock:
      items = sorted((k, (list(c[0]), c[1])) for k, c in self._cells.items())
    lines = []
    for key, (counts, total) in items:
      cumulative = 0
      for bound, n in zip(self.buckets + (math.inf,), counts):
        cumulative += n
        le = f'le="{_number(bound)}"'
        lines.append(f"{self.name}_bucket{_labels_text(self.label_names, key, le)} {cumulative}")
      lines.append(f"{self.name}_sum{_labels_text(self.label_names, key)} {_number(total)}")
      lines.append(f"{self.name}_count{_labels_text(self.label_names, key)} {cumulative}")
    return lines


class Registry:
  """A named set of metrics; `render()` is the Prometheus page."""

  def __init__(self):
    self._metrics: dict[str, _Metric] = {}
    self._lock = threading.Lock()

  def _add(self, metric: _Metric) -> _Metric:
    with self._lock:
      if metric.name in self._metrics:
        raise ValueError(f"metric {metric.name} is already registered")
      self._metrics[metric.name] = metric
    return metric

  def counter(self, name: str, help_text: str, label_names: Sequence[str]) -> Counter:
    return self._add(Counter(name, help_text, label_names))  # type: ignore[return-value]

  def gauge(self, name: str, help_text: str, label_names: Sequence[str]) -> Gauge:
    return self._add(Gauge(name, help_text, label_names))  # type: ignore[return-value]

  def histogram(self, name: str, help_text: str, label_names: Sequence[str],
                buckets: Sequence[float]) -> Histogram:
    return self._add(Histogram(name, help_text, label_names, buckets))  # type: ignore

  def render(self) -> str:
    with self._lock:
      metrics = sorted(self._metrics.values(), key=lambda m: m.name)
    lines: list[str] = []
    for metric in metrics:
      lines.extend(metric.render())
    return "\n".join(lines) + "\n"


class ServingMetrics:
  """The model server's metrics (see the module docstring for names and labels)."""

  def __init__(self, registry: Registry | None = None):
    self.registry = registry or Registry()
    r = self.registry
    self.request_count = r.counter(
        ":tensorflow:serving:request_count", "The total number of requests.",
        ("model_name", "status"))
    self.request_latency = r.histogram(
        ":tensorflow:serving:request_latency",
        "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
        ("model_name", "API", "entrypoint"), LATENCY_BUCKETS_US)
    self.signature_latency = r.histogram(
        ":pinsage:serving:signature_latency",
        "Distribution of wall time (in microseconds) of predict requests per signature.",
        ("model_name", "signature_name", "entrypoint"), LATENCY_BUCKETS_US)
    self.load_attempt_count = r.counter(
        ":tensorflow:cc:saved_model:load_attempt_count",
        "The number of times a SavedModel was successfully loaded.",
        ("model_path", "status"))
    self.load_latency = r.counter(
        ":tensorflow:cc:saved_model:load_latency",
        "Latency in microseconds for SavedModels that were successfully loaded.",
        ("model_path",))
    self.model_version_state = r.gauge(
        ":pinsage:serving:model_version_state",
        "1 for the state each model version is in now, 0 for states it left.",
        ("model_name", "version", "state"))

  def record_predict(self, model_name: str, signature_name: str, entrypoint: str,
                     code: grpc.StatusCode, seconds: float) -> None:
    """One predict request: its status and wall time (entrypoint "REST" / "GRPC")."""
    micros = seconds * 1e6
    self.request_count.inc(model_name, code.name)
    self.request_latency.observe(model_name, "Predict", entrypoint, value=micros)
    if code == grpc.StatusCode.OK:
      self.signature_latency.observe(model_name, signature_name or "serving_default",
                                     entrypoint, value=micros)

  def record_load(self, model_path: str, ok: bool, seconds: float) -> None:
    """One SavedModel load attempt."""
    self.load_attempt_count.inc(model_path, "success" if ok else "fail")
    if ok:
      self.load_latency.inc(model_path, amount=seconds * 1e6)

  def set_version_state(self, model_name: str, version: int, state: str) -> None:
    """Marks `state` (one of VERSION_STATES) as the version's current state."""
    if state not in VERSION_STATES:
      raise ValueError(f"state {state!r}; pass one of {VERSION_STATES}")
    for other in VERSION_STATES:
      self.model_version_state.set(model_name, str(version), other,
                                   value=1.0 if other == state else 0.0)


@dataclasses.dataclass(frozen=True)
class PrometheusConfig:
  """TF Serving's PrometheusConfig: whether the page is served, and where."""
  enable: bool = False
  path: str = DEFAULT_PATH


def _monitoring_config_class():
  # TF Serving's MonitoringConfig (tensorflow_serving/config/monitoring_config.proto)
  # is not in the tensorflow-serving-api package; the same two messages are
  # declared here so text_format parses the file with protobuf's own rules.
  file_proto = descriptor_pb2.FileDescriptorProto(
      name="pinsage_serving_monitoring_config.proto", package="tensorflow.serving",
      syntax="proto3")
  prometheus = file_proto.message_type.add(name="PrometheusConfig")
  prometheus.field.add(name="enable", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
                       label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
  prometheus.field.add(name="path", number=2,
                       type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                       label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
  config = file_proto.message_type.add(name="MonitoringConfig")
  config.field.add(name="prometheus_config", number=1,
                   type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                   label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                   type_name=".tensorflow.serving.PrometheusConfig")
  pool = descriptor_pool.DescriptorPool()
  pool.Add(file_proto)
  return message_factory.GetMessageClass(
      pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


def read_monitoring_config(text: str, source: str = "<monitoring config>") -> PrometheusConfig:
  """Parses a text-format MonitoringConfig.

  Raises:
    ValueError: naming `source` and the line for text that is not a valid
      MonitoringConfig, or for a path that does not start with "/".
  """
  message = _monitoring_config_class()()
  try:
    text_format.Parse(text, message)
  except text_format.ParseError as e:
    raise ValueError(f"{source}: not a MonitoringConfig: {e}") from None
  prometheus = message.prometheus_config
  path = prometheus.path or DEFAULT_PATH
  if not path.startswith("/"):
    raise ValueError(f"{source}: prometheus_config.path must start with '/', got {path!r}")
  return PrometheusConfig(enable=prometheus.enable, path=path)
