"""Qwen3 text encoder vs transformers' Qwen3Model on identical weights, every layer."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.models.qwen3 import Qwen3Config, Qwen3Encoder
from comfy_notebook.testing import random_state_dict

transformers = pytest.importorskip("transformers")


def _pair(config: Qwen3Config):
    with torch.device("meta"):
        ours = Qwen3Encoder(config)
    sd = random_state_dict(ours, 0, torch.float32, "qwen3")
    ours.load_state_dict(sd, assign=True, strict=True)
    hf_config = transformers.Qwen3Config(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim,
        intermediate_size=config.intermediate_size, rms_norm_eps=config.rms_eps,
        rope_theta=config.rope_theta, attn_implementation="eager")
    ref = transformers.Qwen3Model(hf_config)
    ref.load_state_dict({k.removeprefix("model."): v for k, v in sd.items()}, strict=True)
    return ours.eval(), ref.eval()


def test_every_hidden_layer_equals_transformers() -> None:
    config = Qwen3Config.tiny()
    ours, ref = _pair(config)
    ids = torch.randint(0, config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = ref(input_ids=ids, output_hidden_states=True)
        for i in range(config.num_layers - 1):
            got = ours(ids, layer=i)
            assert (got - want.hidden_states[i + 1]).abs().max() <= 1e-5, i
        assert (ours(ids, layer=-2) - want.hidden_states[-2]).abs().max() <= 1e-5
        assert (ours(ids, layer=None) - want.last_hidden_state).abs().max() <= 1e-5


def test_padding_mask_equals_transformers_on_the_real_tokens() -> None:
    config = Qwen3Config.tiny()
    ours, ref = _pair(config)
    ids = torch.randint(0, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0  # right padding on the second prompt
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
        got = ours(ids, attention_mask=mask, layer=-2)
    assert (got[0] - want[0]).abs().max() <= 1e-5
    assert (got[1, :6] - want[1, :6]).abs().max() <= 1e-5
    with torch.no_grad():  # the padded prompt's real tokens equal the prompt run alone
        alone = ours(ids[1:, :6], layer=-2)
    assert (alone[0] - got[1, :6]).abs().max() <= 1e-5


def test_sizes_from_state_dict_and_real_size() -> None:
    config = Qwen3Config.tiny()
    ours, _ = _pair(config)
    assert Qwen3Config.from_state_dict(ours.state_dict()) == config
    with torch.device("meta"):
        big = Qwen3Encoder(Qwen3Config.qwen3_4b())
        ref = transformers.Qwen3Model(transformers.Qwen3Config(
            vocab_size=151936, hidden_size=2560, num_hidden_layers=36, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, intermediate_size=9728))
    n = sum(p.numel() for p in big.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) == 4_022_468_096
