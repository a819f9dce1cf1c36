"""Adversarial error paths: bad input gets one clear error naming the input, what was expected
and what arrived, and the session stays usable (caches and models consistent) afterwards."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_notebook._session import Session
from comfy_notebook.errors import NodeCallError, NodeExecutionError, ValidationError
from comfy_notebook.models.unet import UNetModel
from comfy_notebook.nodes import register_builtins
from comfy_notebook.realmode import node_function
from comfy_notebook.testing import make_checkpoint, make_lora

CKPT = "tiny.safetensors"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("err") / "models"
    make_checkpoint(root / "checkpoints" / CKPT, preset="sd1-tiny", seed=0)
    return root


@pytest.fixture
def session(models: pathlib.Path, tmp_path: pathlib.Path) -> Session:
    s = Session(models_dir=models.parent, output_dir=tmp_path / "out")  # temp/ beside models/
    s.options["progress"] = False
    register_builtins(s)
    return s


def node(session: Session, name: str) -> Any:
    return node_function(name, session=session)


def api(seed: int = 1) -> dict[str, Any]:
    """txt2img at 64x64 px, 2 euler steps: VAEDecode (node "8") into PreviewImage ("9")."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": 2, "cfg": 8.0, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0, "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


def test_string_where_a_clip_goes_names_input_expected_and_received(session: Session) -> None:
    _, clip, _ = node(session, "CheckpointLoaderSimple")(CKPT)
    with pytest.raises(NodeCallError) as info:
        node(session, "CLIPTextEncode")("a cat", "notaclip")  # text and clip fine, clip is a str
    msg = str(info.value)
    assert info.value.input_name == "clip"
    assert "expected CLIP" in msg and "'notaclip' (str)" in msg and "argument order" in msg
    assert "\n" not in msg and "LookupError" not in msg
    assert node(session, "CLIPTextEncode")("a cat", clip).value  # the session still works


def test_api_constant_where_a_model_goes_is_a_validation_error(session: Session) -> None:
    prompt = api()
    prompt["3"]["inputs"]["model"] = "tiny.safetensors"
    with pytest.raises(ValidationError) as info:
        session.run_prompt(prompt)
    err = info.value.node_errors["3"]["errors"][0]
    assert err["type"] == "invalid_input_type" and err["extra_info"]["input_name"] == "model"
    assert "a MODEL is the output of a node" in err["details"]


@pytest.mark.parametrize(("value", "needle"), [
    (torch.rand(3, 64, 64), "shape (3, 64, 64)"),
    (torch.rand(1, 3, 64, 64), "t.permute(0, 2, 3, 1)"),
])
def test_image_tensor_of_the_wrong_shape(session: Session, value: torch.Tensor, needle: str) -> None:
    _, _, vae = node(session, "CheckpointLoaderSimple")(CKPT)
    with pytest.raises(NodeCallError) as info:
        node(session, "VAEEncode")(value, vae)
    msg = str(info.value)
    assert "input 'pixels'" in msg and "[B,H,W,C]" in msg and needle in msg
    assert "not enough values to unpack" not in msg
    out = node(session, "VAEEncode")(torch.rand(1, 64, 64, 3), vae).value
    assert out["samples"].shape == (1, 4, 8, 8)


def test_bare_tensor_where_a_latent_goes(session: Session) -> None:
    _, _, vae = node(session, "CheckpointLoaderSimple")(CKPT)
    with pytest.raises(NodeCallError) as info:
        node(session, "VAEDecode")(torch.rand(1, 4, 8, 8), vae)
    msg = str(info.value)
    assert "input 'samples'" in msg and "wrap it as {'samples': t}" in msg
    assert "IndexError" not in msg
    assert node(session, "VAEDecode")({"samples": torch.rand(1, 4, 8, 8)}, vae).value.shape == (1, 64, 64, 3)


def test_mask_of_the_wrong_shape(session: Session) -> None:
    latent = node(session, "EmptyLatentImage")(64, 64, 1)
    with pytest.raises(NodeCallError) as info:
        node(session, "SetLatentNoiseMask")(latent, torch.rand(1, 1, 1, 8, 8))
    assert "input 'mask'" in str(info.value) and "[B,H,W]" in str(info.value)


def test_pickle_payload_is_refused_and_never_runs(session: Session, models: pathlib.Path,
                                                  tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {"a": Evil()}}, str(models / "checkpoints" / "evil.ckpt"))
    try:
        prompt = api()
        prompt["4"]["inputs"]["ckpt_name"] = "evil.ckpt"
        with pytest.raises(NodeExecutionError) as info:
            session.run_prompt(prompt)
        assert "weights_only" in str(info.value) and not marker.exists()
    finally:
        (models / "checkpoints" / "evil.ckpt").unlink()


def test_out_of_memory_always_then_rerun_hits_the_cache(session: Session,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    session.run_prompt(api(seed=1))
    original = UNetModel.forward

    def oom(self: UNetModel, *a: Any, **k: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(UNetModel, "forward", oom)
    with pytest.raises(NodeExecutionError) as info:
        session.run_prompt(api(seed=2))
    msg = str(info.value)
    assert info.value.node_id == "3" and "out of memory" in msg and "Fix:" in msg
    monkeypatch.setattr(UNetModel, "forward", original)
    result = session.run_prompt(api(seed=2))
    assert result.executed == {"3", "8", "9"} and result.cached == {"4", "5", "6", "7"}
    assert result.outputs["8"][0].shape == (1, 64, 64, 3)


def test_lora_that_does_not_fit_fails_at_the_loader_and_leaves_the_base_intact(
        session: Session, models: pathlib.Path) -> None:
    loras = models / "loras"
    path = make_lora(loras / "fits.safetensors", models / "checkpoints" / CKPT, style="kohya", rank=4, seed=1)
    sd = load_file(str(path))
    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = torch.zeros(4, 999), torch.zeros(999, 4)
    save_file(sd, str(loras / "misfit.safetensors"))
    before = session.run_prompt(api(seed=5)).outputs["8"][0]
    prompt = api(seed=5)
    prompt["20"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1],
                    "lora_name": "misfit.safetensors", "strength_model": 1.0, "strength_clip": 1.0}}
    prompt["3"]["inputs"]["model"] = ["20", 0]
    with pytest.raises(NodeExecutionError) as info:
        session.run_prompt(prompt)
    msg = str(info.value)
    assert info.value.node_id == "20"  # the loader, not the sampler three nodes later
    assert "misfit.safetensors does not fit this MODEL" in msg and "input_blocks.1.1.proj_in.weight" in msg
    assert "(999, 999)" in msg and "Fix:" in msg
    prompt["20"]["inputs"]["lora_name"] = "fits.safetensors"
    assert session.run_prompt(prompt).outputs["8"][0].shape == (1, 64, 64, 3)
    after = session.run_prompt(api(seed=6)).outputs["8"][0]  # base model sampled afresh
    fresh = Session(models_dir=models.parent)
    register_builtins(fresh)
    fresh.options["progress"] = False
    assert torch.equal(after, fresh.run_prompt(api(seed=6)).outputs["8"][0])
    assert before.shape == after.shape
