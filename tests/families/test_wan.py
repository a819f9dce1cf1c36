"""families/wan.py: the WAN21 latent format, Wan-2.1 VAE file detection, and the VAE value /
VAE nodes on ordinary IMAGE batches with a tiny ``vae/qwen_image_vae.safetensors``."""

from __future__ import annotations

import pathlib

import pytest
import torch

from comfy_notebook.families import FLUX, SD1, SDXL, detect
from comfy_notebook.families.wan import WAN21_LATENT, read_wan_vae_config, wan_vae_prefix
from comfy_notebook.models.wan_vae import WanVAE, WanVAEConfig
from comfy_notebook.testing import make_wan_vae_file, random_wan_vae_state_dict

# ComfyUI comfy/latent_formats.py Wan21 (commit a125cd8)
MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
        0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
       3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]


def test_wan21_latent_format_is_comfyuis_per_channel_normalisation() -> None:
    z = torch.randn(2, 16, 3, 5, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(MEAN).view(1, 16, 1, 1), torch.tensor(STD).view(1, 16, 1, 1)
    assert torch.equal(WAN21_LATENT.process_in(z), (z - mean) * 1.0 / std)
    assert torch.equal(WAN21_LATENT.process_out(z), z * std / 1.0 + mean)
    torch.testing.assert_close(WAN21_LATENT.process_out(WAN21_LATENT.process_in(z)), z)
    z5 = z.unsqueeze(2)  # ComfyUI's [B, C, 1, h, w] form broadcasts the same
    assert torch.equal(WAN21_LATENT.process_in(z5)[:, :, 0], WAN21_LATENT.process_in(z))
    assert WAN21_LATENT.process_in(z.double()).dtype == torch.float64
    assert (WAN21_LATENT.channels, WAN21_LATENT.downscale, len(WAN21_LATENT.rgb_factors or ())) == (16, 8, 16)
    assert WAN21_LATENT.rgb_bias == (-0.1835, -0.0868, -0.3360)


def test_scalar_latent_formats_unchanged() -> None:
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(SD1.latent_format.process_in(z), z * 0.18215)
    assert torch.equal(SD1.latent_format.process_out(z), z / 0.18215)
    assert torch.equal(SDXL.latent_format.process_in(z), z * 0.13025)
    z16 = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(FLUX.latent_format.process_in(z16), (z16 - 0.1159) * 0.3611)
    assert torch.equal(FLUX.latent_format.process_out(z16), z16 / 0.3611 + 0.1159)


def test_preview_of_a_wan_latent_uses_comfyuis_factors() -> None:
    from comfy_notebook.families.preview import latent_to_rgb

    z = torch.zeros(1, 16, 2, 2)
    z[0, 14] = 1.0  # channel 14 -> (0.3477, 0.2275, 0.2950) + bias
    rgb = latent_to_rgb(z, WAN21_LATENT.rgb_factors, WAN21_LATENT.rgb_bias)
    want = (torch.tensor([0.3477 - 0.1835, 0.2275 - 0.0868, 0.2950 - 0.3360]) + 1) / 2 * 255
    assert abs(int(rgb[0, 0, 0, 0]) - want[0].item()) <= 1 and abs(int(rgb[0, 1, 1, 2]) - want[2].item()) <= 1


@pytest.mark.parametrize("config", [WanVAEConfig.qwen_image(), WanVAEConfig.tiny(),
                                    WanVAEConfig(dim=8, dim_mult=(1, 2, 4), num_res_blocks=1,
                                                 temporal_downsample=(True, False))])
def test_sizes_are_read_from_shapes(config: WanVAEConfig) -> None:
    with torch.device("meta"):
        sd = WanVAE(config).state_dict()
    assert wan_vae_prefix(sd) == ""
    assert read_wan_vae_config(sd) == config
    info = detect(sd, source="qwen_image_vae.safetensors")
    assert info.family is None and list(info.components) == ["vae"]
    comp = info.components["vae"]
    assert comp.architecture is WanVAE and comp.config == config and comp.prefix == ""
    assert comp.dtypes[0] == torch.bfloat16
    prefixed = {"vae." + k: v for k, v in sd.items()}
    assert wan_vae_prefix(prefixed) == "vae."


def test_wan22_vae_is_refused_with_a_fix() -> None:
    from comfy_notebook.errors import UnsupportedModelError

    with torch.device("meta"):
        sd = dict(WanVAE(WanVAEConfig.tiny()).state_dict())
    sd["decoder.upsamples.0.upsamples.0.residual.2.weight"] = torch.zeros(1)
    with pytest.raises(UnsupportedModelError, match=r"Wan 2\.2"):
        detect(sd)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("comfy")
    make_wan_vae_file(base / "models" / "vae" / "qwen_image_vae.safetensors", dtype=torch.float32)
    return base


def _session(root: pathlib.Path):  # type: ignore[no-untyped-def]
    from comfy_notebook._session import Session
    from comfy_notebook.nodes import register_builtins

    s = Session(models_dir=root / "models", output_dir=root / "output")
    register_builtins(s)
    return s


def _reference() -> WanVAE:
    vae = WanVAE(WanVAEConfig.tiny())
    vae.load_state_dict(random_wan_vae_state_dict(WanVAEConfig.tiny()))
    return vae.eval()


class _WanTestImages:
    """A source node handing the test's IMAGE batch to the prompt."""

    images: torch.Tensor
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, object]]:
        return {"required": {}}

    def run(self) -> tuple[torch.Tensor]:
        return (self.images,)


