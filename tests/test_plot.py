"""plot.grid / plot.xy_grid: figure layout, labels, and the pixels drawn equal the inputs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from comfy_notebook import plot


def shown(ax) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(ax.images[0].get_array())


def test_grid_of_a_batch_and_mixed_inputs() -> None:
    batch = torch.rand(3, 4, 5, 3)
    arr = np.full((4, 5, 3), 200, np.uint8)
    pil = Image.fromarray(np.zeros((6, 2, 3), np.uint8))
    handle = SimpleNamespace(value=torch.rand(1, 4, 5, 3))
    fig = plot.grid([batch, arr, pil, handle], titles=list("abcdef"))
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert len(axes) == 6  # 6 images -> cols = ceil(sqrt(6)) = 3, rows = 2
    assert axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 3)
    assert [ax.get_title() for ax in axes[:6]] == list("abcdef")
    np.testing.assert_array_equal(shown(axes[0]), np.rint(batch[0].numpy() * 255).astype(np.uint8))
    np.testing.assert_array_equal(shown(axes[3]), arr)
    assert shown(axes[4]).shape == (6, 2, 3)


def test_grid_shape_options_and_errors() -> None:
    imgs = np.zeros((5, 4, 4, 3), np.float32)
    fig = plot.grid(imgs, rows=1)
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (1, 5)
    fig = plot.grid(imgs, cols=2)
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (3, 2)
    assert len(fig.axes) == 5  # the sixth, unused cell is removed
    with pytest.raises(ValueError, match="a 2x2 grid holds 4 images, received 5"):
        plot.grid(imgs, rows=2, cols=2)
    with pytest.raises(ValueError, match="expected 5 titles"):
        plot.grid(imgs, titles=["x"])
    with pytest.raises(ValueError, match="at least one image"):
        plot.grid([])


def test_xy_grid_from_mapping_labels_axes() -> None:
    img = {(s, c): np.full((2, 2, 3), s * 10 + int(c), np.uint8)
           for s in (2, 1) for c in (8.0, 5.0)}
    del img[(2, 5.0)]
    fig = plot.xy_grid(img, x="seed", y="cfg")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["seed = 1", "seed = 2", "", ""]
    assert [ax.get_ylabel() for ax in axes] == ["cfg = 5.0", "", "cfg = 8.0", ""]
    assert shown(axes[0])[0, 0, 0] == 15 and shown(axes[2])[0, 0, 0] == 18
    assert shown(axes[3])[0, 0, 0] == 28
    assert len(axes[1].images) == 0  # the missing (seed 2, cfg 5) cell stays empty


def test_xy_grid_from_pairs_with_explicit_order() -> None:
    results = [({"seed": s, "sampler": n}, torch.full((1, 2, 2, 3), i / 10))
               for i, (s, n) in enumerate([(1, "euler"), (1, "heun"), (2, "euler"), (2, "heun")])]
    fig = plot.xy_grid(results, x="sampler", y="seed", x_values=["heun", "euler"])
    assert [ax.get_title() for ax in fig.axes[:2]] == ["sampler = heun", "sampler = euler"]
    assert shown(fig.axes[0])[0, 0, 0] == round(0.1 * 255)  # (seed 1, heun) is result 1
    with pytest.raises(KeyError, match="lack \\['sampler'\\]"):
        plot.xy_grid([({"seed": 1}, np.zeros((2, 2, 3)))], x="sampler", y="seed")


def test_figures_render_as_png_without_pyplot() -> None:
    import numpy as np

    from comfy_notebook.plot import grid

    png = grid([np.zeros((8, 8, 3)), np.ones((8, 8, 3))])._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
