"""LoRA: patch exactness, clone switching, SD1 key maps (checked against diffusers)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from comfy_notebook.models.unet import UNetConfig, UNetModel
from comfy_notebook.runtime import DiffPatch, LoraPatch
from comfy_notebook.runtime.lora import (
    UNetLayout,
    load_lora_file,
    lora_patches,
    unet_diffusers_to_ldm,
)
from comfy_notebook.runtime.patches import PatchShapeError

TOY = 11280


def _formula(w: torch.Tensor, up: torch.Tensor, down: torch.Tensor, alpha: float, strength: float):
    """W + strength * alpha/rank * up @ down in fp32, stored in W's dtype."""
    delta = up.float().flatten(1) @ down.float().flatten(1)
    return (w.float() + strength * (alpha / down.shape[0]) * delta.reshape(w.shape)).to(w.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_patch_unpatch_exact_and_clones_share_base(toy_factory, manager_with_capacity, dtype) -> None:
    mgr = manager_with_capacity(10 * TOY)
    factory = toy_factory(5)
    base = mgr.register("m", factory, kind="unet", dtype=dtype)
    torch.manual_seed(0)
    up, down = torch.randn(64, 4), torch.randn(4, 16)
    cup, cdown = torch.randn(4, 2, 1, 1), torch.randn(2, 4, 3, 3)  # conv LoRA
    lora = {"big.weight": LoraPatch(up, down, alpha=2.0), "conv.weight": LoraPatch(cup, cdown, 1.0)}
    plain = base.ref()
    strong, weak = plain.with_patches(lora, 0.8), plain.with_patches(lora, -0.3)
    assert strong.patches_id != weak.patches_id != plain.patches_id
    originals = {k: base._master[k].clone() for k in ("big.weight", "conv.weight", "a.weight")}
    with mgr.use(strong) as m:
        torch.testing.assert_close(m.big.weight, _formula(originals["big.weight"], up, down, 2.0, 0.8),
                                   rtol=0, atol=0)
        torch.testing.assert_close(m.conv.weight, _formula(originals["conv.weight"], cup, cdown, 1.0, 0.8),
                                   rtol=0, atol=0)
        assert m.big.weight.dtype == dtype
        assert m.a.weight.data_ptr() == base._master["a.weight"].data_ptr()  # unpatched: shared
        module_strong = m
    with mgr.use(weak) as m:
        assert m is module_strong  # one base module for every clone
        torch.testing.assert_close(m.big.weight, _formula(originals["big.weight"], up, down, 2.0, -0.3),
                                   rtol=0, atol=0)
    with mgr.use(plain) as m:  # patches removed exactly
        for k, w in originals.items():
            assert torch.equal(m.get_parameter(k), w)
    assert factory.calls["n"] == 1  # changing strength never reloads the checkpoint
    assert mgr.stats.weights_patched == 2 + 2 + 2  # only the patched layers are touched
    assert mgr.stats.loads == 1


def test_nested_use_of_two_clones_is_refused(toy_factory, manager_with_capacity) -> None:
    mgr = manager_with_capacity(10 * TOY)
    base = mgr.register("m", toy_factory(0), kind="unet")
    a = base.ref().with_patches({"a.weight": DiffPatch(torch.ones(16, 16))}, 1.0)
    with mgr.use(a), pytest.raises(Exception, match="another patch set"), mgr.use(base.ref()):
        pass
    with mgr.use(a), mgr.use(a.clone()):  # the same patch set nests fine
        pass


def test_patch_errors_are_clear(toy_factory, manager_with_capacity) -> None:
    mgr = manager_with_capacity(10 * TOY)
    ref = mgr.register("m", toy_factory(0), kind="unet").ref()
    with pytest.raises(PatchShapeError, match=r"not parameters of model 'm': \['nope.weight'\]"):
        ref.with_patches({"nope.weight": DiffPatch(torch.ones(1))})
    bad = ref.with_patches({"a.weight": LoraPatch(torch.ones(16, 2), torch.ones(2, 15))})
    with pytest.raises(PatchShapeError, match="different model"), mgr.use(bad):
        pass


def _tiny_diffusers_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8, sample_size=8)


