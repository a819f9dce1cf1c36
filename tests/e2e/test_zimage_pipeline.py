"""End-to-end: ComfyUI's Z-Image-Turbo workflows through ``Session.run_prompt`` on tiny
random-weight files in the released layouts (diffusion_models/, text_encoders/, vae/).

``data/z_image_turbo_api.json`` is the ``prompt`` chunk of ComfyUI_examples'
``z_image/z_image_turbo_example.png`` (comfyanonymous/ComfyUI_examples at f9431bb; PNG sha256
9936da04...446770f): UNETLoader, CLIPLoader ``type`` lumina2, two CLIPTextEncode, KSampler
(euler, simple, 9 steps, cfg 1), EmptySD3LatentImage 1024 px, VAEDecode, SaveImage.
``data/z_image_turbo_template_api.json`` is Comfy-Org's ``templates/image_z_image_turbo.json``
(Comfy-Org/workflow_templates at 0cbd31a), its subgraph written out in API form by hand:
ModelSamplingAuraFlow (shift 3), the prompt combined with a second one (ConditioningCombine),
ConditioningZeroOut as the negative, res_multistep, 8 steps.  The tests shrink the size to
64 px and the steps to 3; everything else is the workflows' own.
"""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import pytest
import torch

from comfy_notebook._session import Session
from comfy_notebook.models.vae import VAEConfig
from comfy_notebook.nodes import register_builtins
from comfy_notebook.testing import make_qwen3_file, make_vae_file, make_zimage_file

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("comfy")
    m = base / "models"
    make_zimage_file(m / "diffusion_models" / "z_image_turbo_bf16.safetensors")
    make_qwen3_file(m / "text_encoders" / "qwen_3_4b.safetensors")
    make_vae_file(m / "vae" / "ae.safetensors", config=VAEConfig.flux_tiny())
    return base


def session(root: pathlib.Path, out: str = "output") -> Session:
    s = Session(models_dir=root, output_dir=root / out)
    register_builtins(s)
    return s


def example(name: str = "z_image_turbo_api.json", size: int = 64, steps: int = 3) -> dict[str, Any]:
    api = json.loads((DATA / name).read_text())
    for node in api.values():
        if node["class_type"] == "EmptySD3LatentImage":
            node["inputs"].update(width=size, height=size)
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = steps
    return api


def _image(result: Any, node: str = "8") -> torch.Tensor:
    return result.outputs[node][0]


def test_example_prompt_runs_bit_identical_and_cached(root: pathlib.Path) -> None:
    s = session(root)
    api = example()
    first = s.run_prompt(api)
    img = _image(first)
    assert img.shape == (1, 64, 64, 3) and torch.isfinite(img).all() and img.std() > 0
    assert torch.equal(_image(session(root, "again").run_prompt(copy.deepcopy(api))), img)
    cached = s.run_prompt(copy.deepcopy(api))
    assert cached.executed == set()
    changed = copy.deepcopy(api)
    changed["6"]["inputs"]["text"] = "a red fox in the snow, 雪中的红狐狸"
    second = s.run_prompt(changed)
    assert second.executed == {"6", "3", "8", "9"}  # the loaders and the negative stay cached
    assert not torch.equal(_image(second), img)
    clip = next(i for i in s.models.list() if i.kind == "clip")
    assert "qwen_3_4b" in clip.name


def test_template_prompt_runs_and_the_shift_matters(root: pathlib.Path) -> None:
    s = session(root)
    api = example("z_image_turbo_template_api.json")
    img = _image(s.run_prompt(api))
    assert img.shape == (1, 64, 64, 3) and torch.isfinite(img).all()
    assert torch.equal(_image(session(root, "t2").run_prompt(copy.deepcopy(api))), img)
    # ModelSamplingAuraFlow at 3.0 is the family's default shift: bypassing it changes nothing
    plain = copy.deepcopy(api)
    plain["3"]["inputs"]["model"] = ["28", 0]
    assert torch.equal(_image(s.run_prompt(plain)), img)
    other = copy.deepcopy(api)
    other["11"]["inputs"]["shift"] = 6.0
    assert not torch.equal(_image(s.run_prompt(other)), img)
    # cfg above 1 evaluates the zeroed negative beside the two positive entries (three lengths)
    guided = copy.deepcopy(api)
    guided["3"]["inputs"]["cfg"] = 2.5
    out = _image(s.run_prompt(guided))
    assert torch.isfinite(out).all() and not torch.equal(out, img)


