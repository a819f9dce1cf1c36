"""ComfyUI's published ControlNet and T2I-Adapter example workflows through ``Session.run_prompt``
on tiny files in the released key layouts (``comfy_notebook.testing``).

The API prompts in ``data/`` are the ``prompt`` chunks of ComfyUI_examples' ``controlnet/``
images (comfyanonymous/ComfyUI_examples at f9431bb): ``controlnet_example.png`` (scribble,
``ControlNetApply``), ``depth_t2i_adapter.png`` and ``mixing_controlnets.png`` (two chained
ControlNets).  The tests swap in the tiny files, scale the image sizes down 8x and run 3 steps.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pathlib
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_notebook._session import Session
from comfy_notebook.models.unet import UNetConfig
from comfy_notebook.nodes import register_builtins
from comfy_notebook.testing import (
    make_checkpoint,
    make_control_lora,
    make_controlnet,
    make_t2i_adapter,
    make_vae_file,
)

DATA = pathlib.Path(__file__).parent / "data"
CKPT, CKPT2 = "tiny.safetensors", "tiny_2res.safetensors"


def _scribble(path: pathlib.Path, w: int, h: int, seed: int) -> None:
    """White strokes on black, like the example's scribble (sizes not a multiple of the latent's)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), dtype=np.uint8)
    for _ in range(6):
        y, x = rng.integers(0, h), rng.integers(0, w)
        img[max(0, y - 1): y + 2, :] = 255 if rng.random() < 0.5 else 0
        img[:, max(0, x - 1): x + 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def _merged_control_lora(path: pathlib.Path, lora: str, ckpt: str) -> None:
    """The full ControlNet a control-LoRA stands for on this checkpoint: UNet weight + up @ down."""
    from safetensors.torch import load_file, save_file

    w, base = load_file(lora), load_file(ckpt)
    out = {}
    for key, value in w.items():
        if key == "lora_controlnet" or key.endswith(".down"):
            continue
        if key.endswith(".up"):
            module = key.removesuffix(".up")
            b = base["model.diffusion_model." + module + ".weight"]
            value = b + (value.flatten(1) @ w[module + ".down"].flatten(1)).reshape(b.shape)
            key = module + ".weight"
        out["control_model." + key] = value
    for key, value in base.items():  # weights the control-LoRA takes from the UNet as they are
        name = key.removeprefix("model.diffusion_model.")
        if key.startswith("model.diffusion_model.") and name.startswith(("time_embed.", "input_blocks.", "middle_block.")):
            out.setdefault("control_model." + name, value)
    save_file(out, str(path))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("comfy")
    models = base / "models"
    ckpt = make_checkpoint(models / "checkpoints" / CKPT, preset="sd1-tiny", seed=0)
    unet2 = dataclasses.replace(UNetConfig.sd1_tiny(), num_res_blocks=2, context_dim=64)
    ckpt2 = make_checkpoint(models / "checkpoints" / CKPT2, preset="sd1-tiny", seed=0, unet=unet2)
    make_vae_file(models / "vae" / "vae-ft-mse-840000-ema-pruned.safetensors", seed=4)  # the example's name
    make_vae_file(models / "vae" / "kl-f8-anime2.safetensors", seed=5)
    cn = models / "controlnet"
    make_controlnet(cn / "control_scribble.safetensors", ckpt, seed=1)
    make_controlnet(cn / "control_scribble_diffusers.safetensors", ckpt, seed=1, layout="diffusers")
    make_controlnet(cn / "control_scribble_diff.safetensors", ckpt, seed=1, difference=True)
    make_controlnet(cn / "control_openpose.safetensors", ckpt, seed=2)
    make_controlnet(cn / "controlnet_union_tiny.safetensors", ckpt, seed=8, layout="diffusers", union_types=6)
    lora = make_control_lora(cn / "control-lora-scribble-rank4.safetensors", ckpt, seed=6)
    _merged_control_lora(cn / "control_lora_merged.safetensors", lora, ckpt)
    make_t2i_adapter(cn / "t2iadapter_depth_tiny.safetensors", ckpt2, seed=3)
    make_t2i_adapter(cn / "t2iadapter_depth_tiny_diffusers.safetensors", ckpt2, seed=3, layout="diffusers")
    make_t2i_adapter(cn / "t2iadapter_light_tiny.safetensors", ckpt2, seed=3, kind="light")
    _scribble(base / "input" / "input_scribble_example.png", 72, 56, 0)
    _scribble(base / "input" / "house_scribble.png", 64, 64, 1)
    _scribble(base / "input" / "pose_present.png", 48, 64, 2)
    depth = (np.linspace(0, 255, 104)[None, :, None] * np.ones((48, 1, 3))).astype(np.uint8)
    Image.fromarray(depth).save(base / "input" / "shark_depthmap.png")
    return base


def new_session(root: pathlib.Path) -> Session:
    s = Session(models_dir=root, output_dir=root / "output")  # a ComfyUI root: models/, input/
    register_builtins(s)
    return s


def example(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


def scribble_prompt(strength: float = 0.9, control_net: str = "control_scribble.safetensors") -> dict[str, Any]:
    api = example("controlnet_scribble_api.json")
    api["14"]["inputs"]["ckpt_name"] = CKPT
    api["12"]["inputs"]["control_net_name"] = control_net
    api["10"]["inputs"]["strength"] = strength
    api["5"]["inputs"].update(width=64, height=64)
    api["3"]["inputs"]["steps"] = 3
    return api


def depth_prompt(adapter: str = "t2iadapter_depth_tiny.safetensors", strength: float = 1.0) -> dict[str, Any]:
    api = example("t2i_adapter_depth_api.json")
    api["33"]["inputs"]["ckpt_name"] = CKPT2
    api["31"]["inputs"]["control_net_name"] = adapter
    api["23"]["inputs"]["strength"] = strength
    api["5"]["inputs"].update(width=104, height=48)  # 832 x 384 / 8: an odd latent (13 x 6)
    api["3"]["inputs"]["steps"] = 3
    return api


def image(session: Session, api: dict[str, Any]) -> torch.Tensor:
    return session.run_prompt(api, targets=["8"]).outputs["8"][0]


def without_control(api: dict[str, Any], apply_id: str, cond_id: str) -> dict[str, Any]:
    api = copy.deepcopy(api)
    for node in api.values():
        for k, v in node["inputs"].items():
            if v == [apply_id, 0]:
                node["inputs"][k] = [cond_id, 0]
    for drop in [apply_id, *(i for i, n in api.items() if n["class_type"] in ("ControlNetLoader", "LoadImage"))]:
        api.pop(drop, None)
    return api


@pytest.fixture(scope="module")
def shared(root: pathlib.Path) -> Session:
    """One session for the comparisons (loaders stay cached); determinism is checked in fresh ones."""
    return new_session(root)


@pytest.fixture(scope="module")
def scribble_images(shared: Session) -> dict[str, torch.Tensor]:
    result = shared.run_prompt(scribble_prompt(), targets=["9"])
    assert set(result.executed) == set(scribble_prompt())  # every node of the example ran
    return {"controlled": result.outputs["8"][0],
            "plain": image(shared, without_control(scribble_prompt(), "10", "6")),
            "zero": image(shared, scribble_prompt(strength=0.0))}


def test_scribble_example_runs_and_the_control_changes_the_image(scribble_images: Any) -> None:
    controlled, plain = scribble_images["controlled"], scribble_images["plain"]
    assert controlled.shape == (1, 64, 64, 3)
    assert (controlled - plain).abs().max() > 1e-2


def test_strength_zero_is_no_control_exactly(scribble_images: Any) -> None:
    assert torch.equal(scribble_images["zero"], scribble_images["plain"])


def test_scribble_is_deterministic(root: pathlib.Path, scribble_images: Any) -> None:
    again = image(new_session(root), scribble_prompt())
    assert torch.equal(again, scribble_images["controlled"])


def test_changing_strength_reruns_only_apply_and_sampler(shared: Session, scribble_images: Any) -> None:
    result = shared.run_prompt(scribble_prompt(0.5), targets=["9"])
    assert set(result.executed) == {"10", "3", "8", "9"}
    assert {"14", "12", "11", "6", "7", "5", "13"} <= set(result.cached)
    assert shared.models.stats.reloads == 0
    assert not torch.equal(result.outputs["8"][0], scribble_images["controlled"])


def test_diffusers_and_diff_layouts_give_the_same_control(shared: Session, scribble_images: Any) -> None:
    base = scribble_images["controlled"]
    diffusers = image(shared, scribble_prompt(control_net="control_scribble_diffusers.safetensors"))
    assert torch.equal(diffusers, base)  # the same tensors under diffusers names
    api = scribble_prompt(control_net="control_scribble_diff.safetensors")
    api["12"] = {"class_type": "DiffControlNetLoader",
                 "inputs": {"model": ["14", 0], "control_net_name": "control_scribble_diff.safetensors"}}
    diff = image(shared, api)  # weights - base + base: equal up to fp32 rounding
    assert (diff - base).abs().max() < 1e-3


def test_mixing_two_controlnets_chains_them(shared: Session) -> None:
    api = example("controlnet_mixing_api.json")
    api["31"]["inputs"]["ckpt_name"] = CKPT
    api["15"]["inputs"]["vae_name"] = "kl-f8-anime2.safetensors"
    api["5"]["inputs"].update(width=64, height=64)
    api["3"]["inputs"]["steps"] = 3
    both = image(shared, api)
    assert shared.run_prompt(api, targets=["9"]).cached >= {"22", "23", "3"}
    one = copy.deepcopy(api)
    one["23"]["inputs"]["strength"] = 0.0  # only the openpose net is left
    only_pose = image(shared, one)
    plain = image(shared, without_control(without_control(api, "23", "22"), "22", "24"))
    assert (both - only_pose).abs().max() > 1e-2 and (only_pose - plain).abs().max() > 1e-2


def test_advanced_apply_window_outside_the_run_is_no_control(shared: Session, scribble_images: Any) -> None:
    api = scribble_prompt()
    api["10"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "control_net": ["12", 0], "image": ["11", 0],
        "strength": 0.9, "start_percent": 0.0, "end_percent": 0.0}}
    api["3"]["inputs"]["negative"] = ["10", 1]
    assert torch.equal(image(shared, api), scribble_images["plain"])
    api["10"]["inputs"]["end_percent"] = 1.0
    full = image(shared, api)
    api["10"]["inputs"]["end_percent"] = 0.5
    half = image(shared, api)
    assert (full - scribble_images["plain"]).abs().max() > 1e-2
    assert (half - full).abs().max() > 1e-3


def test_t2i_adapter_depth_example(root: pathlib.Path, shared: Session) -> None:
    result = shared.run_prompt(depth_prompt(), targets=["9"])
    assert set(result.executed) == set(depth_prompt())
    controlled = result.outputs["8"][0]
    assert controlled.shape == (1, 48, 104, 3)
    plain = image(shared, without_control(depth_prompt(), "23", "24"))
    assert (controlled - plain).abs().max() > 1e-2
    assert torch.equal(image(new_session(root), depth_prompt()), controlled)  # deterministic
    assert torch.equal(image(shared, depth_prompt(strength=0.0)), plain)
    diffusers = image(shared, depth_prompt("t2iadapter_depth_tiny_diffusers.safetensors"))
    assert torch.equal(diffusers, controlled)
    light = image(shared, depth_prompt("t2iadapter_light_tiny.safetensors"))
    assert (light - plain).abs().max() > 1e-2


def test_control_lora_is_the_unet_plus_its_low_rank_deltas(shared: Session, scribble_images: Any) -> None:
    lora = image(shared, scribble_prompt(control_net="control-lora-scribble-rank4.safetensors"))
    merged = image(shared, scribble_prompt(control_net="control_lora_merged.safetensors"))
    assert (lora - merged).abs().max() < 1e-4
    assert (lora - scribble_images["plain"]).abs().max() > 1e-2


def test_hint_batches_follow_the_latent_batch(shared: Session, scribble_images: Any) -> None:
    """One hint serves every latent of a batch; a batch of hints is matched image by image."""
    api = scribble_prompt()
    api["5"]["inputs"]["batch_size"] = 2
    two = image(shared, api)
    assert two.shape[0] == 2
    plain = without_control(api, "10", "6")
    assert (two - image(shared, plain)).abs().amax(dim=(1, 2, 3)).min() > 1e-2  # both images controlled
    api["15"] = {"class_type": "LoadImage", "inputs": {"image": "house_scribble.png"}}
    api["16"] = {"class_type": "ImageBatch", "inputs": {"image1": ["11", 0], "image2": ["15", 0]}}
    api["10"]["inputs"]["image"] = ["16", 0]
    paired = image(shared, api)
    # the first hint of the batch is the example's own (a batch of 2 through the hint convs
    # instead of 1 broadcast: equal up to rounding)
    assert (paired[0] - two[0]).abs().max() < 1e-4
    assert (paired[1] - two[1]).abs().max() > 1e-2


def test_sdxl_controlnet_and_its_diffusers_layout(tmp_path: pathlib.Path) -> None:
    """An SDXL ControlNet (label embedding fed the model's ``y``, 64-wide heads) on the tiny SDXL
    checkpoint; the diffusers layout of the same tensors gives the same image."""
    models = tmp_path / "models"
    ckpt = make_checkpoint(models / "checkpoints" / "xl.safetensors", preset="sdxl", seed=0)
    make_controlnet(models / "controlnet" / "xl_canny.safetensors", ckpt, seed=7)
    make_controlnet(models / "controlnet" / "xl_canny_diffusers.safetensors", ckpt, seed=7, layout="diffusers")
    _scribble(tmp_path / "input" / "edges.png", 64, 64, 3)
    s = new_session(tmp_path)
    api = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "xl.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a house", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "11": {"class_type": "LoadImage", "inputs": {"image": "edges.png"}},
        "12": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "xl_canny.safetensors"}},
        "10": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "control_net": ["12", 0], "image": ["11", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": 3, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["10", 0], "negative": ["10", 1], "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }
    controlled = image(s, api)
    control_net = s.run_prompt(api, targets=["12"]).outputs["12"][0]
    assert control_net.family == "sdxl" and control_net.config.unet.adm_in_channels is not None
    plain = image(s, without_control(api, "10", "6") | {"3": {**api["3"], "inputs": {
        **api["3"]["inputs"], "positive": ["6", 0], "negative": ["7", 0]}}})
    assert (controlled - plain).abs().max() > 1e-2
    api["12"]["inputs"]["control_net_name"] = "xl_canny_diffusers.safetensors"
    assert torch.equal(image(s, api), controlled)


def test_union_controlnet_takes_its_type_from_set_union_controlnet_type(shared: Session, scribble_images: Any) -> None:
    from comfy_notebook.errors import NodeExecutionError

    api = scribble_prompt(control_net="controlnet_union_tiny.safetensors")
    api["15"] = {"class_type": "SetUnionControlNetType", "inputs": {"control_net": ["12", 0], "type": "auto"}}
    api["10"]["inputs"]["control_net"] = ["15", 0]
    auto = image(shared, api)
    api["15"]["inputs"]["type"] = "hed/pidi/scribble/ted"
    result = shared.run_prompt(api, targets=["8"])
    assert {"15", "10", "3", "8"} <= set(result.executed) and "12" in result.cached
    scribble = result.outputs["8"][0]
    assert (auto - scribble).abs().max() > 1e-3 and (auto - scribble_images["plain"]).abs().max() > 1e-2
    api["15"]["inputs"]["type"] = "repaint"  # type 7: only the 8-type ProMax model knows it
    with pytest.raises(NodeExecutionError, match=r"out of range.*knows 6"):
        shared.run_prompt(api, targets=["8"])
