"""File identity: has a file changed since we read it, without reading all of it.

A model file is known by its size, its modification time (ns) and a hash of its first and last
64 KiB (safetensors put the header, with every tensor's name, shape and offset, first).  The
hash is kept per (path, device, inode, size, mtime): of a 20 GB checkpoint 128 KiB are read once
per change on disk, never the whole file, however often a prompt asks.  A file replaced under the same
name (a new download, a retrained LoRA copied over the old one) gets a new identity, so the
loader nodes' ``IS_CHANGED`` and the model manager's entries never serve the old weights.
"""

from __future__ import annotations

import hashlib
import os
import threading

__all__ = ["EDGE_BYTES", "file_identity"]

EDGE_BYTES = 64 << 10  # bytes hashed at each end of a file
_LIMIT = 4096  # remembered stats (a bounded dict: least recently added go first)
_cache: dict[tuple[str, int, int, int, int], str] = {}
_lock = threading.Lock()


def file_identity(path: str | os.PathLike[str]) -> str | None:
    """``"<size>:<mtime_ns>:<hash of the first and last 64 KiB>"``, or None when the file is gone."""
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except (FileNotFoundError, NotADirectoryError):
        return None
    key = (os.path.abspath(name), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _lock:
        found = _cache.get(key)
    if found is not None:
        return found
    h = hashlib.blake2b(digest_size=16)
    with open(name, "rb") as f:
        h.update(f.read(EDGE_BYTES))
        if st.st_size > EDGE_BYTES:
            f.seek(max(EDGE_BYTES, st.st_size - EDGE_BYTES))
            h.update(f.read(EDGE_BYTES))
    ident = f"{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()}"
    with _lock:
        if len(_cache) >= _LIMIT:
            _cache.pop(next(iter(_cache)))
        _cache[key] = ident
    return ident