def test_real_mode_equals_the_prompt(root: pathlib.Path) -> None:
    import comfy_notebook._session as session_module
    from comfy_notebook.realmode import node_function as n

    previous = session_module._current
    s = session_module.use_session(session(root, "realmode"))
    s.options = {"progress": False}
    api = example()
    try:
        model = n("UNETLoader")("z_image_turbo_bf16.safetensors", "default")
        clip = n("CLIPLoader")("qwen_3_4b.safetensors", "lumina2")
        vae = n("VAELoader")("ae.safetensors")
        pos = n("CLIPTextEncode")(api["6"]["inputs"]["text"], clip)
        neg = n("CLIPTextEncode")(api["7"]["inputs"]["text"], clip)
        k = api["3"]["inputs"]
        latent = n("KSampler")(model, k["seed"], k["steps"], k["cfg"], k["sampler_name"], k["scheduler"],
                               pos, neg, n("EmptySD3LatentImage")(64, 64, 1))
        image = n("VAEDecode")(latent, vae)
        ref = session(root, "realmode_ref").run_prompt(api)
        assert torch.equal(image.value, _image(ref))
        again = n("VAEDecode")(latent, vae)
        assert again.signature == image.signature
    finally:
        session_module._current = previous


@pytest.mark.parametrize("weight_dtype", ["default", "fp8_e4m3fn"])
def test_budget_below_the_combined_size_offloads_and_loads_partially(root: pathlib.Path, weight_dtype: str) -> None:
    from comfy_notebook.runtime.devices import DevicePolicy
    from comfy_notebook.runtime.manager import ModelManager

    api = example()
    api["16"]["inputs"]["weight_dtype"] = weight_dtype
    free = session(root, "free")
    free.services.models = ModelManager(DevicePolicy.cpu())
    reference = _image(free.run_prompt(api))
    sizes = {i.kind: i.bytes for i in free.models.list()}
    assert set(sizes) == {"unet", "clip", "vae"}
    # no model fits (the tiny VAE is larger than the tiny transformer), let alone two: each runs
    # partially loaded in turn, the encoder making room for the transformer
    budget = min(sizes.values()) * 3 // 4
    tight = session(root, "tight")
    tight.services.models = ModelManager(DevicePolicy.cpu(), capacity_bytes=budget)
    assert torch.equal(_image(tight.run_prompt(copy.deepcopy(api))), reference)
    stats = tight.models.stats
    assert stats.partial_loads >= 3 and stats.bytes_streamed > 0
    assert stats.offloads + stats.evictions >= 1


def test_fp8_checkpoint_gives_the_bf16_image_within_fp8_rounding(root: pathlib.Path) -> None:
    s = session(root)
    ref = _image(s.run_prompt(example()))
    api = example()
    api["16"]["inputs"]["weight_dtype"] = "fp8_e4m3fn"
    fp8 = _image(s.run_prompt(api))
    unets = {i.name: i for i in s.models.list() if i.kind == "unet"}
    default = unets["unet:z_image_turbo_bf16/unet"]
    assert unets["unet:z_image_turbo_bf16@fp8_e4m3fn/unet"].bytes * default.dtype.itemsize == default.bytes
    diff = (fp8 - ref).abs()
    assert 0 < diff.max() < 0.15 and diff.mean() < 0.03, (diff.max(), diff.mean())


@pytest.mark.gpu
def test_on_cuda_bf16_close_to_cpu_and_partial_loading_identical(root: pathlib.Path) -> None:
    """On the GPU: bf16 transformer and encoder near the CPU's fp32 image; a budget below
    the models' sizes streams weights and gives the unconstrained GPU image bit for bit;
    fp8 storage (cast and fp8 matmul) completes."""
    from comfy_notebook.runtime.devices import DevicePolicy
    from comfy_notebook.runtime.manager import ModelManager

    cpu = _image(session(root, "cpu").run_prompt(example()))
    free = session(root, "cuda")
    free.services.models = ModelManager(DevicePolicy.cuda(0))
    gpu = _image(free.run_prompt(example()))
    assert torch.isfinite(gpu).all() and (gpu - cpu).abs().mean() < 0.05
    sizes = {i.kind: i.bytes for i in free.models.list()}
    tight = session(root, "cuda_tight")
    tight.services.models = ModelManager(DevicePolicy.cuda(0), capacity_bytes=min(sizes.values()) * 3 // 4)
    assert torch.equal(_image(tight.run_prompt(example())), gpu)
    assert tight.models.stats.partial_loads >= 1
    for weight_dtype in ("fp8_e4m3fn", "fp8_e4m3fn_fast"):
        api = example()
        api["16"]["inputs"]["weight_dtype"] = weight_dtype
        assert torch.isfinite(_image(free.run_prompt(api))).all()
