"""fastread: pinned, pipelined checkpoint reads give exactly the mmap path's tensors.

The pipeline (chunking at element boundaries, aligned staging slots, parallel preads, the cast
into the final dtype) runs on the CPU with :class:`SyncCopier`; the CUDA copier is checked by
the gpu-marked tests.
"""

from __future__ import annotations

import json
import pathlib
import struct

import pytest
import torch

from comfy_notebook.runtime import fastread
from comfy_notebook.runtime.loading import SafetensorsFile, _fit

_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
          torch.uint8: "U8", torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3",
          torch.float8_e5m2: "F8_E5M2"}


def write_unaligned(path: pathlib.Path, tensors: dict[str, torch.Tensor], pad: int = 3) -> None:
    """A safetensors file in the given order, header padded so offsets are odd (still valid)."""
    header, blobs, at = {}, [], 0
    for key, t in tensors.items():
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[key] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [at, at + len(raw)]}
        blobs.append(raw)
        at += len(raw)
    head = json.dumps(header).encode() + b" " * pad
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def _random(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 3).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000), shape, generator=g).to(dtype)


def mixed(tmp_path: pathlib.Path) -> pathlib.Path:
    dtypes = list(_NAMES)
    shapes = [(3,), (7, 5), (1,), (0,), (), (33, 3), (2, 3, 5), (129,), (1000,), (5, 1, 1)]
    tensors = {}
    for i, dt in enumerate(dtypes * 2):
        tensors[f"t{i:02d}.{_NAMES[dt]}"] = _random(dt, shapes[i % len(shapes)], i)
    path = tmp_path / "mixed.safetensors"
    write_unaligned(path, tensors)
    return path


def expected(sf: SafetensorsFile, dst: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: _fit(sf[k], sf[k], dst, torch.device("cpu")) for k in sf}


@pytest.mark.parametrize("chunk", [128, 200, 4096, 64 << 20])
@pytest.mark.parametrize("dst", [torch.float32, torch.float16, torch.bfloat16])
def test_every_dtype_odd_offsets_and_chunk_boundaries(tmp_path: pathlib.Path, chunk: int,
                                                      dst: torch.dtype) -> None:
    sf = SafetensorsFile(mixed(tmp_path))
    assert any(sf.entry(k)[2] % 2 for k in sf)  # some tensors start at odd file offsets
    wanted = {k: (k, dst, sf.entry(k)[1]) for k in sf}
    got = fastread.read_spans(sf.path, fastread.spans_for(sf, wanted), "cpu", chunk_bytes=chunk,
                              threads=3)
    ref = expected(sf, dst)
    assert set(got) == set(ref)
    for k, t in ref.items():
        assert got[k].dtype == t.dtype and got[k].shape == t.shape, k
        assert torch.equal(got[k].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), k
        assert got[k].data_ptr() % fastread.ALIGN == 0


def test_a_tensor_larger_than_many_chunks_and_output_shapes(tmp_path: pathlib.Path) -> None:
    big = _random(torch.float32, (37, 101), 5)
    path = tmp_path / "big.safetensors"
    write_unaligned(path, {"pad": torch.ones(3, dtype=torch.uint8), "w": big, "tail": big[:2]})
    sf = SafetensorsFile(path)
    wanted = {"conv": ("w", torch.float16, (37, 101, 1, 1)), "tail": ("tail", torch.float32, (2, 101))}
    for depth in (1, 2, 3):
        got = fastread.read_spans(path, fastread.spans_for(sf, wanted), "cpu", chunk_bytes=256,
                                  threads=2, depth=depth)
        assert torch.equal(got["conv"], big.half().view(37, 101, 1, 1))
        assert torch.equal(got["tail"], big[:2])


