"""ModelMergeSDXL on an SDXL-shaped UNet (three levels, two res blocks each: input/output blocks
0..8, a label embedding): each block name reaches exactly its weights, ComfyUI's prefix rule."""

from __future__ import annotations

import dataclasses

import torch

from comfy_notebook.models.unet import UNetModel
from comfy_notebook.nodes.merging import SDXL_MERGE_BLOCKS, ModelMergeSDXL
from comfy_notebook.runtime import DevicePolicy, ModelManager
from comfy_notebook.runtime.merge import effective_weights
from comfy_notebook.testing import preset_configs


@dataclasses.dataclass(frozen=True)
class Holder:
    """Stands in for a MODEL value: the merge nodes only replace its ``ref``."""

    ref: object


def _unet(seed: int) -> UNetModel:
    config = dataclasses.replace(preset_configs("sd1-tiny")[0], channel_mult=(1, 2, 2),
                                 num_res_blocks=2, transformer_depth=(0, 1, 1), adm_in_channels=16)
    torch.manual_seed(seed)
    return UNetModel(config)


def test_sdxl_block_ratios_reach_their_weights() -> None:
    mgr = ModelManager(DevicePolicy.cpu())
    a = mgr.register("a", lambda: _unet(0), kind="unet", dtype=torch.float32).ref()
    b = mgr.register("b", lambda: _unet(1), kind="unet", dtype=torch.float32).ref()
    names = {k.rsplit(".", 2)[0] for k in a.base.parameter_names()}
    assert any(n.startswith("input_blocks.8") for n in names) and any(n.startswith("label_emb") for n in names)
    ratios = {name: 1.0 for name in SDXL_MERGE_BLOCKS}
    ratios.update({"label_emb.": 0.0, "input_blocks.8": 0.25, "output_blocks.0": 0.5, "middle_block.1": 0.75})
    (merged,) = ModelMergeSDXL().merge(Holder(a), Holder(b), **ratios)
    wm, wa, wb = effective_weights(merged.ref), effective_weights(a), effective_weights(b)
    seen = set()
    for k in wm:
        r = next((v for p, v in (("label_emb.", 0.0), ("input_blocks.8", 0.25), ("output_blocks.0", 0.5),
                                 ("middle_block.1", 0.75)) if k.startswith(p)), 1.0)
        seen.add(r)
        torch.testing.assert_close(wm[k], r * wa[k] + (1 - r) * wb[k], rtol=0, atol=1e-6)
    assert seen == {0.0, 0.25, 0.5, 0.75, 1.0}
