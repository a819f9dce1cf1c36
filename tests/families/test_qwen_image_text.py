"""Qwen-Image's text recipe (families/qwen_image_text.py) and the Edit text-encode nodes, on tiny
Qwen2.5-VL files with the real vocabulary, against the encoder run by hand."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.families import qwen_image_text as recipe
from comfy_notebook.families._load import _register
from comfy_notebook.families.base import Family
from comfy_notebook.families.flux import FLUX_LATENT
from comfy_notebook.models.llm_prompt import tokenize_llm_prompt
from comfy_notebook.models.qwen25vl import Qwen25VLEncoder
from comfy_notebook.models.qwen_tokenizer import get_qwen_tokenizer
from comfy_notebook.nodes.qwen_image import TextEncodeQwenImageEdit, TextEncodeQwenImageEditPlus
from comfy_notebook.runtime.devices import DevicePolicy
from comfy_notebook.runtime.loading import open_state_dict
from comfy_notebook.runtime.manager import ModelManager
from comfy_notebook.runtime.values import ClipValue
from comfy_notebook.testing import QWEN25VL_TINY, make_qwen25vl_file


class _TextOnlyFamily(Family):
    """Just the recipe (the Qwen-Image family itself lives in families/qwen_image.py)."""

    name = "qwen_image_text_test"
    title = "Qwen-Image text recipe"
    latent_format = FLUX_LATENT
    text_encoders = (recipe.QWEN25_7B,)


@pytest.fixture(scope="module")
def te_file(tmp_path_factory):
    return make_qwen25vl_file(tmp_path_factory.mktemp("qwen25vl") / "qwen_2.5_vl_7b.safetensors")


@pytest.fixture(scope="module")
def clip(te_file):
    sd = open_state_dict(te_file)
    comp = recipe.qwen25vl_component(sd)
    manager = ModelManager(DevicePolicy.cpu())
    family = _TextOnlyFamily()
    ref = _register(manager, "qwen_2.5_vl_7b/qwen25_7b", te_file, sd, comp, family)
    return ClipValue({recipe.ENCODER_NAME: ref}, manager, None, family)


def _by_hand(path: str) -> Qwen25VLEncoder:
    with torch.device("meta"):
        model = Qwen25VLEncoder(QWEN25VL_TINY)
    model.load_state_dict({k: v.float() for k, v in open_state_dict(path).items()}, assign=True, strict=True)
    return model.eval()


def _ids(text: str) -> list[int]:
    return get_qwen_tokenizer().encode(text)


def test_dropped_front_is_diffusers_prompt_start_index():
    # diffusers' QwenImagePipeline drops 34 tokens, QwenImageEditPipeline 64: the system turn and
    # "<|im_start|>user\n"; ComfyUI finds the same point from the ids
    assert recipe.template_end(_ids(recipe.TEMPLATE.format("a cat"))) == 34
    assert recipe.template_end(_ids(recipe.EDIT_TEMPLATE.format("make it red"))) == 64
    assert recipe.template_end(_ids(recipe.EDIT_PLUS_TEMPLATE.format("x"))) == 64
    ids = _ids(recipe.TEMPLATE.format("一只猫"))
    assert get_qwen_tokenizer().decode(ids[34:]).startswith("一只猫<|im_end|>")
    # text given with its own header: the first <|im_start|> (+ "user\n") or ComfyUI's -1 cases
    assert recipe.template_end(_ids("<|im_start|>user\nhi<|im_end|>")) == 3
    assert recipe.template_end(_ids("user\nhello there")) == 2
    raw = _ids("<|start_header_id|>abc def")
    assert recipe.template_end(raw) == len(raw) - 1


def test_prompt_text_templates_and_raw_prompts():
    assert recipe.prompt_text("a cat") == recipe.TEMPLATE.format("a cat")
    assert recipe.prompt_text("a cat", images=1) == recipe.EDIT_TEMPLATE.format("a cat")
    assert recipe.prompt_text("x", images=2, template=recipe.EDIT_PLUS_TEMPLATE) == recipe.EDIT_PLUS_TEMPLATE.format("x")
    for raw in ("<|im_start|>system\nhi", "<|start_header_id|>x"):
        assert recipe.prompt_text(raw) == raw
    assert recipe.picture_prompt(2) == "Picture 2: <|vision_start|><|image_pad|><|vision_end|>"
    # the spec's template is the rule itself, so CLIPTextEncode keeps a raw chat prompt as written
    tok = get_qwen_tokenizer()
    assert list(tokenize_llm_prompt(tok, "<|im_start|>user\nq", recipe.QWEN25_7B.template).ids) == _ids(
        "<|im_start|>user\nq")


def test_file_detection_and_component(te_file):
    sd = open_state_dict(te_file)
    assert recipe.qwen25vl_kind(sd) == "qwen25_7b"
    comp = recipe.qwen25vl_component(sd)
    assert comp.name == "qwen25_7b" and comp.architecture is Qwen25VLEncoder
    assert comp.config == QWEN25VL_TINY
    assert recipe.qwen25vl_kind({"model.layers.0.self_attn.k_proj.bias": torch.zeros(256)}) == "qwen25_3b"
    assert recipe.qwen25vl_kind({"model.layers.0.self_attn.k_proj.bias": torch.zeros(512)}) == "qwen25_7b"
    qwen3 = {"model.layers.0.self_attn.k_proj.bias": torch.zeros(512),
             "model.layers.0.self_attn.q_norm.weight": torch.zeros(128)}
    assert recipe.qwen25vl_kind(qwen3) is None and recipe.qwen25vl_kind({}) is None
    assert dict(recipe.CLIP_TYPES) == {"qwen_image": ("qwen25_7b",), "stable_diffusion": ("qwen25_7b",)}


def test_text_prompt_is_the_final_state_after_the_template(clip, te_file):
    cond, pooled, _ = clip.encode("a red apple, 苹果")
    ids = _ids(recipe.TEMPLATE.format("a red apple, 苹果"))
    with torch.no_grad():
        want = _by_hand(te_file)(torch.tensor([ids]))[:, 34:]
    assert pooled is None and cond.shape == want.shape
    assert (cond - want).abs().max() <= 1e-5


class _RecordingVAE:
    """Stands in for a VAE value to record what the node encodes (the VAE itself is wanvae's)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, ...]] = []

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(image.shape))
        return torch.full((1, 16, image.shape[1] // 8, image.shape[2] // 8), float(len(self.seen)))


def _image(h: int, w: int, c: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, h, w, c, generator=torch.Generator().manual_seed(seed))


def test_edit_node_image_tokens_and_reference_latent(clip, te_file):
    vae = _RecordingVAE()
    img = _image(60, 90, c=4)  # an alpha channel is dropped
    (cond,) = TextEncodeQwenImageEdit().encode(clip, "make it blue", vae, img)
    # resized (area) to about 1024 x 1024: scale sqrt(1024^2 / 5400)
    assert vae.seen == [(1, 836, 1254, 3)]
    [[c, opts]] = cond
    assert opts["pooled_output"] is None and len(opts["reference_latents"]) == 1
    resized = torch.nn.functional.interpolate(img.movedim(-1, 1), size=(836, 1254), mode="area").movedim(1, -1)
    ids = _ids(recipe.EDIT_TEMPLATE.format("make it blue"))
    with torch.no_grad():
        want = _by_hand(te_file)(torch.tensor([ids]), images=[resized[..., :3]])[:, 64:]
    # 836 x 1254 -> 840 x 1260 pixels -> 60 x 90 patches -> 1350 image tokens in place of one pad
    assert c.shape[1] == len(ids) - 64 - 1 + 30 * 45 == want.shape[1]
    assert (c - want).abs().max() <= 1e-5
    (plain,) = TextEncodeQwenImageEdit().encode(clip, "make it blue")  # no image: Qwen-Image's template
    assert "reference_latents" not in plain[0][1]
    assert (plain[0][0] - clip.encode("make it blue")[0]).abs().max() == 0


def test_edit_plus_numbers_images_by_slot(clip, te_file):
    vae = _RecordingVAE()
    a, b = _image(300, 200, seed=1), _image(128, 256, seed=2)
    (cond,) = TextEncodeQwenImageEditPlus().encode(clip, "put them together", vae, a, None, b)
    [[c, opts]] = cond
    assert len(opts["reference_latents"]) == 2
    assert all(h % 8 == 0 and w % 8 == 0 for _, h, w, _ in vae.seen)
    assert vae.seen == [(1, 1256, 840, 3), (1, 728, 1448, 3)]
    text = recipe.picture_prompt(1) + recipe.picture_prompt(3) + "put them together"
    ids = _ids(recipe.EDIT_PLUS_TEMPLATE.format(text))
    small = [torch.nn.functional.interpolate(x.movedim(-1, 1), size=size, mode="area").movedim(1, -1)
             for x, size in ((a, (470, 314)), (b, (272, 543)))]
    with torch.no_grad():
        want = _by_hand(te_file)(torch.tensor([ids]), images=small)[:, 64:]
    assert c.shape == want.shape and (c - want).abs().max() <= 1e-5
    (no_vae,) = TextEncodeQwenImageEditPlus().encode(clip, "x", None, a)
    assert "reference_latents" not in no_vae[0][1]


def test_edit_nodes_name_the_missing_encoder():
    from comfy_notebook.errors import NodeError

    with pytest.raises(NodeError, match="qwen_image"):
        TextEncodeQwenImageEdit().encode(ClipValue({}, None, None, None), "x")  # type: ignore[arg-type]


def test_edit_nodes_object_info_is_comfyuis():
    # comfy_extras/nodes_qwen.py (V3 schema): clip, prompt; optional vae and image(s)
    from comfy_notebook._session import Session
    from comfy_notebook.nodes import register_builtins

    s = Session()
    register_builtins(s)
    info = s.registry.object_info()
    edit, plus = info["TextEncodeQwenImageEdit"], info["TextEncodeQwenImageEditPlus"]
    assert edit["input_order"] == {"required": ["clip", "prompt"], "optional": ["vae", "image"]}
    assert plus["input_order"] == {"required": ["clip", "prompt"], "optional": ["vae", "image1", "image2", "image3"]}
    for node in (edit, plus):
        assert node["category"] == "advanced/conditioning" and node["output"] == ["CONDITIONING"]
        assert node["input"]["required"]["prompt"] == ["STRING", {"multiline": True, "dynamicPrompts": True}]


def test_the_tiny_presets_pair():
    """The default tiny Qwen2.5-VL file conditions the default tiny Qwen-Image transformer (found
    by the families notebook: a 48-wide encoder met a 64-wide context)."""
    from comfy_notebook.models.qwen_image import QwenImageConfig

    assert QWEN25VL_TINY.hidden_size == QwenImageConfig.tiny().context_dim
