"""The workflow errors, with the contract's type names (§0.4, §2.7)."""

from __future__ import annotations

from trioserve.errors import GRPC_NOT_FOUND, BadRequest, InternalServerError, ServeError


class WorkflowNotFound(ServeError):
    """No workflow of that name is registered (describe, unregister, predict)."""

    type_name = "WorkflowNotFoundException"
    http_status = 404
    grpc_status = GRPC_NOT_FOUND


class InvalidWorkflow(BadRequest):
    """The ``.war``, its manifest or its spec file is unusable; the message says which part.
    The caller fixes the archive and registers again."""

    type_name = "InvalidWorkflowException"


class InvalidDag(BadRequest):
    """The spec's ``dag:`` is not one connected acyclic graph of known nodes; the message names
    the offending node."""

    type_name = "InvalidDAGException"


class WorkflowError(InternalServerError):
    """A workflow could not be registered (its node models failed; nothing of it is left)."""

    type_name = "WorkflowException"
