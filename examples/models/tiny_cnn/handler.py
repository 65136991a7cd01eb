"""Classifies 8x8 grey images given as JSON (a nested 8x8 list, or {"data": [[...]]})."""

import torch

from trioserve.handler import BaseHandler


class TinyCNNHandler(BaseHandler):
    def preprocess(self, data):
        images = []
        for row in data:
            value = row.get("data", row.get("body"))
            if isinstance(value, dict):
                value = value.get("data")
            if isinstance(value, (bytes, bytearray)):
                import json

                value = json.loads(value)
            images.append(torch.as_tensor(value, dtype=torch.float32).reshape(1, 8, 8))
        return torch.stack(images)

    def postprocess(self, data):
        probs = torch.softmax(data, dim=1)
        return [
            {"class": int(p.argmax()), "probabilities": [round(float(x), 6) for x in p]}
            for p in probs
        ]
