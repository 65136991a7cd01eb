"""Captum, for the default handlers' explanations, imported only when one is asked for."""

from __future__ import annotations

from typing import Any

from backend.util import PredictionException

CAPTUM_MISSING = (
    "Explanations need the 'captum' package, which is not installed in this model's "
    "Python environment (pip install captum)."
)
# Integration steps for the default handlers' integrated gradients (TorchServe's vision value).
N_STEPS = 15


def captum_attr() -> Any:
    """``captum.attr``.

    Raises:
        PredictionException: 503 naming the missing package when captum is not importable.
    """
    try:
        import captum.attr
    except ImportError as exc:
        raise PredictionException(CAPTUM_MISSING, 503) from exc
    return captum.attr
