"""Hypernetworks: the A1111 file format built into MLPs exactly as ComfyUI's
``load_hypernetwork_patch`` builds them, checked against hand-written formulas for every
activation and option; the cross-attention patch at the transformer-block level; ComfyUI's
hypernetwork example workflow through ``run_prompt``."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from comfy_notebook.models.layers import ATTN_KV_PATCHES, BasicTransformerBlock
from comfy_notebook.runtime.hypernetwork import HypernetworkPatch, build_mlp, load_hypernetwork
from comfy_notebook.testing import make_checkpoint, make_hypernetwork

HAND = {"linear": lambda h: h, "relu": F.relu, "leakyrelu": F.leaky_relu, "elu": F.elu,
        "swish": F.hardswish, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "softsign": F.softsign,
        "mish": F.mish}


def hand_mlp(weights: dict[str, torch.Tensor], opts: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """The formula: Linear, activation, LayerNorm.  The activation follows every Linear but the
    last unless ``activate_output`` -- and, with layer norms, the last too: ComfyUI counts the
    LayerNorm entries when it asks whether a Linear is the last (A1111 does not; we follow ComfyUI)."""
    names = [k[:-7] for k in weights if k.endswith(".weight")]
    step = 2 if opts["is_layer_norm"] else 1
    linears = names[::step]
    for i, name in enumerate(linears):
        x = x @ weights[name + ".weight"].T + weights[name + ".bias"]
        if i < len(linears) - 1 or opts["activate_output"] or opts["is_layer_norm"]:
            x = HAND[opts["activation_func"]](x)
        if opts["is_layer_norm"]:
            ln = names[names.index(name) + 1]
            x = F.layer_norm(x, x.shape[-1:], weights[ln + ".weight"], weights[ln + ".bias"])
    return x


@pytest.mark.parametrize("act", sorted(HAND))
@pytest.mark.parametrize(("layer_norm", "activate_output", "dropout"),
                         [(False, False, False), (True, False, True), (True, True, False)])
def test_mlp_matches_the_formula(tmp_path: pathlib.Path, act: str, layer_norm: bool, activate_output: bool,
                                 dropout: bool) -> None:
    path = make_hypernetwork(tmp_path / "h.pt", widths=(16,), layer_structure=(1, 2, 2, 1), activation_func=act,
                             is_layer_norm=layer_norm, activate_output=activate_output, use_dropout=dropout)
    sd = torch.load(path, weights_only=True)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    for part in (0, 1):
        mlp = build_mlp(sd[16][part], sd)
        torch.testing.assert_close(mlp(x), hand_mlp(sd[16][part], sd, x), rtol=0, atol=1e-6)
        # ComfyUI's dropout placement: not after the last two entries of the weight list (Linears
        # and LayerNorms together; last_layer_dropout off): 1 of 3 Linears, or 2 with layer norms
        kinds = [type(m).__name__ for m in mlp]
        assert kinds.count("Dropout") == ((2 if layer_norm else 1) if dropout else 0)
        assert kinds.count("Linear") == 3 and kinds.count("LayerNorm") == (3 if layer_norm else 0)


def test_unknown_activation_is_refused(tmp_path: pathlib.Path) -> None:
    from comfy_notebook.errors import UnsupportedModelError

    path = make_hypernetwork(tmp_path / "h.pt", widths=(16,))
    sd = torch.load(path, weights_only=True)
    sd["activation_func"] = "gelu"
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(UnsupportedModelError, match="activation 'gelu'"):
        load_hypernetwork(tmp_path / "bad.pt", 1.0)


def test_block_with_patch_is_the_patched_cross_attention(tmp_path: pathlib.Path) -> None:
    torch.manual_seed(0)
    block = BasicTransformerBlock(32, 2, 16, 24).eval()
    patch = load_hypernetwork(make_hypernetwork(tmp_path / "h.pt", widths=(24, 32), seed=3), 0.7)
    x, ctx = torch.randn(1, 6, 32), torch.randn(1, 4, 24)
    token = ATTN_KV_PATCHES.set(((patch,), (patch,)))  # the node patches attn1 and attn2, as ComfyUI
    try:
        got = block(x, ctx)
    finally:
        ATTN_KV_PATCHES.reset(token)

    def attend(attn: Any, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
        q, k, v = attn.to_q(q_in), attn.to_k(k_in), attn.to_v(v_in)
        heads = [t.view(1, t.shape[1], 2, 16).transpose(1, 2) for t in (q, k, v)]
        out = F.scaled_dot_product_attention(*heads)
        return attn.to_out(out.transpose(1, 2).reshape(1, q.shape[1], 32))

    with torch.no_grad():
        n = block.norm1(x)  # self-attention: k = v = the normed hidden states, width 32
        k1, v1 = n + 0.7 * patch.mlps[32][0](n), n + 0.7 * patch.mlps[32][1](n)
        h = x + attend(block.attn1, n, k1, v1)
        k2, v2 = ctx + 0.7 * patch.mlps[24][0](ctx), ctx + 0.7 * patch.mlps[24][1](ctx)  # the context, width 24
        h = h + attend(block.attn2, block.norm2(h), k2, v2)
        want = h + block.ff(block.norm3(h))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert not torch.allclose(got, block(x, ctx))  # outside the context: the plain block
    assert isinstance(patch, HypernetworkPatch) and patch((torch.ones(1, 2, 8)), torch.ones(1, 2, 8))[0].equal(
        torch.ones(1, 2, 8))  # a width the file does not cover passes through


def _workflow(name: str, strength: float) -> dict[str, Any]:
    """ComfyUI_examples/hypernetworks: CheckpointLoaderSimple -> HypernetworkLoader -> KSampler."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"class_type": "HypernetworkLoader", "inputs": {"model": ["1", 0], "hypernetwork_name": name,
                                                             "strength": strength}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a castle", "clip": ["1", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "seed": 5, "steps": 3, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "hn"}},
    }


