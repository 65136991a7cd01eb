"""The public surface for handler authors."""

from backend.context import Context as Context
from backend.handlers.base_handler import BaseHandler as BaseHandler
from backend.util import PredictionException as PredictionException
