"""Prompts for decoder-only LLM text encoders (Qwen3 for Z-Image, Qwen2.5-VL for Qwen-Image).

The generic half of the families' LLM text-encoding recipe (the family half is
:class:`comfy_notebook.families.TextEncoderSpec`: tokenizer kind, chat template, hidden layer,
tokens dropped from the front).  ComfyUI behaviour matched (``comfy/sd1_clip.py``
``SDTokenizer`` / ``SDClipModel`` and ``comfy/text_encoders/z_image.py`` / ``qwen_image.py``,
comfyanonymous/ComfyUI@00855133; ``comfy/text_encoders/llama.py`` for the intermediate layer):

- the prompt is put into the family's chat template (``{}`` marks where it goes) and tokenized
  as one row: no start or end token, no 77-token chunks, no padding (``min_length`` 1), and no
  weight syntax (ComfyUI's LLM tokenizers pass ``disable_weights``: ``(cat:1.2)`` is literal
  text);
- as in ``SDTokenizer`` the text is still cut before each `` embedding:`` / ``\\nembedding:``
  (the space or newline dropped) and the pieces are tokenized one by one; the LLM tokenizers
  have no embedding directory, so the ``embedding:...`` words stay text;
- the encoder runs over the row (causal attention; an all-ones mask, which ComfyUI passes and
  the model ignores) and the hidden state of one decoder layer is the conditioning, without the
  final norm (``layer_norm_hidden_state=False``); some recipes drop the template's first tokens
  from it (Qwen-Image: the system prompt); there is no pooled output.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.models.prompt import EMBEDDING_PREFIX

__all__ = [
    "LLM_TOKENIZERS",
    "LLMTokens",
    "encode_llm_tokens",
    "front_tokens",
    "get_llm_tokenizer",
    "is_llm_tokenizer",
    "tokenize_llm_prompt",
]


def _qwen() -> Any:
    from comfy_notebook.models.qwen_tokenizer import get_qwen_tokenizer

    return get_qwen_tokenizer()


#: tokenizer kind (``TextEncoderSpec.tokenizer``) -> a function returning the shared tokenizer
#: (an object with ``encode(text) -> list[int]``)
LLM_TOKENIZERS: dict[str, Callable[[], Any]] = {"qwen": _qwen}

#: what ``SDTokenizer`` splits a prompt at (the embedding marker after a space or a newline)
_EMBEDDING_SPLIT = re.compile(f" {EMBEDDING_PREFIX}|\n{EMBEDDING_PREFIX}")


def is_llm_tokenizer(kind: str) -> bool:
    """Whether ``kind`` names a decoder-only LLM's tokenizer."""
    return kind in LLM_TOKENIZERS


def get_llm_tokenizer(kind: str) -> Any:
    """The shared tokenizer of ``kind`` (``"qwen"``)."""
    try:
        return LLM_TOKENIZERS[kind]()
    except KeyError:
        raise KeyError(f"no LLM tokenizer {kind!r} (known: {sorted(LLM_TOKENIZERS)})") from None


@dataclass(frozen=True)
class LLMTokens:
    """One tokenized prompt for an LLM encoder: a single row of ids, no weights.

    ``model_kwargs`` are extra inputs of the encoder's forward for this prompt (e.g. the image
    features of a vision-language encoder); ``missing_embeddings`` is always empty (the LLM
    tokenizers have no textual-inversion embeddings) and is here for ``ClipValue.encode``.
    """

    ids: tuple[int, ...]
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    missing_embeddings: tuple[str, ...] = ()

    @property
    def chunks(self) -> list[list[tuple[int, float]]]:
        """The row as ComfyUI's ``(id, weight)`` pairs (all weights 1.0)."""
        return [[(i, 1.0) for i in self.ids]]


def tokenize_llm_prompt(tokenizer: Any, text: str, template: str | None = None) -> LLMTokens:
    """``text`` in the chat ``template`` (``str.format`` with the text, as ComfyUI; None: the text
    alone) -> one row."""
    full = text if template is None else template.format(text)
    pieces = _EMBEDDING_SPLIT.split(full)
    pieces = [pieces[0], *(EMBEDDING_PREFIX + p for p in pieces[1:])]
    ids: list[int] = []
    for piece in pieces:
        if piece:
            ids += tokenizer.encode(piece)
    return LLMTokens(tuple(ids))


def front_tokens(drop: int | Callable[[Sequence[int]], int], ids: Sequence[int]) -> int:
    """How many tokens a recipe's ``drop_front`` removes from the front of ``ids``."""
    n = drop(ids) if callable(drop) else int(drop)
    return max(0, min(n, len(ids)))


def encode_llm_tokens(encoder: Any, tokens: LLMTokens, *, layer: int | None, device: Any = None,
                      drop_front: int | Callable[[Sequence[int]], int] = 0) -> Tensor:
    """Hidden states ``[1, N - dropped, D]`` (float32, on the encoder's device) of layer ``layer``.

    ``encoder(input_ids [1, N], layer=...)`` is a decoder-only encoder such as
    :class:`comfy_notebook.models.qwen3.Qwen3Encoder` (``layer``: a decoder layer index,
    negative from the end; None: the final normed state); ``tokens.model_kwargs`` are passed on.
    """
    if not tokens.ids:
        raise ValueError("an LLM prompt has at least one token (the chat template's)")
    dev = device if device is not None else next(encoder.parameters()).device
    ids = torch.tensor([tokens.ids], dtype=torch.long, device=dev)
    with torch.no_grad():
        out = encoder(ids, layer=layer, **dict(tokens.model_kwargs))
    start = front_tokens(drop_front, tokens.ids)
    return out[:, start:].float()
