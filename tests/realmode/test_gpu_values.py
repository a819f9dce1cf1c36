"""Real-mode values on a CUDA device: byte accounting, display and content fingerprints."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.engine.policies import split_bytes


@pytest.mark.gpu
def test_cuda_values_count_against_vram_and_display(session, nodes):
    image = torch.rand(2, 8, 8, 3, device="cuda")
    assert split_bytes(([image],)) == (0, image.numel() * 4)
    handle = nodes.Scale(image, 1.0)
    assert handle._repr_png_().startswith(b"\x89PNG")
    again = nodes.Scale(image.clone(), 1.0)  # content hash works for GPU tensors too
    assert again.signature == handle.signature
