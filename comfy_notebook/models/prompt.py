"""ComfyUI prompt syntax and prompt encoding for CLIP text encoders.

Behaviour matched (ComfyUI ``comfy/sd1_clip.py``, ``SDTokenizer`` / ``ClipTokenWeightEncoder``):

- **Weights.** ``(text)`` multiplies the weight by 1.1 (nested parentheses multiply);
  ``(text:1.3)`` sets it to 1.3 (the number replaces, it does not multiply); a ``:x`` that is not
  a number is kept as text. ``\\(`` and ``\\)`` are literal parentheses.  Square brackets have no
  meaning in ComfyUI core (they are plain text).
- **Embeddings.** ``embedding:name`` at the start of a weighted segment or after a space/newline
  names a textual-inversion embedding; the name ends at the next whitespace; if it is not found,
  trailing commas are stripped and it is tried again.  Unknown names are dropped and reported.
- **Chunking.** Each weighted segment (and each embedding) is a token group.  Rows are BOS + 75 +
  EOS, padded with EOS (49407).  A group that does not fit in the current row moves whole to the
  next one, unless it has 8 or more tokens: then it is cut exactly at the row boundary.
- **Encoding.** All rows run as one batch.  If any weight differs from 1.0, the empty prompt is
  encoded too and each weighted position becomes ``(z - z_empty) * w + z_empty``.  Rows are
  concatenated along the token axis (``[1, 77 * n, D]``); the pooled output is the first row's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from comfy_notebook.errors import ModelLoadError, NodeError
from comfy_notebook.models.clip import CLIPTextModel
from comfy_notebook.models.tokenizer import BOS_TOKEN_ID, EOS_TOKEN_ID, MAX_LENGTH, CLIPTokenizer

__all__ = [
    "TokenizedPrompt",
    "embedding_candidates",
    "embedding_names",
    "encode_prompt",
    "encode_tokens",
    "load_embedding",
    "make_embedding_lookup",
    "parse_weights",
    "tokenize_prompt",
]

logger = logging.getLogger(__name__)

Token = int | Tensor  # a vocabulary id or one embedding vector [D]
EmbeddingLookup = Callable[[str], Tensor | None]
EMBEDDING_PREFIX = "embedding:"
_MAX_WORD_LENGTH = 8  # groups this long are cut at a row boundary instead of moved whole
_ESC_CLOSE, _ESC_OPEN = "\0\1", "\0\2"
_EMBED_SPLIT = re.compile(f"[ \n](?={re.escape(EMBEDDING_PREFIX)})")
_EMBED_SUFFIXES = (".safetensors", ".pt", ".bin")


# -- weights ------------------------------------------------------------------------------------
def _split_top_level(text: str) -> list[str]:
    """Split into top-level ``( ... )`` groups and the text between them."""
    parts: list[str] = []
    current, depth = "", 0
    for ch in text:
        if ch == "(":
            if depth == 0 and current:
                parts.append(current)
                current = ""
            current += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                parts.append(current + ")")
                current = ""
            else:
                current += ch
        else:
            current += ch
    if current:
        parts.append(current)
    return parts


def _weights(text: str, weight: float) -> list[tuple[str, float]]:
    """Recursive weight parser over escaped text."""
    out: list[tuple[str, float]] = []
    for part in _split_top_level(text):
        if len(part) >= 2 and part[0] == "(" and part[-1] == ")":
            inner, w = part[1:-1], weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    w = float(inner[colon + 1 :])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += _weights(inner, w)
        else:
            out.append((part, weight))
    return out


def parse_weights(text: str) -> list[tuple[str, float]]:
    """Split a prompt into ``(segment, weight)`` pairs with ComfyUI's weight syntax.

    Parameters
    ----------
    text:
        The prompt, e.g. ``"a (red:1.2) ((cat)) \\(not weighted\\)"``.

    Returns
    -------
    list[tuple[str, float]]
        Segments with escapes resolved, e.g.
        ``[("a ", 1.0), ("red", 1.2), (" ", 1.0), ("cat", 1.21...), (" (not weighted)", 1.0)]``.
    """
    escaped = text.replace("\\)", _ESC_CLOSE).replace("\\(", _ESC_OPEN)
    return [
        (seg.replace(_ESC_CLOSE, ")").replace(_ESC_OPEN, "("), w)
        for seg, w in _weights(escaped, 1.0)
    ]


def embedding_names(text: str) -> list[str]:
    """The embedding names ``text`` asks for, as :func:`tokenize_prompt` reads them (a name with
    trailing commas also as the stripped name it falls back to)."""
    names: list[str] = []
    if EMBEDDING_PREFIX not in text:
        return names
    for segment, _ in parse_weights(text):
        for word in filter(None, _EMBED_SPLIT.split(segment)):
            if word.startswith(EMBEDDING_PREFIX):
                words = word[len(EMBEDDING_PREFIX):].split()
                if words:
                    names.append(words[0])
                    stripped = words[0].strip(",")
                    if stripped and stripped != words[0]:
                        names.append(stripped)
    return names


def embedding_candidates(directories: Iterable[str | Path], name: str) -> list[Path]:
    """Every file the lookup of ``name`` would try, in order (see :func:`make_embedding_lookup`)."""
    out = []
    for d in directories:
        root = Path(d).resolve()
        base = (root / name).resolve()
        if base.is_relative_to(root):
            out += [base, *(base.with_name(base.name + s) for s in _EMBED_SUFFIXES)]
    return out


# -- tokenization -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenizedPrompt:
    """Rows of ``(token, weight)`` pairs, each ``MAX_LENGTH`` long, plus unknown embedding names.

    A token is an ``int`` vocabulary id or a ``[D]`` embedding vector.
    """

    chunks: list[list[tuple[Token, float]]]
    missing_embeddings: list[str] = field(default_factory=list)


def _embedding_groups(
    word: str, weight: float, lookup: EmbeddingLookup, missing: list[str]
) -> tuple[list[list[tuple[Token, float]]], str]:
    """Resolve ``embedding:name rest`` -> (groups, leftover text to tokenize)."""
    words = word[len(EMBEDDING_PREFIX) :].split()
    name, leftover = words[0], " ".join(words[1:])
    embed = lookup(name)
    if embed is None:
        stripped = name.strip(",")
        if len(stripped) < len(name):
            embed = lookup(stripped) if stripped else None
            leftover = f"{name[len(stripped) :]} {leftover}"
    if embed is None:
        missing.append(name)
        return [], leftover
    vectors = embed.reshape(-1, embed.shape[-1])  # [n, D]
    return [[(vectors[i], weight) for i in range(vectors.shape[0])]], leftover


def _chunk(groups: Iterable[list[tuple[Token, float]]], pad_token: int = EOS_TOKEN_ID,
           ) -> list[list[tuple[Token, float]]]:
    """Pack token groups into BOS + 75 + EOS rows padded with ``pad_token`` (ComfyUI's rule)."""
    bos, eos, pad = (BOS_TOKEN_ID, 1.0), (EOS_TOKEN_ID, 1.0), (pad_token, 1.0)
    row: list[tuple[Token, float]] = [bos]
    rows = [row]
    for group in groups:
        large = len(group) >= _MAX_WORD_LENGTH
        while group:
            if len(group) + len(row) > MAX_LENGTH - 1:
                room = MAX_LENGTH - 1 - len(row)
                if large:
                    row.extend(group[:room])
                    group = group[room:]
                row.append(eos)
                row.extend([pad] * (MAX_LENGTH - len(row)))
                row = [bos]
                rows.append(row)
            else:
                row.extend(group)
                group = []
    row.append(eos)
    row.extend([pad] * (MAX_LENGTH - len(row)))
    return rows


def tokenize_prompt(
    tokenizer: CLIPTokenizer, text: str, *, embedding_lookup: EmbeddingLookup | None = None,
    pad_token: int = EOS_TOKEN_ID,
) -> TokenizedPrompt:
    """Tokenize a prompt into weighted 77-token rows, as ComfyUI's ``tokenize_with_weights``.

    Parameters
    ----------
    tokenizer:
        The CLIP BPE tokenizer.
    text:
        The prompt in ComfyUI syntax (weights, escapes, ``embedding:name``).
    embedding_lookup:
        Name -> ``[n, D]`` (or ``[D]``) tensor, or None when unknown.  Without a lookup,
        ``embedding:name`` is tokenized as text (ComfyUI without an embeddings folder).
    pad_token:
        Fills each row after its end token (49407, or 0 for OpenCLIP encoders).

    Returns
    -------
    TokenizedPrompt
        ``chunks`` (one or more rows of 77 ``(token, weight)`` pairs) and ``missing_embeddings``.
    """
    groups: list[list[tuple[Token, float]]] = []
    missing: list[str] = []
    for segment, weight in parse_weights(text):
        parts = _EMBED_SPLIT.split(segment)
        for word in filter(None, parts):
            if (
                embedding_lookup is not None
                and word.startswith(EMBEDDING_PREFIX)
                and word[len(EMBEDDING_PREFIX) :].strip()  # a bare "embedding:" stays text
            ):
                found, word = _embedding_groups(word, weight, embedding_lookup, missing)
                groups += found
                if not word:
                    continue
            groups.append([(t, weight) for t in tokenizer.encode(word)])
    return TokenizedPrompt(_chunk(groups, pad_token), missing)


# -- encoding -----------------------------------------------------------------------------------
def _row_inputs(
    model: CLIPTextModel, rows: Sequence[Sequence[Token]], device: torch.device
) -> tuple[Tensor, Tensor | None]:
    """Token ids [B, T] and, if any embedding vectors are present, input embeddings [B, T, D]."""
    width = model.config.width
    ids = [[t if isinstance(t, int) else 0 for t in row] for row in rows]
    tokens = torch.tensor(ids, dtype=torch.long, device=device)  # [B, T]
    spliced = [
        (b, j, t) for b, row in enumerate(rows) for j, t in enumerate(row) if not isinstance(t, int)
    ]
    if not spliced:
        return tokens, None
    table = model.token_embedding.weight
    embeds = table[tokens].clone()  # [B, T, D]
    for b, j, vec in spliced:
        if vec.numel() != width:
            raise NodeError(
                "textual-inversion embedding does not fit this text encoder",
                input_name="text",
                expected=f"vectors of size {width}",
                received=f"a vector of size {vec.numel()}",
                fix="use an embedding trained for this model family (SD1 embeddings are 768 wide)",
            )
        embeds[b, j] = vec.reshape(width).to(device=device, dtype=table.dtype)
    return tokens, embeds


@torch.no_grad()
def encode_tokens(
    model: CLIPTextModel,
    chunks: Sequence[Sequence[tuple[Token, float]]],
    *,
    layer: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    final_norm: bool = True,
    pad_token: int = EOS_TOKEN_ID,
    project: bool = False,
) -> tuple[Tensor, Tensor]:
    """Encode weighted rows as ComfyUI's ``encode_token_weights``.

    Parameters
    ----------
    model:
        The text encoder.
    chunks:
        Rows of ``(token, weight)`` pairs, e.g. ``tokenize_prompt(...).chunks``.
    layer:
        Output layer (None = last, -2 = penultimate).  As ComfyUI's ``clip_layer``, a layer beyond
        the model's depth (``abs(layer) > layers``) means the last layer.
    device:
        Where to run; defaults to the model's device.
    dtype:
        dtype of the returned tensors; defaults to float32 (ComfyUI returns ``.float()``).
    final_norm:
        Apply the final layer norm to the selected hidden state (ComfyUI ``layer_norm_hidden_state``).
    pad_token:
        Pad token of the empty row that weights are taken relative to.
    project:
        Return the pooled output through the model's ``text_projection``.

    Returns
    -------
    tuple[Tensor, Tensor]
        ``cond`` ``[1, 77 * n, D]`` and ``pooled`` ``[1, D]`` (or ``[1, P]`` projected; first row).
    """
    param = model.token_embedding.weight
    device = param.device if device is None else torch.device(device)
    dtype = torch.float32 if dtype is None else dtype
    if layer is not None and abs(layer) > model.config.layers:
        layer = None
    rows = [[t for t, _ in row] for row in chunks]
    weights = torch.tensor([[w for _, w in row] for row in chunks], dtype=torch.float32)
    weighted = bool((weights != 1.0).any()) or not rows
    length = max((len(r) for r in rows), default=MAX_LENGTH)
    if weighted:
        rows.append([BOS_TOKEN_ID, EOS_TOKEN_ID] + [pad_token] * (length - 2))
    tokens, embeds = _row_inputs(model, rows, device)
    hidden, pooled, _ = model(tokens, embeds=embeds, layer=layer, final_norm_on_hidden=final_norm)
    if project:
        pooled = model.project(pooled)
    z = hidden.float()  # [B, T, D]
    pooled = pooled[:1].float()  # [1, D]
    n = len(chunks)
    if n == 0:
        return z[-1:].to(dtype), pooled.to(dtype)
    cond = z[:n]  # [n, T, D]
    if weighted:
        w = weights.to(z.device)[:, :, None]  # [n, T, 1]
        empty = z[-1:]  # [1, T, D]
        cond = torch.where(w != 1.0, (cond - empty) * w + empty, cond)
    return cond.reshape(1, -1, cond.shape[-1]).to(dtype), pooled.to(dtype)  # [1, n*T, D]


def encode_prompt(
    model: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    text: str,
    *,
    layer: int | None = None,
    embedding_lookup: EmbeddingLookup | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Encode a ComfyUI prompt: ``tokenize_prompt`` then ``encode_tokens``.

    Unknown ``embedding:`` names are logged as a warning (as ComfyUI does) and dropped; call
    :func:`tokenize_prompt` directly to receive them as a list.

    Returns
    -------
    tuple[Tensor, Tensor]
        ``cond`` ``[1, 77 * n, D]`` and ``pooled`` ``[1, D]``.

    Examples
    --------
    >>> from comfy_notebook.models.clip import CLIPTextConfig
    >>> from comfy_notebook.models.tokenizer import get_tokenizer
    >>> model = CLIPTextModel(CLIPTextConfig.tiny())
    >>> cond, pooled = encode_prompt(model, get_tokenizer(), "a (red:1.2) cat", layer=-2)
    >>> cond.shape, pooled.shape
    (torch.Size([1, 77, 64]), torch.Size([1, 64]))
    """
    tokenized = tokenize_prompt(tokenizer, text, embedding_lookup=embedding_lookup)
    for name in tokenized.missing_embeddings:
        logger.warning("embedding:%s does not exist, ignoring it", name)
    return encode_tokens(model, tokenized.chunks, layer=layer, device=device, dtype=dtype)


# -- embedding files ----------------------------------------------------------------------------
def load_embedding(path: str | Path, *, key: str = "clip_l") -> Tensor:
    """Read a textual-inversion embedding file into ``[n_vectors, D]`` float32.

    Parameters
    ----------
    path:
        ``.safetensors`` (A1111 ``emb_params``, SDXL-style ``clip_l``/``clip_g``, or one tensor)
        or ``.pt``/``.bin`` (A1111 ``string_to_param`` dicts, loaded with ``weights_only=True``).
    key:
        Which tensor to take from multi-encoder files (``"clip_l"`` for SD1's encoder).

    Raises
    ------
    ModelLoadError
        The file cannot be read or holds no recognisable embedding.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            import safetensors.torch

            data: object = safetensors.torch.load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read the embedding file {path}: {type(exc).__name__}: {exc}. Expected a "
            ".safetensors or a weights-only .pt/.bin textual-inversion file."
        ) from exc
    tensor = _pick_embedding(data, key)
    if tensor is None:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ModelLoadError(
            f"no embedding tensor in {path}: expected 'string_to_param', 'emb_params', {key!r} or "
            f"a single tensor, received {keys}."
        )
    return tensor.reshape(-1, tensor.shape[-1]).float()


def _pick_embedding(data: object, key: str) -> Tensor | None:
    """The embedding tensor inside a loaded file, following ComfyUI's key order."""
    if isinstance(data, Tensor):
        return data
    if not isinstance(data, dict) or not data:
        return None
    if isinstance(data.get("string_to_param"), dict):
        return next(iter(data["string_to_param"].values()), None)
    for k in (key, "emb_params"):
        if isinstance(data.get(k), Tensor):
            return data[k]
    tensors = [v for v in data.values() if isinstance(v, Tensor)]
    return tensors[0] if tensors else None


def make_embedding_lookup(
    directories: Iterable[str | Path], *, key: str = "clip_l"
) -> EmbeddingLookup:
    """An ``embedding_lookup`` over folders: ``name``, then ``name.safetensors/.pt/.bin``.

    Names that escape the folders (``../x``) are not found.  Loaded files are cached in the
    returned function.
    """
    roots = [Path(d).resolve() for d in directories]
    cache: dict[str, Tensor | None] = {}

    def lookup(name: str) -> Tensor | None:
        if name not in cache:
            hit = next((p for p in embedding_candidates(roots, name) if p.is_file()), None)
            cache[name] = load_embedding(hit, key=key) if hit is not None else None
        return cache[name]

    return lookup
