"""End to end: ComfyUI's Qwen-Image, Qwen-Image-Edit and Qwen-Image-Edit-2509 example prompts
(``tests/e2e/data``, see ``qwen_image_PROVENANCE.md``) through ``Session.run_prompt`` on tiny
random-weight files in the released layouts (diffusion_models/, text_encoders/, vae/)."""

from __future__ import annotations

import copy
import dataclasses
import json
import pathlib
from typing import Any

import numpy as np
import pytest
import torch

from comfy_notebook._session import Session
from comfy_notebook.nodes import register_builtins
from comfy_notebook.testing import make_qwen_image_file, random_state_dict

# the family needs the Wan-2.1 VAE (families/wan.py) and the Qwen2.5-VL recipe (qwen_image_text.py)
pytest.importorskip("comfy_notebook.families.wan")
pytest.importorskip("comfy_notebook.families.qwen_image_text")

DATA = pathlib.Path(__file__).parent / "data"
TE = "qwen_2.5_vl_7b_fp8_scaled.safetensors"


def _make_text_encoder(path: pathlib.Path) -> None:
    """A tiny Qwen2.5-VL (text + vision) with the real vocabulary, ComfyUI's key layout."""
    from safetensors.torch import save_file

    vl = pytest.importorskip("comfy_notebook.models.qwen25vl")
    config = dataclasses.replace(vl.Qwen25VLConfig.tiny(), vocab_size=152064, image_token_id=vl.IMAGE_PAD_ID)
    with torch.device("meta"):
        module = vl.Qwen25VLEncoder(config)
    sd = random_state_dict(module, 0, torch.float32, "qwen25vl")
    for k, v in sd.items():
        if v.ndim == 1 and "norm" in k:
            sd[k] = 1.0 + 0.1 * torch.randn(v.shape, generator=torch.Generator().manual_seed(len(k)))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}, str(path))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    from PIL import Image

    base = tmp_path_factory.mktemp("comfy")
    m = base / "models"
    for name, preset in (("qwen_image_fp8_e4m3fn", "qwen-image-tiny"),
                         ("qwen_image_edit_fp8_e4m3fn", "qwen-image-edit-tiny"),
                         ("qwen_image_edit_2509_fp8_e4m3fn", "qwen-image-edit-tiny"),
                         ("qwen_image_edit_2511_bf16", "qwen-image-edit-2511-tiny")):
        dtype = torch.bfloat16 if name.endswith("bf16") else torch.float8_e4m3fn
        make_qwen_image_file(m / "diffusion_models" / f"{name}.safetensors", preset, dtype=dtype)
    _make_text_encoder(m / "text_encoders" / TE)
    from comfy_notebook.testing import make_wan_vae_file

    make_wan_vae_file(m / "vae" / "qwen_image_vae.safetensors")
    (base / "input").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(base / "input" / "fennec_girl_sing.png")
    return base


def session(root: pathlib.Path) -> Session:
    s = Session(models_dir=root, output_dir=root / "output")
    register_builtins(s)
    return s


def example(name: str, steps: int = 3, px: int = 64) -> dict[str, Any]:
    """An example prompt as stored, sized for tiny files: 64 px latents, a few steps."""
    api = json.loads((DATA / name).read_text())
    for node in api.values():
        node.pop("_meta", None)
        inputs = node["inputs"]
        if node["class_type"] == "EmptySD3LatentImage":
            inputs.update(width=px, height=px)
        if node["class_type"] == "KSampler":
            inputs["steps"] = steps
    return api


def _image(result: Any, node: str = "8") -> torch.Tensor:
    return result.outputs[node][0]


def test_qwen_image_example_runs_bit_identical_and_cached(root):
    s = session(root)
    api = example("qwen_image_api.json")
    first = s.run_prompt(api)
    img = _image(first)
    assert img.shape == (1, 64, 64, 3) and torch.isfinite(img).all()
    assert torch.equal(_image(session(root).run_prompt(copy.deepcopy(api))), img)
    cached = s.run_prompt(copy.deepcopy(api))
    assert "3" not in cached.executed  # the sampler is served from the cache
    other = copy.deepcopy(api)
    other["6"]["inputs"]["text"] = "a red fox in the snow"
    assert not torch.equal(_image(s.run_prompt(other)), img)


@pytest.mark.parametrize(("name", "encoders"), [("qwen_image_edit_api.json", ("60", "63")),
                                               ("qwen_image_edit_2509_api.json", ("68", "69"))])
def test_qwen_image_edit_examples_use_the_reference_latents(root, name, encoders, monkeypatch):
    from comfy_notebook.models.qwen_image import QwenImage

    seen: list[list[tuple[int, ...]]] = []
    forward = QwenImage.forward

    def spy(self, x, timestep, context, **kw):
        seen.append([tuple(v.shape) for k, v in sorted(kw.items()) if k.startswith("ref_latent_")])
        return forward(self, x, timestep, context, **kw)

    monkeypatch.setattr(QwenImage, "forward", spy)
    s = session(root)
    api = example(name)
    img = _image(s.run_prompt(api))
    assert img.shape == (1, 64, 64, 3) and torch.isfinite(img).all()
    # one reference latent a step and prompt: the input image resized to ~1024x1024 pixels
    assert seen and all(len(refs) == 1 and refs[0][1] == 16 and refs[0][2] * refs[0][3] > 100 * 100
                        for refs in seen), seen[:1]
    assert torch.equal(_image(session(root).run_prompt(copy.deepcopy(api))), img)
    no_vae = copy.deepcopy(api)
    for node in encoders:  # without a VAE the nodes add no reference latents
        del no_vae[node]["inputs"]["vae"]
    seen.clear()
    assert not torch.equal(_image(s.run_prompt(no_vae)), img)
    assert seen and all(refs == [] for refs in seen)


