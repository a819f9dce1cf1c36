"""ComfyUI prompt syntax (weights, escapes, embeddings, chunking) and prompt encoding."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from comfy_notebook.errors import ModelLoadError, NodeError
from comfy_notebook.models.clip import CLIPTextConfig, CLIPTextModel
from comfy_notebook.models.prompt import (
    encode_prompt,
    encode_tokens,
    load_embedding,
    make_embedding_lookup,
    parse_weights,
    tokenize_prompt,
)
from comfy_notebook.models.tokenizer import get_tokenizer

BOS, EOS, CAT, DOG, A, COMMA = 49406, 49407, 2368, 1929, 320, 267


@pytest.fixture(scope="module")
def model() -> CLIPTextModel:
    torch.manual_seed(0)
    m = CLIPTextModel(CLIPTextConfig.tiny()).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _ids(row):
    return [t if isinstance(t, int) else "E" for t, _ in row]


# -- weights --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a (b) c", [("a ", 1.0), ("b", 1.1), (" c", 1.0)]),
        ("((b))", [("b", 1.1 * 1.1)]),
        ("(b:1.5)", [("b", 1.5)]),
        ("((b:1.5))", [("b", 1.5)]),  # an explicit number replaces, it does not multiply
        ("((b:1.5) c)", [("b", 1.5), (" c", 1.1)]),
        ("(b:x)", [("b:x", 1.1)]),
        ("(a:1.2:1.3)", [("a:1.2", 1.3)]),
        ("(:1.2)", [(":1.2", 1.1)]),
        ("\\(b\\) (c\\))", [("(b) ", 1.0), ("c)", 1.1)]),
        ("[b] {c}", [("[b] {c}", 1.0)]),  # no bracket syntax in ComfyUI core
        ("(a:1.2", [("(a:1.2", 1.0)]),  # unbalanced: plain text
        ("a) (b)", [("a) (b)", 1.0)]),
        ("x (y:0.5) (z:-1)", [("x ", 1.0), ("y", 0.5), (" ", 1.0), ("z", -1.0)]),
        ("", []),
    ],
)
def test_parse_weights(text: str, expected: list[tuple[str, float]]) -> None:
    got = parse_weights(text)
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], abs=1e-12)


# -- chunking -------------------------------------------------------------------------------------
def test_empty_prompt_is_one_padded_row() -> None:
    chunks = tokenize_prompt(get_tokenizer(), "").chunks
    assert chunks == [[(BOS, 1.0)] + [(EOS, 1.0)] * 76]


@pytest.mark.parametrize(("n", "rows"), [(1, 1), (75, 1), (76, 2), (150, 2), (151, 3)])
def test_rows_hold_75_tokens(n: int, rows: int) -> None:
    chunks = tokenize_prompt(get_tokenizer(), "cat " * n).chunks
    assert len(chunks) == rows and all(len(r) == 77 for r in chunks)
    ids = [t for row in chunks for t in _ids(row)]
    assert ids.count(CAT) == n  # one large group: cut at the boundaries, nothing lost
    for row in chunks:
        assert row[0] == (BOS, 1.0) and row[-1] == (EOS, 1.0)


def test_small_group_moves_whole_to_next_row() -> None:
    chunks = tokenize_prompt(get_tokenizer(), "cat " * 73 + "(dog dog dog:1.2)").chunks
    assert len(chunks) == 2
    assert _ids(chunks[0]) == [BOS] + [CAT] * 73 + [EOS] * 3
    assert chunks[1][:5] == [(BOS, 1.0), (DOG, 1.2), (DOG, 1.2), (DOG, 1.2), (EOS, 1.0)]
    assert _ids(chunks[1]) == [BOS] + [DOG] * 3 + [EOS] * 73


def test_group_of_eight_is_cut_at_the_boundary() -> None:
    chunks = tokenize_prompt(get_tokenizer(), "cat " * 73 + "(" + "dog " * 8 + ":1.2)").chunks
    assert _ids(chunks[0]) == [BOS] + [CAT] * 73 + [DOG] * 2 + [EOS]
    assert chunks[0][75] == (DOG, 1.2)
    assert _ids(chunks[1]) == [BOS] + [DOG] * 6 + [EOS] * 70


def test_group_of_seven_moves_whole() -> None:
    chunks = tokenize_prompt(get_tokenizer(), "cat " * 73 + "(" + "dog " * 7 + ":1.2)").chunks
    assert _ids(chunks[0]) == [BOS] + [CAT] * 73 + [EOS] * 3
    assert _ids(chunks[1]) == [BOS] + [DOG] * 7 + [EOS] * 69


# -- embeddings -----------------------------------------------------------------------------------
def _lookup(table):
    return lambda name: table.get(name)


def test_embedding_vectors_are_spliced_in_order() -> None:
    vecs = torch.randn(3, 64)
    tp = tokenize_prompt(
        get_tokenizer(), "a embedding:foo cat", embedding_lookup=_lookup({"foo": vecs})
    )
    row = tp.chunks[0]
    assert _ids(row)[:7] == [BOS, A, "E", "E", "E", CAT, EOS]
    for i in range(3):
        assert torch.equal(row[2 + i][0], vecs[i])
    assert tp.missing_embeddings == []


def test_unknown_embedding_is_reported_and_dropped() -> None:
    tp = tokenize_prompt(get_tokenizer(), "cat embedding:nope dog", embedding_lookup=_lookup({}))
    assert tp.missing_embeddings == ["nope"]
    assert _ids(tp.chunks[0])[:4] == [BOS, CAT, DOG, EOS]


def test_embedding_name_with_trailing_comma() -> None:
    vec = torch.randn(64)
    tp = tokenize_prompt(
        get_tokenizer(), "embedding:foo, cat", embedding_lookup=_lookup({"foo": vec})
    )
    row = tp.chunks[0]
    assert _ids(row)[:5] == [BOS, "E", COMMA, CAT, EOS]
    assert torch.equal(row[1][0], vec)


def test_weighted_embedding_and_text_without_lookup() -> None:
    vecs = torch.randn(2, 64)
    tp = tokenize_prompt(
        get_tokenizer(), "(embedding:foo:1.3)", embedding_lookup=_lookup({"foo": vecs})
    )
    assert [w for _, w in tp.chunks[0][1:3]] == [1.3, 1.3]
    tok = get_tokenizer()
    plain = tokenize_prompt(tok, "cat embedding:foo")
    assert _ids(plain.chunks[0])[1:-1][: len(tok.encode("cat embedding:foo"))] == tok.encode(
        "cat embedding:foo"
    )
    glued = tokenize_prompt(tok, "catembedding:foo", embedding_lookup=_lookup({"foo": vecs}))
    assert "E" not in _ids(glued.chunks[0])  # only after a space, a newline or a segment start


# -- encoding -------------------------------------------------------------------------------------
def test_unweighted_prompt_is_the_plain_forward(model: CLIPTextModel) -> None:
    tok = get_tokenizer()
    cond, pooled = encode_prompt(model, tok, "a photo of a cat")
    with torch.no_grad():
        ref = model(torch.tensor([tok.tokenize("a photo of a cat")]))
    assert cond.shape == (1, 77, 64) and cond.dtype == torch.float32
    torch.testing.assert_close(cond, ref.hidden, atol=0, rtol=0)
    torch.testing.assert_close(pooled, ref.pooled, atol=0, rtol=0)


def test_weights_interpolate_from_the_empty_prompt(model: CLIPTextModel) -> None:
    tok = get_tokenizer()
    text = "a (cat:1.5) (dog:0.5)"
    cond, pooled = encode_prompt(model, tok, text, layer=-2)
    rows = tokenize_prompt(tok, text).chunks
    ids = torch.tensor([[t for t, _ in rows[0]], tok.tokenize("")])
    with torch.no_grad():
        z = model(ids, layer=-2).hidden
    expected = z[0].clone()
    for j, (_, w) in enumerate(rows[0]):
        if w != 1.0:
            expected[j] = (z[0, j] - z[1, j]) * w + z[1, j]
    torch.testing.assert_close(cond[0], expected, atol=1e-6, rtol=0)
    assert not torch.allclose(cond[0], z[0])  # the weights did something
    torch.testing.assert_close(pooled[0], model(ids[:1]).pooled[0], atol=1e-6, rtol=0)


def test_long_prompt_rows_are_concatenated(model: CLIPTextModel) -> None:
    tok = get_tokenizer()
    text = "cat " * 80 + "dog"
    cond, pooled = encode_prompt(model, tok, text)
    rows = tokenize_prompt(tok, text).chunks
    assert cond.shape == (1, 154, 64)
    ids = torch.tensor([[t for t, _ in r] for r in rows])
    with torch.no_grad():
        out = model(ids)
    torch.testing.assert_close(cond[0, :77], out.hidden[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(cond[0, 77:], out.hidden[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(pooled, out.pooled[:1], atol=1e-6, rtol=0)


def test_layer_beyond_depth_means_last(model: CLIPTextModel) -> None:
    tok = get_tokenizer()
    last, _ = encode_prompt(model, tok, "a cat")
    far, _ = encode_prompt(model, tok, "a cat", layer=-24)  # CLIPSetLastLayer allows -24..-1
    penultimate, _ = encode_prompt(model, tok, "a cat", layer=-2)
    torch.testing.assert_close(far, last, atol=0, rtol=0)
    assert not torch.allclose(penultimate, last)


def test_embedding_equals_a_new_vocabulary_row(model: CLIPTextModel) -> None:
    """Splicing a vector gives what a vocabulary row holding that vector gives."""
    tok = get_tokenizer()
    vec = torch.randn(2, 64)
    cond, pooled = encode_prompt(
        model, tok, "a embedding:foo cat", embedding_lookup=_lookup({"foo": vec})
    )
    spare = 12345
    ids = [BOS, A, spare, spare + 1, CAT] + [EOS] * 72
    with torch.no_grad():
        table = model.token_embedding.weight
        saved = table[spare : spare + 2].clone()
        table[spare : spare + 2] = vec
        try:
            ref = model(torch.tensor([ids]))
        finally:
            table[spare : spare + 2] = saved
    torch.testing.assert_close(cond, ref.hidden, atol=1e-6, rtol=0)
    torch.testing.assert_close(pooled, ref.pooled, atol=1e-6, rtol=0)


def test_wrong_width_embedding_is_a_clear_error(model: CLIPTextModel) -> None:
    with pytest.raises(NodeError, match="vectors of size 64"):
        encode_prompt(
            model,
            get_tokenizer(),
            "embedding:big",
            embedding_lookup=_lookup({"big": torch.randn(1, 768)}),
        )


def test_missing_embeddings_are_logged(
    model: CLIPTextModel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="comfy_notebook.models.prompt"):
        encode_prompt(model, get_tokenizer(), "a embedding:ghost", embedding_lookup=_lookup({}))
    assert "embedding:ghost does not exist" in caplog.text


def test_output_dtype_and_empty_chunks(model: CLIPTextModel) -> None:
    cond, pooled = encode_prompt(model, get_tokenizer(), "cat", dtype=torch.float16)
    assert cond.dtype == pooled.dtype == torch.float16
    cond, pooled = encode_tokens(model, [])
    assert cond.shape == (1, 77, 64) and pooled.shape == (1, 64)


# -- embedding files ------------------------------------------------------------------------------
def test_load_embedding_formats(tmp_path: Path) -> None:
    import safetensors.torch

    vec = torch.randn(2, 768)
    torch.save(
        {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "x", "step": 10},
        tmp_path / "a1111.pt",
    )
    safetensors.torch.save_file({"emb_params": vec}, tmp_path / "a1111.safetensors")
    safetensors.torch.save_file(
        {"clip_g": torch.randn(2, 1280), "clip_l": vec}, tmp_path / "sdxl.safetensors"
    )
    safetensors.torch.save_file({"whatever": vec[0]}, tmp_path / "single.safetensors")
    for name in ("a1111.pt", "a1111.safetensors", "sdxl.safetensors"):
        torch.testing.assert_close(load_embedding(tmp_path / name), vec, atol=0, rtol=0)
    assert load_embedding(tmp_path / "single.safetensors").shape == (1, 768)
    assert load_embedding(tmp_path / "sdxl.safetensors", key="clip_g").shape == (2, 1280)


def test_load_embedding_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="cannot read the embedding file"):
        load_embedding(tmp_path / "junk.pt")
    torch.save({"name": "only metadata"}, tmp_path / "empty.pt")
    with pytest.raises(ModelLoadError, match="no embedding tensor"):
        load_embedding(tmp_path / "empty.pt")


def test_embedding_lookup_over_folders(tmp_path: Path) -> None:
    import safetensors.torch

    (tmp_path / "sub").mkdir()
    vec = torch.randn(1, 768)
    safetensors.torch.save_file({"emb_params": vec}, tmp_path / "sub" / "style.safetensors")
    torch.save({"emb_params": vec}, tmp_path / "outside.pt")
    lookup = make_embedding_lookup([tmp_path / "sub"])
    torch.testing.assert_close(lookup("style"), vec)
    torch.testing.assert_close(lookup("style.safetensors"), vec)
    assert lookup("nope") is None
    assert lookup("../outside") is None  # names cannot leave the folders
