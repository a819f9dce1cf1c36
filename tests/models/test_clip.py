"""CLIP text encoder: differential tests against transformers.CLIPTextModel on random weights."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.errors import ModelLoadError, NodeError
from comfy_notebook.models.clip import (
    KNOWN_EXTRA_KEYS,
    CLIPTextConfig,
    CLIPTextModel,
)

CONFIGS = {
    "tiny": CLIPTextConfig.tiny(),
    "two_heads": CLIPTextConfig(width=128, layers=3, heads=2, intermediate=320),
    "gelu_short_vocab": CLIPTextConfig(
        vocab_size=1000,
        width=64,
        layers=2,
        heads=1,
        intermediate=96,
        max_positions=40,
        activation="gelu",
        eos_token_id=999,
    ),
}


def _randomize(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """LDM-style state dict with random values (norm weights around 1, others O(0.1))."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in model.state_dict().items():
        r = torch.randn(p.shape, generator=g)
        sd[name] = 1.0 + 0.1 * r if "layer_norm" in name and name.endswith("weight") else 0.1 * r
    return sd


def _pair(cfg: CLIPTextConfig, seed: int = 0):
    """(ours, transformers) models with the same random weights, converted through diffusers."""
    import transformers
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    ours = CLIPTextModel(cfg).eval()
    sd = _randomize(ours, seed)
    ours.load_state_dict(sd, strict=True)
    ldm = {"cond_stage_model.transformer." + k: v for k, v in sd.items()}
    ldm["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    converted = convert_ldm_clip_checkpoint(ldm)
    hf_sd = {k.removeprefix("text_model."): v for k, v in converted.items()}
    hf_sd.pop("embeddings.position_ids")
    hc = transformers.CLIPTextConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.width,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions,
        hidden_act=cfg.activation,
        layer_norm_eps=cfg.layer_norm_eps,
        eos_token_id=cfg.eos_token_id,
        bos_token_id=cfg.eos_token_id - 1,
        pad_token_id=1,
        attn_implementation="eager",
    )
    ref = transformers.CLIPTextModel(hc).eval()
    ref.load_state_dict(hf_sd, strict=True)
    return ours, ref


