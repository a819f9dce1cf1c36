"""End-to-end: ComfyUI's default prompt and the sampling / conditioning nodes through
``Session.run_prompt`` on a tiny random-weight SD1 checkpoint (64x64 px, latent 8x8).

Issues #3 (pipeline), #4 (caching through the real nodes) and #5 (model memory).
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_notebook._session import Session
from comfy_notebook.demo import default_prompt
from comfy_notebook.nodes import register_builtins
from comfy_notebook.nodes.sampling import sampler_names, scheduler_names
from comfy_notebook.testing import make_checkpoint

CKPT = "tiny.safetensors"
REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A ComfyUI-shaped folder: ``models/checkpoints/tiny.safetensors`` (+ input/output)."""
    base = tmp_path_factory.mktemp("comfy")
    make_checkpoint(base / "models" / "checkpoints" / CKPT, preset="sd1-tiny", seed=0)
    return base


def new_session(root: pathlib.Path, out: str = "output") -> Session:
    s = Session(models_dir=root, output_dir=root / out)
    register_builtins(s)
    return s


def prompt(seed: int = 7, steps: int = 4, sampler: str = "euler", scheduler: str = "normal") -> dict[str, Any]:
    """The default prompt on the tiny checkpoint at 64x64 px."""
    api = default_prompt()
    api["4"]["inputs"]["ckpt_name"] = CKPT
    api["5"]["inputs"].update(width=64, height=64)
    api["3"]["inputs"].update(seed=seed, steps=steps, sampler_name=sampler, scheduler=scheduler)
    return api


@pytest.fixture(scope="module")
def shared(root: pathlib.Path) -> Session:
    """One session for the tests that only need *a* session (models stay loaded)."""
    return new_session(root, "output_shared")


def latent_of(result: Any, node: str = "3") -> torch.Tensor:
    return result.outputs[node][0]["samples"]


# -- 1. the default prompt -----------------------------------------------------------------------
def test_default_prompt_saves_png_with_prompt_chunk(root: pathlib.Path) -> None:
    s = new_session(root, "out_png")
    api = prompt()
    result = s.run_prompt(api)
    assert result.executed == set(api)
    (saved,) = result.ui["9"]["images"]
    path = root / "out_png" / saved["subfolder"] / saved["filename"]
    assert path.is_file() and saved["type"] == "output"
    with Image.open(path) as img:
        assert img.size == (64, 64) and img.mode == "RGB"
        assert json.loads(img.text["prompt"]) == api
        pixels = torch.tensor(np.array(img), dtype=torch.float32)
    image = result.outputs["8"][0]  # IMAGE [1, 64, 64, 3] in 0..1
    assert image.shape == (1, 64, 64, 3) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    # SaveImage stores clip(255 * x) truncated to uint8
    expected = (255.0 * image[0]).clamp(0, 255).to(torch.uint8).float()
    assert torch.equal(pixels, expected)


def test_two_fresh_sessions_give_bit_identical_images(root: pathlib.Path) -> None:
    a = new_session(root, "out_a").run_prompt(prompt())
    b = new_session(root, "out_b").run_prompt(prompt())
    assert torch.equal(a.outputs["8"][0], b.outputs["8"][0])
    assert torch.equal(latent_of(a), latent_of(b))
    # and the seed matters
    c = new_session(root, "out_c").run_prompt(prompt(seed=8))
    assert not torch.equal(latent_of(a), latent_of(c))


