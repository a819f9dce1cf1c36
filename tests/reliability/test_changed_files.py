"""Files that change under the cache (issue 19): a checkpoint, LoRA, embedding or input image
replaced on disk under the same name is detected by its identity (size, mtime, header hash),
never served stale from the cache nor from the model manager; a file deleted while its model is
loaded keeps working until unloaded, then says clearly that it is gone."""

from __future__ import annotations

import os
import pathlib
import shutil

import numpy as np
import pytest
import torch
from harness import CKPT, new_session, tiny_prompt
from PIL import Image

from comfy_notebook.errors import ModelLoadError, ValidationError
from comfy_notebook.folders import identity
from comfy_notebook.testing import make_checkpoint, make_embedding, make_lora


@pytest.fixture
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    make_checkpoint(tmp_path / "models" / "checkpoints" / CKPT, preset="sd1-tiny", seed=0)
    (tmp_path / "input").mkdir()
    return tmp_path


def _replace(path: pathlib.Path, maker: object, *args: object, **kw: object) -> None:
    """Write a new file and move it over ``path`` (same name, new content)."""
    tmp = path.with_name("new-" + path.name)
    maker(tmp, *args, **kw)  # type: ignore[operator]
    os.replace(tmp, path)


def _image(result: object) -> torch.Tensor:
    return result.outputs["8"][0]  # type: ignore[attr-defined, no-any-return]


def test_replaced_checkpoint_is_loaded_again(root: pathlib.Path) -> None:
    s = new_session(root)
    api = tiny_prompt()
    first = _image(s.run_prompt(api))
    _replace(root / "models" / "checkpoints" / CKPT, make_checkpoint, preset="sd1-tiny", seed=1)
    result = s.run_prompt(api)
    assert "4" in result.executed, "the loader must run again for the new file"
    second = _image(result)
    assert not torch.equal(first, second)
    fresh = _image(new_session(root).run_prompt(api))
    assert torch.equal(second, fresh), "the session must give what a fresh session gives"
    names = [m.name for m in s.models.list()]
    assert len(names) == len(set(names)) == 3  # the old weights were unregistered, not kept


def test_replaced_in_place_same_size(root: pathlib.Path) -> None:
    """``cp new old`` (same inode, same size): the header hash or mtime tells them apart."""
    s = new_session(root)
    api = tiny_prompt()
    first = _image(s.run_prompt(api))
    other = root / "other.safetensors"
    make_checkpoint(other, preset="sd1-tiny", seed=2)
    path = root / "models" / "checkpoints" / CKPT
    assert other.stat().st_size == path.stat().st_size
    shutil.copyfile(other, path)
    second = _image(s.run_prompt(api))
    assert not torch.equal(first, second)
    assert torch.equal(second, _image(new_session(root).run_prompt(api)))