def _to_ldm(dsd: dict, layout: UNetLayout) -> dict:
    table = unet_diffusers_to_ldm(layout)
    return {f"{table[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in dsd.items()}


def test_unet_table_agrees_with_diffusers_converter() -> None:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    cfg = UNetConfig.sd1_tiny()
    d = _tiny_diffusers_unet()
    dsd = d.state_dict()
    ldm = _to_ldm(dsd, UNetLayout.from_config(cfg))
    assert set(ldm) == set(UNetModel(cfg).state_dict())  # our parameter names
    back = convert_ldm_unet_checkpoint({"model.diffusion_model." + k: v for k, v in ldm.items()},
                                       dict(d.config))
    assert set(back) == set(dsd)
    assert all(torch.equal(back[k], dsd[k]) for k in dsd)


@pytest.mark.slow
def test_sd15_table_covers_every_parameter() -> None:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        ours = set(UNetModel(UNetConfig.sd15()).state_dict())
        theirs = UNet2DConditionModel(cross_attention_dim=768).state_dict()
    assert set(_to_ldm(theirs, UNetLayout())) == ours and len(ours) == 686


def _clip_keys() -> set[str]:
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, vocab_size=99, max_position_embeddings=16,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    with torch.device("meta"):
        keys = set(CLIPTextModel(cfg).state_dict())
    # our CLIP names are relative to CLIPTextModel with the "text_model." prefix
    return {k if k.startswith("text_model.") else "text_model." + k for k in keys}


def test_lora_key_styles_map_to_our_names(tmp_path) -> None:
    cfg = UNetConfig.sd1_tiny()
    unet_keys, clip_keys = set(UNetModel(cfg).state_dict()), _clip_keys()
    r = 2
    sd = {
        # kohya, diffusers module names (linear and conv LoRA)
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.randn(r, 32),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.randn(32, r),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha": torch.tensor(1.0),
        "lora_unet_up_blocks_1_resnets_0_conv1.lora_down.weight": torch.randn(r, 96, 3, 3),
        "lora_unet_up_blocks_1_resnets_0_conv1.lora_up.weight": torch.randn(32, r, 1, 1),
        # kohya with LDM names, ComfyUI LDM dots, diffusers PEFT
        "lora_unet_middle_block_1_proj_in.lora_down.weight": torch.randn(r, 64, 1, 1),
        "lora_unet_middle_block_1_proj_in.lora_up.weight": torch.randn(64, r, 1, 1),
        "diffusion_model.out.2.lora_down.weight": torch.randn(r, 32, 3, 3),
        "diffusion_model.out.2.lora_up.weight": torch.randn(4, r, 1, 1),
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": torch.randn(r, 32),
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": torch.randn(64, r),
        # text encoder: kohya and PEFT
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(r, 32),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.randn(32, r),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha": torch.tensor(4.0),
        "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_A.weight": torch.randn(r, 32),
        "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_B.weight": torch.randn(37, r),
        # unknown: a module that does not exist, and an unsupported suffix
        "lora_unet_down_blocks_7_resnets_0_conv1.lora_down.weight": torch.randn(r, 4),
        "lora_unet_down_blocks_7_resnets_0_conv1.lora_up.weight": torch.randn(4, r),
        "lora_unet_conv_in.hada_w1_a": torch.randn(2, 2),
    }
    path = tmp_path / "tiny_lora.safetensors"
    save_file(sd, str(path))
    loaded = load_lora_file(path)
    unet, clip, unknown = lora_patches(loaded, unet_keys=unet_keys, clip_keys=clip_keys,
                                       unet_layout=UNetLayout.from_config(cfg))
    assert set(unet) == {
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "output_blocks.2.0.in_layers.2.weight",
        "middle_block.1.proj_in.weight",
        "out.2.weight",
        "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
    }
    assert set(clip) == {"text_model.encoder.layers.0.self_attn.q_proj.weight",
                         "text_model.encoder.layers.1.mlp.fc1.weight"}
    assert unknown == sorted(["lora_unet_down_blocks_7_resnets_0_conv1.lora_down.weight",
                              "lora_unet_down_blocks_7_resnets_0_conv1.lora_up.weight",
                              "lora_unet_conv_in.hada_w1_a"])
    q = clip["text_model.encoder.layers.0.self_attn.q_proj.weight"]
    assert q.alpha == 4.0 and unet["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].alpha is None


def test_lora_on_tiny_unet_end_to_end(manager_with_capacity) -> None:
    cfg = UNetConfig.sd1_tiny()
    torch.manual_seed(0)
    reference = UNetModel(cfg).eval()
    state = {k: v.clone() for k, v in reference.state_dict().items()}

    def factory() -> UNetModel:
        m = UNetModel(cfg)
        m.load_state_dict(state)
        return m

    mgr = manager_with_capacity(1 << 30)
    base = mgr.register("unet", factory, kind="unet", source="tiny.safetensors")
    torch.manual_seed(1)
    name = "lora_unet_down_blocks_1_attentions_0_proj_in"
    sd = {f"{name}.lora_down.weight": torch.randn(4, 64, 1, 1),
          f"{name}.lora_up.weight": torch.randn(64, 4, 1, 1), f"{name}.alpha": torch.tensor(2.0)}
    unet_patches, _, unknown = lora_patches(sd, unet_keys=state, clip_keys=(),
                                            unet_layout=UNetLayout.from_config(cfg))
    assert unknown == [] and list(unet_patches) == ["input_blocks.3.1.proj_in.weight"]
    ref = base.ref().with_patches(unet_patches, 0.5)
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([10.0]), torch.randn(1, 5, 32)
    with torch.no_grad():
        for budget in (None, 0):  # full load, then everything streamed
            with mgr.use(ref, weight_budget=budget) as unet:
                got = unet(x, t, ctx)
            w = state["input_blocks.3.1.proj_in.weight"]
            reference.get_submodule("input_blocks.3.1.proj_in").weight.copy_(
                _formula(w, sd[f"{name}.lora_up.weight"], sd[f"{name}.lora_down.weight"], 2.0, 0.5))
            torch.testing.assert_close(got, reference(x, t, ctx), rtol=1e-5, atol=1e-5)
