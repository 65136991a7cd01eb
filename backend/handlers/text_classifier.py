"""``text_classifier``: ``{label: probability}`` for the first request's text (contract §7.6).

The model is called as ``model(token_ids, offsets)`` (an EmbeddingBag-style classifier, the
TorchServe convention), with unigrams then bigrams of the cleaned text as tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from backend.handlers.explain import N_STEPS, captum_attr
from backend.handlers.text_handler import TextHandler
from backend.util import PredictionException, map_class_to_label


def with_ngrams(tokens: list[str], n: int) -> list[str]:
    """The tokens, then each run of 2..n of them joined by a space (torchtext's order)."""
    out = list(tokens)
    for size in range(2, n + 1):
        out.extend(" ".join(tokens[i : i + size]) for i in range(len(tokens) - size + 1))
    return out


class TextClassifier(TextHandler):
    """Only the first request of a batch is classified (as in TorchServe): serve it with
    batch size 1."""

    ngrams = 2

    def preprocess(self, data: list[dict[str, Any]]) -> tuple[torch.Tensor, list[str]]:  # type: ignore[override]
        row = data[0]
        text = row.get("data") or row.get("body")
        if isinstance(text, bytes | bytearray):
            text = bytes(text).decode("utf-8", "replace")
        if not isinstance(text, str):
            raise PredictionException("expected text in data/body", 400)
        text = self._remove_html_tags(text).lower()
        text = self._expand_contractions(text)
        text = self._remove_accented_characters(text)
        tokens = with_ngrams(self._tokenize(self._remove_punctuation(text)), self.ngrams)
        if not tokens:
            raise PredictionException("the text has no words to classify", 400)
        ids = torch.as_tensor([self.token_index(t) for t in tokens], device=self.device)
        return ids, tokens

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        text_tensor, _ = data
        offsets = torch.as_tensor([0], device=self.device)
        return super().inference(text_tensor, offsets)

    def postprocess(self, data: Any) -> list[Any]:
        if data.dim() == 1:
            data = data.unsqueeze(0)
        return map_class_to_label(F.softmax(data, dim=1).tolist(), self.mapping)

    def _embedding_layer(self) -> torch.nn.Module:
        layer = getattr(self.model, "embedding", None)
        if isinstance(layer, torch.nn.Module):
            return layer
        for module in self.model.modules():
            if isinstance(module, torch.nn.Embedding | torch.nn.EmbeddingBag):
                return module
        raise PredictionException("explanations need a model with an embedding layer", 503)

    def get_insights(self, tensor_data: Any, raw_data: Any, target: int = 0) -> Any:
        """Layer integrated gradients over the embedding layer: ``[{"words", "importances"}]``,
        one importance per token for an ``nn.Embedding`` layer (one per bag for an
        ``EmbeddingBag``)."""
        text_tensor, tokens = tensor_data
        if self.lig is None:

            def forward(batch: torch.Tensor) -> Any:
                # Captum adds a batch dimension; the model takes flat ids plus bag offsets.
                rows, width = batch.shape
                offsets = torch.arange(rows, device=batch.device) * width
                return self.model(batch.reshape(-1), offsets)

            self.lig = captum_attr().LayerIntegratedGradients(forward, self._embedding_layer())
        ids = text_tensor.unsqueeze(0)
        attributions = self.lig.attribute(
            ids, torch.zeros_like(ids), target=target, n_steps=N_STEPS
        )
        importances = self.summarize_attributions(attributions.detach())
        return [{"words": self.get_word_token(tokens), "importances": importances.tolist()}]