def test_vae_nodes_encode_and_decode_image_batches(root: pathlib.Path) -> None:
    images = torch.rand(2, 80, 100, 3, generator=torch.Generator().manual_seed(3))  # cropped to 80 x 96
    api = {
        "1": {"class_type": "VAELoader", "inputs": {"vae_name": "qwen_image_vae.safetensors"}},
        "2": {"class_type": "VAEEncode", "inputs": {"pixels": ["9", 0], "vae": ["1", 0]}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 0]}},
        "4": {"class_type": "VAEEncodeTiled", "inputs": {"pixels": ["9", 0], "vae": ["1", 0], "tile_size": 512,
                                                           "overlap": 64, "temporal_size": 64, "temporal_overlap": 8}},
        "5": {"class_type": "VAEDecodeTiled", "inputs": {"samples": ["2", 0], "vae": ["1", 0], "tile_size": 64,
                                                           "overlap": 32, "temporal_size": 64, "temporal_overlap": 8}},
    }
    s = _session(root)
    api["9"] = {"class_type": "_WanTestImages", "inputs": {}}
    _WanTestImages.images = images
    s.register({"_WanTestImages": _WanTestImages})
    out = s.run_prompt(api, targets=["3", "4", "5"]).outputs
    latent = out["2"][0]["samples"]
    assert latent.shape == (2, 16, 10, 12) and latent.dtype == torch.float32
    ref = _reference()
    cropped = images[:, :, 2:98]
    with torch.no_grad():
        want = ref.encode(cropped.permute(0, 3, 1, 2) * 2 - 1)
        assert (latent - want).abs().max().item() <= 1e-5
        decoded = out["3"][0]
        assert decoded.shape == (2, 80, 96, 3)
        want_img = ((ref.decode(latent) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
        assert (decoded - want_img).abs().max().item() <= 1e-5
    assert torch.equal(out["4"][0]["samples"], latent)  # 512 px tiles: one tile, the plain encode
    tiled = out["5"][0]  # 64 px tiles = 8 latent pixels, overlap 4: several tiles
    assert tiled.shape == decoded.shape and not torch.equal(tiled, decoded)
    with torch.no_grad():  # the node's 64/32 px become 8/2 latent pixels (overlap capped at a quarter tile) of the VAE's tiler
        want_tiled = ((ref.decode_tiled(latent, tile=8, overlap=2) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert (tiled - want_tiled).abs().max().item() <= 1e-5


def test_vae_value_takes_single_frame_video_latents(root: pathlib.Path) -> None:
    from comfy_notebook.families import load_vae_value
    from comfy_notebook.runtime import DevicePolicy, ModelManager

    manager = ModelManager(DevicePolicy.cpu())
    vae = load_vae_value(manager, root / "models" / "vae" / "qwen_image_vae.safetensors")
    z = torch.randn(1, 16, 3, 4, generator=torch.Generator().manual_seed(5))
    plain = vae.decode(z)
    assert plain.shape == (1, 24, 32, 3)
    assert torch.equal(vae.decode(z.unsqueeze(2)), plain)  # ComfyUI's [B, C, 1, h, w] form


@pytest.mark.gpu
def test_bf16_on_cuda_is_close_to_fp32(root: pathlib.Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    ref = _reference()
    gpu = _reference().to("cuda", torch.bfloat16)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.no_grad():
        z32, zbf = ref.encode(x), gpu.encode(x.cuda()).float().cpu()
        assert (zbf - z32).abs().max().item() < 0.1 * z32.abs().max().item()
        d32, dbf = ref.decode(z32), gpu.decode(z32.cuda()).float().cpu()
        assert (dbf - d32).abs().mean().item() < 0.05