def test_unchanged_file_stays_cached_and_is_not_rehashed(root: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = new_session(root)
    api = tiny_prompt()
    s.run_prompt(api)
    reads = []
    real_open = open

    def counting_open(file: object, mode: str = "r", *a: object, **k: object) -> object:
        if str(file).endswith(CKPT) and "b" in mode:
            reads.append(file)
        return real_open(file, mode, *a, **k)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", counting_open)
    for _ in range(3):
        assert s.run_prompt(api).executed == set()
    assert reads == []  # identity came from the (path, stat) memo


def test_identity_reads_only_the_edges(tmp_path: pathlib.Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(64 << 20)  # sparse 64 MiB
    first = identity.file_identity(big)
    with open(big, "r+b") as f:  # change a byte in the middle: same size; only mtime says so
        f.seek(32 << 20)
        f.write(b"x")
    os.utime(big, ns=(0, 123))
    second = identity.file_identity(big)
    assert first != second and first is not None
    with open(big, "r+b") as f:  # change the header, keep size and mtime: the hash says so
        f.write(b"header")
    os.utime(big, ns=(0, 123))
    assert identity.file_identity(big) == second  # memo per (path, stat): no read at all
    identity._cache.clear()
    assert identity.file_identity(big) != second
    assert identity.file_identity(tmp_path / "absent") is None


def test_replaced_lora_is_applied_anew(root: pathlib.Path) -> None:
    loras = root / "models" / "loras"
    loras.mkdir(parents=True)
    make_lora(loras / "l.safetensors", root / "models" / "checkpoints" / CKPT, seed=0)
    api = tiny_prompt()
    api["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1],
                                                        "lora_name": "l.safetensors",
                                                        "strength_model": 1.0, "strength_clip": 1.0}}
    api["3"]["inputs"]["model"] = ["10", 0]
    api["6"]["inputs"]["clip"] = ["10", 1]
    api["7"]["inputs"]["clip"] = ["10", 1]
    s = new_session(root)
    first = _image(s.run_prompt(api))
    _replace(loras / "l.safetensors", make_lora, root / "models" / "checkpoints" / CKPT, seed=5)
    result = s.run_prompt(api)
    assert "10" in result.executed and "4" not in result.executed
    assert not torch.equal(first, _image(result))
    assert torch.equal(_image(result), _image(new_session(root).run_prompt(api)))


def test_replaced_input_image_is_read_again(root: pathlib.Path) -> None:
    path = root / "input" / "in.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    api = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}}}
    s = new_session(root)
    first = s.run_prompt(api, targets=["1"]).outputs["1"][0]
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(path)
    again = s.run_prompt(api, targets=["1"])
    assert "1" in again.executed and not torch.equal(first, again.outputs["1"][0])


def test_deleted_checkpoint_works_until_unloaded_then_says_it_is_gone(root: pathlib.Path) -> None:
    s = new_session(root)
    api = tiny_prompt()
    s.run_prompt(api)
    (root / "models" / "checkpoints" / CKPT).unlink()
    unet = s.models["tiny/unet"]
    with s.models.use(unet.ref()) as module:  # loaded: keeps working
        assert module is not None
    s.models.unload_all()
    with pytest.raises(ModelLoadError, match="is gone") as info:
        s.models.load("tiny/unet")
    assert "Fix:" in str(info.value)


def test_changed_file_is_not_reloaded_under_the_old_registration(root: pathlib.Path) -> None:
    """After an unload, the manager's factory refuses a file that changed on disk (the old
    model's refs would otherwise silently get the new weights)."""
    s = new_session(root)
    s.run_prompt(tiny_prompt())
    s.models.unload_all()
    _replace(root / "models" / "checkpoints" / CKPT, make_checkpoint, preset="sd1-tiny", seed=3)
    with pytest.raises(ModelLoadError, match="changed on disk"):
        s.models.load("tiny/unet")
    # the loader node registers the new file in place of the old one
    result = s.run_prompt(tiny_prompt())
    assert "4" in result.executed
    (root / "models" / "checkpoints" / CKPT).unlink()
    with pytest.raises(ValidationError, match=r"tiny\.safetensors"):  # a missing file is named
        s.run_prompt(tiny_prompt(seed=99))


def test_every_file_loader_fingerprints_its_file(tiny_root: pathlib.Path) -> None:
    """Every built-in loader of a model-folder file has IS_CHANGED (new loaders included):
    otherwise a file replaced under the same name is served stale from the cache."""
    s = new_session(tiny_root)
    loaders = [n for n in s.registry.names() if n.endswith("Loader") or n.endswith("LoaderSimple")
               or n.endswith("LoaderModelOnly")]
    file_loaders = [n for n in loaders
                    if any(name.endswith("_name") or name.startswith("clip_name")
                           for name in s.registry.get(n).inputs)]
    assert "CheckpointLoaderSimple" in file_loaders and len(file_loaders) >= 6
    missing = [n for n in file_loaders if not s.registry.get(n).has_is_changed]
    assert missing == []


def _embedding_width(checkpoint: pathlib.Path) -> int:
    from safetensors import safe_open

    with safe_open(str(checkpoint), "pt") as f:
        key = next(k for k in f.keys() if k.endswith("token_embedding.weight"))  # noqa: SIM118
        return int(f.get_slice(key).get_shape()[1])


def test_replaced_embedding_is_detected(root: pathlib.Path) -> None:
    """Regression: CLIPTextEncode's key ignored the embedding files its text names, so a
    textual-inversion file replaced under the same name was served stale from the cache."""
    emb = root / "models" / "embeddings" / "style.safetensors"
    width = _embedding_width(root / "models" / "checkpoints" / CKPT)
    make_embedding(emb, width, seed=0)
    api = tiny_prompt()
    api["6"]["inputs"]["text"] = "a photo, embedding:style"
    s = new_session(root)
    first = _image(s.run_prompt(api))
    assert s.run_prompt(api).executed <= {"9"}  # unchanged: cached
    _replace(emb, make_embedding, width, seed=1)
    result = s.run_prompt(api)
    assert "6" in result.executed and "7" not in result.executed  # the other text is untouched
    assert not torch.equal(first, _image(result))
    assert torch.equal(_image(result), _image(new_session(root).run_prompt(api)))
    # an embedding that appears under a name the text already asked for is picked up too
    api["6"]["inputs"]["text"] = "a photo, embedding:later"
    with pytest.warns(UserWarning, match="embedding:later not found"):
        before = _image(s.run_prompt(api))
    make_embedding(emb.with_name("later.safetensors"), width, seed=2)
    after = s.run_prompt(api)
    assert "6" in after.executed and not torch.equal(before, _image(after))


def test_embedding_identity_keeps_real_mode_fast(root: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real mode keys CLIPTextEncode itself (no executor round trip on a hit), with or without an
    embedding in the text, and a plain text's key is the one it had before embeddings counted."""
    from comfy_notebook.engine.cache import node_signature
    from comfy_notebook.realmode.calls import node_function
    from comfy_notebook.realmode.state import state

    emb = root / "models" / "embeddings" / "style.safetensors"
    width = _embedding_width(root / "models" / "checkpoints" / CKPT)
    make_embedding(emb, width, seed=0)
    s = new_session(root)
    _model, clip, _vae = node_function("CheckpointLoaderSimple", s)(CKPT)
    encode = node_function("CLIPTextEncode", s)
    plain, styled = encode("a cat", clip), encode("a cat, embedding:style", clip)
    assert plain.node.signature == node_signature("CLIPTextEncode", None, None, {"text": "a cat"},
                                                  {"clip": (clip.node.signature, 1)})
    runs = []
    real_run = s.run
    monkeypatch.setattr(s, "run", lambda *a, **k: runs.append(1) or real_run(*a, **k))
    assert torch.equal(encode("a cat", clip).value[0][0], plain.value[0][0])
    assert torch.equal(encode("a cat, embedding:style", clip).value[0][0], styled.value[0][0])
    assert runs == [] and "CLIPTextEncode" not in state(s).slow_keys  # both were fast hits
    _replace(emb, make_embedding, width, seed=1)
    changed = encode("a cat, embedding:style", clip)
    assert runs == [1] and not torch.equal(changed.value[0][0], styled.value[0][0])
    assert "CLIPTextEncode" not in state(s).slow_keys