def test_hypernetwork_example_workflow(tmp_path: pathlib.Path) -> None:
    from comfy_notebook._session import Session
    from comfy_notebook.nodes import register_builtins

    make_checkpoint(tmp_path / "models" / "checkpoints" / "tiny.safetensors", preset="sd1-tiny", seed=0)
    # the tiny SD1 preset: blocks 32 and 64 wide (self-attention), context 64 wide (cross-attention)
    make_hypernetwork(tmp_path / "models" / "hypernetworks" / "style.pt", widths=(32, 64, 320), seed=1,
                      activation_func="relu", is_layer_norm=True)
    make_hypernetwork(tmp_path / "models" / "hypernetworks" / "self.pt", widths=(32,), seed=3)
    make_hypernetwork(tmp_path / "models" / "hypernetworks" / "other.pt", widths=(320, 640), seed=2)

    def session() -> Session:
        s = Session(models_dir=tmp_path, output_dir=tmp_path / "output")
        register_builtins(s)
        return s

    s = session()
    result = s.run_prompt(_workflow("style.pt", 1.0))
    assert {"1", "2", "6", "7", "8"} <= set(result.outputs)
    image = result.outputs["7"][0]
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    assert [w for w, _ in result.outputs["2"][0].attn_patches] == ["attn1", "attn2"]
    assert torch.equal(image, session().run_prompt(_workflow("style.pt", 1.0), targets=["7"]).outputs["7"][0])
    plain = s.run_prompt(_workflow("style.pt", 0.0), targets=["7"]).outputs["7"][0]
    other = s.run_prompt(_workflow("other.pt", 1.0), targets=["7"]).outputs["7"][0]
    self_only = s.run_prompt(_workflow("self.pt", 1.0), targets=["7"]).outputs["7"][0]
    assert not torch.equal(image, plain) and not torch.equal(self_only, plain)
    assert torch.equal(other, plain)  # no MLP for any width the model has: unchanged, as in ComfyUI


@pytest.mark.gpu
def test_hypernetwork_on_cuda(tmp_path: pathlib.Path) -> None:
    """The MLPs are placed on the device in the UNet's half dtype; the image stays close to the CPU's."""
    from comfy_notebook._session import Session
    from comfy_notebook.nodes import register_builtins
    from comfy_notebook.runtime.devices import DevicePolicy
    from comfy_notebook.runtime.manager import ModelManager

    make_checkpoint(tmp_path / "models" / "checkpoints" / "tiny.safetensors", preset="sd1-tiny", seed=0)
    make_hypernetwork(tmp_path / "models" / "hypernetworks" / "style.pt", widths=(32, 64), seed=1)
    images = []
    for policy in (DevicePolicy.cuda(0), DevicePolicy.cpu()):
        s = Session(models_dir=tmp_path, output_dir=tmp_path / "output")
        register_builtins(s)
        s.services.models = ModelManager(policy)
        images.append([s.run_prompt(_workflow("style.pt", w), targets=["7"]).outputs["7"][0] for w in (1.0, 0.0)])
    (gpu, gpu_plain), (cpu, _) = images
    assert torch.isfinite(gpu).all() and not torch.equal(gpu, gpu_plain)
    assert (gpu - cpu).abs().max() <= 0.05


def test_the_model_manager_holds_the_hypernetwork(tmp_path: pathlib.Path) -> None:
    """With a manager the MLPs are a managed model (listed, unloadable, reread); held, the patch
    gives what the unmanaged patch gives; outside ``hold()`` it refuses to run."""
    from comfy_notebook.runtime.manager import ModelManager

    path = make_hypernetwork(tmp_path / "h.pt", widths=(24, 32), seed=3, activation_func="relu")
    manager = ModelManager()
    managed = load_hypernetwork(path, 0.7, manager=manager)
    plain = load_hypernetwork(path, 0.7)
    info = {i.name: i for i in manager.list()}["hypernetwork:h"]
    assert info.kind == "hypernetwork" and info.bytes > 0 and managed.mlps == {} and managed.widths == (24, 32)
    k, v = torch.randn(1, 4, 24), torch.randn(1, 4, 24)
    with pytest.raises(RuntimeError, match="outside"):
        managed(k, v)
    with managed.hold():
        got = managed(k, v)
    want = plain(k, v)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    manager.unload_all()
    again = load_hypernetwork(path, 0.3, manager=manager)  # the same registration, another strength
    assert again.ref.base is managed.ref.base
    with again.hold():
        assert torch.equal(again(k, v)[0], load_hypernetwork(path, 0.3)(k, v)[0])
