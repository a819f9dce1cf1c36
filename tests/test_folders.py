"""Folders: ComfyUI layout, extra_model_paths.yaml, listing cache, path safety, save paths."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from comfy_notebook.errors import ComfyNotebookError
from comfy_notebook.folders import (
    FolderError,
    Folders,
    PathEscapeError,
    folders_service,
    parse_extra_model_paths,
)


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def comfy_root(tmp_path: Path) -> Path:
    """A ComfyUI-shaped installation with a few model files."""
    root = tmp_path / "ComfyUI"
    m = root / "models"
    _touch(m / "checkpoints" / "v1-5-pruned-emaonly.safetensors")
    _touch(m / "checkpoints" / "sdxl" / "sd_xl_base_1.0.safetensors")
    _touch(m / "checkpoints" / "notes.txt")  # unknown extension: not listed
    _touch(m / "vae" / "vae-ft-mse.pt")
    _touch(m / "loras" / "style" / "ink.safetensors")
    _touch(m / "clip" / "clip_l.safetensors")  # old name of text_encoders
    _touch(m / "text_encoders" / "t5xxl.safetensors")
    _touch(m / "unet" / "flux.sft")
    _touch(m / "diffusion_models" / "sd3.safetensors")
    _touch(m / "upscale_models" / "4x.pth")
    _touch(root / "input" / "example.png")
    _touch(root / "input" / "readme.md")
    (root / "output").mkdir()
    return root


def test_comfyui_root_layout(comfy_root: Path) -> None:
    f = Folders(comfy_root)
    assert f.models_dir == (comfy_root / "models").absolute()
    assert f.output_dir == (comfy_root / "output").absolute()
    assert f.input_dir == (comfy_root / "input").absolute()
    assert f.list("checkpoints") == [
        "sdxl/sd_xl_base_1.0.safetensors",
        "v1-5-pruned-emaonly.safetensors",
    ]
    assert f.list("text_encoders") == ["clip_l.safetensors", "t5xxl.safetensors"]
    assert f.list("clip") == f.list("text_encoders")
    assert f.list("diffusion_models") == ["flux.sft", "sd3.safetensors"]
    assert f.list("unet") == f.list("diffusion_models")
    assert f.list("loras") == ["style/ink.safetensors"]
    assert f.list("upscale_models") == ["4x.pth"]
    assert f.list("input") == ["example.png"]
    assert f.list("embeddings") == []  # missing folder is simply empty
    # models dir given directly works the same
    g = Folders(comfy_root / "models", output_dir=comfy_root / "out")
    assert g.list("vae") == ["vae-ft-mse.pt"]
    assert g.output_dir == (comfy_root / "out").absolute()


def test_resolve_and_close_matches(comfy_root: Path) -> None:
    f = Folders(comfy_root)
    path = f.resolve("checkpoints", "sdxl/sd_xl_base_1.0.safetensors")
    assert path == comfy_root / "models" / "checkpoints" / "sdxl" / "sd_xl_base_1.0.safetensors"
    assert f.resolve("clip", "clip_l.safetensors").name == "clip_l.safetensors"
    with pytest.raises(FolderError) as info:
        f.resolve("checkpoints", "v1-5-pruned-emaonly.ckpt")
    assert "v1-5-pruned-emaonly.safetensors" in str(info.value)
    assert "not found" in str(info.value)
    assert f.validate("checkpoints", "v1-5-pruned-emaonly.safetensors") is True
    msg = f.validate("checkpoints", "v1-5-pruned.safetensors")
    assert isinstance(msg, str) and "there: ['v1-5-pruned-emaonly.safetensors'" in msg and "(closest: 'v1-5-pruned-emaonly.safetensors')" in msg
    with pytest.raises(FolderError, match="Did you mean 'checkpoints'"):
        f.list("checkpoint")


def test_listing_refreshes_when_files_change(comfy_root: Path) -> None:
    f = Folders(comfy_root)
    assert "new.safetensors" not in f.list("vae")
    first = f.list("vae")
    assert f.list("vae") is not first  # a fresh list each call, cached walk underneath
    new = _touch(comfy_root / "models" / "vae" / "new.safetensors")
    assert "new.safetensors" in f.list("vae")
    new.unlink()
    # directory mtime granularity: make sure the change is visible
    os.utime(new.parent, (time.time() + 5, time.time() + 5))
    assert "new.safetensors" not in f.list("vae")
    _touch(comfy_root / "models" / "vae" / "deep" / "er" / "x.pt")
    assert "deep/er/x.pt" in f.list("vae")


def test_traversal_is_rejected(comfy_root: Path, tmp_path: Path) -> None:
    f = Folders(comfy_root)
    secret = _touch(tmp_path / "secret.safetensors")
    for bad in ["../vae/vae-ft-mse.pt", "sdxl/../../vae/vae-ft-mse.pt", str(secret), "/etc/passwd"]:
        with pytest.raises(PathEscapeError):
            f.resolve("checkpoints", bad)
    link = comfy_root / "models" / "checkpoints" / "linked.safetensors"
    link.symlink_to(secret)
    with pytest.raises(PathEscapeError, match="symlink"):
        f.resolve("checkpoints", "linked.safetensors")
    assert not f.exists("checkpoints", "linked.safetensors")
    # PathEscapeError is a ComfyNotebookError with expected/received
    with pytest.raises(ComfyNotebookError, match="expected"):
        f.save_path("../escape", 8, 8)
    with pytest.raises(PathEscapeError):
        f.save_path("/tmp/abs", 8, 8)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (f.output_dir / "sneaky").symlink_to(outside)
    with pytest.raises(PathEscapeError, match="outside"):
        f.save_path("sneaky/img", 8, 8)


YAML = """\
# an extra_model_paths.yaml in ComfyUI's style
comfyui:
    base_path: {comfy}
    is_default: true
    checkpoints: extra/checkpoints/
    clip: extra/clip/   # legacy name
    loras: |
        extra/loras_a
        extra/loras_b

