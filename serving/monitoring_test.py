"""Tests for serving.monitoring: the registry, the text format, TF Serving's metric names."""

from __future__ import annotations

import threading

import grpc
import pytest

from serving import monitoring


def test_counter_gauge_and_histogram_render_prometheus_text():
  registry = monitoring.Registry()
  requests = registry.counter(":a:requests", "Requests.", ("model_name", "status"))
  state = registry.gauge(":a:state", "State.", ("model_name",))
  latency = registry.histogram(":a:latency", "Latency.", ("model_name",), (10.0, 100.0))
  requests.inc("m", "OK")
  requests.inc("m", "OK", amount=2)
  requests.inc('q"x\\y\nz', "NOT_FOUND")
  state.set("m", value=3)
  state.set("m", value=1)
  # 5 <= 10; 10 <= 10 (bounds are inclusive); 50 <= 100; 1000 only in +Inf.
  for value in (5.0, 10.0, 50.0, 1000.0):
    latency.observe("m", value=value)
  assert registry.render() == "\n".join([
      "# HELP :a:latency Latency.",
      "# TYPE :a:latency histogram",
      ':a:latency_bucket{model_name="m",le="10"} 2',
      ':a:latency_bucket{model_name="m",le="100"} 3',
      ':a:latency_bucket{model_name="m",le="+Inf"} 4',
      ':a:latency_sum{model_name="m"} 1065',
      ':a:latency_count{model_name="m"} 4',
      "# HELP :a:requests Requests.",
      "# TYPE :a:requests counter",
      ':a:requests{model_name="m",status="OK"} 3',
      ':a:requests{model_name="q\\"x\\\\y\\nz",status="NOT_FOUND"} 1',
      "# HELP :a:state State.",
      "# TYPE :a:state gauge",
      ':a:state{model_name="m"} 1',
  ]) + "\n"
  assert requests.value("m", "OK") == 3 and latency.count("m") == 4


def test_bad_use_raises_value_error():
  registry = monitoring.Registry()
  counter = registry.counter(":c", "C.", ("a",))
  with pytest.raises(ValueError, match="takes labels"):
    counter.inc("x", "y")
  with pytest.raises(ValueError, match="only goes up"):
    counter.inc("x", amount=-1)
  with pytest.raises(ValueError, match="already registered"):
    registry.gauge(":c", "again", ())
  with pytest.raises(ValueError, match="strictly increasing"):
    registry.histogram(":h", "H.", (), (2.0, 1.0))


def test_concurrent_updates_are_not_lost():
  registry = monitoring.Registry()
  counter = registry.counter(":c", "C.", ("a",))
  histogram = registry.histogram(":h", "H.", (), (1.0,))

  def work():
    for _ in range(5000):
      counter.inc("x")
      histogram.observe(value=0.5)

  threads = [threading.Thread(target=work) for _ in range(8)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert counter.value("x") == 40000 and histogram.count() == 40000


def test_serving_metrics_use_tf_serving_names_labels_and_buckets():
  metrics = monitoring.ServingMetrics()
  metrics.record_predict("m", "", "REST", grpc.StatusCode.OK, 0.002)
  metrics.record_predict("m", "sig", "GRPC", grpc.StatusCode.INVALID_ARGUMENT, 0.001)
  metrics.record_load("/models/m/1", True, 1.5)
  metrics.record_load("/models/m/2", False, 0.1)
  metrics.set_version_state("m", 1, "LOADING")
  metrics.set_version_state("m", 1, "AVAILABLE")
  text = metrics.registry.render()
  assert ':tensorflow:serving:request_count{model_name="m",status="OK"} 1' in text
  assert ':tensorflow:serving:request_count{model_name="m",status="INVALID_ARGUMENT"} 1' in text
  rest_buckets = [line for line in text.splitlines() if line.startswith(
      ':tensorflow:serving:request_latency_bucket{model_name="m",API="Predict",'
      'entrypoint="REST"')]
  assert len(rest_buckets) == 34  # 33 bounds + "+Inf"
  # 2000 us is first counted at bound 10 * 1.8^10 = 3570.5 (10 * 1.8^9 = 1983.6 < 2000).
  assert [line.endswith(" 1") for line in rest_buckets].index(True) == 10
  # Failed requests are counted and timed, but not in the per-signature latency.
  assert ':pinsage:serving:signature_latency_count{model_name="m",signature_name=' \
         '"serving_default",entrypoint="REST"} 1' in text
  assert 'signature_name="sig"' not in text
  assert (':tensorflow:cc:saved_model:load_attempt_count{model_path="/models/m/1",'
          'status="success"} 1') in text
  assert (':tensorflow:cc:saved_model:load_attempt_count{model_path="/models/m/2",'
          'status="fail"} 1') in text
  assert ':tensorflow:cc:saved_model:load_latency{model_path="/models/m/1"} 1500000' in text
  assert ':pinsage:serving:model_version_state{model_name="m",version="1",state="AVAILABLE"} 1' \
      in text
  assert ':pinsage:serving:model_version_state{model_name="m",version="1",state="LOADING"} 0' \
      in text
  with pytest.raises(ValueError, match="pass one of"):
    metrics.set_version_state("m", 1, "READY")


def test_latency_buckets_are_tf_servings_exponential_10_1_8_33():
  buckets = monitoring.LATENCY_BUCKETS_US
  assert len(buckets) == 33 and buckets[0] == 10.0
  assert buckets[1] == pytest.approx(18.0) and buckets[-1] == pytest.approx(10 * 1.8 ** 32)


@pytest.mark.parametrize("text, enable, path", [
    ('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }', True,
     "/monitoring/prometheus/metrics"),
    ("prometheus_config { enable: true }", True, monitoring.DEFAULT_PATH),
    ('prometheus_config {\n  enable: false\n  path: "/m"\n}\n', False, "/m"),
    ("", False, monitoring.DEFAULT_PATH),
])
def test_read_monitoring_config(text, enable, path):
  assert monitoring.read_monitoring_config(text) == monitoring.PrometheusConfig(enable, path)


@pytest.mark.parametrize("text, message", [
    ("prometheus_config { enable: maybe }", "mon.config: not a MonitoringConfig: 1:"),
    ("prometheus_config { enabled: true }", "has no field named \"enabled\""),
    ('prometheus_config { enable: true path: "metrics" }', "must start with '/'"),
])
def test_read_monitoring_config_rejects_bad_text(text, message):
  with pytest.raises(ValueError) as info:
    monitoring.read_monitoring_config(text, source="mon.config")
  assert message in str(info.value)
