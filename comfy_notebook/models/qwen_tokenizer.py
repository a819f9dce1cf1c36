"""The Qwen tokenizer (Qwen2 / Qwen2.5 / Qwen2.5-VL / Qwen3): byte-level BPE on ``tiktoken``.

The vocabulary ships as package data (``data/qwen.tiktoken.gz``, Apache-2.0, provenance in
``data/LICENSE-qwen_tokenizer.txt``).  Encoding follows the Hugging Face ``Qwen2TokenizerFast``
that ComfyUI uses (``comfy/text_encoders/qwen25_tokenizer``): Unicode NFC first, then the Qwen
pre-tokenizer pattern (single digits), byte-level BPE, and the added special tokens matched
anywhere in the text.  No BOS/EOS are added: the families wrap prompts in their chat templates.

Why ``tiktoken``: it is the library the vocabulary was made for, maintained, fast (Rust) and
small; the tests check its ids against ``transformers``' own conversion of the same file.
"""

from __future__ import annotations

import base64
import gzip
import threading
import unicodedata
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["SPECIAL_TOKENS", "QwenTokenizer", "get_qwen_tokenizer"]

PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
           r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# Added tokens of Qwen2.5 (151643-151664) and Qwen3 (151665-151668), by id.
SPECIAL_TOKENS: dict[str, int] = {
    name: 151643 + i
    for i, name in enumerate((
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
        "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
        "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
        "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
        "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
        "<think>", "</think>",
    ))
}
PAD_ID = SPECIAL_TOKENS["<|endoftext|>"]


def _ranks() -> dict[bytes, int]:
    data = resources.files("comfy_notebook.models.data").joinpath("qwen.tiktoken.gz").read_bytes()
    lines = gzip.decompress(data).splitlines()
    return {base64.b64decode(token): int(rank) for token, rank in (ln.split() for ln in lines if ln)}


class QwenTokenizer:
    """``encode(text) -> list[int]`` and ``decode(ids) -> str`` with Qwen's ids."""

    def __init__(self) -> None:
        import tiktoken

        self._enc: Any = tiktoken.Encoding(
            name="qwen", pat_str=PATTERN, mergeable_ranks=_ranks(), special_tokens=SPECIAL_TOKENS)
        self.vocab_size = 151643 + len(SPECIAL_TOKENS)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (NFC-normalised; special tokens written in the text count)."""
        normal = unicodedata.normalize("NFC", text)
        return list(self._enc.encode(normal, allowed_special="all"))

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids``."""
        return str(self._enc.decode(list(ids)))


_lock = threading.Lock()


@cache
def _shared() -> QwenTokenizer:
    return QwenTokenizer()


def get_qwen_tokenizer() -> QwenTokenizer:
    """The process-wide tokenizer (the vocabulary is read once, about 0.3 s)."""
    with _lock:
        return _shared()
