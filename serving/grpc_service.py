"""TF Serving's gRPC services: PredictionService and ModelService.

Implemented RPCs (the stock `tensorflow_serving.apis` stubs talk to them
unchanged):

* `PredictionService.Predict`: `model_spec` {name, version | version_label,
  signature_name ("" = serving_default)}, `inputs` {alias: TensorProto},
  `output_filter`. Each input's declared dtype and shape are checked against
  the signature and the batch bound before its values are decoded; the
  client's deadline bounds the prediction (DEADLINE_EXCEEDED). The response carries `model_spec` {name, version,
  signature_name} of the version that ran and the outputs as TensorProtos
  laid out as TF Serving's (`proto_codec.array_to_tensor_proto`).
* `PredictionService.GetModelMetadata`: `metadata_field` must be
  ["signature_def"]; the SignatureDefMap is packed in an Any, as TF Serving.
* `ModelService.GetModelStatus`.

Classify, Regress, MultiInference and HandleReloadConfigRequest answer
UNIMPLEMENTED. Errors use TF Serving's status codes and messages (see
`errors` / `model_manager`); request messages over the size limit get
gRPC's own RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

from absl import logging
import grpc
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving import errors
from serving import model_manager as model_manager_lib
from serving import monitoring
from serving import proto_codec
from serving import validation
from serving.errors import ServingError

_SIGNATURE_DEF_FIELD = "signature_def"


def _model_spec_args(spec: Any) -> tuple[str, int | None, str | None]:
  choice = spec.WhichOneof("version_choice")
  version = spec.version.value if choice == "version" else None
  label = spec.version_label if choice == "version_label" else None
  return spec.name, version, label


def _time_remaining(context: grpc.ServicerContext) -> float | None:
  """Seconds left before the client's deadline; None when it set none."""
  remaining = context.time_remaining()
  # gRPC reports "no deadline" as a very large number of seconds.
  if remaining is None or remaining > 10 * 365 * 24 * 3600:
    return None
  return max(0.0, remaining)


def _abort(context: grpc.ServicerContext, error: ServingError) -> None:
  context.abort(error.code, error.message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
  """Predict and GetModelMetadata over a `ModelManager`."""

  def __init__(self, manager: model_manager_lib.ModelManager, max_tensor_bytes: int = 0):
    """Args: manager: the model core; max_tensor_bytes: largest decoded input (0 = any)."""
    self._manager = manager
    self._max_tensor_bytes = max_tensor_bytes

  def Predict(self, request, context):  # pylint: disable=invalid-name
    try:
      if not request.HasField("model_spec"):
        raise errors.invalid_argument("Missing ModelSpec")
      servable = self._manager.get_servable(*_model_spec_args(request.model_spec))
      signature = servable.signature(request.model_spec.signature_name)
      validation.check_signature_is_runnable(signature)
      # Declared dtypes and shapes first: nothing is allocated for a request
      # the signature or the batch bound rejects.
      described = {alias: proto_codec.describe_tensor_proto(alias, proto)
                   for alias, proto in request.inputs.items()}
      validation.validate_descriptions(signature, described,
                                       max_batch_size=self._manager.limits.max_batch_size)
      inputs = {alias: proto_codec.tensor_proto_to_array(
                    alias, proto, max_bytes=self._max_tensor_bytes, described=described[alias])
                for alias, proto in request.inputs.items()}
      outputs = self._manager.predict(servable, signature.name, inputs,
                                      list(request.output_filter),
                                      timeout_seconds=_time_remaining(context),
                                      answer_at_deadline=False)  # the client times out itself
      response = predict_pb2.PredictResponse()
      response.model_spec.name = servable.name
      response.model_spec.version.value = servable.version
      response.model_spec.signature_name = signature.name
      for alias, array in outputs.items():
        response.outputs[alias].CopyFrom(proto_codec.array_to_tensor_proto(array))
      return response
    except ServingError as e:
      _abort(context, e)
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("gRPC Predict: internal error")
      _abort(context, ServingError(grpc.StatusCode.INTERNAL,
                                   f"Internal error: {type(e).__name__}: {e}"))

  def GetModelMetadata(self, request, context):  # pylint: disable=invalid-name
    try:
      if not request.HasField("model_spec"):
        raise errors.invalid_argument("Missing ModelSpec")
      if not request.metadata_field:
        raise errors.invalid_argument(
            "GetModelMetadataRequest must specify at least one metadata_field")
      for field in request.metadata_field:
        if field != _SIGNATURE_DEF_FIELD:
          raise errors.invalid_argument(f"Metadata field {field} is not supported")
      return self._manager.get_model_metadata(*_model_spec_args(request.model_spec))
    except ServingError as e:
      _abort(context, e)


class _MeteredPredictionServicer(PredictionServicer):
  """PredictionServicer that records each Predict's status and latency."""

  def __init__(self, manager: model_manager_lib.ModelManager,
               metrics: monitoring.ServingMetrics, max_tensor_bytes: int = 0):
    super().__init__(manager, max_tensor_bytes)
    self._metrics = metrics

  def Predict(self, request, context):  # pylint: disable=invalid-name
    started = time.perf_counter()
    try:
      return super().Predict(request, context)
    finally:
      # context.abort set the code before raising; None means OK.
      code = context.code() or grpc.StatusCode.OK
      self._metrics.record_predict(request.model_spec.name, request.model_spec.signature_name,
                                   "GRPC", code, time.perf_counter() - started)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
  """GetModelStatus over a `ModelManager`."""

  def __init__(self, manager: model_manager_lib.ModelManager):
    self._manager = manager

  def GetModelStatus(self, request, context):  # pylint: disable=invalid-name
    try:
      if not request.HasField("model_spec"):
        raise errors.invalid_argument("Missing ModelSpec")
      return self._manager.get_model_status(*_model_spec_args(request.model_spec))
    except ServingError as e:
      _abort(context, e)


def create_server(manager: model_manager_lib.ModelManager, *, host: str, port: int,
                  max_threads: int, max_request_bytes: int,
                  metrics: monitoring.ServingMetrics | None = None
                  ) -> tuple[grpc.Server, int]:
  """A started-ready (not yet started) gRPC server with both services.

  Args:
    manager: the model core.
    host, port: bind address (port 0 picks a free one).
    max_threads: handler threads (--grpc_max_threads).
    max_request_bytes: largest request message (larger ones get
      RESOURCE_EXHAUSTED from gRPC itself) and largest decoded input tensor
      (INVALID_ARGUMENT before it is allocated).
    metrics: where each Predict's status and latency go (None = not recorded).

  Returns:
    (server, bound port).

  Raises:
    RuntimeError: if the address cannot be bound.
  """
  server = grpc.server(
      concurrent.futures.ThreadPoolExecutor(max_workers=max_threads,
                                            thread_name_prefix="grpc"),
      options=[
          ("grpc.max_receive_message_length", max_request_bytes),
          ("grpc.max_send_message_length", -1),
          ("grpc.so_reuseport", 0),
      ])
  servicer = (PredictionServicer(manager, max_request_bytes) if metrics is None
              else _MeteredPredictionServicer(manager, metrics, max_request_bytes))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager), server)
  address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
  bound = server.add_insecure_port(address)
  if bound == 0:
    raise RuntimeError(f"could not bind the gRPC port at {address}")
  return server, bound
