"""A cell's image history: ``%comfy gallery`` and ``Gallery.for_cell`` over real-mode IMAGE handles."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import numpy as np
import pytest
import torch
from IPython.core.error import UsageError


class KSampler:
    """Stands in for a sampler + decode: a [1,4,4,3] IMAGE whose pixels are seed / 100."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 100}),
                             "steps": ("INT", {"default": 20, "min": 1, "max": 100})}}

    def run(self, seed: int, steps: int) -> tuple[torch.Tensor]:
        return (torch.full((1, 4, 4, 3), seed / 100.0),)


class Pair:
    """Two IMAGE outputs and an INT: only the IMAGE slots count."""

    RETURN_TYPES = ("IMAGE", "INT", "IMAGE")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"default": 0, "min": 0, "max": 100})}}

    def run(self, value: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        return torch.full((2, 4, 4, 3), value / 100.0), value, torch.zeros(1, 4, 4, 3)


@pytest.fixture
def shell(ip, session):
    """The extension's shell with the two image nodes registered and bound as names."""
    session.register({"KSampler": KSampler, "Pair": Pair})
    ip.run_cell("KSampler, Pair = _nf('KSampler'), _nf('Pair')")
    return ip


def pixel(seed: int) -> int:
    """The uint8 value of the gallery image of ``KSampler(seed)``."""
    return int(np.rint(seed / 100.0 * 255.0))


def test_three_runs_with_seeds_1_2_2_give_two_runs(shell, run_cell):
    from comfy_notebook.widgets import Gallery

    for seed in (1, 2, 2):
        assert run_cell(shell, f"img = KSampler(seed={seed}, steps=7)", cell_id="A").success
    gallery = Gallery.for_cell("A")
    assert [item["label"] for item in gallery.items] == ["run 1", "run 2"]
    assert [item["run"] for item in gallery.items] == [1, 2]
    assert [item["meta"] for item in gallery.items] == [{"seed": 1, "steps": 7}, {"seed": 2, "steps": 7}]
    assert [int(gallery.image(i)[0, 0, 0]) for i in range(2)] == [pixel(1), pixel(2)]
    assert gallery.image(0).shape == (4, 4, 3)
    assert "Gallery: 2 image(s) in 2 run(s)" in gallery.text()
    # a new seed adds a run numbered 3; going back to an earlier seed adds nothing
    run_cell(shell, "img = KSampler(seed=9, steps=7)", cell_id="A")
    run_cell(shell, "img = KSampler(seed=1, steps=7)", cell_id="A")
    assert [item["label"] for item in Gallery.for_cell("A").items] == ["run 1", "run 2", "run 3"]


def test_only_image_slots_of_this_cell_count(shell, run_cell):
    from comfy_notebook.widgets import Gallery

    run_cell(shell, "img = KSampler(seed=5)", cell_id="A")
    run_cell(shell, "a, n, b = Pair(value=50)\nx = Number(3)", cell_id="B")
    run_cell(shell, "x = Number(4)", cell_id="C")  # no images: no run
    a = Gallery.for_cell("A")
    assert len(a.items) == 1 and int(a.image(0)[0, 0, 0]) == pixel(5)
    b = Gallery.for_cell("B")
    assert len(b.items) == 3  # batch of 2 from slot 0, 1 from slot 2; the INT is left out
    assert {item["run"] for item in b.items} == {1}
    assert [int(b.image(i)[0, 0, 0]) for i in range(3)] == [pixel(50), pixel(50), 0]
    assert Gallery.for_cell("C").items == []


def test_history_keeps_the_last_16_distinct_runs(shell, run_cell):
    from comfy_notebook.kernel_ext.cells import MAX_RUNS
    from comfy_notebook.widgets import Gallery

    assert MAX_RUNS == 16
    for seed in range(20):
        run_cell(shell, f"img = KSampler(seed={seed})", cell_id="A")
    gallery = Gallery.for_cell("A")
    assert [item["run"] for item in gallery.items] == list(range(5, 21))
    assert [int(gallery.image(i)[0, 0, 0]) for i in range(16)] == [pixel(s) for s in range(4, 20)]
    assert [item["meta"]["seed"] for item in gallery.items] == list(range(4, 20))


def test_history_holds_handles_until_dropped_or_cleared(shell, run_cell, capsys):
    run_cell(shell, "img = KSampler(seed=1)", cell_id="A")
    first = weakref.ref(shell.user_ns["img"])
    run_cell(shell, "img = KSampler(seed=2)", cell_id="A")
    shell.run_cell("Out.clear(); _ = __ = ___ = None")
    gc.collect()
    assert first() is not None  # the variable moved on; the history keeps run 1
    run_cell(shell, "%comfy gallery clear", cell_id="A")
    assert capsys.readouterr().out.strip() == "forgot 2 run(s) of this cell"
    gc.collect()
    assert first() is None
    events = shell._comfy_notebook_events
    assert events.images.runs("A") == []
    # the bound drops old handles too
    from comfy_notebook.kernel_ext.cells import CellImages

    events.images = CellImages(max_runs=2)
    run_cell(shell, "img = KSampler(seed=3)", cell_id="A")
    third = weakref.ref(shell.user_ns["img"])
    for seed in (4, 5):
        run_cell(shell, f"img = KSampler(seed={seed})", cell_id="A")
    gc.collect()
    assert third() is None
    assert [r.number for r in events.images.runs("A")] == [2, 3]


def test_magic_shows_the_running_cell_with_its_current_run(shell, run_cell):
    from comfy_notebook.widgets import Gallery

    code = "img = KSampler(seed={})\n%comfy gallery this"
    result = run_cell(shell, code.format(3), cell_id="M")
    assert isinstance(result.result, Gallery)
    assert [item["label"] for item in result.result.items] == ["run 1"]
    result = run_cell(shell, code.format(3), cell_id="M")  # unchanged: nothing new
    assert [item["label"] for item in result.result.items] == ["run 1"]
    result = run_cell(shell, code.format(4), cell_id="M")
    assert [(item["label"], item["meta"]["seed"]) for item in result.result.items] == [
        ("run 1", 3), ("run 2", 4)]
    assert [r.number for r in shell._comfy_notebook_events.images.runs("M")] == [1, 2]


def test_magic_without_images_prints_one_line(shell, run_cell, capsys):
    result = run_cell(shell, "x = Number(2)\n%comfy gallery this", cell_id="N")
    assert result.success and result.result is None
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert lines == ["no images from this cell yet: none of its runs made an IMAGE with a node call"]
    result = run_cell(shell, "%comfy gallery", cell_id="N2")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert lines == ["no images yet: node calls that make an IMAGE show up here"]
    with pytest.raises(UsageError, match="takes no argument, 'this', a CELL_ID"):
        shell.run_line_magic("comfy", "gallery one two")
    with pytest.raises(UsageError, match="no cell is running"):
        shell.run_line_magic("comfy", "gallery this")  # not from inside a cell
    shell.run_line_magic("comfy", "help")
    assert "%comfy gallery" in capsys.readouterr().out


def test_gallery_in_a_new_cell_shows_the_sessions_recent_images(shell, run_cell):
    """Defect 8: ``%comfy gallery`` in a fresh cell shows the session's images, newest last."""
    from comfy_notebook.widgets import Gallery

    run_cell(shell, "a = KSampler(seed=5)", cell_id="A")
    run_cell(shell, "b = KSampler(seed=6)\nc = KSampler(seed=7)", cell_id="B")
    run_cell(shell, "a = KSampler(seed=5)", cell_id="A")  # seed 5 again: moves to the end
    result = run_cell(shell, "%comfy gallery", cell_id="NEW")
    assert isinstance(result.result, Gallery)
    assert [item["meta"]["seed"] for item in result.result.items] == [6, 7, 5]
    result = run_cell(shell, "%comfy gallery B", cell_id="NEW")  # a cell by id: its runs
    assert [item["label"] for item in result.result.items] == ["run 1", "run 1"]
    assert [item["meta"]["seed"] for item in result.result.items] == [6, 7]
    gallery = Gallery.recent(limit=2)
    assert [item["meta"]["seed"] for item in gallery.items] == [7, 5]


def test_for_cell_needs_a_cell(shell):
    from comfy_notebook.kernel_ext.cells import NoCellError
    from comfy_notebook.widgets import Gallery

    with pytest.raises(NoCellError, match="no cell is running"):
        Gallery.for_cell()  # called from the test, not from inside a cell
    shell.run_line_magic("unload_ext", "comfy_notebook")
    try:
        with pytest.raises(NoCellError, match="%load_ext comfy_notebook"):
            Gallery.for_cell("A")
    finally:
        shell.run_line_magic("load_ext", "comfy_notebook")


def test_cell_magic_shows_the_images_and_one_line(shell):
    """Defect 4: ``%%comfy`` shows its outputs as a cell shows handles, not a PromptResult dump."""
    result = shell.run_cell_magic("comfy", "", "img = KSampler(seed=9)")
    bundle = result._repr_mimebundle_()
    assert bundle["text/plain"].startswith("<executed 1 nodes, 0 from cache in ") and "\n" not in bundle["text/plain"]
    assert bundle["image/png"].startswith(b"\x89PNG")
    assert len(repr(result)) < 120 and "tensor(" not in repr(result)
    assert result.outputs["1"][0].shape == (1, 4, 4, 3)  # the PromptResult is still there
