"""The session's services: one model manager per session, the simulated-VRAM switch."""

from __future__ import annotations

import pytest
import torch

import comfy_notebook


def test_one_manager_per_session() -> None:
    a, b = comfy_notebook.Session(), comfy_notebook.Session()
    assert a.models is a.models
    assert a.models is not b.models
    assert a.services.models is a.models


@pytest.mark.skipif(torch.cuda.is_available(), reason="the switch only acts without CUDA")
@pytest.mark.parametrize(("text", "expected"), [("64MB", 64 << 20), ("1.5GB", int(1.5 * (1 << 30))), ("4096", 4096)])
def test_simulated_vram(monkeypatch: pytest.MonkeyPatch, text: str, expected: int) -> None:
    monkeypatch.setenv("COMFY_NOTEBOOK_SIMULATED_VRAM", text)
    manager = comfy_notebook.Session().models
    assert manager.capacity_bytes == expected
    # Accounting mode: a loaded model is "on the device" even though the device is the CPU.
    model = manager.register("m", lambda: torch.nn.Linear(4, 4), kind="unet")
    manager.load(model)
    assert model.location == "gpu"
    manager.offload(model)
    assert model.location == "cpu"


def test_no_switch_means_plain_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMFY_NOTEBOOK_SIMULATED_VRAM", raising=False)
    manager = comfy_notebook.Session().models
    assert manager.capacity_bytes is None


def test_session_run_accepts_a_workflow() -> None:
    class Const:
        @classmethod
        def INPUT_TYPES(cls):  # type: ignore[no-untyped-def]
            return {"required": {"v": ("INT", {"default": 0})}}

        RETURN_TYPES = ("INT",)
        FUNCTION = "f"
        OUTPUT_NODE = True

        def f(self, v: int) -> tuple[int]:
            return (v + 1,)

    from comfy_notebook.realmode import Workflow, node_function

    s = comfy_notebook.Session()
    s.register({"Const": Const})
    with Workflow() as wf:
        node_function("Const", s)(41)
    result = s.run(wf)
    assert [v for (v,) in result.outputs.values()] == [42]
    with pytest.raises(TypeError, match="run_prompt"):
        s.run({"1": {}})


def test_panel_rows_show_the_checkpoint_family(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from comfy_notebook.families import load_checkpoint_values
    from comfy_notebook.testing import make_checkpoint
    from comfy_notebook.widgets import ModelPanel

    monkeypatch.setenv("COMFY_NOTEBOOK_SIMULATED_VRAM", "256MB")
    session = comfy_notebook.Session()
    load_checkpoint_values(session.models, make_checkpoint(tmp_path / "t.safetensors"), name="t")
    panel = ModelPanel.for_session(session)
    assert {r["name"]: r["family"] for r in panel.rows} == {"t/unet": "sd1", "t/vae": "sd1", "t/clip": "sd1"}
    if not torch.cuda.is_available():
        assert panel.memory["device"]["name"] == "simulated gpu"


def test_the_current_session_is_made_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering the pack asks INPUT_TYPES for combo lists; that must not make sessions."""
    import comfy_notebook._session as session_module

    made = []
    real_init = session_module.Session.__init__

    def counting_init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        made.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(session_module.Session, "__init__", counting_init)
    monkeypatch.setattr(session_module, "_current", None)
    session = comfy_notebook.session()
    assert made == [session]
    assert "CheckpointLoaderSimple" in session.registry


def test_combo_lists_at_registration_come_from_that_session(tmp_path) -> None:
    from comfy_notebook.nodes import NODE_CLASS_MAPPINGS

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "mine.safetensors").write_bytes(b"")
    session = comfy_notebook.Session(models_dir=tmp_path)
    session.register({"CheckpointLoaderSimple": NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]})
    spec = session.registry["CheckpointLoaderSimple"]
    assert list(spec.inputs["ckpt_name"].type) == ["mine.safetensors"]
