"""``image_classifier``: top-k (5) softmax classes per image, named by ``index_to_name.json``
(contract §7.6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from backend.handlers import transforms
from backend.handlers.vision_handler import VisionHandler
from backend.util import map_class_to_label


class ImageClassifier(VisionHandler):
    """Resize 256, center-crop 224, ImageNet normalisation; ``{label: probability}`` for the
    ``topk`` most likely classes of each image."""

    topk = 5
    image_processing: Callable[[Image.Image], torch.Tensor] = transforms.imagenet()

    def set_max_result_classes(self, topk: int) -> None:
        self.topk = topk

    def get_max_result_classes(self) -> int:
        return self.topk

    def postprocess(self, data: Any) -> list[Any]:
        probabilities = F.softmax(data, dim=1)
        k = min(self.topk, probabilities.shape[1])
        probs, classes = torch.topk(probabilities, k, dim=1)
        return map_class_to_label(probs.tolist(), self.mapping, classes.tolist())
