"""``VisionHandler``: images in, one tensor per request (contract §7.6); the base of the image
classifier, segmenter and detector."""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from backend.context import Context
from backend.handlers import transforms
from backend.handlers.base_handler import BaseHandler
from backend.handlers.explain import N_STEPS, captum_attr
from backend.util import PredictionException

# Modes a model can take as they are; anything else (palette, alpha, CMYK, 16-bit) becomes RGB.
KEPT_MODES = frozenset({"RGB", "L"})


def open_image(value: bytes | bytearray) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(value))
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise PredictionException(f"the request body is not a readable image: {exc}", 400) from exc
    return image if image.mode in KEPT_MODES else image.convert("RGB")


class VisionHandler(BaseHandler):
    """Each request's ``data`` (or ``body``) is image bytes, a base64 string of them, or a
    nested list of numbers (taken as the model's input tensor, unprocessed)."""

    image_processing: Callable[[Image.Image], torch.Tensor] = transforms.to_tensor()

    def __init__(self) -> None:
        super().__init__()
        self.ig: Any = None

    def initialize(self, context: Context) -> None:
        super().initialize(context)
        if not context.system_properties.get("limit_max_image_pixels", True):
            Image.MAX_IMAGE_PIXELS = None

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        images = []
        for row in data:
            image = row.get("data") or row.get("body")
            if isinstance(image, str):
                try:
                    image = base64.b64decode(image, validate=False)
                except (binascii.Error, ValueError) as exc:
                    raise PredictionException(f"invalid base64 image: {exc}", 400) from exc
            if isinstance(image, bytes | bytearray):
                tensor = self.image_processing(open_image(image))
            elif isinstance(image, list):
                tensor = torch.as_tensor(image, dtype=torch.float32)
            else:
                raise PredictionException(
                    "expected image bytes, a base64 string or a nested list in data/body", 400
                )
            images.append(tensor)
        try:
            return torch.stack(images).to(self.device)
        except RuntimeError as exc:
            raise PredictionException(f"images of a batch differ in shape: {exc}", 400) from exc

    def get_insights(self, tensor_data: Any, raw_data: Any, target: int = 0) -> Any:
        """Integrated gradients of ``target`` over the input pixels, one per request."""
        if self.ig is None:
            self.ig = captum_attr().IntegratedGradients(self.model)
        return self.ig.attribute(tensor_data, target=target, n_steps=N_STEPS).tolist()
