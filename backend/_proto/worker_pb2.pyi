from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Command(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREDICT: _ClassVar[Command]
    EXPLAIN: _ClassVar[Command]
    DESCRIBE: _ClassVar[Command]
PREDICT: Command
EXPLAIN: Command
DESCRIBE: Command

class Header(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Input(_message.Message):
    __slots__ = ("name", "content_type", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    content_type: str
    value: bytes
    def __init__(self, name: _Optional[str] = ..., content_type: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("request_id", "headers", "inputs", "envelope")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    inputs: _containers.RepeatedCompositeFieldContainer[Input]
    envelope: str
    def __init__(self, request_id: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., inputs: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., envelope: _Optional[str] = ...) -> None: ...

class Load(_message.Message):
    __slots__ = ("model_name", "model_version", "model_dir", "handler", "batch_size", "gpu_id", "envelope", "limit_max_image_pixels", "decode_input_request", "manifest_json", "model_yaml_json", "model_metrics_json")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIR_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GPU_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    DECODE_INPUT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    MODEL_YAML_JSON_FIELD_NUMBER: _ClassVar[int]
    MODEL_METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    model_dir: str
    handler: str
    batch_size: int
    gpu_id: int
    envelope: str
    limit_max_image_pixels: bool
    decode_input_request: bool
    manifest_json: str
    model_yaml_json: str
    model_metrics_json: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., model_dir: _Optional[str] = ..., handler: _Optional[str] = ..., batch_size: _Optional[int] = ..., gpu_id: _Optional[int] = ..., envelope: _Optional[str] = ..., limit_max_image_pixels: _Optional[bool] = ..., decode_input_request: _Optional[bool] = ..., manifest_json: _Optional[str] = ..., model_yaml_json: _Optional[str] = ..., model_metrics_json: _Optional[str] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("batch_id", "command", "requests")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    command: Command
    requests: _containers.RepeatedCompositeFieldContainer[Request]
    def __init__(self, batch_id: _Optional[int] = ..., command: _Optional[_Union[Command, str]] = ..., requests: _Optional[_Iterable[_Union[Request, _Mapping]]] = ...) -> None: ...

class ToWorker(_message.Message):
    __slots__ = ("load", "batch")
    LOAD_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    load: Load
    batch: Batch
    def __init__(self, load: _Optional[_Union[Load, _Mapping]] = ..., batch: _Optional[_Union[Batch, _Mapping]] = ...) -> None: ...

class Loaded(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("request_id", "status", "reason", "content_type", "headers", "body")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    status: int
    reason: str
    content_type: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    body: bytes
    def __init__(self, request_id: _Optional[str] = ..., status: _Optional[int] = ..., reason: _Optional[str] = ..., content_type: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., body: _Optional[bytes] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ("name", "unit", "value", "dimensions", "type", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    unit: str
    value: float
    dimensions: _containers.RepeatedCompositeFieldContainer[Header]
    type: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., unit: _Optional[str] = ..., value: _Optional[float] = ..., dimensions: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., type: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class BatchResult(_message.Message):
    __slots__ = ("batch_id", "code", "message", "responses", "final", "metrics")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    code: int
    message: str
    responses: _containers.RepeatedCompositeFieldContainer[Response]
    final: bool
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    def __init__(self, batch_id: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., responses: _Optional[_Iterable[_Union[Response, _Mapping]]] = ..., final: _Optional[bool] = ..., metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ...) -> None: ...

class FromWorker(_message.Message):
    __slots__ = ("loaded", "result")
    LOADED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    loaded: Loaded
    result: BatchResult
    def __init__(self, loaded: _Optional[_Union[Loaded, _Mapping]] = ..., result: _Optional[_Union[BatchResult, _Mapping]] = ...) -> None: ...