a111:
    base_path: {a1111}
    checkpoints: models/Stable-diffusion
    upscale_models: |
                  models/ESRGAN
                  models/RealESRGAN
    embeddings: embeddings
    vae: "models/VAE"
"""


def test_parse_extra_model_paths_subset() -> None:
    parsed = parse_extra_model_paths(YAML.format(comfy="/c", a1111="'/a b'"))
    assert parsed["comfyui"] == {
        "base_path": "/c",
        "is_default": True,
        "checkpoints": "extra/checkpoints/",
        "clip": "extra/clip/",
        "loras": "extra/loras_a\nextra/loras_b\n",
    }
    assert parsed["a111"]["base_path"] == "/a b"
    assert parsed["a111"]["upscale_models"] == "models/ESRGAN\nmodels/RealESRGAN\n"
    assert parsed["a111"]["vae"] == "models/VAE"
    with pytest.raises(FolderError, match="line 2"):
        parse_extra_model_paths("comfyui:\n    just a line\n")


def test_extra_model_paths_yaml(comfy_root: Path, tmp_path: Path) -> None:
    a1111 = tmp_path / "webui"
    _touch(a1111 / "models" / "Stable-diffusion" / "anything.ckpt")
    _touch(a1111 / "models" / "ESRGAN" / "esr.pth")
    _touch(a1111 / "models" / "RealESRGAN" / "real.pth")
    _touch(a1111 / "embeddings" / "bad_hands.pt")
    _touch(a1111 / "models" / "VAE" / "a.safetensors")
    extra = tmp_path / "extra_comfy"
    _touch(extra / "extra" / "checkpoints" / "v1-5-pruned-emaonly.safetensors", b"shadow")
    _touch(extra / "extra" / "clip" / "clip_g.safetensors")
    _touch(extra / "extra" / "loras_b" / "b.safetensors")
    yaml_path = tmp_path / "extra_model_paths.yaml"
    yaml_path.write_text(YAML.format(comfy=extra, a1111=a1111))
    f = Folders(comfy_root, extra_paths=yaml_path)
    assert f.list("checkpoints") == [
        "anything.ckpt",
        "sdxl/sd_xl_base_1.0.safetensors",
        "v1-5-pruned-emaonly.safetensors",
    ]
    # is_default: the extra folder is searched first, so its file wins
    assert f.resolve("checkpoints", "v1-5-pruned-emaonly.safetensors").read_bytes() == b"shadow"
    assert f.paths("checkpoints")[0] == (extra / "extra" / "checkpoints").absolute()
    # a1111 (not default) folders come after the models root
    assert f.paths("upscale_models")[0] == (comfy_root / "models" / "upscale_models").absolute()
    assert f.list("upscale_models") == ["4x.pth", "esr.pth", "real.pth"]
    assert "clip_g.safetensors" in f.list("text_encoders")
    assert f.list("loras") == ["b.safetensors", "style/ink.safetensors"]
    assert f.list("embeddings") == ["bad_hands.pt"]
    assert f.list("vae") == ["a.safetensors", "vae-ft-mse.pt"]


def test_relative_base_path_is_relative_to_yaml(tmp_path: Path) -> None:
    _touch(tmp_path / "cfg" / "shared" / "loras" / "l.safetensors")
    y = tmp_path / "cfg" / "extra.yaml"
    y.write_text("mine:\n  base_path: shared\n  loras: loras\n")
    f = Folders(tmp_path / "models", extra_paths=[y, {"vae": [tmp_path / "v"]}])
    _touch(tmp_path / "v" / "z.pt")
    assert f.list("loras") == ["l.safetensors"]
    assert f.list("vae") == ["z.pt"]


def test_from_config_precedence(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (a, b, c):
        _touch(d / "checkpoints" / f"{d.name}.safetensors")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'models_dir = "{c}"\noutput_dir = "{tmp_path / "out"}"\n')
    env = {"COMFY_NOTEBOOK_MODELS": str(b)}
    assert Folders.from_config(a, environ=env, config_path=cfg).list("checkpoints") == [
        "a.safetensors"
    ]
    f = Folders.from_config(environ=env, config_path=cfg)
    assert f.list("checkpoints") == ["b.safetensors"]
    assert f.output_dir == tmp_path / "out"
    assert Folders.from_config(environ={}, config_path=cfg).list("checkpoints") == [
        "c.safetensors"
    ]
    # the default location follows XDG_CONFIG_HOME
    xdg = tmp_path / "xdg"
    (xdg / "comfy_notebook").mkdir(parents=True)
    (xdg / "comfy_notebook" / "config.toml").write_text(f'models_dir = "{c}"\n')
    assert Folders.from_config(environ={"XDG_CONFIG_HOME": str(xdg)}).models_dir == c
    bad = tmp_path / "bad.toml"
    bad.write_text("models_dir = \n")
    with pytest.raises(FolderError, match="config file"):
        Folders.from_config(environ={}, config_path=bad)


def test_save_path_numbering_and_substitution(tmp_path: Path) -> None:
    f = Folders(tmp_path / "models", output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp")
    full, name, counter, sub = f.save_path("ComfyUI", 64, 32)
    assert (full, name, counter, sub) == (tmp_path / "out", "ComfyUI", 1, "")
    (full / "ComfyUI_00001_.png").write_bytes(b"")
    (full / "ComfyUI_00007_.png").write_bytes(b"")
    (full / "ComfyUIx_00050_.png").write_bytes(b"")  # another prefix: ignored
    (full / "comfyui_00009_.png").write_bytes(b"")  # case-insensitive like os.path.normcase
    assert f.save_path("ComfyUI")[2] == 10
    full, name, counter, sub = f.save_path("portraits/%width%x%height%/img", 64, 32)
    assert sub == "portraits/64x32" and name == "img" and counter == 1
    assert full == tmp_path / "out" / "portraits" / "64x32" and full.is_dir()
    year = time.strftime("%Y")
    assert f.save_path("%year%/%date:yyyy-MM-dd%")[1] == time.strftime("%Y-%m-%d")
    assert f.save_path("%year%/a")[3] == year
    assert f.save_path("x", kind="temp")[0] == tmp_path / "tmp"


def test_folders_service_builds_once() -> None:
    class FakeSession:
        models_dir = "/nonexistent/models"
        output_dir = "/nonexistent/out"

    services: dict[str, object] = {"session": FakeSession()}
    f = folders_service(services)
    assert services["folders"] is f
    assert folders_service(services) is f
    assert f.output_dir == Path("/nonexistent/out")
    assert f.models_dir == Path("/nonexistent/models")
