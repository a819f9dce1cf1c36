"""Conv1x1: a 1x1 convolution as a matmul — same parameters, same results, thread-independent."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from comfy_notebook.models.layers import Conv1x1


def test_same_parameters_and_results_as_conv2d() -> None:
    torch.manual_seed(0)
    conv = Conv1x1(48, 24)
    ref = nn.Conv2d(48, 24, 1)
    assert {k: v.shape for k, v in conv.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 48, 9, 7)
    torch.testing.assert_close(conv(x), ref(x), rtol=1e-5, atol=1e-5)
    assert conv(x).is_contiguous()


def test_channels_last_stays_channels_last() -> None:
    conv = Conv1x1(16, 8)
    x = torch.randn(2, 16, 5, 5).contiguous(memory_format=torch.channels_last)
    y = conv(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, F.conv2d(x, conv.weight, conv.bias), rtol=1e-5, atol=1e-5)


def test_result_does_not_depend_on_thread_count() -> None:
    torch.manual_seed(1)
    conv = Conv1x1(320, 320)
    x = torch.randn(2, 320, 32, 32)
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                outs.append(conv(x))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])
