"""Loading checkpoints: strict keys, known extras, separate files, corrupt files, no second copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfy_notebook.errors import ModelLoadError
from comfy_notebook.families import load_checkpoint, load_text_encoder, load_vae
from comfy_notebook.models.clip import CLIPTextModel
from comfy_notebook.models.unet import UNetModel
from comfy_notebook.models.vae import AutoencoderKL
from comfy_notebook.runtime.loading import open_state_dict
from comfy_notebook.testing import make_checkpoint, make_text_encoder_file, make_vae_file


def _raw(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_loads_all_parts_with_the_file_weights(tiny_ckpt):
    ck = load_checkpoint(tiny_ckpt)
    raw = _raw(tiny_ckpt)
    assert isinstance(ck.unet, UNetModel) and isinstance(ck.vae, AutoencoderKL)
    assert isinstance(ck.clip, CLIPTextModel) and ck.path == tiny_ckpt
    for prefix, model in [("model.diffusion_model.", ck.unet), ("first_stage_model.", ck.vae),
                          ("cond_stage_model.transformer.", ck.clip)]:
        for k, v in model.state_dict().items():
            assert torch.equal(v, raw[prefix + k]), k
        assert not any(p.requires_grad for p in model.parameters()) and not model.training
    x = ck.unet(torch.randn(1, 4, 8, 8), torch.tensor([1.0]), torch.randn(1, 77, 64))
    assert torch.isfinite(x).all()


def test_make_checkpoint_is_deterministic(tmp_path, tiny_ckpt):
    again = make_checkpoint(tmp_path / "again.safetensors", "sd1-tiny", seed=0)
    other = make_checkpoint(tmp_path / "other.safetensors", "sd1-tiny", seed=1)
    a, b, c = _raw(tiny_ckpt), _raw(again), _raw(other)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.diffusion_model.out.2.weight"], c["model.diffusion_model.out.2.weight"])
    assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in a
    assert {"betas", "alphas_cumprod", "model_ema.decay"} <= a.keys()


def test_only_requested_parts_and_dtypes(tiny_ckpt):
    ck = load_checkpoint(tiny_ckpt, parts=("vae",), dtype={"vae": torch.bfloat16})
    assert ck.unet is None and ck.clip is None
    assert ck.vae.post_quant_conv.weight.dtype == torch.bfloat16
    ck = load_checkpoint(tiny_ckpt, parts=("unet", "clip"), dtype=torch.float16)
    assert ck.vae is None and ck.unet.out[2].weight.dtype == torch.float16
    with pytest.raises(ModelLoadError, match="has no text weights"):
        load_checkpoint(tiny_ckpt, parts=("text",))


def test_separate_vae_and_text_encoder_files(tmp_path, tiny_ckpt):
    vae_path = make_vae_file(tmp_path / "vae.safetensors")
    vae = load_vae(vae_path)
    raw = _raw(vae_path)
    assert not any(k.startswith("first_stage_model.") for k in raw)
    assert all(torch.equal(v, raw[k]) for k, v in vae.state_dict().items())
    assert isinstance(load_vae(tiny_ckpt), AutoencoderKL)  # a full checkpoint's VAE
    te = load_text_encoder(make_text_encoder_file(tmp_path / "te.safetensors"))
    assert isinstance(te, CLIPTextModel)
    with pytest.raises(ModelLoadError, match="has no vae weights"):
        load_vae(tmp_path / "te.safetensors")
    with pytest.raises(ModelLoadError, match="has no unet"):
        load_checkpoint(vae_path, parts=("unet",))
    assert load_checkpoint(vae_path).info.family is None


def test_missing_and_unexpected_keys_are_listed(tmp_path, tiny_ckpt):
    raw = _raw(tiny_ckpt)
    del raw["model.diffusion_model.out.0.bias"]
    raw["model.diffusion_model.out.9.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_file(raw, str(path))
    with pytest.raises(ModelLoadError, match=r"Missing \(1\): out\.0\.bias.*unexpected \(1\): out\.9\.weight"):
        load_checkpoint(path, parts=("unet",))
    load_checkpoint(path, parts=("vae", "clip"))  # the other parts are fine


def test_pickled_ckpt_nested_state_dict(tmp_path, tiny_ckpt):
    raw = _raw(tiny_ckpt)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": raw, "global_step": 5}, path)
    ck = load_checkpoint(path)
    assert torch.equal(ck.unet.out[2].weight, raw["model.diffusion_model.out.2.weight"])


class _Payload:
    """An arbitrary object: weights_only loading must refuse to unpickle it."""


def test_pickled_file_with_objects_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _Payload()}, path)
    with pytest.raises(ModelLoadError, match=r"evil\.ckpt.*weights_only=True"):
        open_state_dict(path)


@pytest.mark.parametrize("cut", [4, 100, -1000])
def test_truncated_or_corrupt_files_name_the_file(tmp_path, tiny_ckpt, cut):
    data = Path(tiny_ckpt).read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:cut])
    with pytest.raises(ModelLoadError, match=r"cut\.safetensors"):
        load_checkpoint(path)
    ckpt = tmp_path / "cut.ckpt"
    ckpt.write_bytes(b"not a zip at all")
    with pytest.raises(ModelLoadError, match=r"cut\.ckpt"):
        load_checkpoint(ckpt)
    with pytest.raises(ModelLoadError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_bad_header_json(tmp_path):
    path = tmp_path / "bad.safetensors"
    header = b"{not json"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        open_state_dict(path)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        open_state_dict(path)


def test_unet_only_sdxl_file_loads(tmp_path):
    import dataclasses

    from comfy_notebook.models.unet import UNetConfig
    from comfy_notebook.testing import random_state_dict

    cfg = dataclasses.replace(UNetConfig.sd1_tiny(), model_channels=64, adm_in_channels=16,
                              num_heads=-1, num_head_channels=64)
    with torch.device("meta"):
        m = UNetModel(cfg)
    sd = {"model.diffusion_model." + k: v for k, v in random_state_dict(m, 0).items()}
    save_file(sd, str(tmp_path / "xl.safetensors"))
    ck = load_checkpoint(tmp_path / "xl.safetensors")  # a UNet-only SDXL file loads
    assert ck.info.family.name == "sdxl" and ck.unet.config == cfg


_RSS_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    from comfy_notebook.families import load_checkpoint
    from comfy_notebook.testing import make_checkpoint

    # Warm-up: the first load pulls in one-time library state (~70 MB the first time torch
    # initialises an nn.Embedding on meta); that is not a copy of the weights, so load a tiny
    # checkpoint once before measuring.
    load_checkpoint(make_checkpoint(sys.argv[2], "sd1-tiny"))

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
        fh.write("5")
    base = status("VmRSS:")
    ck = load_checkpoint(sys.argv[1])
    total = 0.0
    for m in (ck.unet, ck.vae, ck.clip):  # touch every weight so it is resident
        total += sum(float(p.float().sum()) for p in m.parameters())
    print(status("VmHWM:") - base, os.path.getsize(sys.argv[1]))
    """
)


@pytest.mark.slow
def test_loading_does_not_hold_two_copies(tmp_path):
    from comfy_notebook.models.unet import UNetConfig

    unet = UNetConfig(model_channels=64, channel_mult=(1, 2, 4), transformer_depth=(1, 1, 1), context_dim=64)
    path = make_checkpoint(tmp_path / "medium.safetensors", "sd1-tiny", unet=unet)
    size = os.path.getsize(path)
    assert 80e6 < size < 160e6
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    warm = str(tmp_path / "warm.safetensors")
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, path, warm], capture_output=True, text=True,
                         env=env, check=True)
    peak, file_size = (int(v) for v in out.stdout.split())
    assert file_size == size
    assert peak < 1.3 * size, f"peak RSS above baseline {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"
