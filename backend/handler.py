"""Handler-facing names inside the worker."""

from backend.context import Context as Context
from backend.handlers.base_handler import BaseHandler as BaseHandler

__all__ = ["BaseHandler", "Context"]
