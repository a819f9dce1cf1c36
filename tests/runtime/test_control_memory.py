"""The memory a control holds during a step: ``residual_elements`` of each architecture against
the residuals its forward really returns (distinct tensors, one image), and ``control_memory``."""

from __future__ import annotations

import dataclasses

import torch

from comfy_notebook.models.controlnet import ControlNetConfig, ControlNetModel
from comfy_notebook.models.controlnet_flux import FluxControlNet, FluxControlNetConfig
from comfy_notebook.models.flux import FluxConfig
from comfy_notebook.models.unet import UNetConfig


def _distinct_elements(res) -> int:
    seen = {id(t): t for t in (*res.input, *res.output, res.middle) if t is not None}
    return sum(t[0].numel() for t in seen.values())


def test_unet_controlnet_residual_elements_are_exact():
    cfg = dataclasses.replace(UNetConfig.sd1_tiny(), num_res_blocks=2)
    net = ControlNetModel(ControlNetConfig(cfg)).eval()
    with torch.no_grad():
        res = net(torch.randn(1, 4, 10, 6), torch.rand(1, 3, 80, 48), torch.tensor([500.0]),
                  torch.randn(1, 3, cfg.context_dim))
    assert _distinct_elements(res) == net.control_config.residual_elements(10, 6)


def test_flux_controlnet_residual_elements_count_shared_slots_once():
    flux = dataclasses.replace(FluxConfig.tiny(), depth=2, depth_single_blocks=1)
    net = FluxControlNet(FluxControlNetConfig(flux=flux)).eval()
    with torch.no_grad():
        res = net(torch.randn(1, 16, 6, 8), torch.randn(1, 16, 6, 8), torch.tensor([0.5]),
                  torch.randn(1, 4, flux.context_in_dim), slots=(19, 38))
    assert len(res.input) == 19 and len(res.output) == 38
    assert _distinct_elements(res) == net.control_config.residual_elements(6, 8) == 3 * 12 * 64
