"""Our T5 v1.1 encoder against transformers' T5EncoderModel on identical weights."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.models.t5 import T5Config, T5Encoder, relative_position_bucket
from comfy_notebook.testing import random_state_dict


def _hf_config(c: T5Config):
    from transformers import T5Config as HFConfig

    return HFConfig(vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff, num_layers=c.num_layers,
                    num_heads=c.num_heads, feed_forward_proj="gated-gelu", relative_attention_num_buckets=c.num_buckets,
                    relative_attention_max_distance=c.max_distance, dropout_rate=0.0, layer_norm_epsilon=c.eps,
                    is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False)


def _pair(c: T5Config, seed: int = 0):
    from transformers import T5EncoderModel

    ours = T5Encoder(c).eval()
    sd = random_state_dict(ours, seed, tag="t5")
    ours.load_state_dict(sd, strict=True)
    ref = T5EncoderModel(_hf_config(c)).eval()
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"encoder.embed_tokens.weight"}
    assert torch.equal(ref.get_input_embeddings().weight, sd["shared.weight"])
    return ours, ref, sd


@pytest.mark.parametrize("length", [7, 256])
def test_matches_transformers(length):
    ours, ref, _ = _pair(T5Config.tiny())
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32100, (2, length), generator=gen)
    ids[1, length // 2:] = 0  # padding, attended to (ComfyUI's Flux/SD3 encoders pass no mask)
    with torch.no_grad():
        out = ours(ids)
        ref_out = ref(input_ids=ids).last_hidden_state
    assert out.shape == (2, length, 32) and out.abs().mean() > 0.1
    assert (out - ref_out).abs().max().item() <= 1e-5


def test_attention_mask_matches_transformers():
    ours, ref, _ = _pair(T5Config.tiny(), seed=1)
    ids = torch.randint(0, 32100, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, 8:] = 0
    with torch.no_grad():
        out = ours(ids, attention_mask=mask)
        ref_out = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (out - ref_out).abs().max().item() <= 1e-5
    with torch.no_grad():
        assert not torch.allclose(out, ours(ids))


def test_intermediate_layer_matches_transformers_hidden_states():
    ours, ref, _ = _pair(T5Config.tiny(), seed=2)
    ids = torch.randint(0, 32100, (1, 9))
    with torch.no_grad():
        hs = ref(input_ids=ids, output_hidden_states=True).hidden_states  # embeddings, block 0, block 1 (normed)
        mid = ours(ids, intermediate=0)
        norm = ref.encoder.final_layer_norm
        assert (mid - norm(hs[1])).abs().max().item() <= 1e-5


def test_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 301)[None, :]
    ref = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    assert torch.equal(relative_position_bucket(rel), ref)


def test_real_size_and_config_from_shapes():
    from transformers import T5EncoderModel

    with torch.device("meta"):
        ours = T5Encoder(T5Config.xxl())
        ref = T5EncoderModel(_hf_config(T5Config.xxl()))
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) == 4_762_310_656
    assert T5Config.from_state_dict(ours.state_dict()) == T5Config.xxl()
    assert T5Config.from_state_dict(T5Encoder(T5Config.tiny()).state_dict()) == T5Config.tiny()
