"""Flux ControlNet workflows through ``Session.run_prompt`` on the tiny Flux preset, with tiny
ControlNet files in the released layouts (``comfy_notebook.testing.make_flux_controlnet``).

``data/flux_controlnet_api.json`` is the ``prompt`` chunk of ComfyUI_examples'
``flux/flux_controlnet_example.png`` (comfyanonymous/ComfyUI_examples at f9431bb: InstantX canny
through ``ControlNetApplySD3``); the other prompts follow it with ``ControlNetApplyAdvanced`` and
the VAE, ``SetUnionControlNetType`` and the AliMama inpainting node, scaled down to 64 px and 3 steps.
"""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_notebook._session import Session
from comfy_notebook.models.vae import VAEConfig
from comfy_notebook.nodes import register_builtins
from comfy_notebook.testing import (
    make_flux_controlnet,
    make_flux_file,
    make_masked_image,
    make_t5_file,
    make_text_encoder_file,
    make_vae_file,
)

DATA = pathlib.Path(__file__).parent / "data"
NETS = {"instantx": "instantx_flux_canny.safetensors", "union": "flux-union-pro.safetensors",
        "xlabs": "flux-canny-controlnet-v3.safetensors", "mistoline": "mistoline_flux.dev_v1.safetensors",
        "inpaint": "flux-alimama-inpainting-beta.safetensors"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("comfy")
    m = base / "models"
    make_flux_file(m / "diffusion_models" / "flux1-dev.safetensors", "flux-dev-tiny")
    make_t5_file(m / "text_encoders" / "t5xxl_fp16.safetensors")
    make_text_encoder_file(m / "text_encoders" / "clip_l.safetensors")
    make_vae_file(m / "vae" / "ae.safetensors", config=VAEConfig.flux_tiny())
    for n, (kind, name) in enumerate(NETS.items()):
        make_flux_controlnet(m / "controlnet" / name, kind, seed=10 + n)
    rng = np.random.default_rng(0)
    edges = np.zeros((72, 80, 3), dtype=np.uint8)  # not the latent's size or aspect: resized, centre-cropped
    edges[rng.integers(0, 72, 6), :] = 255
    edges[:, rng.integers(0, 80, 6)] = 255
    (base / "input").mkdir()
    Image.fromarray(edges).save(base / "input" / "canny.png")
    Image.fromarray(edges).save(base / "input" / "girl_in_field.png")
    make_masked_image(base / "input" / "to_inpaint.png", size=64)
    return base


@pytest.fixture(scope="module")
def shared(root: pathlib.Path) -> Session:
    return session(root)


def session(root: pathlib.Path) -> Session:
    s = Session(models_dir=root, output_dir=root / "output")  # a ComfyUI root: models/, input/
    register_builtins(s)
    return s


def prompt(net: str = NETS["instantx"], strength: float = 1.0, union_type: str | None = None,
           vae: bool = True, seed: int = 0) -> dict[str, Any]:
    api: dict[str, Any] = {
        "12": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
        "11": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl_fp16.safetensors",
                                                           "clip_name2": "clip_l.safetensors", "type": "flux"}},
        "10": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red house by a lake", "clip": ["11", 0]}},
        "26": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["6", 0], "guidance": 4.0}},
        "33": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["11", 0]}},
        "14": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": net}},
        "15": {"class_type": "LoadImage", "inputs": {"image": "canny.png"}},
        "16": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["26", 0], "negative": ["33", 0], "control_net": ["14", 0], "image": ["15", 0],
            "strength": strength, "start_percent": 0.0, "end_percent": 1.0}},
        "27": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "31": {"class_type": "KSampler", "inputs": {
            "model": ["12", 0], "seed": seed, "steps": 3, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "denoise": 1.0, "positive": ["16", 0], "negative": ["16", 1], "latent_image": ["27", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["31", 0], "vae": ["10", 0]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    if vae:
        api["16"]["inputs"]["vae"] = ["10", 0]
    if union_type is not None:
        api["17"] = {"class_type": "SetUnionControlNetType", "inputs": {"control_net": ["14", 0], "type": union_type}}
        api["16"]["inputs"]["control_net"] = ["17", 0]
    return api


def without_control(api: dict[str, Any]) -> dict[str, Any]:
    api = copy.deepcopy(api)
    for k in ("14", "15", "16", "17"):
        api.pop(k, None)
    api["31"]["inputs"]["positive"], api["31"]["inputs"]["negative"] = ["26", 0], ["33", 0]
    return api


def image(s: Session, api: dict[str, Any]) -> torch.Tensor:
    return s.run_prompt(api, targets=["8"]).outputs["8"][0]


@pytest.fixture(scope="module")
def plain(shared: Session) -> torch.Tensor:
    return image(shared, without_control(prompt()))


@pytest.mark.parametrize("kind", ["instantx", "xlabs", "mistoline"])
def test_flux_controlnet_workflow_runs_changes_the_image_and_is_deterministic(root, shared, plain, kind):
    api = prompt(NETS[kind])
    result = shared.run_prompt(api, targets=["8"])
    assert {"14", "16", "31", "8"} <= set(result.executed)  # the control path ran (LoadImage may be cached)
    controlled = result.outputs["8"][0]
    assert controlled.shape == (1, 64, 64, 3) and torch.isfinite(controlled).all()
    assert (controlled - plain).abs().max() > 1e-2  # the control steers the sampling
    again = image(session(root), copy.deepcopy(api))  # a fresh session: same bits
    assert torch.equal(again, controlled)
    net = shared.run_prompt(api, targets=["14"]).outputs["14"][0]
    assert net.family == "flux" and net.kind == "dit_controlnet"


def test_strength_zero_is_exactly_no_control(shared, plain):
    assert torch.equal(image(shared, prompt(strength=0.0)), plain)


def test_a_short_range_and_a_weaker_strength_are_in_between(shared, plain):
    full = image(shared, prompt())
    weak = image(shared, prompt(strength=0.3))
    assert not torch.equal(weak, full) and not torch.equal(weak, plain)
    api = prompt()
    api["16"]["inputs"]["start_percent"] = 1.0  # active below sigma 0: for no step at all
    assert torch.equal(image(shared, api), plain)
    api["16"]["inputs"]["start_percent"], api["16"]["inputs"]["end_percent"] = 0.0, 0.0
    first_only = image(shared, api)  # ComfyUI: the range is [sigma 1, sigma 1]: the first step only
    assert not torch.equal(first_only, plain) and not torch.equal(first_only, full)


def test_union_type_selects_the_mode_token(shared, plain):
    depth = image(shared, prompt(NETS["union"], union_type="depth"))
    canny = image(shared, prompt(NETS["union"], union_type="canny/lineart/anime_lineart/mlsd"))
    auto = image(shared, prompt(NETS["union"], union_type="auto"))
    assert not torch.equal(depth, canny) and not torch.equal(depth, auto)
    assert (auto - plain).abs().max() > 1e-2
    from comfy_notebook.errors import NodeExecutionError

    with pytest.raises(NodeExecutionError, match="knows 7 modes"):  # "repaint" is index 7
        image(shared, prompt(NETS["union"], union_type="repaint"))


def test_a_latent_controlnet_without_vae_is_refused_at_the_apply_node(shared):
    from comfy_notebook.errors import NodeExecutionError

    with pytest.raises(NodeExecutionError, match="VAE") as info:
        shared.run_prompt(prompt(vae=False))
    assert "16" in str(info.value)


def test_alimama_inpainting_controlnet(shared, plain):
    api = prompt(NETS["inpaint"])
    api["15"]["inputs"]["image"] = "to_inpaint.png"
    api["16"] = {"class_type": "ControlNetInpaintingAliMamaApply", "inputs": {
        "positive": ["26", 0], "negative": ["33", 0], "control_net": ["14", 0], "vae": ["10", 0],
        "image": ["15", 0], "mask": ["15", 1], "strength": 0.9, "start_percent": 0.0, "end_percent": 1.0}}
    inpainted = image(shared, api)
    assert (inpainted - plain).abs().max() > 1e-2
    # the mask matters: the plain apply node gives the net an all-ones mask channel instead
    advanced = prompt(NETS["inpaint"], strength=0.9)
    advanced["15"]["inputs"]["image"] = "to_inpaint.png"
    assert not torch.equal(image(shared, advanced), inpainted)


def test_the_models_reservation_holds_the_control_residuals(root):
    """A budget accounts for ControlNet activations: the sampled model's memory_required grows by
    the controls' residual bytes (``control_memory``), and by nothing without a control."""
    from comfy_notebook.runtime.control_run import control_memory

    s = session(root)
    seen: list[tuple[str, int]] = []
    run = s.models.run

    def spy(ref, fn, *, memory_required=0):
        seen.append((s.models._resolve(ref).kind, memory_required))
        return run(ref, fn, memory_required=memory_required)

    s.models.run = spy  # type: ignore[method-assign]
    image(s, without_control(prompt()))
    plain_need = [m for k, m in seen if k == "unet"]
    seen.clear()
    api = prompt()
    image(s, api)
    controlled_need = [m for k, m in seen if k == "unet"]
    assert len(plain_need) == len(controlled_need) == 1
    positive = s.run_prompt(api, targets=["16"]).outputs["16"][0]
    extra = control_memory([positive], (1, 16, 8, 8), cfg=False)
    # 1 double + 1 single block sample of 16 tokens x 64 wide per image, in the net's dtype, plus
    # the hint (3 x 64 x 64 pixels)
    elem = 4 if positive[0][1]["control"].net.ref.base.dtype == torch.float32 else 2
    assert extra == (2 * 16 * 64 + 3 * 64 * 64) * elem
    assert controlled_need[0] - plain_need[0] == extra


def test_comfyui_flux_controlnet_example(root, shared):
    """The published example: the checkpoint loader becomes the three Flux loaders (the tiny files
    are separate), Canny (a kornia preprocessor) gives way to the edge image itself, 64 px, 3 steps."""
    api = json.loads((DATA / "flux_controlnet_api.json").read_text())
    assert api["14"]["class_type"] == "ControlNetApplySD3" and api["15"]["inputs"]["control_net_name"] == NETS["instantx"]
    api["20"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}}
    api["21"] = {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl_fp16.safetensors",
                                                             "clip_name2": "clip_l.safetensors", "type": "flux"}}
    api["22"] = {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}}
    for node in api.values():
        for k, v in node["inputs"].items():
            if v == ["20", 1]:
                node["inputs"][k] = ["21", 0]
            elif v == ["20", 2]:
                node["inputs"][k] = ["22", 0]
            elif v == ["18", 0]:
                node["inputs"][k] = ["17", 0]
    del api["18"]
    api["28"]["inputs"].update(width=64, height=64)
    api["3"]["inputs"]["steps"] = 3
    result = shared.run_prompt(api)
    assert {"14", "3", "8", "9"} <= set(result.executed)  # the loader may be cached from other tests
    controlled = result.outputs["8"][0]
    assert controlled.shape == (1, 64, 64, 3)
    assert torch.equal(session(root).run_prompt(copy.deepcopy(api), targets=["8"]).outputs["8"][0], controlled)
    api["3"]["inputs"]["positive"], api["3"]["inputs"]["negative"] = ["26", 0], ["7", 0]
    assert (shared.run_prompt(api, targets=["8"]).outputs["8"][0] - controlled).abs().max() > 1e-2