def test_plan_chunks_cuts_at_element_boundaries_into_aligned_slots() -> None:
    spans = [fastread.Span("a", 1, 4 * 100, torch.float32, (100,), torch.float32),
             fastread.Span("b", 401, 3, torch.uint8, (3,), torch.uint8),
             fastread.Span("c", 404, 8 * 50, torch.float64, (50,), torch.float16)]
    chunks = fastread.plan_chunks(spans, 256)
    covered: dict[int, int] = {}
    for chunk in chunks:
        assert sum(1 for _ in chunk) >= 1
        for p in chunk:
            s = spans[p.span]
            assert p.slot % fastread.ALIGN == 0 and p.slot + p.nbytes <= 256
            assert p.nbytes % s.src.itemsize == 0
            assert p.file_offset == s.offset + p.first * s.src.itemsize
            covered[p.span] = covered.get(p.span, 0) + p.nbytes
    assert covered == {0: 400, 1: 3, 2: 400}
    with pytest.raises(ValueError, match="chunk_bytes"):
        fastread.plan_chunks(spans, 8)


def test_truncated_file_raises(tmp_path: pathlib.Path) -> None:
    span = fastread.Span("x", 0, 4096, torch.float32, (1024,), torch.float32)
    path = tmp_path / "short.bin"
    path.write_bytes(b"\0" * 100)
    with pytest.raises(OSError, match="end of file"):
        fastread.read_spans(path, [span], "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("chunk", [4096, 64 << 20])
def test_cuda_reads_match_the_mmap_path(tmp_path: pathlib.Path, chunk: int) -> None:
    sf = SafetensorsFile(mixed(tmp_path))
    wanted = {k: (k, torch.float16, sf.entry(k)[1]) for k in sf}
    got = fastread.read_spans(sf.path, fastread.spans_for(sf, wanted), "cuda", chunk_bytes=chunk)
    for k, t in expected(sf, torch.float16).items():
        assert got[k].is_cuda and torch.equal(got[k].cpu(), t), k


@pytest.mark.gpu
def test_load_checkpoint_on_cuda_uses_fast_reads_and_matches(tmp_path: pathlib.Path) -> None:
    from comfy_notebook.families import load_checkpoint
    from comfy_notebook.testing import make_checkpoint

    path = make_checkpoint(tmp_path / "tiny.safetensors")
    cpu = load_checkpoint(path, parts=("unet",), dtype=torch.float16).unet
    gpu = load_checkpoint(path, parts=("unet",), dtype=torch.float16, device="cuda").unet
    for (k, a), (_, b) in zip(cpu.state_dict().items(), gpu.state_dict().items(), strict=True):
        assert b.is_cuda and torch.equal(a, b.cpu()), k


def test_short_reads_and_scatter_jobs(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fastread.os.preadv

    def stingy(fd: int, bufs: list[memoryview], offset: int) -> int:
        return real(fd, [bufs[0][:7]], offset)  # at most 7 bytes per call

    sf = SafetensorsFile(mixed(tmp_path))
    wanted = {k: (k, torch.float16, sf.entry(k)[1]) for k in sf}
    monkeypatch.setattr(fastread.os, "preadv", stingy)
    got = fastread.read_spans(sf.path, fastread.spans_for(sf, wanted), "cpu", chunk_bytes=512, threads=2)
    for k, t in expected(sf, torch.float16).items():
        assert torch.equal(got[k].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), k
    reads = [(0, 0, 10), (10, 64, 5), (100, 128, 3), (103, 192, 40)]
    jobs = fastread._jobs(reads, target=16)
    assert jobs[0] == (0, [(0, 10), (64, 5)])  # file-contiguous reads share one scatter preadv
    covered = {}
    for start, bufs in jobs:
        assert sum(n for _, n in bufs) <= 2 * 16
        for so, n in bufs:
            for j in range(n):
                covered[start + j] = so + j
            start += n
    want = {f + j: so + j for f, so, n in reads for j in range(n)}
    assert covered == want


class DeferredCopier(fastread.SyncCopier):
    """Copies run only when a marker is waited on: a staging chunk refilled too early shows."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.done = 0
        self.max_in_flight = 0

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        self.pending.append((dst, src))
        self.max_in_flight = max(self.max_in_flight, len(self.pending) - self.done)

    def record(self) -> int:
        return len(self.pending)

    def wait(self, marker: object) -> None:
        if marker is not None:
            assert isinstance(marker, int)
            for dst, src in self.pending[self.done:marker]:
                dst.copy_(src)
            self.done = max(self.done, marker)

    def finish(self) -> None:
        self.wait(len(self.pending))


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_double_buffering_waits_before_refilling_a_staging_chunk(tmp_path: pathlib.Path, depth: int) -> None:
    sf = SafetensorsFile(mixed(tmp_path))
    for dst in (torch.float32, torch.float16):  # direct windows, and casts
        copier = DeferredCopier()
        wanted = {k: (k, dst, sf.entry(k)[1]) for k in sf}
        got = fastread.read_spans(sf.path, fastread.spans_for(sf, wanted), "cpu", copier=copier,
                                  chunk_bytes=256, threads=2, depth=depth)
        for k, t in expected(sf, dst).items():
            assert torch.equal(got[k].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), k
        assert copier.max_in_flight > 1  # copies really were deferred across chunks


def test_a_part_that_does_not_fit_the_device_loads_on_the_host(tmp_path: pathlib.Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from comfy_notebook.families import load_checkpoint
    from comfy_notebook.runtime import loading
    from comfy_notebook.testing import make_checkpoint

    path = make_checkpoint(tmp_path / "tiny.safetensors")
    ref = load_checkpoint(path, parts=("vae",)).vae

    def fit(t: torch.Tensor, like: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if device.type != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_fit(t, like, dtype, device)

    real_fit = loading._fit
    monkeypatch.setattr(loading, "_fit", fit)  # the "device" (meta here) has no room at all
    vae = loading._load_part(type(ref), ref.config, loading.open_state_dict(path), "first_stage_model.",
                             torch.float32, torch.device("meta"), "VAE")
    assert all(p.device.type == "cpu" for p in vae.parameters())
    for (k, a), (_, b) in zip(ref.state_dict().items(), vae.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize(("file_dtype", "weight_dtype"), [
    (torch.bfloat16, "default"), (torch.float16, "default"), (torch.float8_e4m3fn, "default"),
    (torch.bfloat16, "fp8_e4m3fn"), (torch.bfloat16, "fp8_e5m2")])
def test_separate_file_models_take_the_fast_reads(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                                  file_dtype: torch.dtype, weight_dtype: str) -> None:
    """Flux/T5/Qwen files (``runtime/module_loading``) go through fastread like checkpoints: run on
    the CPU with the synchronous copier, every tensor equals the mmap path's, in the storage dtype."""
    from comfy_notebook.families.flux import load_flux
    from comfy_notebook.runtime import loading
    from comfy_notebook.testing import make_flux_file

    path = make_flux_file(tmp_path / "flux.safetensors", dtype=file_dtype)
    ref = load_flux(path, weight_dtype=weight_dtype, compute_dtype=torch.float32)
    calls = []
    real = fastread.read_spans

    def spy(*args: object, **kw: object) -> object:
        calls.append(args[0])
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fastread, "read_spans", spy)
    monkeypatch.setattr(loading, "FAST_DEVICES", {"cpu", "cuda"})
    got = load_flux(path, weight_dtype=weight_dtype, compute_dtype=torch.float32)
    assert calls == [path]
    assert got.storage_dtype == ref.storage_dtype  # type: ignore[attr-defined]
    for (k, a), (_, b) in zip(ref.state_dict().items(), got.state_dict().items(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8)), k


@pytest.mark.gpu
def test_t5_file_on_cuda_uses_fast_reads_and_matches(tmp_path: pathlib.Path) -> None:
    from comfy_notebook.families.flux import load_t5
    from comfy_notebook.testing import make_t5_file

    path = make_t5_file(tmp_path / "t5.safetensors", dtype=torch.float8_e4m3fn)
    cpu = load_t5(path, compute_dtype=torch.bfloat16)
    gpu = load_t5(path, device="cuda", compute_dtype=torch.bfloat16)
    for (k, a), (_, b) in zip(cpu.state_dict().items(), gpu.state_dict().items(), strict=True):
        assert b.is_cuda and a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.cpu().view(torch.uint8)), k
