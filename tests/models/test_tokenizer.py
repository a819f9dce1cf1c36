"""CLIP BPE tokenizer: id-for-id equality with transformers.CLIPTokenizer on the same vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfy_notebook.errors import ModelLoadError
from comfy_notebook.models.tokenizer import (
    BOS_TOKEN_ID,
    EOS_TOKEN_ID,
    CLIPTokenizer,
    bytes_to_unicode,
    get_tokenizer,
)

CORPUS = json.loads((Path(__file__).parent / "prompts_corpus.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """transformers' CLIPTokenizer built from vocab.json + merges.txt written from our data."""
    from transformers import CLIPTokenizer as HFCLIPTokenizer

    tok = get_tokenizer()
    d = tmp_path_factory.mktemp("clip_vocab")
    (d / "vocab.json").write_text(json.dumps(tok.vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(" ".join(m) for m in tok.merges)]
    (d / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return HFCLIPTokenizer.from_pretrained(str(d))


def test_vocabulary_layout() -> None:
    tok = get_tokenizer()
    vocab = tok.vocab
    assert len(vocab) == 49408
    assert len(set(vocab.values())) == 49408
    assert vocab["<|startoftext|>"] == BOS_TOKEN_ID == 49406
    assert vocab["<|endoftext|>"] == EOS_TOKEN_ID == 49407
    byte_chars = list(bytes_to_unicode().values())
    assert [vocab[c] for c in byte_chars] == list(range(256))
    assert [vocab[c + "</w>"] for c in byte_chars] == list(range(256, 512))
    assert vocab["".join(tok.merges[0])] == 512
    assert len(tok.merges) == 48894
    # Well-known ids of the OpenAI vocabulary.
    assert vocab["a</w>"] == 320 and vocab["photo</w>"] == 1125 and vocab["cat</w>"] == 2368


def test_bytes_to_unicode_is_a_bijection_onto_printables() -> None:
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())


def test_known_encodings() -> None:
    tok = get_tokenizer()
    assert tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    assert tok("") == [BOS_TOKEN_ID, EOS_TOKEN_ID]
    assert tok.encode("A  PHOTO\n\tof a CAT") == tok.encode("a photo of a cat")
    row = tok.tokenize("a cat")
    assert row == [BOS_TOKEN_ID, 320, 2368] + [EOS_TOKEN_ID] * 74 and len(row) == 77
    long_row = tok.tokenize("cat " * 100)
    assert len(long_row) == 77 and long_row[-1] == EOS_TOKEN_ID and long_row[75] == 2368


def test_corpus_size_and_variety() -> None:
    assert len(CORPUS) >= 200
    text = "".join(CORPUS)
    for needle in ("é", "😀", "日本", "'t", "\n", "\t", "<|endoftext|>", "Σ", "½", "  "):
        assert needle in text
    assert max(len(get_tokenizer().encode(p)) for p in CORPUS) > 150  # very long prompts


def test_corpus_matches_transformers(hf_tokenizer) -> None:
    tok = get_tokenizer()
    mismatches = [p for p in CORPUS if tok(p) != hf_tokenizer(p)["input_ids"]]
    assert mismatches == []


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Unassigned code points (category Cn) are excluded: Python 3.11's unicodedata is Unicode 14, the
# tokenizers library knows later versions, so characters assigned since then classify differently.
@given(st.text(st.characters(exclude_categories=["Cs", "Cn"]), max_size=60))
def test_random_text_matches_transformers(hf_tokenizer, text: str) -> None:
    assert get_tokenizer()(text) == hf_tokenizer(text)["input_ids"]


_PIECES = st.sampled_from(
    [
        "'s",
        "'T",
        "'ll",
        "'",
        "<|endoftext|>",
        "<|STARTOFTEXT|>",
        "<|",
        "|>",
        "Σ",
        "ς",
        "İ",
        "é",
        "e\u0301",
        " ",
        "\n",
        "\u3000",
        "\x1c",
        "1",
        "½",
        "a",
        "B",
        "!!",
        "😀",
        "🏽",
        "日",
    ]
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_PIECES, max_size=12).map("".join))
def test_tricky_fragments_match_transformers(hf_tokenizer, text: str) -> None:
    assert get_tokenizer()(text) == hf_tokenizer(text)["input_ids"]


def test_decode_round_trip() -> None:
    tok = get_tokenizer()
    assert (
        tok.decode(tok("A photo of a café, 😀!")) == "a photo of a café , 😀!"
    )  # 😀! is one punctuation run


def test_bpe_cache_returns_same_ids() -> None:
    tok = CLIPTokenizer()
    first = tok.encode("unbelievable unbelievable")
    assert first[: len(first) // 2] == first[len(first) // 2 :]
    assert "unbelievable" in tok._cache


def test_missing_vocab_file_is_a_clear_error(tmp_path: Path) -> None:
    tok = CLIPTokenizer(tmp_path / "nope.txt.gz")  # lazy: nothing read yet
    with pytest.raises(ModelLoadError, match="cannot read the CLIP BPE merges"):
        tok.encode("x")


def test_truncated_vocab_file_is_a_clear_error(tmp_path: Path) -> None:
    import gzip

    bad = tmp_path / "bad.txt.gz"
    with gzip.open(bad, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\ni n\nt h\n")
    with pytest.raises(ModelLoadError, match="expected 48894 merge lines"):
        _ = CLIPTokenizer(bad).vocab
