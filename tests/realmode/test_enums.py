"""Global and per-node enums: naming rule, StrEnum behaviour, folder refresh, samplers."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import pytest

from comfy_notebook._session import Session
from comfy_notebook.engine import Registry
from comfy_notebook.folders import Folders
from comfy_notebook.nodes.latent import NODE_CLASS_MAPPINGS as LATENT_NODES
from comfy_notebook.realmode.enums import (
    SAMPLER_NAMES,
    EnumError,
    global_enums,
    make_enum,
    member_name,
    member_names,
    node_enum,
)


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("v1-5-pruned-emaonly.safetensors", "v1_5_pruned_emaonly"),
        ("sdxl/sd_xl_base_1.0.safetensors", "sdxl_sd_xl_base_1_0"),
        ("4x-UltraSharp.pth", "_4x_UltraSharp"),
        ("photo.png", "photo_png"),  # not a model extension: kept
        ("class.ckpt", "class_"),  # keyword
        ("_x_.pt", "_x"),  # would be an Enum _sunder_ name
        ("mro", "mro_"),
        ("", "_"),
        ("ünïcode name.sft", "ünïcode_name"),
    ],
)
def test_member_name_rule(value: str, name: str) -> None:
    assert member_name(value) == name


def test_clashes_are_disambiguated_deterministically() -> None:
    values = ["a-b.safetensors", "a_b.ckpt", "a.b.pt"]
    expected = {"a_b": "a-b.safetensors", "a_b_2": "a.b.pt", "a_b_3": "a_b.ckpt"}
    assert member_names(values) == dict(sorted(expected.items(), key=lambda kv: kv[1]))
    assert member_names(reversed(values)) == member_names(values)


def test_members_are_strings_that_validate_as_file_names() -> None:
    E = make_enum("Checkpoints", ["v1-5-pruned-emaonly.safetensors", "x/y.ckpt"])
    assert issubclass(E, StrEnum)
    assert E.v1_5_pruned_emaonly == "v1-5-pruned-emaonly.safetensors"
    assert isinstance(E.x_y, str) and f"{E.x_y}" == "x/y.ckpt"
    assert E.x_y in ["x/y.ckpt"]  # combo membership check used by validation
    assert make_enum("Checkpoints", ["x/y.ckpt", "v1-5-pruned-emaonly.safetensors"]) is E
    big = make_enum("Big", [f"f{i}" for i in range(2500)])
    assert len(big) == 2000


def test_global_enums_from_folders_refresh(tmp_path: Path) -> None:
    ck = tmp_path / "models" / "checkpoints"
    ck.mkdir(parents=True)
    (ck / "v1-5-pruned-emaonly.safetensors").write_bytes(b"")
    (tmp_path / "models" / "loras").mkdir()
    (tmp_path / "models" / "loras" / "ink.safetensors").write_bytes(b"")
    folders = Folders(tmp_path / "models")
    enums = global_enums(folders, samplers=["euler", "dpmpp_2m"], schedulers=["karras"])
    assert set(enums) == {"Checkpoints", "VAEs", "Loras", "Embeddings", "TextEncoders", "UNETs",
                          "UpscaleModels", "ControlNets", "Samplers", "Schedulers"}
    assert enums["Checkpoints"].v1_5_pruned_emaonly == "v1-5-pruned-emaonly.safetensors"
    assert enums["Loras"].ink == "ink.safetensors"
    assert [m.value for m in enums["Samplers"]] == ["dpmpp_2m", "euler"]
    assert len(enums["VAEs"]) == 0
    (ck / "new.safetensors").write_bytes(b"")
    assert global_enums(folders)["Checkpoints"].new == "new.safetensors"
    # default sampler list: the sampling package's, or ComfyUI's
    assert set(global_enums(folders)["Samplers"]) >= {"euler", "dpmpp_2m"}
    assert "euler" in SAMPLER_NAMES
    # a Session works as the source (its folders service)
    s = Session(models_dir=tmp_path / "models")
    assert global_enums(s)["Loras"].ink == "ink.safetensors"
    with pytest.raises(EnumError, match="Session or a Folders"):
        global_enums(42)


def test_node_enum() -> None:
    reg = Registry()
    reg.register(LATENT_NODES)
    E = node_enum("LatentUpscale", "upscale_method", reg)
    assert E.nearest_exact == "nearest-exact" and E.bislerp == "bislerp"
    assert node_enum("LatentUpscale", "upscale_method", reg) is E
    with pytest.raises(EnumError, match="not a combo input"):
        node_enum("LatentUpscale", "width", reg)
    with pytest.raises(EnumError, match="not registered"):
        node_enum("Nope", "x", reg)
