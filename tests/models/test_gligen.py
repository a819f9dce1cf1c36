"""GLIGEN against diffusers on identical weights (fp32, max |d| <= 1e-5): the position net
(``GLIGENTextBoundingboxProjection``, text-only) and the gated self-attention fuser
(``GatedSelfAttentionDense``); the file layout read as ComfyUI's ``load_gligen`` reads it."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.models.gligen import GLIGEN, MAX_OBJECTS, GatedSelfAttention, PositionNet

diffusers = pytest.importorskip("diffusers")


def _randomise(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (p.shape[-1] ** -0.5 if p.ndim > 1 else 0.5))


def test_position_net_matches_diffusers() -> None:
    from diffusers.models.embeddings import GLIGENTextBoundingboxProjection

    ref = GLIGENTextBoundingboxProjection(positive_len=48, out_dim=40, feature_type="text-only").eval()
    _randomise(ref, 0)
    ours = PositionNet(48, 40).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(1)
    boxes = torch.rand(2, MAX_OBJECTS, 4, generator=gen)
    masks = (torch.rand(2, MAX_OBJECTS, generator=gen) > 0.5).float()
    phrases = torch.randn(2, MAX_OBJECTS, 48, generator=gen)
    with torch.no_grad():
        want = ref(boxes=boxes, masks=masks, positive_embeddings=phrases)
        got = ours(boxes, masks, phrases)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("query", "context", "heads"), [(64, 40, 1), (128, 768, 8)])
def test_gated_attention_matches_diffusers(query: int, context: int, heads: int) -> None:
    from diffusers.models.attention import GatedSelfAttentionDense

    ref = GatedSelfAttentionDense(query, context, heads, query // heads).eval()
    _randomise(ref, 2)
    state = {k: v for k, v in ref.state_dict().items()}
    ours = GatedSelfAttention(query, context, heads, query // heads).eval()
    ours.load_state_dict(state, strict=True)
    gen = torch.Generator().manual_seed(3)
    x, objs = torch.randn(2, 17, query, generator=gen), torch.randn(2, MAX_OBJECTS, context, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, objs), ref(x, objs), rtol=0, atol=1e-5)


def test_layout_and_comfyui_heads_rule() -> None:
    sd = {"position_net.null_positive_feature": torch.zeros(768), "position_net.linears.4.weight": torch.zeros(768, 512)}
    for path, q in (("output_blocks.3.1.transformer_blocks.0", 1280), ("input_blocks.1.1.transformer_blocks.0", 320),
                    ("middle_block.1.transformer_blocks.0", 1280), ("input_blocks.11.1.transformer_blocks.0", 1280)):
        sd[f"{path}.fuser.linear.weight"] = torch.zeros(q, 768)
    sd.pop("input_blocks.11.1.transformer_blocks.0.fuser.linear.weight")
    sd["model.diffusion_model.input_blocks.10.1.transformer_blocks.0.fuser.linear.weight"] = torch.zeros(1280, 768)
    in_dim, out_dim, fusers, _ = GLIGEN.layout(sd)
    assert (in_dim, out_dim) == (768, 768)
    assert list(fusers) == ["input_blocks.1.1.transformer_blocks.0", "input_blocks.10.1.transformer_blocks.0",
                            "middle_block.1.transformer_blocks.0", "output_blocks.3.1.transformer_blocks.0"]
    g = GLIGEN(in_dim, out_dim, fusers)
    assert [f.attn.heads for f in g.fusers] == [8, 8, 8, 8]  # SD1 (768-wide phrases): 8 heads
