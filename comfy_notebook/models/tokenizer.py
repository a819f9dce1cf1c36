"""CLIP byte-level BPE tokenizer (OpenAI CLIP vocabulary, 49,408 entries).

Matches ``transformers.CLIPTokenizer`` (the one ComfyUI uses) id for id; the equality is tested on
a corpus in ``tests/models/test_tokenizer.py``.  The pipeline, as transformers builds it:

1. special tokens ``<|startoftext|>`` / ``<|endoftext|>`` written verbatim are split out first;
2. normalise: Unicode NFC, every run of whitespace -> one space, lower-case (character by
   character, so a final capital sigma becomes ``σ``);
3. pre-tokenise with CLIP's pattern ``<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|
   \\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+`` (whitespace dropped);
4. each piece -> UTF-8 bytes -> GPT-2's byte-to-unicode characters, ``</w>`` on the last one;
5. BPE merges by rank.

The vocabulary follows from ``data/bpe_simple_vocab_16e6.txt.gz`` (MIT, from open_clip; notice in
``data/LICENSE-open_clip.txt``): the 256 byte characters, the same with ``</w>``, the first 48,894
merges, then the two special tokens.  It is read lazily on first use and cached per process.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from comfy_notebook.errors import ModelLoadError

__all__ = [
    "BOS_TOKEN_ID",
    "EOS_TOKEN_ID",
    "MAX_LENGTH",
    "CLIPTokenizer",
    "bytes_to_unicode",
    "get_tokenizer",
]

BOS_TOKEN_ID = 49406
EOS_TOKEN_ID = 49407
MAX_LENGTH = 77
_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"
_N_MERGES = 49152 - 256 - 2
_DEFAULT_VOCAB = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
# Unicode White_Space (what the Rust regex ``\s`` in the tokenizers library matches).
_WHITESPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_CACHE_LIMIT = 200_000


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table  # insertion order (printable bytes first) is the vocabulary order


@functools.cache
def _char_class(ch: str) -> str:
    """'s' whitespace, 'L' letter, 'N' number, 'P' anything else (Unicode general category)."""
    if ch in _WHITESPACE:
        return "s"
    cat = unicodedata.category(ch)[0]
    return cat if cat in ("L", "N") else "P"


def _lower(text: str) -> str:
    """Per-character lower-casing (no final-sigma context, like Rust's ``char::to_lowercase``)."""
    if "Σ" in text:
        return "".join(c.lower() for c in text)
    return text.lower()


def _normalize(text: str) -> str:
    """NFC, then lower case.

    transformers also collapses whitespace runs to one space here; pre-tokenisation drops all
    whitespace, so that step cannot change the ids and is skipped.
    """
    if text.isascii():
        return text.lower()
    return _lower(unicodedata.normalize("NFC", text))


def _pre_tokenize(text: str) -> list[str]:
    """Split normalised text into CLIP's pieces (whitespace dropped)."""
    pieces: list[str] = []
    i, n = 0, len(text)
    cls = _char_class
    while i < n:
        c = text[i]
        k = cls(c)
        if k == "s":
            i += 1
            continue
        if c == "<" and (text.startswith(_BOS, i) or text.startswith(_EOS, i)):
            # A special token that only matched after lower-casing: ByteLevel's GPT-2 split
            # then cuts it into "<|", the word and "|>".
            j = i + (len(_BOS) if text.startswith(_BOS, i) else len(_EOS))
            pieces += ["<|", text[i + 2 : j - 2], "|>"]
            i = j
            continue
        elif c == "'" and (hit := _contraction_at(text, i)):
            j = i + len(hit)
        elif k == "L":
            j = i + 1
            while j < n and cls(text[j]) == "L":
                j += 1
        elif k == "N":
            j = i + 1
        else:
            j = i + 1
            while j < n and cls(text[j]) == "P":
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


def _contraction_at(text: str, i: int) -> str | None:
    """The contraction starting at ``text[i]`` (an apostrophe), if any."""
    for c in _CONTRACTIONS:
        if text.startswith(c, i):
            return c
    return None


class CLIPTokenizer:
    """CLIP BPE tokenizer.

    Parameters
    ----------
    bpe_path:
        A gzipped ``bpe_simple_vocab_16e6.txt`` merges file; ``None`` uses the packaged one.
        Read on first use.

    Examples
    --------
    >>> tok = get_tokenizer()
    >>> tok.encode("a photo of a cat")
    [320, 1125, 539, 320, 2368]
    >>> tok("a cat")[:4]
    [49406, 320, 2368, 49407]
    """

    bos_token_id = BOS_TOKEN_ID
    eos_token_id = EOS_TOKEN_ID
    pad_token_id = EOS_TOKEN_ID
    max_length = MAX_LENGTH

    def __init__(self, bpe_path: str | Path | None = None) -> None:
        self._path = Path(bpe_path) if bpe_path is not None else _DEFAULT_VOCAB
        self._vocab: dict[str, int] | None = None
        self._ranks: dict[tuple[str, str], int] = {}
        self._merges: list[tuple[str, str]] = []
        self._cache: dict[str, tuple[int, ...]] = {}

    # -- data ---------------------------------------------------------------------------------
    def _load(self) -> dict[str, int]:
        """Read the merges file and build the vocabulary (once)."""
        if self._vocab is not None:
            return self._vocab
        try:
            with gzip.open(self._path, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")
        except OSError as exc:
            raise ModelLoadError(
                f"cannot read the CLIP BPE merges from {self._path}: {exc}. Expected a gzipped "
                "bpe_simple_vocab_16e6.txt; reinstall comfy_notebook or pass bpe_path=."
            ) from exc
        merges = [tuple(line.split()) for line in lines[1 : 1 + _N_MERGES]]
        if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
            raise ModelLoadError(
                f"{self._path} is not a CLIP BPE merges file: expected {_N_MERGES} merge lines "
                f"of two symbols after the header, received {len(merges)} lines."
            )
        byte_chars = list(bytes_to_unicode().values())
        symbols = byte_chars + [c + "</w>" for c in byte_chars]
        symbols += ["".join(m) for m in merges] + [_BOS, _EOS]
        self._merges = merges  # type: ignore[assignment]
        self._ranks = {m: r for r, m in enumerate(self._merges)}
        self._vocab = {s: i for i, s in enumerate(symbols)}
        return self._vocab

    @property
    def vocab(self) -> dict[str, int]:
        """Token string -> id (49,408 entries)."""
        return self._load()

    @property
    def merges(self) -> list[tuple[str, str]]:
        """The BPE merges in rank order."""
        self._load()
        return self._merges

    # -- encoding -----------------------------------------------------------------------------
    def _bpe(self, piece: str) -> tuple[int, ...]:
        """Ids of one pre-tokenised piece (cached)."""
        hit = self._cache.get(piece)
        if hit is not None:
            return hit
        vocab = self._load()
        benc = bytes_to_unicode()
        chars = [benc[b] for b in piece.encode("utf-8")]
        word = [*chars[:-1], chars[-1] + "</w>"]
        ranks = self._ranks
        while len(word) > 1:
            best_rank, best = len(ranks), None
            for pair in itertools.pairwise(word):
                r = ranks.get(pair)
                if r is not None and r < best_rank:
                    best_rank, best = r, pair
            if best is None:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = tuple(vocab[s] for s in word)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS/EOS, padding or truncation.

        Parameters
        ----------
        text:
            Any string; special tokens written verbatim map to their ids.

        Returns
        -------
        list[int]
        """
        ids: list[int] = []
        for part, special in _split_specials(text):
            if special is not None:
                ids.append(special)
                continue
            for piece in _pre_tokenize(_normalize(part)):
                ids.extend(self._bpe(piece))
        return ids

    def __call__(self, text: str) -> list[int]:
        """``[BOS] + encode(text) + [EOS]`` (what ``transformers.CLIPTokenizer`` returns)."""
        return [BOS_TOKEN_ID, *self.encode(text), EOS_TOKEN_ID]

    def tokenize(self, text: str) -> list[int]:
        """One 77-token row: BOS, the first 75 ids, EOS, padded with EOS (49407)."""
        ids = self.encode(text)[: MAX_LENGTH - 2]
        row = [BOS_TOKEN_ID, *ids, EOS_TOKEN_ID]
        return row + [EOS_TOKEN_ID] * (MAX_LENGTH - len(row))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (special tokens dropped, ``</w>`` -> space)."""
        inv = {i: s for s, i in self._load().items()}
        bdec = {c: b for b, c in bytes_to_unicode().items()}
        text = "".join(inv[i] for i in ids if i not in (BOS_TOKEN_ID, EOS_TOKEN_ID))
        raw = bytearray()
        for word in text.split("</w>"):
            raw.extend(bdec[c] for c in word)
            raw.extend(b" ")
        return raw.decode("utf-8", errors="replace").strip()


def _split_specials(text: str) -> list[tuple[str, int | None]]:
    """Split out verbatim special tokens: [(text, None) | (token, id)]."""
    if "<|" not in text:
        return [(text, None)]
    out: list[tuple[str, int | None]] = []
    i = start = 0
    while True:
        j = text.find("<|", i)
        if j < 0:
            break
        for tok, tid in ((_BOS, BOS_TOKEN_ID), (_EOS, EOS_TOKEN_ID)):
            if text.startswith(tok, j):
                out.append((text[start:j], None))
                out.append((tok, tid))
                start = i = j + len(tok)
                break
        else:
            i = j + 2
    out.append((text[start:], None))
    return out


@functools.cache
def get_tokenizer() -> CLIPTokenizer:
    """The process-wide tokenizer over the packaged vocabulary (data read on first use)."""
    return CLIPTokenizer()
