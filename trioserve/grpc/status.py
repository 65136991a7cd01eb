"""ServeError -> gRPC status, as TorchServe 0.12 reports it (contract §4.1, §4.2).

TorchServe puts the message in the status description and appends, on its own line, the Java
class of the exception; clients that show or parse descriptions see the same text here.
"""

from __future__ import annotations

from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from trioserve.errors import GRPC_INTERNAL, BackendError, ServeError, ServiceUnavailable
from trioserve.grpc.bridge import CallError

# The Java class TorchServe names for each contract type (its canonical class name).
_HTTP = "org.pytorch.serve.http."
_ARCHIVE = "org.pytorch.serve.archive."
JAVA_CLASSES: dict[str, str] = {
    name: package + name
    for package, names in (
        (
            _HTTP,
            (
                "BadRequestException",
                "ConflictStatusException",
                "InternalServerException",
                "InvalidModelVersionException",
                "MethodNotAllowedException",
                "RequestTimeoutException",
                "ResourceNotFoundException",
                "ServiceUnavailableException",
            ),
        ),
        (_ARCHIVE, ("DownloadArchiveException",)),
        (
            _ARCHIVE + "model.",
            (
                "InvalidKeyException",
                "InvalidModelException",
                "ModelNotFoundException",
                "ModelVersionNotFoundException",
            ),
        ),
    )
    for name in names
}
INTERNAL_SERVER_EXCEPTION = JAVA_CLASSES["InternalServerException"]


def describe(message: str | None, java_class: str) -> str:
    """The status description: the message, then the Java class on its own line (if any)."""
    return f"{message or ''}\n{java_class}" if java_class else message or ""


def inference_status(error: ServeError) -> tuple[int, str]:
    """Predictions/StreamPredictions: a worker's error keeps its HTTP code's gRPC status;
    anything refused before a worker saw the job (unknown model or version, no model name, no
    worker, full queue) is INTERNAL, as in 0.12."""
    if isinstance(error, BackendError):
        return error.grpc_code, describe(error.message, INTERNAL_SERVER_EXCEPTION)
    if isinstance(error, ServiceUnavailable):
        # 0.12 wraps the "no worker" text in an InternalServerException.
        return GRPC_INTERNAL, describe(error.message, INTERNAL_SERVER_EXCEPTION)
    java = JAVA_CLASSES.get(error.type_name, INTERNAL_SERVER_EXCEPTION)
    return GRPC_INTERNAL, describe(error.message, java)


def management_status(error: ServeError) -> tuple[int, str]:
    """Management calls: each error's own gRPC status (NOT_FOUND, INVALID_ARGUMENT, INTERNAL,
    ALREADY_EXISTS for a duplicate version where 0.12 said UNKNOWN, ...)."""
    code = error.grpc_code if isinstance(error, BackendError) else error.grpc_status
    return code, describe(error.message, JAVA_CLASSES.get(error.type_name, ""))


def inference_error(error: ServeError) -> CallError:
    return CallError(*inference_status(error))


def management_error(error: ServeError) -> CallError:
    return CallError(*management_status(error))


def in_stream_status(error: ServeError) -> status_pb2.Status:
    """StreamPredictions2 reports a request's error in-stream: google.rpc.Status with the
    message, and an ErrorInfo whose reason is the Java exception class."""
    status, description = inference_status(error)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=description.rpartition("\n")[2]))
    return status_pb2.Status(code=status, message=error.message or "", details=[detail])
