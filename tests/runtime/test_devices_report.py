"""The attention backend report names a backend on every device."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.runtime.devices import attention_backend


def test_cpu_reports_math() -> None:
    assert attention_backend("cpu").startswith("math")


@pytest.mark.gpu
def test_cuda_reports_a_fused_kernel_for_fp16() -> None:
    name = attention_backend("cuda", torch.float16)
    assert name.split()[0] in {"flash_attention", "efficient_attention", "cudnn_attention"}, name
