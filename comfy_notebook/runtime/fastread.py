"""Checkpoint reads at copy-engine speed: file -> pinned staging -> device, in the final dtype.

A plain ``mmap`` tensor's ``.to("cuda", torch.float16)`` faults the pages in on one thread and
copies from pageable memory (~2 GB/s measured on an H200).  Here a few threads ``preadv`` the
file (from the page cache) into *pinned* staging chunks; while the copy engine moves one chunk
to the device, the threads fill the other (double buffering, one CUDA stream, one event per
chunk).  On the device each tensor is cast from a device staging chunk into its slot of one flat
output buffer (64-byte aligned views), so no pageable ``.to()`` is on the hot path.

The pipeline takes a :class:`Copier` (the device side): :class:`CudaCopier` for CUDA, and
:class:`SyncCopier` for the CPU, which runs the same chunking, alignment and casting logic
synchronously so that tests can check it without a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Copier", "CudaCopier", "Span", "SyncCopier", "plan_chunks", "read_spans"]

ALIGN = 64  # bytes: every staging slot and output view starts on a multiple of this
_READ_PIECE = 8 << 20  # largest single preadv, so several threads share one big tensor


@dataclass(frozen=True)
class Span:
    """One tensor to read: ``nbytes`` at absolute file ``offset``, stored as ``src``, wanted as ``dst``."""

    key: str
    offset: int
    nbytes: int
    src: torch.dtype
    shape: tuple[int, ...]
    dst: torch.dtype

    @property
    def numel(self) -> int:
        return self.nbytes // self.src.itemsize if self.src.itemsize else 0


@dataclass(frozen=True)
class _Piece:
    """A contiguous part of a span that travels in one chunk (whole elements only)."""

    span: int  # index into the span list
    file_offset: int
    nbytes: int
    slot: int  # byte offset in the staging chunk (ALIGN-aligned)
    first: int  # index of its first element in the span


def _up(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a


def plan_chunks(spans: Sequence[Span], chunk_bytes: int) -> list[list[_Piece]]:
    """Split ``spans`` into chunks of at most ``chunk_bytes`` staging bytes (aligned slots).

    A span larger than a chunk is cut at element boundaries; pieces keep file order.
    """
    if chunk_bytes < ALIGN * 2:
        raise ValueError(f"chunk_bytes must be at least {ALIGN * 2}, received {chunk_bytes}")
    chunks: list[list[_Piece]] = []
    cur: list[_Piece] = []
    used = 0
    for i, s in enumerate(spans):
        item = s.src.itemsize
        done = 0
        while done < s.nbytes:
            room = chunk_bytes - used
            take = min(s.nbytes - done, (room // item) * item)
            if take <= 0 or (take < s.nbytes - done and take < chunk_bytes // 4 and cur):
                chunks.append(cur)  # start a fresh chunk rather than a sliver
                cur, used = [], 0
                continue
            cur.append(_Piece(i, s.offset + done, take, used, done // item))
            used = _up(used + take)
            done += take
            if used >= chunk_bytes:
                chunks.append(cur)
                cur, used = [], 0
    if cur:
        chunks.append(cur)
    return chunks


class Copier:
    """The device side of the pipeline: staging memory, copies, and completion tracking."""

    device: torch.device
    pinned: bool = False

    def begin(self) -> None:
        """Order the pipeline after the work already queued by the caller."""

    def stream(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def record(self) -> Any:
        """A marker for 'everything issued so far' (None when copies are synchronous)."""
        return None

    def wait(self, marker: Any) -> None:
        """Block the host until ``marker``'s copies are done."""

    def finish(self) -> None:
        """Make the results usable on the caller's current stream."""


