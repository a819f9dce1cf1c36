"""End-to-end: ComfyUI's custom-sampling nodes through ``Session.run_prompt`` on the tiny SD1
checkpoint (64x64 px), against KSampler / KSamplerAdvanced on the same graph (issue #13)."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch

from comfy_notebook._session import Session
from comfy_notebook.errors import ValidationError
from comfy_notebook.nodes import NODE_CLASS_MAPPINGS, register_builtins
from comfy_notebook.sampling import RandomNoise, SamplerSpec, SamplingConfigError
from comfy_notebook.testing import make_checkpoint

CKPT = "tiny.safetensors"
CKPT_XL = "tiny_xl.safetensors"  # the tiny SDXL preset (the turbo example's family)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("comfy")
    make_checkpoint(base / "models" / "checkpoints" / CKPT, preset="sd1-tiny", seed=0)
    make_checkpoint(base / "models" / "checkpoints" / CKPT_XL, preset="sdxl", seed=0)
    return base


def new_session(root: pathlib.Path, out: str = "output") -> Session:
    s = Session(models_dir=root, output_dir=root / out)
    register_builtins(s)
    return s


@pytest.fixture(scope="module")
def session(root: pathlib.Path) -> Session:
    return new_session(root)


def base_graph() -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a glass bottle with a galaxy", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }


def ksampler(sampler: str, seed: int = 3, steps: int = 4, cfg: float = 5.0, scheduler: str = "karras") -> dict:
    g = base_graph()
    g["3"] = {"class_type": "KSampler", "inputs": {
        "model": ["4", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
        "scheduler": scheduler, "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
        "denoise": 1.0}}
    return g


def sampler_custom(sampler: str, seed: int = 3, steps: int = 4, cfg: float = 5.0, scheduler: str = "karras") -> dict:
    g = base_graph()
    g["10"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
    g["11"] = {"class_type": "BasicScheduler", "inputs": {"model": ["4", 0], "scheduler": scheduler,
                                                         "steps": steps, "denoise": 1.0}}
    g["3"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["4", 0], "add_noise": True, "noise_seed": seed, "cfg": cfg, "positive": ["6", 0],
        "negative": ["7", 0], "sampler": ["10", 0], "sigmas": ["11", 0], "latent_image": ["5", 0]}}
    return g


def advanced(sampler: str, seed: int = 3, steps: int = 4, cfg: float = 5.0, scheduler: str = "karras") -> dict:
    g = sampler_custom(sampler, seed, steps, cfg, scheduler)
    g["12"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}}
    g["13"] = {"class_type": "CFGGuider", "inputs": {"model": ["4", 0], "positive": ["6", 0],
                                                     "negative": ["7", 0], "cfg": cfg}}
    g["3"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["12", 0], "guider": ["13", 0], "sampler": ["10", 0], "sigmas": ["11", 0],
        "latent_image": ["5", 0]}}
    return g


def latent(session: Session, graph: dict, node: str = "3", index: int = 0) -> torch.Tensor:
    return session.run_prompt(graph, targets=[node]).outputs[node][index]["samples"]


def test_nodes_are_registered_with_comfy_signatures() -> None:
    for name in ("SamplerCustom", "SamplerCustomAdvanced", "BasicGuider", "CFGGuider", "DualCFGGuider",
                 "RandomNoise", "DisableNoise", "KSamplerSelect", "BasicScheduler", "KarrasScheduler",
                 "ExponentialScheduler", "PolyexponentialScheduler", "BetaSamplingScheduler", "SDTurboScheduler",
                 "SplitSigmas", "SplitSigmasDenoise", "FlipSigmas", "SamplerEulerAncestral", "SamplerDPMPP_2M_SDE",
                 "SamplerDPMPP_3M_SDE", "SamplerDPMPP_SDE", "SamplerDPMPP_2S_Ancestral", "SamplerLMS",
                 "SamplerDPMAdaptative", "SamplerEulerAncestralCFGPP", "SamplerSASolver", "SamplerER_SDE",
                 "LaplaceScheduler", "VPScheduler", "AddNoise"):
        assert name in NODE_CLASS_MAPPINGS, name
    custom = NODE_CLASS_MAPPINGS["SamplerCustom"]
    assert custom.RETURN_TYPES == ("LATENT", "LATENT") and custom.RETURN_NAMES == ("output", "denoised_output")
    req = custom.INPUT_TYPES()["required"]
    assert list(req) == ["model", "add_noise", "noise_seed", "cfg", "positive", "negative", "sampler", "sigmas",
                         "latent_image"]
    assert req["add_noise"] == ("BOOLEAN", {"default": True}) and req["cfg"][1]["default"] == 8.0
    turbo = NODE_CLASS_MAPPINGS["SDTurboScheduler"].INPUT_TYPES()["required"]
    assert turbo["steps"][1] == {"default": 1, "min": 1, "max": 10}
    karras = NODE_CLASS_MAPPINGS["KarrasScheduler"].INPUT_TYPES()["required"]
    assert (karras["sigma_max"][1]["default"], karras["sigma_min"][1]["default"], karras["rho"][1]["default"]) == (
        14.614642, 0.0291675, 7.0)
    sde = NODE_CLASS_MAPPINGS["SamplerDPMPP_2M_SDE"].INPUT_TYPES()["required"]
    assert list(sde) == ["solver_type", "eta", "s_noise", "noise_device"] and sde["noise_device"] == (["gpu", "cpu"],)


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_2m"])
def test_sampler_custom_equals_ksampler(session: Session, sampler: str) -> None:
    ref = latent(session, ksampler(sampler))
    assert torch.equal(latent(session, sampler_custom(sampler)), ref)
    assert torch.equal(latent(session, advanced(sampler)), ref)


def test_denoised_output_and_cfg_one_basic_guider(session: Session) -> None:
    g = sampler_custom("euler_ancestral", cfg=1.0)
    result = session.run_prompt(g, targets=["3"])
    out, denoised = result.outputs["3"]
    assert out["samples"].shape == denoised["samples"].shape == (1, 4, 8, 8)
    assert torch.equal(out["samples"], denoised["samples"])  # the schedule ends at 0: x = last denoised
    # BasicGuider at cfg 1 == CFGGuider at cfg 1 (the negative is never evaluated)
    g2 = advanced("euler_ancestral", cfg=1.0)
    g2["13"] = {"class_type": "BasicGuider", "inputs": {"model": ["4", 0], "conditioning": ["6", 0]}}
    assert torch.equal(latent(session, g2), out["samples"])


def test_dual_cfg_guider_reduces_to_cfg_when_cond2_is_the_negative(session: Session) -> None:
    ref = latent(session, ksampler("euler"))
    g = advanced("euler")
    g["9"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, dark", "clip": ["4", 1]}}
    g["13"] = {"class_type": "DualCFGGuider", "inputs": {
        "model": ["4", 0], "cond1": ["6", 0], "cond2": ["7", 0], "negative": ["9", 0], "cfg_conds": 5.0,
        "cfg_cond2_negative": 1.0, "style": "regular"}}
    # at cfg_cond2_negative 1 the negative is not evaluated: CFG of cond1 against cond2
    torch.testing.assert_close(latent(session, g), ref, rtol=1e-4, atol=1e-4)
    g["13"]["inputs"]["cfg_cond2_negative"] = 3.0  # the negative now pulls too: a different image
    assert not torch.allclose(latent(session, g), ref, atol=1e-3)


def test_disable_noise_split_sigmas_two_stage_equals_ksampler_advanced(session: Session) -> None:
    ref = base_graph()
    common = {"model": ["4", 0], "steps": 6, "cfg": 5.0, "sampler_name": "euler_ancestral", "scheduler": "normal",
              "positive": ["6", 0], "negative": ["7", 0]}
    ref["30"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **common, "add_noise": "enable", "noise_seed": 9, "latent_image": ["5", 0], "start_at_step": 0,
        "end_at_step": 2, "return_with_leftover_noise": "enable"}}
    # DisableNoise carries seed 0, which also seeds the ancestral noise of the second stage
    ref["3"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **common, "add_noise": "disable", "noise_seed": 0, "latent_image": ["30", 0], "start_at_step": 2,
        "end_at_step": 10000, "return_with_leftover_noise": "disable"}}
    g = advanced("euler_ancestral", seed=9, steps=6, scheduler="normal")
    g["11"]["inputs"]["steps"] = 6
    g["20"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["11", 0], "step": 2}}
    g["21"] = {"class_type": "DisableNoise", "inputs": {}}
    g["30"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["12", 0], "guider": ["13", 0], "sampler": ["10", 0], "sigmas": ["20", 0], "latent_image": ["5", 0]}}
    g["3"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["21", 0], "guider": ["13", 0], "sampler": ["10", 0], "sigmas": ["20", 1], "latent_image": ["30", 0]}}
    assert torch.equal(latent(session, g, "30"), latent(session, ref, "30"))
    assert torch.equal(latent(session, g), latent(session, ref))


def test_sampler_option_nodes_through_the_graph(session: Session) -> None:
    euler = latent(session, sampler_custom("euler"))
    g = sampler_custom("euler")
    g["10"] = {"class_type": "SamplerEulerAncestral", "inputs": {"eta": 0.0, "s_noise": 1.0}}
    torch.testing.assert_close(latent(session, g), euler, rtol=0, atol=1e-5)
    g["10"] = {"class_type": "SamplerEulerAncestral", "inputs": {"eta": 1.0, "s_noise": 1.0}}
    assert torch.equal(latent(session, g), latent(session, sampler_custom("euler_ancestral")))
    g["10"] = {"class_type": "SamplerDPMPP_2M_SDE", "inputs": {"solver_type": "heun", "eta": 1.0, "s_noise": 1.0,
                                                              "noise_device": "cpu"}}
    assert torch.equal(latent(session, g), latent(session, ksampler("dpmpp_2m_sde_heun")))
    g["10"] = {"class_type": "SamplerSASolver", "inputs": {
        "model": ["4", 0], "eta": 1.0, "sde_start_percent": 0.2, "sde_end_percent": 0.8, "s_noise": 1.0,
        "predictor_order": 3, "corrector_order": 4, "use_pece": False, "simple_order_2": False}}
    assert torch.equal(latent(session, g), latent(session, ksampler("sa_solver")))


def test_lcm_style_graph_equals_ksampler(session: Session) -> None:
    """LCM-style sampling (lcm sampler, sgm_uniform, cfg 1) through SamplerCustom == KSampler."""
    ref = latent(session, ksampler("lcm", steps=4, cfg=1.0, scheduler="sgm_uniform"))
    assert torch.equal(latent(session, sampler_custom("lcm", steps=4, cfg=1.0, scheduler="sgm_uniform")), ref)


def test_wrong_values_name_what_arrived_and_the_fix(session: Session) -> None:
    from comfy_notebook.nodes.custom_sampling import SamplerCustomAdvanced
    from comfy_notebook.nodes.sigmas import SplitSigmas

    with pytest.raises(SamplingConfigError, match=r"guider must be a Guider, received object\. Fix: connect"):
        SamplerCustomAdvanced().sample(RandomNoise(0), object(), SamplerSpec("euler"),  # type: ignore[arg-type]
                                       torch.zeros(3), {"samples": torch.zeros(1, 4, 8, 8)})
    with pytest.raises(SamplingConfigError, match=r"1-D tensor \(SIGMAS\), received \(2, 2\). Fix: connect a sch"):
        SplitSigmas().get_sigmas(torch.zeros(2, 2), 1)
    g = sampler_custom("euler")
    g["11"] = {"class_type": "FlipSigmas", "inputs": {"sigmas": ["6", 0]}}  # CONDITIONING is not SIGMAS
    with pytest.raises(ValidationError) as info:
        session.run_prompt(g, targets=["3"])
    assert "11" in info.value.node_errors
    # the session still runs a good prompt afterwards
    assert latent(session, sampler_custom("euler")).shape == (1, 4, 8, 8)


# -- ComfyUI's SDXL-Turbo example prompt (SamplerCustom + SDTurboScheduler, cfg 1) ------------------
def turbo_prompt(seed: int = 0, ckpt: str = CKPT_XL) -> dict[str, Any]:
    """The graph of ComfyUI's sdturbo example (node ids as published), on a tiny checkpoint."""
    return {
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {
            "text": "beautiful landscape scenery glass bottle with a galaxy inside cute fennec fox snow HDR sunset",
            "clip": ["20", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["20", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["20", 2]}},
        "13": {"class_type": "SamplerCustom", "inputs": {
            "add_noise": True, "noise_seed": seed, "cfg": 1.0, "model": ["20", 0], "positive": ["6", 0],
            "negative": ["7", 0], "sampler": ["14", 0], "sigmas": ["22", 0], "latent_image": ["5", 0]}},
        "14": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}},
        "20": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "22": {"class_type": "SDTurboScheduler", "inputs": {"steps": 1, "denoise": 1.0, "model": ["20", 0]}},
        "27": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


