"""T5's SentencePiece (Unigram) tokenizer and ComfyUI's prompt handling for T5-XXL.

The tokenizer runs on the ``tokenizers`` library with T5 v1.1's ``tokenizer.json`` shipped in
``models/data/t5_tokenizer.json.gz`` (Apache-2.0, provenance in ``LICENSE-t5_tokenizer.txt``).

ComfyUI behaviour matched (``comfy/sd1_clip.py`` ``SDTokenizer.tokenize_with_weights`` and
``ClipTokenWeightEncoder``, ``comfy/text_encoders/flux.py`` / ``sd3_clip.py`` ``T5XXLTokenizer``,
at a125cd8):

- one row, no length limit, no start token; each weighted segment is tokenized on its own
  without its ``</s>``; one ``</s>`` (id 1) ends the prompt; the row is padded with ``<pad>``
  (id 0) to ``min_length`` tokens: 256 for Flux, 77 for SD3;
- no attention mask: the encoder attends to the padding (``T5XXLModel(attention_mask=False)``);
- weights: when any weight differs from 1.0 the "empty" row (``</s>`` then padding, as long as
  the prompt's row) is encoded in the same batch and each weighted position becomes
  ``(z - z_empty) * w + z_empty``;
- ``embedding:name`` words: textual-inversion embeddings for T5 are not supported; like ComfyUI
  with a name it cannot find, the word is dropped.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.errors import ModelLoadError
from comfy_notebook.models.prompt import EMBEDDING_PREFIX, parse_weights

__all__ = [
    "EOS_ID",
    "PAD_ID",
    "T5Tokenizer",
    "T5Tokens",
    "encode_t5_tokens",
    "get_t5_tokenizer",
    "tokenize_t5_prompt",
]

PAD_ID, EOS_ID = 0, 1
FLUX_MIN_LENGTH, SD3_MIN_LENGTH = 256, 77
_EMBED_SPLIT = re.compile(f"[ \n](?={re.escape(EMBEDDING_PREFIX)})")


class T5Tokenizer:
    """T5 v1.1 tokenizer (32,100 ids) from a ``tokenizer.json``.

    Parameters
    ----------
    path:
        ``None`` for the shipped file; or a user's ``tokenizer.json`` / ``tokenizer.json.gz``, or
        a folder holding ``tokenizer.json`` (ComfyUI's ``comfy/text_encoders/t5_tokenizer``).
    """

    def __init__(self, path: str | Path | None = None) -> None:
        from tokenizers import Tokenizer

        if path is None:
            data = resources.files("comfy_notebook.models").joinpath("data/t5_tokenizer.json.gz").read_bytes()
            text = gzip.decompress(data).decode("utf-8")
        else:
            p = Path(path)
            if p.is_dir():
                p = p / "tokenizer.json"
            if not p.is_file():
                raise ModelLoadError(
                    f"T5 tokenizer file not found: {p}. Fix: pass a tokenizer.json (or a folder with one)")
            raw = p.read_bytes()
            text = (gzip.decompress(raw) if p.suffix == ".gz" else raw).decode("utf-8")
        self._tok = Tokenizer.from_str(text)
        self.vocab_size = self._tok.get_vocab_size()

    def __call__(self, text: str) -> list[int]:
        """Ids with the trailing ``</s>``, as ``T5TokenizerFast(text)["input_ids"]``."""
        return list(self._tok.encode(text).ids)

    def encode(self, text: str) -> list[int]:
        """Ids without the trailing ``</s>``."""
        ids = self(text)
        return ids[:-1] if ids and ids[-1] == EOS_ID else ids

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))


@dataclass(frozen=True)
class T5Tokens:
    """A tokenized T5 prompt: one row of ``(id, weight)`` (``chunks[0]``); T5 has no embeddings."""

    chunks: list[list[tuple[int, float]]]
    missing_embeddings: list[str] = field(default_factory=list)


@lru_cache(maxsize=1)
def get_t5_tokenizer() -> T5Tokenizer:
    """The shipped T5 tokenizer (loaded once)."""
    return T5Tokenizer()


def tokenize_t5_prompt(text: str, tokenizer: T5Tokenizer | None = None, *,
                       min_length: int = FLUX_MIN_LENGTH) -> list[tuple[int, float]]:
    """A prompt in ComfyUI syntax -> one row of ``(id, weight)``, ``</s>``-ended, padded to ``min_length``."""
    tok = tokenizer or get_t5_tokenizer()
    row: list[tuple[int, float]] = []
    for segment, weight in parse_weights(text):
        for word in filter(None, _EMBED_SPLIT.split(segment)):
            if word.startswith(EMBEDDING_PREFIX) and word[len(EMBEDDING_PREFIX):].strip():
                parts = word[len(EMBEDDING_PREFIX):].split()
                name, word = parts[0], " ".join(parts[1:])
                stripped = name.strip(",")
                if len(stripped) < len(name):  # ComfyUI retries without commas, keeps them as text
                    word = f"{name[len(stripped):]} {word}"
                if not word:
                    continue
            row += [(t, weight) for t in tok.encode(word)]
    row.append((EOS_ID, 1.0))
    row += [(PAD_ID, 1.0)] * max(0, min_length - len(row))
    return row


def encode_t5_tokens(encoder: Any, row: list[tuple[int, float]], *, device: Any = None,
                     dtype: torch.dtype | None = None) -> Tensor:
    """Encode one weighted row with a :class:`~comfy_notebook.models.t5.T5Encoder` -> [1, T, D] float32."""
    ids = [t for t, _ in row]
    weights = [w for _, w in row]
    batch = [ids]
    weighted = any(w != 1.0 for w in weights)
    if weighted:
        batch.append([EOS_ID] + [PAD_ID] * (len(ids) - 1))
    dev = device if device is not None else encoder.shared.weight.device
    with torch.no_grad():
        out = encoder(torch.tensor(batch, device=dev), dtype=dtype).float()  # [1 or 2, T, D]
    z = out[:1]
    if weighted:
        w = torch.tensor(weights, device=z.device, dtype=z.dtype)[None, :, None]  # [1, T, 1]
        z = torch.where(w != 1.0, (z - out[1:2]) * w + out[1:2], z)
    return z
