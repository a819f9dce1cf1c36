"""Disk and paths (issue 19): a full or read-only output folder makes SaveImage raise one clear
error (node, input, what it needs, a Fix) while the image still reaches the notebook and stays
cached; no half-written PNG is left behind; two sessions writing the same filename prefix at
once — threads, and separate processes — never overwrite each other's files."""

from __future__ import annotations

import errno
import io
import json
import os
import pathlib
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pytest
import torch
from harness import new_session, tiny_prompt
from PIL import Image

from comfy_notebook.errors import NodeCallError, NodeExecutionError, OutputWriteError
from comfy_notebook.nodes import image_io

REPO = pathlib.Path(__file__).resolve().parents[2]


class _FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails like a full disk (ENOSPC)."""

    def __init__(self, real: Any, room: int) -> None:
        self.real, self.room = real, room

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if len(data) > self.room:
            self.real.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return int(self.real.write(data))

    def close(self) -> None:
        self.real.close()
        super().close()


def _full_disk(room: int) -> Any:
    real_open = open

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, mode, *args, **kwargs)
        return _FullDisk(f, room) if "x" in mode or "w" in mode else f

    return fake_open


def _read_only(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
    if "x" in mode or "w" in mode:
        raise OSError(errno.EROFS, "Read-only file system", str(file))
    return open(file, mode, *args, **kwargs)


def _pngs(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(folder.rglob("*.png")) if folder.exists() else []


@pytest.mark.parametrize(("fault", "says"), [(_full_disk(100), "No space left on device (ENOSPC)"),
                                            (_full_disk(0), "No space left on device (ENOSPC)"),
                                            (_read_only, "Read-only file system (EROFS)")])
def test_unwritable_output_folder_is_one_clear_error_and_the_image_survives(
        tmp_path: pathlib.Path, tiny_root: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
        fault: Any, says: str) -> None:
    """Regression: a full disk raised a bare OSError out of SaveImage and left a truncated
    PNG in the output folder."""
    s = new_session(tiny_root)
    s.output_dir = tmp_path / "out"
    api = tiny_prompt(seed=31)
    reference = new_session(tiny_root).run_prompt(api).outputs["8"][0]
    monkeypatch.setattr(image_io, "open", fault, raising=False)
    with pytest.raises(NodeExecutionError) as info:
        s.run_prompt(api)
    err = info.value
    assert err.node_id == "9" and isinstance(err.original, OutputWriteError)
    text = str(err)
    assert "SaveImage" in text and "filename_prefix" in text and says in text and "Fix:" in text
    assert _pngs(tmp_path / "out") == [], "a half-written PNG was left behind"
    # the image is not lost: the error holds it, and the decoded image is cached
    assert torch.equal(err.original.images, reference)
    monkeypatch.undo()
    again = s.run_prompt(api)
    assert again.executed == {"9"}  # only the save reruns
    files = _pngs(tmp_path / "out")
    assert len(files) == 1 and Image.open(files[0]).size == (64, 64)


def test_a_batch_half_written_names_what_was_saved(tmp_path: pathlib.Path, tiny_root: pathlib.Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    s = new_session(tiny_root)
    s.output_dir = tmp_path / "out"
    api = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 3, "color": 7}},
           "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "b"}}}
    calls = {"n": 0}
    real_open = open

    def second_fails(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "x" in mode:
            calls["n"] += 1
            if calls["n"] == 2:
                return _FullDisk(real_open(file, mode, *args, **kwargs), 10)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(image_io, "open", second_fails, raising=False)
    with pytest.raises(NodeExecutionError) as info:
        s.run_prompt(api)
    original = info.value.original
    assert isinstance(original, OutputWriteError)
    assert "1 of 3 were written" in str(original) and len(original.saved) == 1
    assert [p.name for p in _pngs(tmp_path / "out")] == [original.saved[0]["filename"]]


def test_real_mode_save_failure_shows_the_image_under_the_error(
        tmp_path: pathlib.Path, tiny_root: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a notebook the failed SaveImage call's error carries the images and the kernel
    extension displays them under the one-line error."""
    from comfy_notebook.kernel_ext import cells
    from comfy_notebook.realmode.calls import node_function

    s = new_session(tiny_root)
    s.output_dir = tmp_path / "out"
    image = node_function("EmptyImage", s)(8, 8, 1, 0xFF0000)
    monkeypatch.setattr(image_io, "open", _full_disk(0), raising=False)
    with pytest.raises(NodeCallError) as info:
        node_function("SaveImage", s)(image, "cell")
    err = info.value
    assert "filename_prefix" in str(err) and "Fix:" in str(err)
    assert torch.equal(cells.unsaved_images(err), image.value)
    shown: list[Any] = []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False: shown.append(obj))

    class Shell:
        def _showtraceback(self, *a: Any) -> None:
            pass

    events = cells.CellEvents.__new__(cells.CellEvents)
    events._show_error(Shell(), type(err), err, None)
    assert len(shown) == 1
    png = Image.open(io.BytesIO(shown[0]["image/png"]))
    assert png.size == (8, 8) and png.getpixel((0, 0))[:3] == (255, 0, 0)


def _save_prompt(color: int, prefix: str) -> dict[str, Any]:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}


def _check_files(out: pathlib.Path, written: list[tuple[str, int]]) -> None:
    names = [name for name, _ in written]
    assert len(set(names)) == len(names), "two saves reported the same file"
    for name, color in written:
        pixel = np.asarray(Image.open(out / name))[0, 0]
        assert tuple(pixel[:3]) == ((color >> 16) & 255, (color >> 8) & 255, color & 255), f"{name} was overwritten"
    assert len(_pngs(out)) == len(written)


def test_two_sessions_on_threads_never_overwrite(tmp_path: pathlib.Path, tiny_root: pathlib.Path) -> None:
    out = tmp_path / "shared"
    sessions = [new_session(tiny_root), new_session(tiny_root)]
    for s in sessions:
        s.output_dir = out
    written: list[tuple[str, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def work(worker: int) -> None:
        s = sessions[worker % 2]
        start.wait()
        try:
            for i in range(12):
                color = worker * 1000 + i + 1
                ui = s.run_prompt(_save_prompt(color, "same/prefix")).ui["2"]
                with lock:
                    written.extend(("same/" + img["filename"], color) for img in ui["images"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(written) == 48
    _check_files(out, written)


_WRITER = """
import json, sys
from comfy_notebook._session import Session
from comfy_notebook.nodes import register_builtins
out, worker = sys.argv[1], int(sys.argv[2])
s = Session(output_dir=out)
register_builtins(s)
done = []
for i in range(12):
    color = worker * 1000 + i + 1
    api = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
           "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "p"}}}
    done += [(img["filename"], color) for img in s.run_prompt(api).ui["2"]["images"]]
print(json.dumps(done))
"""


def test_two_processes_never_overwrite(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "shared"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(out), str(w)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=REPO) for w in (1, 2)]
    written: list[tuple[str, int]] = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-2000:]
        written += [tuple(x) for x in json.loads(stdout.strip().splitlines()[-1])]  # type: ignore[misc]
    assert len(written) == 24
    _check_files(out, written)
