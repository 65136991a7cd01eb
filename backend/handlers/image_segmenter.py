"""``image_segmenter``: per pixel, the most likely class and its probability (contract §7.6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from backend.handlers import transforms
from backend.handlers.vision_handler import VisionHandler


class ImageSegmenter(VisionHandler):
    """The model returns ``[N, K, H, W]`` class scores (or a dict holding them under ``out``,
    as torchvision's segmentation models do); each request gets ``[H][W][2]``: (class index,
    probability). The full per-class map would be tens of MB of JSON per image."""

    image_processing: Callable[[Image.Image], torch.Tensor] = transforms.imagenet()

    def postprocess(self, data: Any) -> list[Any]:
        scores = data["out"] if isinstance(data, dict) else data
        best = torch.max(torch.nn.functional.softmax(scores, dim=1), dim=1)
        pairs = torch.stack([best.indices.to(best.values.dtype), best.values], dim=3)
        return pairs.tolist()


# TorchServe's original spelling, kept for handlers that subclass it.
ImangeSegmenter = ImageSegmenter
