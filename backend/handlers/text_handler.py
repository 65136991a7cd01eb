"""``TextHandler``: text cleanup, tokens and the source vocabulary for the text handlers
(contract §7.6). Needs no torchtext: the vocabulary is a ``{token: index}`` mapping."""

from __future__ import annotations

import json
import logging
import os
import re
import string
import unicodedata
from collections.abc import Mapping
from typing import Any

import torch

from backend.context import Context
from backend.handlers.base_handler import BaseHandler

logger = logging.getLogger(__name__)

CLEANUP_REGEX = re.compile("<.*?>|&([a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});")
# English contractions by their endings; what is left of an apostrophe afterwards goes.
CONTRACTIONS = (
    (re.compile(r"\bcan't\b", re.IGNORECASE), "cannot"),
    (re.compile(r"\bwon't\b", re.IGNORECASE), "will not"),
    (re.compile(r"n't\b", re.IGNORECASE), " not"),
    (re.compile(r"'re\b", re.IGNORECASE), " are"),
    (re.compile(r"'ll\b", re.IGNORECASE), " will"),
    (re.compile(r"'ve\b", re.IGNORECASE), " have"),
    (re.compile(r"'m\b", re.IGNORECASE), " am"),
    (re.compile(r"'d\b", re.IGNORECASE), " would"),
)
VOCAB_FILES = ("source_vocab.pt", "source_vocab.json")
UNKNOWN_TOKEN = "<unk>"


def load_vocab(path: str) -> Any:
    """A vocabulary file: JSON ``{token: index}``, or a torch file holding such a dict (or,
    where torchtext is installed, a torchtext ``Vocab``)."""
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # A pickled torchtext Vocab: a class, so not loadable as weights only. The archive is
        # code the operator chose to run, like its handler.
        logger.info("%s is not a plain mapping; loading it as a pickled object", path)
        return torch.load(path, map_location="cpu", weights_only=False)


class TextHandler(BaseHandler):
    def __init__(self) -> None:
        super().__init__()
        self.source_vocab: Any = None
        self.input_text: Any = None
        self.lig: Any = None

    def initialize(self, context: Context) -> None:
        super().initialize(context)
        self.initialized = False
        named = ((self.manifest or {}).get("model") or {}).get("sourceVocab")
        model_dir = context.system_properties["model_dir"]
        self.source_vocab = load_vocab(
            os.path.join(model_dir, named) if named else self.get_source_vocab_path(context)
        )
        self.initialized = True

    def get_source_vocab_path(self, ctx: Context) -> str:
        model_dir = ctx.system_properties["model_dir"]
        for name in VOCAB_FILES:
            path = os.path.join(model_dir, name)
            if os.path.isfile(path):
                return path
        raise RuntimeError(
            "Missing the source_vocab file (source_vocab.pt or source_vocab.json, a "
            "{token: index} mapping) that the text handlers need."
        )

    def token_index(self, token: str) -> int:
        vocab = self.source_vocab
        if isinstance(vocab, Mapping):
            found = vocab.get(token, vocab.get(UNKNOWN_TOKEN, 0))
            return int(found)
        return int(vocab[token])  # torchtext Vocab: its default index covers unknown tokens

    def _remove_html_tags(self, text: str) -> str:
        return CLEANUP_REGEX.sub("", text)

    def _expand_contractions(self, text: str) -> str:
        for pattern, replacement in CONTRACTIONS:
            text = pattern.sub(replacement, text)
        return text.replace("'", "")

    def _remove_accented_characters(self, text: str) -> str:
        return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("utf-8")

    def _remove_punctuation(self, text: str) -> str:
        return text.translate(str.maketrans("", "", string.punctuation))

    _remove_puncutation = _remove_punctuation  # TorchServe's original spelling

    def _tokenize(self, text: str) -> list[str]:
        return text.split()

    def get_word_token(self, input_tokens: list[str]) -> list[str]:
        return [token.replace("Ġ", "") for token in input_tokens]

    def summarize_attributions(self, attributions: torch.Tensor) -> torch.Tensor:
        """One importance per row of the embedding layer's output, scaled to unit norm."""
        summed = attributions.sum(dim=-1)
        norm = torch.norm(summed)
        return summed / norm if norm > 0 else summed
