"""Cache keys (ComfyUI's structural input signature) and the output cache.

Eviction policies live in :mod:`comfy_notebook.engine.policies`.

A node's key hashes its class, its ``IS_CHANGED`` value, its sorted constant inputs and, for
each linked input, the key of the upstream node and the output slot.  Keys are therefore
independent of node ids (identical subgraphs share entries) and change downstream of any
changed constant.  Anything that cannot be canonicalised (an unknown object, NaN, too deep)
makes the key *uncacheable*: it starts with ``"~"``, is unique to the run and is never stored.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_notebook.engine.policies import (
    LRU,
    ByteBudget,
    CachePolicy,
    KeepAll,
    MemoryBudget,
    default_policy,
    sizeof,
    split_bytes,
)

__all__ = [
    "LRU",
    "ByteBudget",
    "Cache",
    "CacheEntry",
    "CachePolicy",
    "CacheStats",
    "KeepAll",
    "MemoryBudget",
    "canonical",
    "is_cacheable",
    "node_signature",
    "sizeof",
]

_MAX_DEPTH = 32
_MAX_VISITS = 10_000


class _Unhashable(Exception):
    """Raised inside :func:`canonical` when a value cannot be keyed."""


def _encode(value: Any, out: list[str], depth: int, budget: list[int]) -> None:
    """Append a type-tagged canonical text of ``value`` to ``out`` (bounded depth and size)."""
    budget[0] -= 1
    if budget[0] < 0 or depth > _MAX_DEPTH:
        raise _Unhashable
    t = type(value)
    if t is str:
        out.append("s" + str(len(value)) + ":" + value)
    elif t is bool:
        out.append("T" if value else "F")
    elif t is int:
        out.append("i" + str(value) + ";")
    elif t is float:
        if math.isnan(value):
            raise _Unhashable
        out.append("f" + repr(value) + ";")
    elif value is None:
        out.append("N")
    elif t is list or t is tuple:
        out.append("[" if t is list else "(")
        for item in value:
            _encode(item, out, depth + 1, budget)
        out.append("]")
    elif t is dict:
        parts = []
        for k, v in value.items():
            kbuf: list[str] = []
            _encode(k, kbuf, depth + 1, budget)
            parts.append(("".join(kbuf), v))
        parts.sort(key=lambda p: p[0])
        out.append("{")
        for ktext, v in parts:
            out.append(ktext)
            _encode(v, out, depth + 1, budget)
        out.append("}")
    elif t is frozenset or t is set:
        items = []
        for item in value:
            buf: list[str] = []
            _encode(item, buf, depth + 1, budget)
            items.append("".join(buf))
        out.append("<" + "".join(sorted(items)) + ">")
    elif t is bytes:
        out.append("b" + value.hex() + ";")
    else:
        raise _Unhashable


def canonical(value: Any) -> str | None:
    """Type-tagged canonical text of a constant, or ``None`` when it cannot be keyed.

    Only primitives (str, int, float except NaN, bool, None, bytes) and builtin containers are
    accepted; depth over 32 or more than 10,000 visited values fails closed.
    """
    out: list[str] = []
    try:
        _encode(value, out, 0, [_MAX_VISITS])
    except (_Unhashable, RecursionError):
        return None
    return "".join(out)


def _uncacheable() -> str:
    return "~" + os.urandom(12).hex()


def is_cacheable(key: str) -> bool:
    """Whether ``key`` may be stored (uncacheable keys start with ``"~"``)."""
    return not key.startswith("~")


def node_signature(
    class_type: str,
    fingerprint: Any,
    unique_id: str | None,
    constants: Mapping[str, Any],
    links: Mapping[str, tuple[str, int]],
) -> str:
    """The cache key of one node: a hex digest, or a unique ``"~..."`` key when uncacheable.

    Parameters
    ----------
    class_type:
        The node class.
    fingerprint:
        The ``IS_CHANGED`` result (``None`` when the class has none).  NaN -> uncacheable.
    unique_id:
        The node id, for ``NOT_IDEMPOTENT`` nodes and nodes with a hidden ``UNIQUE_ID``.
    constants:
        Constant inputs by name.
    links:
        ``{input_name: (upstream_key, output_slot)}``.
    """
    parts = [class_type, "|"]
    fp = canonical(fingerprint)
    if fp is None:
        return _uncacheable()
    parts.append(fp)
    if unique_id is not None:
        parts.append("#" + unique_id)
    for name in sorted(set(constants) | set(links)):
        parts.append("\x00" + name + "=")
        if name in links:
            up, slot = links[name]
            if up.startswith("~"):
                return _uncacheable()
            parts.append("@" + up + ":" + str(slot))
        else:
            text = canonical(constants[name])
            if text is None:
                return _uncacheable()
            parts.append(text)
    return hashlib.blake2b("".join(parts).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


@dataclass(eq=False)
class CacheEntry:
    """One cached node result: per-slot output lists, the ``ui`` dict, size, last use, tags."""

    outputs: tuple[list[Any], ...]
    ui: Mapping[str, Any] | None
    nbytes: int
    last_used: float
    tags: set[str] = field(default_factory=set)
    ram_bytes: int = 0  # nbytes split by where the bytes live (what MemoryBudget weighs)
    vram_bytes: int = 0


@dataclass(frozen=True)
class CacheStats:
    """Cache statistics."""

    hits: int
    misses: int
    entries: int
    bytes: int
    evictions: int


class Cache:
    """Node outputs keyed by signature, with an eviction policy and statistics.

    Parameters
    ----------
    policy:
        one of :mod:`comfy_notebook.engine.policies`, or any object with a
        ``victims(entries, total_bytes)`` method.  Default: :func:`default_policy` (least
        recently used results beyond a stated RAM / GPU-memory budget are evicted, so a long
        session of reruns with new seeds stays bounded).

    Thread-safe: a prompt running on a background thread (a widget, the prompt queue) stores
    and evicts while a cell's real-mode calls look entries up; one lock serialises every
    method, so nobody sees an entry half-stored and the byte count equals the entries' sizes.
    """

    def __init__(self, policy: CachePolicy | None = None) -> None:
        self.policy: CachePolicy = policy if policy is not None else default_policy()
        self._lock = threading.RLock()
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def get(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` (marking it recently used), or ``None``; counts hit/miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._hits += 1
            entry.last_used = time.monotonic()
            self._entries.move_to_end(key)
            return entry

    def peek(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` without touching statistics or recency."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, outputs: tuple[list[Any], ...], ui: Mapping[str, Any] | None) -> CacheEntry:
        """Store a result (uncacheable keys are not stored) and apply the policy."""
        ram, vram = split_bytes(outputs)
        entry = CacheEntry(outputs, ui, ram + vram, time.monotonic(), ram_bytes=ram, vram_bytes=vram)
        if not is_cacheable(key):
            return entry
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
                entry.tags |= old.tags
            self._entries[key] = entry
            self._bytes += entry.nbytes
            self._evict()
        return entry

    def _evict(self) -> None:
        with self._lock:
            for key in list(self.policy.victims(self._entries, self._bytes)):
                if self.release(key):
                    self._evictions += 1

    def tag(self, key: str, tag: str) -> None:
        """Attach a free-form tag (e.g. the notebook cell that produced the entry)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.tags.add(tag)

    def release(self, key: str) -> bool:
        """Drop one entry; returns whether it existed."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            self._bytes -= entry.nbytes
            return True

    def release_tag(self, tag: str, keep: Iterable[str] = ()) -> int:
        """Drop every entry carrying ``tag`` except the keys in ``keep``; returns how many."""
        keep_set = set(keep)
        with self._lock:
            doomed = [k for k, e in self._entries.items() if tag in e.tags and k not in keep_set]
            for key in doomed:
                self.release(key)
        return len(doomed)

    def stats(self) -> CacheStats:
        """Hits, misses, entries, bytes and evictions so far."""
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._entries), self._bytes, self._evictions)

    def clear(self) -> None:
        """Drop every entry (statistics are kept)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def keys(self) -> list[str]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __repr__(self) -> str:
        return f"Cache({self.policy!r}, entries={len(self._entries)}, bytes={self._bytes})"