_THREADS_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(int(sys.argv[1]))
    from comfy_notebook._session import Session
    from comfy_notebook.demo import default_prompt
    from comfy_notebook.nodes import register_builtins
    root = sys.argv[2]
    s = Session(models_dir=root, output_dir=sys.argv[3])
    register_builtins(s)
    api = default_prompt()
    api["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
    api["5"]["inputs"].update(width=64, height=64)
    api["3"]["inputs"].update(seed=7, steps=4)
    r = s.run_prompt(api)
    assert torch.get_num_threads() == int(sys.argv[1])
    torch.save({"image": r.outputs["8"][0], "latent": r.outputs["3"][0]["samples"]}, sys.argv[4])
""")


@pytest.mark.slow  # two fresh interpreters
def test_same_image_with_one_and_two_cpu_threads(root: pathlib.Path, tmp_path: pathlib.Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(_THREADS_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    saved = {}
    for n in (1, 2):
        out = tmp_path / f"t{n}.pt"
        subprocess.run([sys.executable, str(script), str(n), str(root), str(tmp_path / f"o{n}"), str(out)],
                       check=True, env=env, timeout=120)
        saved[n] = torch.load(out)
    # Bit-identical.  The 1x1 convolutions are computed as matmuls (models.layers.Conv1x1):
    # oneDNN's 1x1 convolution splits the channel sum by thread count (an ulp of difference that
    # sampling amplified to 1.9e-6 relative), while matmul, 3x3 convolutions, SDPA and norms give
    # the same bits with 1 or 2 threads.
    assert torch.equal(saved[1]["latent"], saved[2]["latent"])
    assert torch.equal(saved[1]["image"], saved[2]["image"])


def test_cached_rerun_and_seed_change_execute_the_right_nodes(root: pathlib.Path) -> None:
    s = new_session(root, "out_cache")
    first = s.run_prompt(prompt())
    again = s.run_prompt(prompt())
    assert again.executed == set()
    assert again.cached == set(prompt())
    assert again.ui["9"] == first.ui["9"]
    reseeded = s.run_prompt(prompt(seed=8))
    assert reseeded.executed == {"3", "8", "9"}
    assert {prompt()[n]["class_type"] for n in reseeded.executed} == {"KSampler", "VAEDecode", "SaveImage"}
    assert not torch.equal(reseeded.outputs["8"][0], first.outputs["8"][0])


def test_unload_all_then_rerun_reloads_from_file_with_identical_image(root: pathlib.Path) -> None:
    reference = new_session(root, "out_ref").run_prompt(prompt(seed=9)).outputs["8"][0]
    s = new_session(root, "out_unload")
    s.run_prompt(prompt(seed=3))
    before = s.models.stats
    s.models.unload_all()
    assert {info.location for info in s.models.list()} == {"unloaded"}
    result = s.run_prompt(prompt(seed=9))  # the loader and encoders are cache hits
    assert "4" in result.cached and {"3", "8", "9"} <= result.executed
    after = s.models.stats
    # the UNet (KSampler) and VAE (VAEDecode) were rebuilt by their factories; CLIP was not needed
    assert after.reloads - before.reloads == 2
    assert after.unloads - before.unloads == 3
    assert torch.equal(result.outputs["8"][0], reference)


# dpm_adaptive picks its own (many) steps: seconds even on the tiny model
@pytest.mark.parametrize("sampler", [pytest.param(n, marks=pytest.mark.slow) if n == "dpm_adaptive" else n
                                     for n in sampler_names()])
def test_every_sampler_runs_three_steps(shared: Session, sampler: str) -> None:
    result = shared.run_prompt(prompt(sampler=sampler, steps=3), targets=["3"])
    out = latent_of(result)
    assert out.shape == (1, 4, 8, 8) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert float(out.abs().max()) > 0  # something was sampled from the noise


@pytest.mark.parametrize("scheduler", scheduler_names())
def test_every_scheduler_runs_three_steps(shared: Session, scheduler: str) -> None:
    result = shared.run_prompt(prompt(scheduler=scheduler, steps=3), targets=["3"])
    out = latent_of(result)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


def test_sampler_and_scheduler_lists_are_comfyuis_names() -> None:
    assert {"euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "ddim", "uni_pc"} <= set(sampler_names())
    assert {"normal", "karras", "exponential", "simple", "sgm_uniform", "ddim_uniform", "beta"} <= set(
        scheduler_names())


# -- 2. KSamplerAdvanced --------------------------------------------------------------------------
def _advanced(api: dict[str, Any], node: str, *, add_noise: str, start: int, end: int, leftover: str,
              latent: list[Any], steps: int = 6) -> None:
    ks = api["3"]["inputs"]
    api[node] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["4", 0], "add_noise": add_noise, "noise_seed": ks["seed"], "steps": steps, "cfg": ks["cfg"],
        "sampler_name": "euler", "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": latent, "start_at_step": start, "end_at_step": end,
        "return_with_leftover_noise": leftover}}


def test_two_stage_advanced_equals_one_ksampler_for_euler(shared: Session) -> None:
    api = prompt(steps=6)
    _advanced(api, "20", add_noise="enable", start=0, end=3, leftover="enable", latent=["5", 0])
    _advanced(api, "21", add_noise="disable", start=3, end=10000, leftover="disable", latent=["20", 0])
    result = shared.run_prompt(api, targets=["3", "21"])
    one, two = latent_of(result, "3"), latent_of(result, "21")
    # same sigmas, same initial noise, same euler steps: the split only adds a /0.18215 and
    # *0.18215 round trip of the intermediate latent (an ulp), which three more steps of a
    # random-weight UNet amplify to a few 1e-5 in rare elements (measured 2.7e-5, 1 of 256)
    torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-4)
    # the first stage really stopped half way: it still holds noise
    first = latent_of(result, "20")
    assert (first - one).abs().max() > 0.1
    # with return_with_leftover_noise disabled the first stage ends at sigma 0 (a full denoise)
    api2 = prompt(steps=6)
    _advanced(api2, "20", add_noise="enable", start=0, end=3, leftover="disable", latent=["5", 0])
    early = latent_of(shared.run_prompt(api2, targets=["20"]), "20")
    assert not torch.allclose(early, first)


# -- 5. area conditioning and timestep ranges --------------------------------------------------
def _text(api: dict[str, Any], node: str, text: str) -> None:
    api[node] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}}


def test_area_conditioning_changes_only_the_area(shared: Session) -> None:
    base = prompt(steps=1)
    base["5"]["inputs"]["width"] = 128  # latent [1, 4, 8, 16]; areas are at least 64 px
    area = copy.deepcopy(base)
    _text(area, "10", "a red square, sharp edges")
    area["11"] = {"class_type": "ConditioningSetArea", "inputs": {
        "conditioning": ["10", 0], "width": 64, "height": 64, "x": 64, "y": 0, "strength": 1.0}}
    area["12"] = {"class_type": "ConditioningCombine", "inputs": {
        "conditioning_1": ["6", 0], "conditioning_2": ["11", 0]}}
    area["3"]["inputs"]["positive"] = ["12", 0]
    a = latent_of(shared.run_prompt(base, targets=["3"]))
    b = latent_of(shared.run_prompt(area, targets=["3"]))
    inside = torch.zeros(8, 16, dtype=torch.bool)
    inside[0:8, 8:16] = True  # latent rows y/8 .. (y+h)/8, cols x/8 .. (x+w)/8
    diff = (a - b).abs().amax(dim=(0, 1))  # [8, 16]
    # outside: the only positive prediction is the base one, computed as without the area
    assert float(diff[~inside].max()) <= 1e-5
    assert float(diff[inside].min()) > 1e-3


def test_timestep_range_applies_only_to_its_part_of_the_run(shared: Session) -> None:
    def api_with(start: float, end: float, *, steps_end: int) -> dict[str, Any]:
        api = prompt(steps=2)
        _text(api, "10", "a blue circle")
        api["11"] = {"class_type": "ConditioningSetTimestepRange", "inputs": {
            "conditioning": ["10", 0], "start": start, "end": end}}
        api["12"] = {"class_type": "ConditioningCombine", "inputs": {
            "conditioning_1": ["6", 0], "conditioning_2": ["11", 0]}}
        _advanced(api, "20", add_noise="enable", start=0, end=steps_end, leftover="enable",
                  latent=["5", 0], steps=2)
        api["20"]["inputs"]["positive"] = ["12", 0]
        return api

    late_full = latent_of(shared.run_prompt(api_with(0.5, 1.0, steps_end=2), targets=["20"]), "20")
    all_full = latent_of(shared.run_prompt(api_with(0.0, 1.0, steps_end=2), targets=["20"]), "20")
    assert (late_full - all_full).abs().max() > 1e-3
    # the first step runs at 0 % of the schedule: there the 0.5..1.0 conditioning is off, so the
    # step equals the base prompt alone; the 0..1 one is on and changes it
    late_first = latent_of(shared.run_prompt(api_with(0.5, 1.0, steps_end=1), targets=["20"]), "20")
    all_first = latent_of(shared.run_prompt(api_with(0.0, 1.0, steps_end=1), targets=["20"]), "20")
    base = prompt(steps=2)
    _advanced(base, "20", add_noise="enable", start=0, end=1, leftover="enable", latent=["5", 0], steps=2)
    base_first = latent_of(shared.run_prompt(base, targets=["20"]), "20")
    torch.testing.assert_close(late_first, base_first, rtol=1e-5, atol=1e-5)
    assert (all_first - base_first).abs().max() > 1e-3


# -- 6. text encoding and conditioning arithmetic ---------------------------------------------
def _conds(shared: Session, extra: dict[str, Any], targets: list[str]) -> dict[str, Any]:
    api = prompt()
    api.update(extra)
    result = shared.run_prompt(api, targets=targets)
    return {n: result.outputs[n][0] for n in targets}


def test_clip_set_last_layer_and_conditioning_nodes(shared: Session) -> None:
    text = "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,"
    extra = {
        "30": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["4", 1], "stop_at_clip_layer": -2}},
        "31": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["30", 0]}},
        "32": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["4", 1], "stop_at_clip_layer": -1}},
        "33": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["32", 0]}},
        "34": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}},
        "35": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["7", 0]}},
        "36": {"class_type": "ConditioningAverage", "inputs": {
            "conditioning_to": ["6", 0], "conditioning_from": ["7", 0], "conditioning_to_strength": 0.25}},
        "37": {"class_type": "ConditioningConcat", "inputs": {"conditioning_to": ["6", 0], "conditioning_from": ["7", 0]}},
    }
    c = _conds(shared, extra, ["6", "7", "31", "33", "34", "35", "36", "37"])
    (pos, pos_opts), = c["6"]
    (neg, neg_opts), = c["7"]
    assert pos.shape == (1, 77, 64) and pos_opts["pooled_output"].shape == (1, 64)
    # -1 is the default (last layer, final layer norm); -2 the penultimate layer
    assert torch.equal(c["33"][0][0], pos)
    skip = c["31"][0][0]
    assert skip.shape == pos.shape and (skip - pos).abs().max() > 1e-3
    (zero, zero_opts), = c["34"]
    assert zero.shape == pos.shape and not zero.any() and not zero_opts["pooled_output"].any()
    combined = c["35"]
    assert len(combined) == 2 and combined[0][0] is pos and combined[1][0] is neg
    (avg, avg_opts), = c["36"]
    torch.testing.assert_close(avg, pos * 0.25 + neg * 0.75)
    torch.testing.assert_close(avg_opts["pooled_output"], pos_opts["pooled_output"] * 0.25
                               + neg_opts["pooled_output"] * 0.75)
    (cat, cat_opts), = c["37"]
    assert cat.shape == (1, 154, 64)
    assert torch.equal(cat[:, :77], pos) and torch.equal(cat[:, 77:], neg)
    assert cat_opts["pooled_output"] is pos_opts["pooled_output"]


# -- 10. model memory in accounting mode -------------------------------------------------------
# Contract: the reference runs on the same device as the tight manager.  On the CPU a partial
# load is bit-identical to a full one (the streamed weights are the same values, used by the same
# kernels).  On CUDA the kernels may differ with the weights' addresses and alignment (a flat
# buffer view vs a fresh allocation), so the bound there is one 8-bit level of the saved image.
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_tight_cpu_budget_partial_loading_gives_the_same_image(root: pathlib.Path, device: str) -> None:
    from comfy_notebook.runtime.devices import DevicePolicy
    from comfy_notebook.runtime.manager import ModelManager

    policy = DevicePolicy.cpu() if device == "cpu" else DevicePolicy.cuda(0)
    free = new_session(root, "out_free")
    free.services.models = ModelManager(policy)
    reference = free.run_prompt(prompt()).outputs["8"][0]
    unet_bytes = next(i.bytes for i in free.models.list() if i.kind == "unet")

    s = new_session(root, "out_tight")
    s.services.models = ModelManager(policy, capacity_bytes=unet_bytes + (64 << 10))
    result = s.run_prompt(prompt())
    if device == "cpu":
        assert torch.equal(result.outputs["8"][0], reference)
    else:
        assert (result.outputs["8"][0] - reference).abs().max() <= 1 / 255
    stats = s.models.stats
    # the UNet plus its estimated inference memory does not fit: it ran partially loaded,
    # streaming the rest of its weights per forward; CLIP and VAE went back to the host after use
    assert stats.partial_loads >= 1 and stats.bytes_streamed > 0
    assert stats.offloads >= 1
    assert sum(i.loaded_bytes for i in s.models.list()) <= unet_bytes + (64 << 10)