class SyncCopier(Copier):
    """Synchronous copies to ``device`` (the CPU): the same pipeline, testable without a GPU."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)


class CudaCopier(Copier):
    """Copies on a side CUDA stream with one event per chunk; staging is pinned."""

    pinned = True

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._stream = torch.cuda.Stream(self.device)

    def begin(self) -> None:
        self._stream.wait_stream(torch.cuda.current_stream(self.device))

    def stream(self) -> AbstractContextManager[Any]:
        return torch.cuda.stream(self._stream)

    def record(self) -> Any:
        event = torch.cuda.Event()
        event.record(self._stream)
        return event

    def wait(self, marker: Any) -> None:
        if marker is not None:
            marker.synchronize()

    def finish(self) -> None:
        torch.cuda.current_stream(self.device).wait_stream(self._stream)


def _read_into(fd: int, buf: memoryview, offset: int) -> None:
    """``preadv`` until ``buf`` is full (short reads happen on large requests)."""
    done, n = 0, len(buf)
    while done < n:
        got = os.preadv(fd, [buf[done:]], offset + done)
        if got <= 0:
            raise OSError(f"unexpected end of file at byte {offset + done} (wanted {n - done} more)")
        done += got


def read_spans(
    path: str | os.PathLike[str], spans: Sequence[Span], device: torch.device | str, *,
    copier: Copier | None = None, chunk_bytes: int = 64 << 20, threads: int = 4, depth: int = 2,
) -> dict[str, Tensor]:
    """Read ``spans`` of the file at ``path`` onto ``device``; returns key -> tensor (``dst`` dtype).

    The tensors are ALIGN-aligned views of one flat device buffer.  ``copier`` defaults to
    :class:`CudaCopier` for CUDA devices and :class:`SyncCopier` otherwise; ``depth`` staging
    chunks of ``chunk_bytes`` circulate between the reader threads and the copier.
    """
    device = torch.device(device)
    if copier is None:
        copier = CudaCopier(device) if device.type == "cuda" else SyncCopier(device)
    offsets, total = [], 0
    for s in spans:
        offsets.append(total)
        total = _up(total + s.numel * s.dst.itemsize)
    out = torch.empty(total, dtype=torch.uint8, device=device)  # [total bytes], final dtypes
    views = {}
    for s, off in zip(spans, offsets, strict=True):
        n = s.numel * s.dst.itemsize
        views[s.key] = out[off:off + n].view(s.dst).view(s.shape)
    chunks = plan_chunks(spans, chunk_bytes)
    if not chunks:
        return views
    size = max(_up(p.slot + p.nbytes) for c in chunks for p in c)
    host = [torch.empty(size, dtype=torch.uint8, pin_memory=copier.pinned)
            for _ in range(min(depth, len(chunks)))]
    host_np = [memoryview(h.numpy()) for h in host]
    staged = [torch.empty(size, dtype=torch.uint8, device=device) if device.type != "cpu" else h
              for h in host]
    markers: list[Any] = [None] * len(host)
    flat_out = {s.key: views[s.key].view(-1) for s in spans}
    fd = os.open(os.fspath(path), os.O_RDONLY)
    copier.begin()
    try:
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="fastread") as pool:
            for i, chunk in enumerate(chunks):
                b = i % len(host)
                copier.wait(markers[b])  # staging b is free once its last copy has finished
                jobs = []
                for p in chunk:
                    for at in range(0, p.nbytes, _READ_PIECE):
                        n = min(_READ_PIECE, p.nbytes - at)
                        jobs.append(pool.submit(_read_into, fd, host_np[b][p.slot + at:p.slot + at + n],
                                                p.file_offset + at))
                for job in jobs:
                    job.result()
                used = _up(chunk[-1].slot + chunk[-1].nbytes)
                with copier.stream():
                    if staged[b] is not host[b]:
                        staged[b][:used].copy_(host[b][:used], non_blocking=True)  # one DMA
                    for p in chunk:
                        s = spans[p.span]
                        count = p.nbytes // s.src.itemsize
                        src = staged[b][p.slot:p.slot + p.nbytes].view(s.src)
                        flat_out[s.key][p.first:p.first + count].copy_(src)  # cast on the device
                    markers[b] = copier.record()
            for marker in markers:
                copier.wait(marker)
        copier.finish()
    finally:
        os.close(fd)
    return views


def spans_for(file: Any, wanted: Mapping[str, tuple[str, torch.dtype, tuple[int, ...]]]) -> list[Span]:
    """Spans of ``file`` (a :class:`~comfy_notebook.runtime.loading.SafetensorsFile`).

    ``wanted``: output key -> (file key, dtype for floating tensors, output shape).  Integer and
    bool tensors keep their dtype, as :func:`comfy_notebook.runtime.loading._fit` does.
    """
    spans = []
    for out_key, (file_key, dtype, shape) in wanted.items():
        src, _, offset, numel = file.entry(file_key)
        dst = dtype if src.is_floating_point else src
        spans.append(Span(out_key, offset, numel * src.itemsize, src, tuple(shape), dst))
    spans.sort(key=lambda s: s.offset)  # file order: sequential reads
    return spans
