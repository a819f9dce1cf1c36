"""Fingerprints of raw values passed to real-mode node calls, and in-place change detection.

A raw value (a tensor, a numpy array, a PIL image, a dict/list holding them) cannot go into a
cache key as it is.  It gets a fingerprint instead:

- up to :data:`CONTENT_LIMIT` bytes, a hash of its content (plus dtype and shape), so two equal
  tensors share cache entries and any change of content changes the key;
- above that, the object's identity plus torch's version counter (bumped by every in-place
  operation).  The identity is a serial number handed out per live object (a weak reference
  notices when the object dies), never ``id()`` alone, so a new object that reuses a dead
  object's address can never produce a stale hit.

torch is never imported here: a tensor is recognised through ``sys.modules.get("torch")``.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
import weakref
from typing import Any

__all__ = ["CONTENT_LIMIT", "fingerprint", "is_raw_value", "versions"]

CONTENT_LIMIT = 64 * 1024 * 1024  # bytes hashed by content; identity + version above

_serial_counter = itertools.count(1)
_serials: dict[int, tuple[Any, int]] = {}  # id(obj) -> (weakref or strong ref, serial)
_content_memo: dict[tuple[int, int], str] = {}  # (serial, tensor version) -> content digest
_MAX_DEPTH = 16


def _torch() -> Any:
    return sys.modules.get("torch")


def _is_tensor(value: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(value, torch.Tensor)


def _serial(obj: Any) -> int:
    """A serial number unique to ``obj`` for as long as it lives."""
    key = id(obj)
    found = _serials.get(key)
    if found is not None:
        ref, serial = found
        alive = ref() if isinstance(ref, weakref.ref) else ref
        if alive is obj:
            return serial
    serial = next(_serial_counter)
    try:
        ref = weakref.ref(obj, lambda _r, k=key, s=serial: _forget(k, s))
    except TypeError:  # no weak references: keep it alive so its id cannot be reused
        ref = obj
    _serials[key] = (ref, serial)
    return serial


def _forget(key: int, serial: int) -> None:
    """Weakref callback: drop the serial of a dead object (unless the slot was reused)."""
    found = _serials.get(key)
    if found is not None and found[1] == serial:
        del _serials[key]
    for memo_key in [k for k in _content_memo if k[0] == serial]:
        del _content_memo[memo_key]


def _version(t: Any) -> int:
    """A tensor's in-place version counter; -1 for inference tensors, which keep none (an
    attached ComfyUI makes its tensors under ``torch.inference_mode``)."""
    return -1 if t.is_inference() else int(t._version)


def _tensor_fingerprint(t: Any) -> str:
    """Content hash (small tensors) or identity + version counter (large ones)."""
    nbytes = t.element_size() * t.numel()
    head = f"{t.dtype}|{tuple(t.shape)}|{t.device.type}"
    serial = _serial(t)
    version = _version(t)
    if nbytes > CONTENT_LIMIT:
        return f"T{head}|obj{serial}v{version}"
    memo = _content_memo.get((serial, version))
    if memo is None:
        data = t.detach()
        if data.device.type != "cpu":
            data = data.cpu()
        data = data.contiguous()
        torch = _torch()
        raw = data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b""
        memo = hashlib.blake2b(raw, digest_size=16).hexdigest()
        if len(_content_memo) > 4096:
            _content_memo.clear()
        _content_memo[(serial, version)] = memo
    return f"T{head}|{memo}"


def _array_fingerprint(a: Any) -> str:
    """numpy arrays have no version counter: always hashed by content."""
    import numpy as np

    data = np.ascontiguousarray(a)
    digest = hashlib.blake2b(data.view(np.uint8).reshape(-1).tobytes(), digest_size=16)
    return f"A{a.dtype}|{a.shape}|{digest.hexdigest()}"


def _pil_fingerprint(img: Any) -> str:
    """PIL images: mode, size and pixel bytes."""
    digest = hashlib.blake2b(img.tobytes(), digest_size=16).hexdigest()
    return f"P{img.mode}|{img.size}|{digest}"


def _is_array(value: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, np.ndarray)


def _is_pil(value: Any) -> bool:
    image_mod = sys.modules.get("PIL.Image")
    return image_mod is not None and isinstance(value, image_mod.Image)


def is_raw_value(value: Any) -> bool:
    """Whether ``value`` is (or contains) a tensor, array or image that needs a fingerprint."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if _is_tensor(item) or _is_array(item) or _is_pil(item):
            return True
        if depth < _MAX_DEPTH:
            if isinstance(item, dict):
                stack.extend((v, depth + 1) for v in item.values())
            elif isinstance(item, list | tuple):
                stack.extend((v, depth + 1) for v in item)
    return False


def fingerprint(value: Any) -> str:
    """A stable text fingerprint of a raw value (see the module docstring).

    Parameters
    ----------
    value:
        A tensor, numpy array, PIL image, or a dict/list/tuple of those and of primitives.

    Returns
    -------
    str
        Equal for equal content (up to :data:`CONTENT_LIMIT` bytes per tensor); changes with
        any in-place modification.
    """
    parts: list[str] = []
    stack: list[tuple[bool, Any, int]] = [(False, value, 0)]  # (is_marker, item, depth)
    while stack:
        is_marker, item, depth = stack.pop()
        if is_marker:
            parts.append(item)
        elif _is_tensor(item):
            parts.append(_tensor_fingerprint(item))
        elif _is_array(item):
            parts.append(_array_fingerprint(item))
        elif _is_pil(item):
            parts.append(_pil_fingerprint(item))
        elif item is None or isinstance(item, bool | int | float | str | bytes):
            parts.append(type(item).__name__ + repr(item))
        elif depth >= _MAX_DEPTH:
            parts.append(f"O{type(item).__qualname__}|obj{_serial(item)}")
        elif isinstance(item, dict):
            parts.append("{")
            stack.append((True, "}", depth))
            for k in sorted(item, key=repr, reverse=True):
                stack.append((False, item[k], depth + 1))
                stack.append((True, "k" + repr(k), depth))
        elif isinstance(item, list | tuple):
            parts.append("[" if isinstance(item, list) else "(")
            stack.append((True, "]", depth))
            for v in reversed(item):
                stack.append((False, v, depth + 1))
        else:  # an arbitrary object: identity (kept unique by the serial)
            parts.append(f"O{type(item).__qualname__}|obj{_serial(item)}")
    text = ";".join(parts)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def versions(value: Any) -> tuple[int, ...] | None:
    """The version counters of the tensors inside ``value`` (``None`` when it holds none).

    A cached value whose versions changed since it was stored was modified in place.
    """
    torch = _torch()
    if torch is None:
        return None
    out: list[int] = []
    stack: list[tuple[Any, int]] = [(value, 0)]
    tensor = torch.Tensor
    while stack:
        item, depth = stack.pop()
        if isinstance(item, tensor):
            out.append(_version(item))
        elif depth < 4:
            if isinstance(item, dict):
                stack.extend((v, depth + 1) for v in item.values())
            elif isinstance(item, list | tuple):
                stack.extend((v, depth + 1) for v in item)
    return tuple(out) if out else None
