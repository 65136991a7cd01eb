"""Helpers handler code imports."""

from __future__ import annotations


class PredictionException(Exception):
    """Raised by a handler to fail its whole batch with a chosen status code and message."""

    def __init__(self, message: str, error_code: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code

    def __str__(self) -> str:
        return f"message : error_code => {self.message} : {self.error_code}"
