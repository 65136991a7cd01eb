"""Image transforms for the vision handlers: torchvision's when it is installed, else the same
operations in pillow and torch (Resize, CenterCrop, ToTensor, Normalize, Compose).

The fallbacks follow torchvision's PIL code paths: Resize(int) scales the shorter side with
bilinear filtering and truncates the longer one; CenterCrop rounds its offsets; ToTensor maps
uint8 HWC to float CHW in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

try:  # pragma: no cover - depends on the environment
    from torchvision import transforms as _tv
except ImportError:
    _tv = None

HAVE_TORCHVISION = _tv is not None
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Compose:
    def __init__(self, steps: Sequence[Callable[[Any], Any]]) -> None:
        self.steps = list(steps)

    def __call__(self, value: Any) -> Any:
        for step in self.steps:
            value = step(value)
        return value


class Resize:
    """Scale so the shorter side is ``size`` (aspect kept)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        if short == self.size:
            return image
        new_long = int(self.size * long / short)
        new = (self.size, new_long) if width <= height else (new_long, self.size)
        return image.resize(new, Image.Resampling.BILINEAR)


class CenterCrop:
    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        top = round((height - self.size) / 2.0)  # as torchvision: half to even
        left = round((width - self.size) / 2.0)
        return image.crop((left, top, left + self.size, top + self.size))


class ToTensor:
    def __call__(self, image: Image.Image) -> torch.Tensor:
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
        if tensor.dtype == torch.uint8:
            return tensor.float().div(255)
        return tensor.float()


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean.to(tensor.device)) / self.std.to(tensor.device)


def imagenet(resize: int = 256, crop: int = 224) -> Callable[[Image.Image], torch.Tensor]:
    """Resize, CenterCrop, ToTensor, ImageNet Normalize."""
    if _tv is not None:
        return _tv.Compose(  # type: ignore[no-any-return]
            [
                _tv.Resize(resize),
                _tv.CenterCrop(crop),
                _tv.ToTensor(),
                _tv.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            ]
        )
    return Compose(
        [Resize(resize), CenterCrop(crop), ToTensor(), Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


def to_tensor() -> Callable[[Image.Image], torch.Tensor]:
    return _tv.ToTensor() if _tv is not None else ToTensor()
