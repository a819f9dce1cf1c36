"""Inline display of handles, progress bars from NodeProgress events, fingerprints, no torch at import."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from comfy_notebook.realmode.fingerprint import fingerprint, is_raw_value, versions
from comfy_notebook.realmode.progress import ProgressBars


def _png(data: bytes) -> np.ndarray:
    assert data.startswith(b"\x89PNG")
    return np.asarray(Image.open(io.BytesIO(data)))


def test_image_handle_is_png_and_batch_is_grid(session, nodes):
    single = nodes.Scale(torch.full((1, 4, 6, 3), 0.5), 1.0)
    pixels = _png(single._repr_png_())
    assert pixels.shape == (4, 6, 3) and np.all(pixels == 128)
    batch = torch.zeros(3, 4, 6, 3)
    batch[2] = 1.0
    grid = _png(nodes.Scale(batch, 1.0)._repr_mimebundle_()["image/png"])
    assert grid.shape == (8, 12, 3)  # 2x2 grid for 3 images
    assert np.all(grid[4:, :6] == 255) and np.all(grid[:4, :6] == 0) and np.all(grid[4:, 6:] == 0)


def test_latent_preview_uses_sd1_factors(session, nodes):
    from comfy_notebook.families.sd1 import SD15_LATENT
    SD15_LATENT_RGB_FACTORS = SD15_LATENT.rgb_factors

    latent = nodes.Empty(16, 16, 1)  # zeros [1,4,2,2]
    latent.value["samples"][0, 0] = 1.0  # channel 0 only: rgb = factors[0]
    data = latent._repr_mimebundle_()["image/png"]
    pixels = _png(data)
    assert pixels.shape[0] == pixels.shape[1] >= 128
    expected = np.rint((np.array(SD15_LATENT_RGB_FACTORS[0]) + 1) / 2 * 255)
    np.testing.assert_array_equal(pixels[0, 0], expected.astype(np.uint8))


def test_summaries(session, nodes):
    model = nodes.MakeModel()
    bundle = model._repr_mimebundle_()
    assert bundle == {"text/plain": "<MODEL from MakeModel: SD1 UNet fp16 on cuda:0, 1.7 GB>"}
    cond = nodes.Encode("abc", nodes.Loader("a.safetensors")[1])
    assert repr(cond).startswith("<CONDITIONING from Encode: list of 1")
    assert "tensor [1, 2] float32 on cpu, 8 B" in repr(cond)


class _Bar:
    def __init__(self, total: float, desc: str) -> None:
        self.total, self.desc, self.n, self.closed, self.refreshes = total, desc, 0, False, 0

    def refresh(self) -> None:
        self.refreshes += 1

    def close(self) -> None:
        self.closed = True


def test_progress_bar_per_long_node(session, nodes):
    made: list[_Bar] = []
    bars = ProgressBars(session, factory=lambda total, desc: made.append(_Bar(total, desc)) or made[-1])
    session.options["progress"] = True
    unsubscribe = session.subscribe(bars)
    try:
        model, clip, _ = nodes.Loader("a.safetensors")
        pos = nodes.Encode("p", clip)
        nodes.Sampler(model, 1, 4, pos, pos, nodes.Empty())
    finally:
        unsubscribe()
    assert [(b.desc, b.total, b.n, b.closed) for b in made] == [("Sampler", 4, 4, True)]
    assert made[0].refreshes == 4 and bars.open_bars == 0


def test_progress_disabled_by_session_option(session, nodes):
    made: list[_Bar] = []
    bars = ProgressBars(session, factory=lambda total, desc: made.append(_Bar(total, desc)) or made[-1])
    unsubscribe = session.subscribe(bars)
    try:
        model, clip, _ = nodes.Loader("a.safetensors")
        pos = nodes.Encode("p", clip)
        nodes.Sampler(model, 2, 4, pos, pos, nodes.Empty())
    finally:
        unsubscribe()
    assert made == []


def test_fingerprints():
    a = torch.arange(6.0)
    assert fingerprint(a) == fingerprint(torch.arange(6.0))
    assert fingerprint(a) != fingerprint(torch.arange(6.0).double())
    assert fingerprint(a) != fingerprint(a.reshape(2, 3))
    assert fingerprint({"samples": a, "batch_index": [0]}) != fingerprint({"samples": a})
    arr = np.zeros((2, 2))
    before = fingerprint(arr)
    arr[0, 0] = 1
    assert fingerprint(arr) != before
    img = Image.new("RGB", (2, 2))
    assert fingerprint(img) == fingerprint(Image.new("RGB", (2, 2)))
    assert is_raw_value([1, {"x": a}]) and not is_raw_value([1, {"x": "y"}])
    v = versions({"s": a})
    a.add_(1)
    assert versions({"s": a}) != v and versions({"s": 1}) is None


def test_import_does_not_pull_torch():
    code = ("import sys, comfy_notebook.realmode, comfy_notebook.kernel_ext.magics, "
            "comfy_notebook.kernel_ext.cells; print('torch' in sys.modules)")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"


def test_default_bars_are_tqdm_auto(session, nodes, capsys):
    from tqdm.auto import tqdm

    bars = ProgressBars(session)
    made = []
    bars._new_bar = lambda total, desc, _orig=bars._new_bar: made.append(_orig(total, desc)) or made[-1]
    session.options["progress"] = True
    unsubscribe = session.subscribe(bars)
    try:
        model, clip, _ = nodes.Loader("a.safetensors")
        pos = nodes.Encode("p", clip)
        nodes.Sampler(model, 3, 5, pos, pos, nodes.Empty())
    finally:
        unsubscribe()
    assert len(made) == 1 and isinstance(made[0], tqdm)
    assert made[0].n == 5 and made[0].total == 5  # (closed: tqdm sets disable on close)
    assert "Sampler" in capsys.readouterr().err
