"""The Z-Image family: detection, ComfyUI's NextDiT convention checked against diffusers'
pipeline math, the Qwen3 recipe against transformers, model sampling and latent format."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.families import FLUX, ZIMAGE, detect, load_checkpoint
from comfy_notebook.families.zimage import ZImageDiffusion, detect_zimage, qwen3_kind
from comfy_notebook.models.zimage import ZImageConfig
from comfy_notebook.runtime.loading import open_state_dict
from comfy_notebook.sampling.flow import FlowDenoiser, ModelSamplingDiscreteFlow
from comfy_notebook.sampling.schedules import calculate_sigmas
from comfy_notebook.testing import (
    QWEN3_TINY,
    ZIMAGE_TINY,
    make_checkpoint,
    make_qwen3_file,
    make_zimage_file,
    random_state_dict,
)

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("zimage")
    return {
        "dit": make_zimage_file(d / "diffusion_models" / "z_image_turbo_bf16.safetensors", dtype=torch.float32),
        "te": make_qwen3_file(d / "text_encoders" / "qwen_3_4b.safetensors", dtype=torch.float32),
    }


def _diffusers_transformer(sd: dict, config: ZImageConfig):
    from diffusers.loaders.single_file_utils import (
        convert_z_image_transformer_checkpoint_to_diffusers,
    )

    ref = diffusers.ZImageTransformer2DModel(
        in_channels=config.in_channels, dim=config.dim, n_layers=config.n_layers,
        n_refiner_layers=config.n_refiner_layers, n_heads=config.n_heads, n_kv_heads=config.n_heads,
        cap_feat_dim=config.cap_feat_dim, axes_dims=list(config.axes_dims))
    converted = convert_z_image_transformer_checkpoint_to_diffusers({k: v.clone() for k, v in sd.items()})
    missing, unexpected = ref.load_state_dict(converted, strict=False)
    assert not missing and not unexpected
    return ref.eval()


def test_detection(files, tmp_path):
    sd = open_state_dict(files["dit"])
    config, prefix = detect_zimage(sd)
    assert config == ZIMAGE_TINY and prefix == ""
    info = detect(sd, source=files["dit"])
    assert info.family is ZIMAGE and list(info.components) == ["unet"]
    unet = info.components["unet"]
    assert unet.architecture is ZImageDiffusion and unet.dtypes == (torch.bfloat16, torch.float32)
    full = make_zimage_file(tmp_path / "ckpt.safetensors", prefix="model.diffusion_model.")
    assert detect_zimage(open_state_dict(full))[1] == "model.diffusion_model."
    assert detect_zimage(open_state_dict(make_checkpoint(tmp_path / "sd1.safetensors"))) is None
    assert qwen3_kind(open_state_dict(files["te"])) == "qwen3_4b" and qwen3_kind(sd) is None
    # a ComfyUI-built NextDiT also carries an unused norm_final: still loads
    from safetensors.torch import load_file, save_file

    extra = dict(load_file(files["dit"]), **{"norm_final.weight": torch.ones(ZIMAGE_TINY.dim)})
    save_file(extra, str(tmp_path / "with_norm_final.safetensors"))
    assert isinstance(load_checkpoint(tmp_path / "with_norm_final.safetensors").unet, ZImageDiffusion)


def test_model_sampling_latent_format_and_recipe():
    assert ZIMAGE.model_sampling() == ModelSamplingDiscreteFlow(shift=3.0, multiplier=1.0)
    assert ZIMAGE.latent_format is FLUX.latent_format and ZIMAGE.latent_format.channels == 16
    assert ZIMAGE.clip_types["lumina2"] == ("qwen3_4b",)
    assert ZIMAGE.memory_factor == pytest.approx(5.6)


def test_comfy_convention_equals_diffusers_pipeline_steps(files):
    """One Euler run through our FlowDenoiser equals diffusers' ZImagePipeline update
    (``t = (1000 - timestep) / 1000``, ``noise_pred = -transformer(...)``, scheduler step)."""
    sd = dict(open_state_dict(files["dit"]))
    ours = load_checkpoint(files["dit"], dtype=torch.float32).unet
    ref = _diffusers_transformer(sd, ZIMAGE_TINY)
    ms = ZIMAGE.model_sampling()
    sigmas = calculate_sigmas(ms, "simple", 4)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 16, 8, 6, generator=g)
    cap = torch.randn(1, 11, ZIMAGE_TINY.cap_feat_dim, generator=g)
    denoiser = FlowDenoiser(ours, ms)
    x = ms.noise_scaling(sigmas[0], noise, torch.zeros_like(noise))
    y = x.clone()
    with torch.no_grad():
        for i in range(len(sigmas) - 1):
            s, s_next = sigmas[i], sigmas[i + 1]
            d = (x - denoiser(x, s[None], cap)) / s  # ComfyUI's Euler step
            x = x + d * (s_next - s)
            t = (1000 - s * 1000) / 1000  # diffusers: timesteps = sigmas * 1000
            v = -ref([y[0][:, None]], t[None], [cap[0]], return_dict=False)[0][0][:, 0]
            y = y + (s_next - s) * v[None]
    assert (x - y).abs().max() <= 1e-5


def test_odd_latent_sizes_pad_circularly_and_crop():
    with torch.device("meta"):
        model = ZImageDiffusion(ZIMAGE_TINY)
    model.load_state_dict(random_state_dict(model, 0, torch.float32, "zimage"), assign=True, strict=True)
    model.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 7, 5, generator=g)
    cap = torch.randn(1, 9, ZIMAGE_TINY.cap_feat_dim, generator=g)
    sigma = torch.tensor([0.7])
    with torch.no_grad():
        out = model(x, sigma, cap)
        padded = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="circular")
        want = -super(ZImageDiffusion, model).forward(padded, 1.0 - sigma, cap)[..., :7, :5]
    assert out.shape == x.shape and torch.equal(out, want)


def test_text_encoder_recipe_equals_transformers_hidden_states(files):
    transformers = pytest.importorskip("transformers")
    from comfy_notebook.families import load_clip_value
    from comfy_notebook.models.qwen_tokenizer import get_qwen_tokenizer
    from comfy_notebook.runtime.devices import DevicePolicy
    from comfy_notebook.runtime.manager import ModelManager

    c = QWEN3_TINY
    hf = transformers.Qwen3Model(transformers.Qwen3Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim,
        intermediate_size=c.intermediate_size, rms_norm_eps=c.rms_eps, rope_theta=c.rope_theta,
        attn_implementation="eager"))
    hf.load_state_dict({k.removeprefix("model."): v for k, v in open_state_dict(files["te"]).items()}, strict=True)
    clip = load_clip_value(ModelManager(DevicePolicy.cpu()), [files["te"]], "lumina2")
    for text in ("a photo of a cat", "一只可爱的猫咪坐在窗台上，阳光明媚", ""):
        ids = get_qwen_tokenizer().encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
        with torch.no_grad():
            want = hf.eval()(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-2]
        cond, pooled, _ = clip.encode(text)
        assert pooled is None and cond.shape == want.shape
        assert (cond - want).abs().max() <= 1e-5