@pytest.mark.parametrize("ckpt", [CKPT_XL, CKPT])
def test_sdxl_turbo_example_prompt_is_bit_identical_across_sessions(root: pathlib.Path, ckpt: str) -> None:
    a = new_session(root, "turbo_a").run_prompt(turbo_prompt(ckpt=ckpt))
    b = new_session(root, "turbo_b").run_prompt(turbo_prompt(ckpt=ckpt))
    assert a.executed == set(turbo_prompt())
    image = a.outputs["8"][0]
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    assert torch.equal(image, b.outputs["8"][0])
    assert len(a.ui["27"]["images"]) == 1
    # one step at timestep 999 from ComfyUI's seed-0 noise, equal to KSampler at the same sigmas
    s = new_session(root, "turbo_c")
    lat = s.run_prompt(turbo_prompt(ckpt=ckpt), targets=["13"]).outputs["13"][0]["samples"]
    assert torch.equal(lat, a.outputs["13"][0]["samples"])
    # KSampler at the schedule's top sigma: the same step up to the last bits of that sigma
    # (SDTurboScheduler reads sigma(999) as exp(log sigma), as ComfyUI; "simple" reads the table)
    ks = turbo_prompt(ckpt=ckpt)
    ks["13"] = {"class_type": "KSampler", "inputs": {
        "model": ["20", 0], "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler_ancestral",
        "scheduler": "simple", "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0], "denoise": 1.0}}
    ref = s.run_prompt(ks, targets=["13"]).outputs["13"][0]["samples"]
    torch.testing.assert_close(ref, lat, rtol=1e-5, atol=1e-3)


def test_turbo_prompt_cache_reruns_only_what_changed(session: Session) -> None:
    first = session.run_prompt(turbo_prompt(1, CKPT))
    again = session.run_prompt(turbo_prompt(1, CKPT))
    assert again.executed == set() and "13" in again.cached
    changed = session.run_prompt(turbo_prompt(2, CKPT))
    assert changed.executed == {"13", "8", "27"}
    assert not torch.equal(changed.outputs["8"][0], first.outputs["8"][0])


def test_real_mode_cell_equals_the_prompt(root: pathlib.Path) -> None:
    """The turbo graph as notebook calls: SIGMAS display, two outputs, the prompt's latent."""
    import comfy_notebook._session as session_module
    from comfy_notebook.realmode import node_function as n

    previous = session_module._current
    s = session_module.use_session(new_session(root, "realmode"))
    s.options = {"progress": False}
    try:
        model, clip, _vae = n("CheckpointLoaderSimple")(CKPT)
        text = turbo_prompt()["6"]["inputs"]["text"]
        pos, neg = n("CLIPTextEncode")(text, clip), n("CLIPTextEncode")("text, watermark", clip)
        sigmas = n("SDTurboScheduler")(model, 1, 1.0)
        assert repr(sigmas).startswith("<SIGMAS from SDTurboScheduler: 1 steps: 14.61, 0>")
        sampler = n("KSamplerSelect")("euler_ancestral")
        assert "euler_ancestral" in repr(sampler)
        out, denoised = n("SamplerCustom")(model, True, 0, 1.0, pos, neg, sampler, sigmas,
                                           n("EmptyLatentImage")(64, 64, 1))
        ref = new_session(root, "realmode_ref").run_prompt(turbo_prompt(ckpt=CKPT), targets=["13"]).outputs["13"]
        assert torch.equal(out.value["samples"], ref[0]["samples"])
        assert torch.equal(denoised.value["samples"], ref[1]["samples"])
    finally:
        session_module._current = previous


@pytest.mark.gpu
@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m_sde_gpu", "dpmpp_2m"])
def test_on_cuda_sampler_custom_equals_ksampler(root: pathlib.Path, sampler: str) -> None:
    """On the GPU (device generators, Brownian trees on the device, captured steps): still equal."""
    from comfy_notebook.runtime.devices import DevicePolicy
    from comfy_notebook.runtime.manager import ModelManager

    s = new_session(root, "cuda")
    s.services.models = ModelManager(DevicePolicy.cuda(0))
    ref = latent(s, ksampler(sampler))
    assert torch.isfinite(ref).all()
    assert torch.equal(latent(s, sampler_custom(sampler)), ref)
    assert torch.equal(latent(s, advanced(sampler)), ref)
    g = advanced(sampler)
    g["13"] = {"class_type": "DualCFGGuider", "inputs": {
        "model": ["4", 0], "cond1": ["6", 0], "cond2": ["7", 0], "negative": ["7", 0], "cfg_conds": 5.0,
        "cfg_cond2_negative": 1.0, "style": "regular"}}
    # cond2 == negative: dual CFG reduces to CFG at cfg_conds (up to the batching of the lists)
    torch.testing.assert_close(latent(s, g), ref, rtol=1e-3, atol=1e-3)
