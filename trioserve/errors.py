"""The error hierarchy.

Every expected failure is a :class:`ServeError` subclass that carries the contract's facts as
class attributes: the Java exception simple name TorchServe reports as ``type``, the HTTP status
and the gRPC status. The HTTP layer renders any ``ServeError`` as ``{code, type, message}``;
anything else reaching it is a bug and becomes a logged 500 ``InternalServerException``.
"""

from __future__ import annotations

from typing import ClassVar

# gRPC status codes by number (grpc.StatusCode values); kept numeric so this module has no
# dependency on a gRPC library.
GRPC_OK = 0
GRPC_CANCELLED = 1
GRPC_UNKNOWN = 2
GRPC_INVALID_ARGUMENT = 3
GRPC_DEADLINE_EXCEEDED = 4
GRPC_NOT_FOUND = 5
GRPC_ALREADY_EXISTS = 6
GRPC_PERMISSION_DENIED = 7
GRPC_RESOURCE_EXHAUSTED = 8
GRPC_FAILED_PRECONDITION = 9
GRPC_ABORTED = 10
GRPC_OUT_OF_RANGE = 11
GRPC_UNIMPLEMENTED = 12
GRPC_INTERNAL = 13
GRPC_UNAVAILABLE = 14
GRPC_UNAUTHENTICATED = 16


def grpc_status_for_http(code: int) -> int:
    """Map an HTTP status to a gRPC status as contract §4.1 does for backend errors."""
    exact = {
        400: GRPC_INVALID_ARGUMENT,
        401: GRPC_UNAUTHENTICATED,
        403: GRPC_PERMISSION_DENIED,
        404: GRPC_NOT_FOUND,
        409: GRPC_ABORTED,
        413: GRPC_RESOURCE_EXHAUSTED,
        429: GRPC_RESOURCE_EXHAUSTED,
        416: GRPC_OUT_OF_RANGE,
        499: GRPC_CANCELLED,
        501: GRPC_UNIMPLEMENTED,
        503: GRPC_UNAVAILABLE,
        504: GRPC_DEADLINE_EXCEEDED,
    }
    if code in exact:
        return exact[code]
    if 200 <= code < 300:
        return GRPC_OK
    if 400 <= code < 500:
        return GRPC_FAILED_PRECONDITION
    if 500 <= code < 600:
        return GRPC_INTERNAL
    return GRPC_UNKNOWN


class ServeError(Exception):
    """An expected failure, rendered to the client with the contract's status and type.

    Raised anywhere below the API layer; callers let it propagate to the HTTP or gRPC layer,
    which renders it. ``code`` may be overridden per instance (backend errors carry the code the
    worker reported).
    """

    type_name: ClassVar[str] = "InternalServerException"
    http_status: ClassVar[int] = 500
    grpc_status: ClassVar[int] = GRPC_INTERNAL

    def __init__(self, message: str | None = None, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.http_status

    def body(self) -> dict[str, object]:
        """The contract's error body, keys in the contract's order, null message omitted."""
        out: dict[str, object] = {"code": self.code, "type": self.type_name}
        if self.message is not None:
            out["message"] = self.message
        return out


class InternalServerError(ServeError):
    """A failure inside the server or a worker that the client cannot fix."""


class BadRequest(ServeError):
    """The request is malformed or has a bad parameter; the client should fix it."""

    type_name = "BadRequestException"
    http_status = 400
    grpc_status = GRPC_INVALID_ARGUMENT


class DownloadArchiveError(BadRequest):
    """Fetching a model archive from a URL failed."""

    type_name = "DownloadArchiveException"


class InvalidModel(BadRequest):
    """An archive or its manifest is unusable (raised by ``models.archive``)."""

    type_name = "InvalidModelException"


class ResourceNotFound(ServeError):
    """No route matches the request path."""

    type_name = "ResourceNotFoundException"
    http_status = 404
    grpc_status = GRPC_NOT_FOUND

    def __init__(self, message: str | None = None, *, code: int | None = None) -> None:
        super().__init__(
            message or "Requested resource is not found, please refer to API document.", code=code
        )


class ModelNotFound(ServeError):
    """The model name (or its archive) is unknown."""

    type_name = "ModelNotFoundException"
    http_status = 404
    grpc_status = GRPC_NOT_FOUND


class ModelVersionNotFound(ServeError):
    """The model exists but not the requested version."""

    type_name = "ModelVersionNotFoundException"
    http_status = 404
    grpc_status = GRPC_NOT_FOUND


class MethodNotAllowed(ServeError):
    """The path is known but not for this method (or the model API is disabled)."""

    type_name = "MethodNotAllowedException"
    http_status = 405
    grpc_status = GRPC_PERMISSION_DENIED

    def __init__(self, message: str | None = None, *, code: int | None = None) -> None:
        super().__init__(
            message or "Requested method is not allowed, please refer to API document.", code=code
        )


class RequestTimeout(ServeError):
    """An operation with a deadline (unregister drain) ran out of time."""

    type_name = "RequestTimeoutException"
    http_status = 408
    grpc_status = GRPC_DEADLINE_EXCEEDED


class Conflict(ServeError):
    """The model version is already registered."""

    type_name = "ConflictStatusException"
    http_status = 409
    grpc_status = GRPC_ALREADY_EXISTS


class InvalidModelVersion(ServeError):
    """The operation is forbidden for this version (removing a default that others depend on)."""

    type_name = "InvalidModelVersionException"
    http_status = 403
    grpc_status = GRPC_PERMISSION_DENIED


class ServiceUnavailable(ServeError):
    """No worker can take the job now (none running, or the queue is full); retry later."""

    type_name = "ServiceUnavailableException"
    http_status = 503
    grpc_status = GRPC_UNAVAILABLE


class BackendError(ServeError):
    """A worker answered a batch with an error code; reported as TorchServe does (type is
    always ``InternalServerException``, 413 is remapped to 507)."""

    type_name = "InternalServerException"

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message, code=507 if code == 413 else code)
        self.grpc_code = grpc_status_for_http(self.code)


class WorkerDied(BackendError):
    """The worker process died (or timed out) while it held the job."""

    def __init__(self, message: str = "Worker died.", *, code: int = 500) -> None:
        super().__init__(message, code=code)


class ConfigError(Exception):
    """A configuration value is invalid; the server refuses to start. Not a ``ServeError``:
    it never reaches a client."""
