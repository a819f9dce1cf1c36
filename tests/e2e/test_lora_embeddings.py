"""End-to-end LoRA (LoraLoader, LoraLoaderModelOnly) and textual inversion through
``Session.run_prompt`` on a tiny SD1 checkpoint, with files from ``comfy_notebook.testing``."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_notebook._session import Session
from comfy_notebook.nodes import register_builtins
from comfy_notebook.testing import make_checkpoint, make_embedding, make_lora

CKPT = "tiny.safetensors"
TEXT = "a photo of a glass bottle"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("comfy")
    models = base / "models"
    ckpt = make_checkpoint(models / "checkpoints" / CKPT, preset="sd1-tiny", seed=0)
    make_lora(models / "loras" / "kohya.safetensors", ckpt, style="kohya", rank=4, alpha=2.0, seed=1)
    make_lora(models / "loras" / "comfy.safetensors", ckpt, style="comfy", rank=4, alpha=2.0, seed=1)
    bad = load_file(str(models / "loras" / "kohya.safetensors"))
    bad["lora_unet_not_a_block_proj.lora_down.weight"] = torch.zeros(4, 8)
    bad["lora_unet_not_a_block_proj.lora_up.weight"] = torch.zeros(8, 4)
    save_file(bad, str(models / "loras" / "with_unknown.safetensors"))
    make_embedding(models / "embeddings" / "myemb.safetensors", 64, n_vectors=2, seed=0)
    make_embedding(models / "embeddings" / "other.pt", 64, n_vectors=3, seed=1, format="pt")
    return base


def new_session(root: pathlib.Path) -> Session:
    s = Session(models_dir=root, output_dir=root / "output")
    register_builtins(s)
    return s


@pytest.fixture(scope="module")
def shared(root: pathlib.Path) -> Any:
    """Runs each prompt in a fresh session, so images do not depend on one another."""

    class Fresh:
        def run_prompt(self, api: dict[str, Any], **kw: Any) -> Any:
            return new_session(root).run_prompt(api, **kw)

    return Fresh()


def lora_prompt(lora: str | None, strength_model: float = 1.0, strength_clip: float = 1.0,
                *, model_only: bool = False) -> dict[str, Any]:
    """txt2img at 64x64 px, 3 euler steps; node "20" (if any) applies the LoRA."""
    model, clip = ["4", 0], ["4", 1]
    api: dict[str, Any] = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}}}
    if lora is not None and model_only:
        api["20"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["4", 0], "lora_name": lora, "strength_model": strength_model}}
        model = ["20", 0]
    elif lora is not None:
        api["20"] = {"class_type": "LoraLoader", "inputs": {
            "model": ["4", 0], "clip": ["4", 1], "lora_name": lora,
            "strength_model": strength_model, "strength_clip": strength_clip}}
        model, clip = ["20", 0], ["20", 1]
    api.update({
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": TEXT, "clip": clip}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": clip}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": model, "seed": 11, "steps": 3, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    })
    return api


def image(session: Any, api: dict[str, Any]) -> torch.Tensor:
    return session.run_prompt(api, targets=["8"]).outputs["8"][0]


# -- 7. LoRA ---------------------------------------------------------------------------------------
def test_lora_strength_zero_is_the_plain_model_and_one_changes_the_image(shared: Any) -> None:
    plain = image(shared, lora_prompt(None))
    assert torch.equal(image(shared, lora_prompt("kohya.safetensors", 0.0, 0.0)), plain)
    assert not torch.allclose(image(shared, lora_prompt("kohya.safetensors", 1.0, 1.0)), plain)
    # each half of the LoRA acts on its own: model only, and CLIP only
    model_only = image(shared, lora_prompt("kohya.safetensors", 1.0, 0.0))
    clip_only = image(shared, lora_prompt("kohya.safetensors", 0.0, 1.0))
    assert not torch.allclose(model_only, plain) and not torch.allclose(clip_only, plain)
    assert not torch.allclose(model_only, clip_only)


def test_kohya_and_comfy_names_of_one_lora_give_the_same_image(shared: Any) -> None:
    # the two files hold the same tensors under kohya (diffusers block names, counted with the
    # tiny UNet's own layout) and LDM names: both must patch the very same weights
    kohya = image(shared, lora_prompt("kohya.safetensors", 0.8, 0.6))
    comfy = image(shared, lora_prompt("comfy.safetensors", 0.8, 0.6))
    assert torch.equal(kohya, comfy)


def test_lora_loader_model_only_equals_lora_loader_without_clip(shared: Any) -> None:
    only = image(shared, lora_prompt("comfy.safetensors", 1.0, model_only=True))
    both = image(shared, lora_prompt("comfy.safetensors", 1.0, 0.0))
    assert torch.equal(only, both)
    assert not torch.equal(only, image(shared, lora_prompt(None)))


def test_changing_the_strength_does_not_reload_the_checkpoint(root: pathlib.Path) -> None:
    s = new_session(root)
    s.run_prompt(lora_prompt("kohya.safetensors", 1.0, 1.0), targets=["8"])
    before = s.models.stats
    names = sorted(info.name for info in s.models.list())
    result = s.run_prompt(lora_prompt("kohya.safetensors", 0.5, 1.0), targets=["8"])
    assert "4" in result.cached and "4" not in result.executed
    assert {"20", "3", "8"} <= result.executed
    after = s.models.stats
    assert after.reloads == before.reloads == 0
    assert sorted(info.name for info in s.models.list()) == names  # no second copy registered
    assert after.weights_patched > before.weights_patched  # the new strength was patched in


def test_lora_loader_model_only_does_not_call_text_encoder_keys_unknown(shared: Any) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "matched no weight" warning for the CLIP half
        image(shared, lora_prompt("comfy.safetensors", 1.0, model_only=True))
        image(shared, lora_prompt("kohya.safetensors", 1.0, model_only=True))


def test_unpatched_model_after_a_lora_clone_in_one_cpu_session(root: pathlib.Path) -> None:
    s = new_session(root)
    patched = image(s, lora_prompt("kohya.safetensors", 1.0, 0.0))
    plain_after = image(s, lora_prompt(None))
    plain_fresh = image(new_session(root), lora_prompt(None))
    assert not torch.equal(patched, plain_fresh)
    assert torch.equal(plain_after, plain_fresh)


def _on(root: pathlib.Path, device: str, capacity: int | None = None) -> Session:
    """A fresh session whose manager computes on ``device`` (accounting mode with ``capacity``)."""
    from comfy_notebook.runtime.devices import DevicePolicy
    from comfy_notebook.runtime.manager import ModelManager

    s = new_session(root)
    policy = DevicePolicy.cpu() if device == "cpu" else DevicePolicy.cuda(0)
    s.services.models = ModelManager(policy, capacity_bytes=capacity)
    return s


# Contract: the same device and the same placement give bit-identical images, so the references
# run on the device the test's manager computes on (a CUDA session's fp16 UNet is not the CPU's
# fp32 one; comparing the two differed by ~1e-3 on a GPU machine).
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_unpatched_model_after_a_lora_clone_in_accounting_mode(root: pathlib.Path, device: str) -> None:
    s = _on(root, device, capacity=1 << 34)
    patched = image(s, lora_prompt("kohya.safetensors", 1.0, 0.0))
    plain_after = image(s, lora_prompt(None))
    repatched = image(s, lora_prompt("kohya.safetensors", 1.0, 0.5))
    plain_fresh = image(_on(root, device), lora_prompt(None))
    assert not torch.equal(patched, plain_fresh)
    assert torch.equal(plain_after, plain_fresh)
    assert torch.equal(repatched, image(_on(root, device), lora_prompt("kohya.safetensors", 1.0, 0.5)))


def test_unknown_lora_keys_warn_by_name(shared: Any) -> None:
    with pytest.warns(UserWarning, match="lora_unet_not_a_block_proj.lora_down.weight"):
        patched = image(shared, lora_prompt("with_unknown.safetensors", 1.0, 1.0))
    # the known keys still apply, exactly as in the file without the extra keys
    assert torch.equal(patched, image(shared, lora_prompt("kohya.safetensors", 1.0, 1.0)))


# -- 8. textual inversion ---------------------------------------------------------------------
def encode(session: Any, text: str) -> torch.Tensor:
    api = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
           "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}}}
    ((cond, _),) = session.run_prompt(api, targets=["6"]).outputs["6"][0]
    return cond


def test_embedding_changes_the_conditioning(shared: Any) -> None:
    plain = encode(shared, "a photo of")
    with_emb = encode(shared, "a photo of embedding:myemb")
    with_pt = encode(shared, "a photo of embedding:other")
    assert with_emb.shape == plain.shape == (1, 77, 64)
    assert (with_emb - plain).abs().max() > 1e-3
    assert (with_pt - with_emb).abs().max() > 1e-3  # the .pt file is read too, and is another vector set
    # the words before the embedding see the same causal context either way
    torch.testing.assert_close(with_emb[:, :4], plain[:, :4], rtol=1e-5, atol=1e-5)


def test_missing_embedding_warns_and_is_dropped(shared: Any) -> None:
    with pytest.warns(UserWarning, match="embedding:nope"):
        missing = encode(shared, "a photo of embedding:nope")
    # ComfyUI drops the unknown name and goes on
    assert torch.equal(missing, encode(shared, "a photo of"))
    api = lora_prompt(None)
    api["6"]["inputs"]["text"] = "a glass bottle, embedding:nope"
    with pytest.warns(UserWarning, match="nope"):
        result = shared.run_prompt(api, targets=["8"])
    assert result.outputs["8"][0].shape == (1, 64, 64, 3)
