"""The shipped T5 tokenizer against transformers' T5TokenizerFast, and ComfyUI's T5 prompt rules."""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

import pytest
import torch

from comfy_notebook.errors import ModelLoadError
from comfy_notebook.models.t5 import T5Config, T5Encoder
from comfy_notebook.models.t5_tokenizer import (
    EOS_ID,
    PAD_ID,
    T5Tokenizer,
    encode_t5_tokens,
    get_t5_tokenizer,
    tokenize_t5_prompt,
)
from comfy_notebook.testing import random_state_dict

_EXTRA = [
    "", " ", "hello <extra_id_0> world", "</s> inside", "Ünïcödé café naïve façade", "ＦＵＬＬ　ｗｉｄｔｈ",
    "emoji 🐱‍👤 and ©®™", "tabs\tand\nnewlines", "   leading and trailing   ", "multiple    spaces",
    "中文提示词，一只猫", "日本語のプロンプト", "numbers 1234567890 3.14159 1e-5", "<unk> <pad>",
    "A cat holding a sign that says hello world",
]


@pytest.fixture(scope="module")
def shipped_json(tmp_path_factory) -> Path:
    data = resources.files("comfy_notebook.models").joinpath("data/t5_tokenizer.json.gz").read_bytes()
    path = tmp_path_factory.mktemp("t5tok") / "tokenizer.json"
    path.write_bytes(gzip.decompress(data))
    return path


def _prompts() -> list[str]:
    corpus = json.loads((Path(__file__).parent / "prompts_corpus.json").read_text())
    return list(corpus) + _EXTRA


def test_identity_of_the_shipped_file():
    tok = get_t5_tokenizer()
    assert tok.vocab_size == 32100
    assert tok.token_to_id("▁the") == 8 and tok.token_to_id("<pad>") == PAD_ID
    assert tok.token_to_id("</s>") == EOS_ID and tok.token_to_id("<extra_id_0>") == 32099
    assert tok("a photo of the cat") == [3, 9, 1202, 13, 8, 1712, 1]
    assert tok.encode("a photo of the cat") == [3, 9, 1202, 13, 8, 1712]


def test_ids_equal_transformers_on_the_same_file(shipped_json):
    from transformers import T5TokenizerFast

    ref = T5TokenizerFast(tokenizer_file=str(shipped_json))
    ours = T5Tokenizer(shipped_json)  # a user-supplied file (ComfyUI layout: a tokenizer.json)
    shipped = get_t5_tokenizer()
    prompts = _prompts()
    assert len(prompts) >= 200
    for p in prompts:
        expected = ref(p)["input_ids"]
        assert ours(p) == expected, p
        assert shipped(p) == expected, p
    assert T5Tokenizer(shipped_json.parent)("a cat") == ref("a cat")["input_ids"]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="T5 tokenizer file not found"):
        T5Tokenizer(tmp_path)


def test_flux_row_is_eos_ended_and_padded_to_256():
    tok = get_t5_tokenizer()
    row = tokenize_t5_prompt("a photo of the cat")
    assert len(row) == 256
    assert [t for t, _ in row[:7]] == [3, 9, 1202, 13, 8, 1712, EOS_ID]
    assert all(t == PAD_ID and w == 1.0 for t, w in row[7:])
    long = " ".join(["cat"] * 400)
    row = tokenize_t5_prompt(long, tok)
    assert len(row) == len(tok.encode(long)) + 1 > 256 and row[-1] == (EOS_ID, 1.0)  # no truncation
    assert len(tokenize_t5_prompt("a cat", min_length=77)) == 77  # SD3


def test_weights_and_segments_as_comfyui():
    tok = get_t5_tokenizer()
    row = tokenize_t5_prompt("a (red:1.5) cat")
    # each weighted segment is tokenized on its own (so each starts a new word)
    ids = tok.encode("a ") + tok.encode("red") + tok.encode(" cat")
    assert [t for t, _ in row[: len(ids)]] == ids
    assert [w for _, w in row[: len(ids)]] == [1.0] * len(tok.encode("a ")) + [1.5] * len(tok.encode("red")) + [
        1.0] * len(tok.encode(" cat"))
    # an unknown embedding word is dropped, the text after it stays
    assert tokenize_t5_prompt("embedding:nope, a cat")[:4] == tokenize_t5_prompt(", a cat")[:4]


def test_weighted_encoding_interpolates_from_the_empty_row():
    enc = T5Encoder(T5Config.tiny()).eval()
    enc.load_state_dict(random_state_dict(enc, 0, tag="t5"))
    row = tokenize_t5_prompt("a (red:1.5) cat", min_length=16)
    z = encode_t5_tokens(enc, row)
    ids = torch.tensor([[t for t, _ in row]])
    empty = torch.tensor([[EOS_ID] + [PAD_ID] * 15])
    with torch.no_grad():
        plain, z_empty = enc(ids), enc(empty)
    w = torch.tensor([w for _, w in row])[None, :, None]
    expected = torch.where(w != 1.0, (plain - z_empty) * w + z_empty, plain)
    assert z.shape == (1, 16, 32)
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-6)
    unweighted = encode_t5_tokens(enc, tokenize_t5_prompt("a red cat", min_length=16))
    with torch.no_grad():
        assert torch.equal(unweighted, enc(torch.tensor([[t for t, _ in tokenize_t5_prompt("a red cat", min_length=16)]])))
