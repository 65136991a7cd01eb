"""``object_detector``: boxes with a score of at least 0.5, labelled (contract §7.6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from backend.handlers import transforms
from backend.handlers.vision_handler import VisionHandler
from backend.util import map_class_to_label


class ObjectDetector(VisionHandler):
    """The model returns, per image, a dict of ``boxes`` ``[n, 4]``, ``labels`` ``[n]`` and
    ``scores`` ``[n]`` (torchvision's detection output); each request gets a list of
    ``{label: [x1, y1, x2, y2], "score": s}`` for the boxes scoring ``threshold`` or more.
    Images are only converted to tensors (detection models resize themselves)."""

    threshold = 0.5
    image_processing: Callable[[Image.Image], torch.Tensor] = transforms.to_tensor()

    def postprocess(self, data: Any) -> list[Any]:
        result = []
        for row in data:
            keep = row["scores"] >= self.threshold
            boxes = row["boxes"][keep].tolist()
            labels = row["labels"][keep].tolist()
            scores = row["scores"][keep].tolist()
            detections = []
            for label, box, score in zip(labels, boxes, scores, strict=True):
                found = map_class_to_label([[box]], self.mapping, [[label]])[0]
                found["score"] = score
                detections.append(found)
            result.append(detections)
        return result