def test_two_flux_controlnets_chain(shared, plain):
    """An XLabs net applied on top of an InstantX one: both residuals are summed per block."""
    first = image(shared, prompt())
    api = prompt()
    api["40"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": NETS["xlabs"]}}
    api["41"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["16", 0], "negative": ["16", 1], "control_net": ["40", 0], "image": ["15", 0],
        "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0, "vae": ["10", 0]}}
    api["31"]["inputs"]["positive"], api["31"]["inputs"]["negative"] = ["41", 0], ["41", 1]
    both = image(shared, api)
    api["41"]["inputs"]["strength"] = 0.0  # the second apply passes its inputs through
    assert torch.equal(image(shared, api), first)
    assert not torch.equal(both, first) and not torch.equal(both, plain)


def test_controlnets_of_the_other_kind_are_refused_with_a_fix(root, tmp_path):
    """A Flux ControlNet on an SD1 model, and an SD1 ControlNet on Flux, fail at the sampler with
    what to do, and the session keeps working."""
    from comfy_notebook.errors import NodeExecutionError
    from comfy_notebook.testing import make_checkpoint, make_controlnet

    ckpt = make_checkpoint(root / "models" / "checkpoints" / "sd1_tiny.safetensors", preset="sd1-tiny")
    make_controlnet(root / "models" / "controlnet" / "sd1_canny.safetensors", ckpt, seed=3)
    s = session(root)
    api = prompt(NETS["xlabs"])
    api["40"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd1_tiny.safetensors"}}
    for node, inp in (("6", "clip"), ("33", "clip")):
        api[node]["inputs"][inp] = ["40", 1]
    api["31"]["inputs"]["model"] = ["40", 0]
    api["27"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    api["8"]["inputs"]["vae"] = ["40", 2]
    with pytest.raises(NodeExecutionError, match="transformer") as info:
        s.run_prompt(api, targets=["8"])
    assert "Fix:" in str(info.value)
    api = prompt("sd1_canny.safetensors")
    with pytest.raises(NodeExecutionError, match="wide") as info:
        s.run_prompt(api, targets=["8"])
    assert "Fix:" in str(info.value)
    assert image(s, prompt()).shape == (1, 64, 64, 3)  # nothing is left broken


@pytest.mark.gpu
def test_flux_controlnets_on_cuda(root):
    """bf16 on the GPU: the InstantX (VAE hint), union and XLabs nets steer the image as on the CPU."""
    from comfy_notebook.runtime.devices import DevicePolicy
    from comfy_notebook.runtime.manager import ModelManager

    s = session(root)
    s.services.models = ModelManager(DevicePolicy.cuda(0))
    cpu = session(root)
    for api in (prompt(), prompt(NETS["union"], union_type="depth"), prompt(NETS["xlabs"])):
        gpu_img, cpu_img = image(s, api), image(cpu, api)
        assert torch.isfinite(gpu_img).all()
        assert (gpu_img - cpu_img).abs().max() <= 0.1  # bf16 against fp32, 3 steps
        assert not torch.equal(gpu_img, image(s, without_control(api)))
    net = s.run_prompt(prompt(), targets=["14"]).outputs["14"][0]
    assert net.ref.base.dtype == torch.bfloat16  # Flux's dtypes, not the policy's fp16 for UNets
