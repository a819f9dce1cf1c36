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

    def copy(self, dst: Tensor, src: Tensor) -> None:
        """``dst.copy_(src)`` (a transfer or a cast), in the pipeline's order."""
        dst.copy_(src)

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

    def copy(self, dst: Tensor, src: Tensor) -> None:
        dst.copy_(src, non_blocking=True)

    def record(self) -> Any:
        event = torch.cuda.Event()
        event.record(self._stream)
        return event

    def wait(self, marker: Any) -> None:
        if marker is not None:
            marker.synchronize()

    def finish(self) -> None:
        torch.cuda.current_stream(self.device).wait_stream(self._stream)


def _read_job(fd: int, offset: int, bufs: list[memoryview]) -> None:
    """One ``preadv`` of a contiguous file range into ``bufs`` (scatter), until all are full."""
    while bufs:
        got = os.preadv(fd, bufs, offset)
        if got <= 0:
            raise OSError(f"unexpected end of file at byte {offset} (wanted {sum(map(len, bufs))} more)")
        offset += got
        while bufs and got >= len(bufs[0]):
            got -= len(bufs[0])
            bufs = bufs[1:]
        if bufs and got:
            bufs = [bufs[0][got:], *bufs[1:]]


@dataclass(frozen=True)
class _Window:
    """One staging chunk: file reads into it, then either one copy to ``out[out_lo:]`` or casts."""

    reads: tuple[tuple[int, int, int], ...]  # (file offset, staging offset, bytes), file order
    used: int  # staging bytes to move
    out_lo: int | None  # direct: staging[:used] -> out[out_lo:out_lo + used]; None: ``pieces``
    pieces: tuple[_Piece, ...] = ()


def _direct_windows(spans: Sequence[Span], offsets: Sequence[int], chunk_bytes: int) -> list[_Window]:
    """Windows over the output layout for spans stored in their final dtype (no cast).

    The staging chunk is an image of ``out[lo:lo + used]`` (alignment padding included), so
    each window is one host-to-device copy straight into the output buffer.
    """
    windows: list[_Window] = []
    reads: list[tuple[int, int, int]] = []
    lo: int | None = None
    end = 0

    def flush() -> None:
        nonlocal reads, lo
        if reads and lo is not None:
            windows.append(_Window(tuple(reads), end - lo, lo))
        reads, lo = [], None

    for s, o in zip(spans, offsets, strict=True):
        item, done = s.src.itemsize, 0
        while done < s.nbytes:
            if lo is None:
                lo = o + done
            take = min(s.nbytes - done, ((lo + chunk_bytes - (o + done)) // item) * item)
            if take <= 0:
                flush()
                continue
            reads.append((s.offset + done, o + done - lo, take))
            done += take
            end = o + done
            if end - lo > chunk_bytes - ALIGN:
                flush()
    flush()
    return windows


def _jobs(reads: Sequence[tuple[int, int, int]], target: int) -> list[tuple[int, list[tuple[int, int]]]]:
    """Group reads into jobs of about ``target`` bytes: (file offset, [(staging offset, bytes)])."""
    jobs: list[tuple[int, list[tuple[int, int]]]] = []
    cur: list[tuple[int, int]] = []
    start = nxt = size = 0
    for f, so, n in reads:
        at = 0
        while at < n:
            take = min(n - at, target)
            if cur and (f + at != nxt or size >= target or len(cur) >= 512):
                jobs.append((start, cur))
                cur, size = [], 0
            if not cur:
                start = f + at
            cur.append((so + at, take))
            size += take
            nxt = f + at + take
            at += take
    if cur:
        jobs.append((start, cur))
    return jobs


def read_spans(
    path: str | os.PathLike[str], spans: Sequence[Span], device: torch.device | str, *,
    copier: Copier | None = None, chunk_bytes: int = 64 << 20, threads: int | None = None,
    depth: int = 2,
) -> dict[str, Tensor]:
    """Read ``spans`` of the file at ``path`` onto ``device``; returns key -> tensor (``dst`` dtype).

    The tensors are ALIGN-aligned views of one flat device buffer.  Spans already in their final
    dtype travel as images of the output buffer (one copy per chunk); the others are cast per
    piece on the device.  ``copier`` defaults to :class:`CudaCopier` for CUDA devices and
    :class:`SyncCopier` otherwise; ``depth`` staging chunks of ``chunk_bytes`` circulate between
    ``threads`` reader threads (default: up to 8) and the copier.
    """
    device = torch.device(device)
    if copier is None:
        copier = CudaCopier(device) if device.type == "cuda" else SyncCopier(device)
    threads = threads or min(8, os.cpu_count() or 1)
    offsets, total = [], 0
    for s in spans:
        offsets.append(total)
        total = _up(total + s.numel * s.dst.itemsize)
    out = torch.empty(total, dtype=torch.uint8, device=device)  # [total bytes], final dtypes
    views = {}
    for s, off in zip(spans, offsets, strict=True):
        n = s.numel * s.dst.itemsize
        views[s.key] = out[off:off + n].view(s.dst).view(s.shape)
    same = [(s, o) for s, o in zip(spans, offsets, strict=True) if s.src == s.dst]
    cast = [s for s in spans if s.src != s.dst]
    windows = _direct_windows([s for s, _ in same], [o for _, o in same], chunk_bytes)
    for chunk in plan_chunks(cast, chunk_bytes):
        reads = tuple((p.file_offset, p.slot, p.nbytes) for p in chunk)
        windows.append(_Window(reads, _up(chunk[-1].slot + chunk[-1].nbytes), None, tuple(chunk)))
    if not windows:
        return views
    size = max(w.used for w in windows)
    host = [torch.empty(size, dtype=torch.uint8, pin_memory=copier.pinned)
            for _ in range(min(depth, len(windows)))]
    host_mv = [memoryview(h.numpy()) for h in host]
    staged: list[Tensor | None] = [None] * len(host)  # device staging, for casting chunks only
    markers: list[Any] = [None] * len(host)
    flat_out = {s.key: views[s.key].view(-1) for s in cast}
    fd = os.open(os.fspath(path), os.O_RDONLY)
    copier.begin()
    try:
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="fastread") as pool:
            for i, w in enumerate(windows):
                b = i % len(host)
                copier.wait(markers[b])  # staging b is free once its last copy has finished
                mv = host_mv[b]
                futures = [pool.submit(_read_job, fd, f, [mv[so:so + n] for so, n in bufs])
                           for f, bufs in _jobs(w.reads, max(1 << 20, w.used // threads))]
                for fut in futures:
                    fut.result()
                with copier.stream():
                    if w.out_lo is not None:  # one DMA straight into the output buffer
                        copier.copy(out[w.out_lo:w.out_lo + w.used], host[b][:w.used])
                    else:
                        src_buf = host[b]
                        if device.type != "cpu":
                            if staged[b] is None:
                                staged[b] = torch.empty(size, dtype=torch.uint8, device=device)
                            src_buf = staged[b]
                            copier.copy(src_buf[:w.used], host[b][:w.used])
                        for p in w.pieces:
                            sp = cast[p.span]
                            count = p.nbytes // sp.src.itemsize
                            src = src_buf[p.slot:p.slot + p.nbytes].view(sp.src)
                            copier.copy(flat_out[sp.key][p.first:p.first + count], src)  # cast on the device
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