def _tokens(cfg: CLIPTextConfig, lengths: list[int], seed: int = 1) -> torch.Tensor:
    """BOS, random ids, EOS, EOS padding; one row per length."""
    g = torch.Generator().manual_seed(seed)
    t = cfg.max_positions
    rows = torch.randint(0, cfg.eos_token_id - 1, (len(lengths), t), generator=g)
    rows[:, 0] = cfg.eos_token_id - 1
    for i, n in enumerate(lengths):
        rows[i, n + 1 :] = cfg.eos_token_id
    return rows


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_transformers_every_layer(name: str) -> None:
    cfg = CONFIGS[name]
    ours, ref = _pair(cfg)
    tokens = _tokens(cfg, [3, 20, cfg.max_positions - 2])
    with torch.no_grad():
        out = ref(tokens, output_hidden_states=True)
        hidden, pooled, states = ours(tokens)
    assert len(states) == cfg.layers + 1 == len(out.hidden_states)
    for a, b in zip(states, out.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(hidden, out.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, out.pooler_output, atol=1e-5, rtol=0)
    assert hidden.abs().max() > 0.1  # the comparison is not between zeros


def test_weights_matter() -> None:
    """A perturbed weight changes the output: the comparison above can fail."""
    cfg = CONFIGS["tiny"]
    ours, ref = _pair(cfg)
    with torch.no_grad():
        ours.text_model.encoder.layers[1].mlp.fc2.bias[0] += (
            1e-2  # one channel: not a norm-invariant shift
        )
        tokens = _tokens(cfg, [5])
        diff = (ours(tokens).hidden - ref(tokens).last_hidden_state).abs().max()
    assert diff > 1e-4


@pytest.mark.parametrize("layer", [-1, -2, 0, 1])
def test_selected_layer_is_final_normed_hidden_state(layer: int) -> None:
    cfg = CONFIGS["two_heads"]
    ours, ref = _pair(cfg, seed=3)
    tokens = _tokens(cfg, [10, 40])
    with torch.no_grad():
        out = ref(tokens, output_hidden_states=True)
        hidden, pooled, _ = ours(tokens, layer=layer)
        raw, _, _ = ours(tokens, layer=layer, final_norm_on_hidden=False)
        index = layer if layer < 0 else layer + 1
        expected_raw = out.hidden_states[index]
        expected = (
            ref.text_model.final_layer_norm(expected_raw)
            if hasattr(ref, "text_model")
            else ref.final_layer_norm(expected_raw)
        )
    torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(raw, expected_raw, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, out.pooler_output, atol=1e-5, rtol=0)


def test_pooled_takes_first_eos_and_embeds_override() -> None:
    cfg = CONFIGS["tiny"]
    ours, _ = _pair(cfg)
    tokens = _tokens(cfg, [7])
    with torch.no_grad():
        hidden, pooled, _ = ours(tokens)
        last = ours(tokens, layer=-1).hidden
        torch.testing.assert_close(pooled[0], last[0, 8], atol=0, rtol=0)
        embeds = ours.token_embedding(tokens)
        same = ours(tokens, embeds=embeds)
        torch.testing.assert_close(same.hidden, hidden, atol=0, rtol=0)
        other = ours(tokens, embeds=embeds + 0.5 * torch.randn_like(embeds))
    assert (other.hidden - hidden).abs().max() > 1e-3


def test_shorter_sequences_and_batch_independence() -> None:
    cfg = CONFIGS["two_heads"]
    ours, ref = _pair(cfg)
    tokens = _tokens(cfg, [4, 9])[:, :12]
    with torch.no_grad():
        both = ours(tokens)
        single = ours(tokens[1:])
        torch.testing.assert_close(both.hidden[1:], single.hidden, atol=1e-6, rtol=0)
        torch.testing.assert_close(both.hidden, ref(tokens).last_hidden_state, atol=1e-5, rtol=0)


def test_parameter_names_are_ldm_keys() -> None:
    names = set(CLIPTextModel(CLIPTextConfig.tiny()).state_dict())
    assert "text_model.embeddings.token_embedding.weight" in names
    assert "text_model.encoder.layers.1.self_attn.out_proj.bias" in names
    assert "text_model.encoder.layers.0.mlp.fc2.weight" in names
    assert "text_model.final_layer_norm.weight" in names
    assert not names & set(KNOWN_EXTRA_KEYS)
    assert len(names) == 2 + 16 * 2 + 2


def test_config_presets_and_inference_from_shapes() -> None:
    sd1 = CLIPTextConfig.sd1()
    assert (sd1.width, sd1.layers, sd1.heads, sd1.intermediate) == (768, 12, 12, 3072)
    assert sd1.activation == "quick_gelu" and sd1.eos_token_id == 49407
    for cfg in (CLIPTextConfig.tiny(), CONFIGS["two_heads"]):
        sd = {
            "cond_stage_model.transformer." + k: v
            for k, v in CLIPTextModel(cfg).state_dict().items()
        }
        assert CLIPTextConfig.from_state_dict(sd, "cond_stage_model.transformer.") == cfg
    with pytest.raises(ModelLoadError, match="not a CLIP text encoder"):
        CLIPTextConfig.from_state_dict({}, "cond_stage_model.transformer.")
    with pytest.raises(ModelLoadError, match="activation"):
        CLIPTextConfig(activation="relu")


def test_bad_inputs_are_clear_errors() -> None:
    model = CLIPTextModel(CLIPTextConfig.tiny())
    with pytest.raises(NodeError, match="77-token chunks"):
        model(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(NodeError, match="layer out of range"):
        model(torch.zeros(1, 5, dtype=torch.long), layer=-3)
    with pytest.raises(NodeError, match="embeds do not match"):
        model(torch.zeros(1, 5, dtype=torch.long), embeds=torch.zeros(1, 4, 64))


@pytest.mark.gpu
def test_fp16_cuda_close_to_fp32() -> None:
    cfg = CONFIGS["two_heads"]
    ours, _ = _pair(cfg)
    tokens = _tokens(cfg, [10, 30])
    with torch.no_grad():
        expected = ours(tokens).hidden
        got = ours.to("cuda", torch.float16)(tokens.cuda()).hidden.float().cpu()
    torch.testing.assert_close(got, expected, atol=5e-3, rtol=5e-3)
