"""The LLM text-encoder seam (TextEncoderSpec ``tokenizer="qwen"``, ``models/llm_prompt.py``,
``ClipValue``), exercised through Z-Image's Qwen3-4B recipe on tiny files with the real vocabulary."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from comfy_notebook.errors import UnsupportedModelError
from comfy_notebook.families import ZIMAGE, detect, family_for_text_encoders, load_clip_value
from comfy_notebook.families.base import TextEncoderSpec
from comfy_notebook.models.llm_prompt import (
    LLMTokens,
    encode_llm_tokens,
    front_tokens,
    tokenize_llm_prompt,
)
from comfy_notebook.models.qwen3 import Qwen3Encoder
from comfy_notebook.models.qwen_tokenizer import SPECIAL_TOKENS, get_qwen_tokenizer
from comfy_notebook.runtime.devices import DevicePolicy
from comfy_notebook.runtime.loading import open_state_dict
from comfy_notebook.runtime.manager import ModelManager
from comfy_notebook.testing import QWEN3_TINY, make_qwen3_file

TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def te_file(tmp_path_factory):
    return make_qwen3_file(tmp_path_factory.mktemp("qwen3") / "qwen_3_4b.safetensors")


def _reference_encoder(path: str) -> Qwen3Encoder:
    """The tiny encoder built by hand from the file (fp32), no loader involved."""
    with torch.device("meta"):
        model = Qwen3Encoder(QWEN3_TINY)
    model.load_state_dict({k: v.float() for k, v in open_state_dict(path).items()}, assign=True, strict=True)
    return model.eval()


def test_template_tokenization_is_one_unweighted_row():
    tok = get_qwen_tokenizer()
    got = tokenize_llm_prompt(tok, "a (red:1.5) cat, 猫", TEMPLATE)
    # ComfyUI: no weight syntax for LLM encoders, no start/end token, no padding
    assert list(got.ids) == tok.encode(TEMPLATE.format("a (red:1.5) cat, 猫"))
    assert got.ids[0] == SPECIAL_TOKENS["<|im_start|>"] and got.ids[-1] == tok.encode("\n")[0]
    assert got.chunks == [[(i, 1.0) for i in got.ids]] and got.missing_embeddings == ()
    # SDTokenizer cuts the text before " embedding:" (dropping the space) and tokenizes the pieces
    cut = tokenize_llm_prompt(tok, "a embedding:foo b")
    assert list(cut.ids) == tok.encode("a") + tok.encode("embedding:foo b")
    assert list(cut.ids) != tok.encode("a embedding:foo b")
    assert list(tokenize_llm_prompt(tok, "x").ids) == tok.encode("x")  # no template: the bare text


def test_front_tokens_count_or_rule():
    ids = [5, 6, 7, 8]
    assert front_tokens(0, ids) == 0 and front_tokens(2, ids) == 2 and front_tokens(9, ids) == 4
    assert front_tokens(lambda row: row.index(7), ids) == 2


def test_text_encoder_file_detection_and_clip_types(te_file, tmp_path):
    info = detect(open_state_dict(te_file), source=te_file)
    assert info.family is None and list(info.components) == ["qwen3_4b"]
    comp = info.components["qwen3_4b"]
    assert comp.kind == "clip" and comp.architecture is Qwen3Encoder and comp.config == QWEN3_TINY
    assert family_for_text_encoders("lumina2", ("qwen3_4b",)) is ZIMAGE
    assert family_for_text_encoders("stable_diffusion", ("qwen3_4b",)) is ZIMAGE
    with pytest.raises(UnsupportedModelError, match="make no supported model's CLIP"):
        family_for_text_encoders("flux2", ("qwen3_4b",))
    # the other Qwen3 sizes (by width, as ComfyUI's detect_te_model) are not Z-Image's encoder
    other = make_qwen3_file(tmp_path / "qwen_3_8b.safetensors",
                            config=dataclasses.replace(QWEN3_TINY, vocab_size=64, hidden_size=4096,
                                                       num_layers=1, intermediate_size=8))
    with pytest.raises(UnsupportedModelError):
        detect(open_state_dict(other), source=other)


def test_clip_value_encodes_the_hidden_state_of_layer_minus_2(te_file):
    manager = ModelManager(DevicePolicy.cpu())
    clip = load_clip_value(manager, [te_file], "lumina2")
    assert clip.family is ZIMAGE and list(clip.refs) == ["qwen3_4b"]
    text = "cute anime style girl with massive fluffy fennec ears, 一只猫"
    cond, pooled, missing = clip.encode(text)
    ids = torch.tensor([get_qwen_tokenizer().encode(TEMPLATE.format(text))])
    ref = _reference_encoder(te_file)
    with torch.no_grad():
        want = ref(ids, layer=-2)
    assert pooled is None and missing == []
    assert cond.shape == (1, ids.shape[1], QWEN3_TINY.hidden_size) and cond.dtype == torch.float32
    assert (cond - want).abs().max() <= 1e-5
    # CLIPSetLastLayer picks another decoder layer (-1: the last layer's output, no final norm)
    last, _, _ = clip.with_layer(-1).encode(text)
    with torch.no_grad():
        assert (last - ref(ids, layer=-1)).abs().max() <= 1e-5
    assert not torch.equal(last, cond)
    # the same prompt twice: bit-identical
    assert torch.equal(clip.encode(text)[0], cond)


def test_drop_front_and_model_kwargs_reach_the_encoder(te_file):
    ref = _reference_encoder(te_file)
    tokens = tokenize_llm_prompt(get_qwen_tokenizer(), "a cat", TEMPLATE)
    full = encode_llm_tokens(ref, tokens, layer=-2)
    assert torch.equal(encode_llm_tokens(ref, tokens, layer=-2, drop_front=3), full[:, 3:])
    rule = encode_llm_tokens(ref, tokens, layer=-2, drop_front=lambda ids: list(ids).index(
        SPECIAL_TOKENS["<|im_end|>"]))
    assert rule.shape[1] == len(tokens.ids) - list(tokens.ids).index(SPECIAL_TOKENS["<|im_end|>"])
    seen = {}

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, ids, layer=None, **kw):
            seen.update(kw, layer=layer)
            return torch.zeros(1, ids.shape[1], 4)

    out = encode_llm_tokens(Probe(), LLMTokens((1, 2, 3), {"images": "pixels"}), layer=-3)
    assert out.shape == (1, 3, 4) and seen == {"images": "pixels", "layer": -3}


def test_spec_fields_and_is_llm():
    spec = ZIMAGE.text_encoder("qwen3_4b")
    assert spec.is_llm and spec.template == TEMPLATE and spec.layer == -2 and not spec.final_norm
    assert spec.drop_front == 0 and spec.pad_token == 151643
    assert not TextEncoderSpec("clip_l").is_llm and not TextEncoderSpec("t5xxl", tokenizer="t5").is_llm


def test_fp8_text_encoder_file_stays_fp8_and_encodes_close(te_file, tmp_path):
    from safetensors.torch import load_file, save_file

    fp8 = tmp_path / "qwen_3_4b_fp8_e4m3fn.safetensors"
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in load_file(te_file).items()}, str(fp8))
    manager = ModelManager(DevicePolicy.cpu())
    clip8 = load_clip_value(manager, [str(fp8)], "lumina2")
    cond8, _, _ = clip8.encode("a photo of a cat")
    clip = load_clip_value(ModelManager(DevicePolicy.cpu()), [te_file], "lumina2")
    cond, _, _ = clip.encode("a photo of a cat")
    info = {i.kind: i for i in manager.list()}["clip"]
    n = sum(v.numel() for v in load_file(te_file).values())
    assert info.bytes == n  # one byte a weight: the fp8 weights are kept as fp8
    rel = (cond8 - cond).norm() / cond.norm()
    assert torch.isfinite(cond8).all() and 0 < rel < 0.1, rel
