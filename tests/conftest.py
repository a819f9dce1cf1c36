"""Shared test configuration."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not keywords: a folder named gpu matches
            item.add_marker(skip_gpu)


@pytest.fixture
def make_current_session() -> Iterator[Callable[[Mapping[str, type]], Any]]:
    """``make(pack)`` -> a fresh current Session with ``pack`` registered and progress bars off.

    The session that was current before is restored when the test ends (shared by the
    kernel_ext and realmode ``session`` fixtures).
    """
    session_module = importlib.import_module("comfy_notebook._session")
    from comfy_notebook._session import Session, use_session

    previous = session_module._current

    def make(pack: Mapping[str, type]) -> Any:
        s = Session(builtins=False)
        s.options = {"progress": False}
        s.register(pack)
        use_session(s)
        return s

    yield make
    session_module._current = previous