def test_real_mode_equals_the_prompt(root):
    import comfy_notebook._session as session_module
    from comfy_notebook.realmode import node_function as n

    previous = session_module._current
    s = session_module.use_session(session(root))
    s.options = {"progress": False}
    api = example("qwen_image_api.json")
    try:
        model = n("ModelSamplingAuraFlow")(n("UNETLoader")("qwen_image_fp8_e4m3fn.safetensors", "default"),
                                           api["66"]["inputs"]["shift"])
        clip = n("CLIPLoader")(TE, "qwen_image")
        vae = n("VAELoader")("qwen_image_vae.safetensors")
        pos = n("CLIPTextEncode")(api["6"]["inputs"]["text"], clip)
        neg = n("CLIPTextEncode")(api["7"]["inputs"]["text"], clip)
        k = api["3"]["inputs"]
        latent = n("KSampler")(model, k["seed"], k["steps"], k["cfg"], k["sampler_name"], k["scheduler"],
                               pos, neg, n("EmptySD3LatentImage")(64, 64, 1))
        image = n("VAEDecode")(latent, vae)
        assert torch.equal(image.value, _image(session(root).run_prompt(api)))
    finally:
        session_module._current = previous


def test_budget_below_the_combined_size_offloads_and_loads_partially(root):
    from comfy_notebook.runtime.devices import DevicePolicy
    from comfy_notebook.runtime.manager import ModelManager

    api = example("qwen_image_api.json", steps=2)
    free = session(root)
    free.services.models = ModelManager(DevicePolicy.cpu())
    reference = _image(free.run_prompt(api))
    sizes = {i.kind: i.bytes for i in free.models.list()}
    assert set(sizes) == {"unet", "clip", "vae"}
    budget = min(sizes.values()) * 3 // 4  # no model fits, let alone two: each runs partially loaded in turn
    tight = session(root)
    tight.services.models = ModelManager(DevicePolicy.cpu(), capacity_bytes=budget)
    assert torch.equal(_image(tight.run_prompt(copy.deepcopy(api))), reference)
    stats = tight.models.stats
    assert stats.partial_loads >= 3 and stats.bytes_streamed > 0
    assert stats.offloads + stats.evictions >= 1
    # the fp8 file stays fp8 under the manager: one byte a parameter
    from comfy_notebook.models.qwen_image import QwenImage, QwenImageConfig

    with torch.device("meta"):
        n_params = sum(p.numel() for p in QwenImage(QwenImageConfig.tiny()).parameters())
    assert sizes["unet"] == n_params


def test_reference_latent_node_and_offset_method(root, monkeypatch):
    """Qwen-Image-Edit through ReferenceLatent (VAEEncode of the input) and the method node."""
    from comfy_notebook.models.qwen_image import QwenImage

    seen: list[list[str]] = []
    forward = QwenImage.forward

    def spy(self, x, timestep, context, **kw):
        seen.append(sorted(k for k in kw if k.startswith("ref_latent_")))
        return forward(self, x, timestep, context, **kw)

    monkeypatch.setattr(QwenImage, "forward", spy)
    api = example("qwen_image_api.json", steps=2)
    api["37"]["inputs"]["unet_name"] = "qwen_image_edit_2509_fp8_e4m3fn.safetensors"
    api["90"] = {"class_type": "LoadImage", "inputs": {"image": "fennec_girl_sing.png"}}
    api["91"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["90", 0], "vae": ["39", 0]}}
    api["92"] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["6", 0], "latent": ["91", 0]}}
    api["93"] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["92", 0], "latent": ["91", 0]}}
    api["3"]["inputs"]["positive"] = ["93", 0]
    s = session(root)
    index = _image(s.run_prompt(api))
    assert seen and ["ref_latent_index_0", "ref_latent_index_1"] in seen
    api["94"] = {"class_type": "FluxKontextMultiReferenceLatentMethod",
                 "inputs": {"conditioning": ["93", 0], "reference_latents_method": "offset"}}
    api["3"]["inputs"]["positive"] = ["94", 0]
    seen.clear()
    offset = _image(s.run_prompt(api))
    assert ["ref_latent_offset_0", "ref_latent_offset_1"] in seen
    assert not torch.equal(offset, index)


def test_edit_2511_file_runs_the_plus_example(root, monkeypatch):
    """The Edit-2509 example on an Edit-2511 file: its __index_timestep_zero__ marker is read and
    the reference tokens are modulated at timestep 0 (the 2509 file's are not)."""
    from comfy_notebook.models.qwen_image import DualStreamBlock

    zero_t: list[bool] = []
    forward = DualStreamBlock.forward

    def spy(self, img, txt, temb, pe, ref_temb=None, n_main=0):
        zero_t.append(ref_temb is not None)
        return forward(self, img, txt, temb, pe, ref_temb, n_main)

    monkeypatch.setattr(DualStreamBlock, "forward", spy)
    s = session(root)
    api = example("qwen_image_edit_2509_api.json")
    img = _image(s.run_prompt(api))
    assert zero_t and not any(zero_t)
    zero_t.clear()
    api["12"]["inputs"]["unet_name"] = "qwen_image_edit_2511_bf16.safetensors"
    out = _image(s.run_prompt(api))
    assert out.shape == img.shape and torch.isfinite(out).all()
    assert zero_t and all(zero_t)
