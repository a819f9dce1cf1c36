"""``%comfy sweep``: the magic parses its arguments and calls ``Session.sweep``."""

from __future__ import annotations

import importlib
import json
import pathlib
from typing import Any

import pytest
from IPython.core.error import UsageError

from .conftest import PACK, RAN, sd_prompt, slow_prompt


@pytest.fixture
def ip(make_current_session: Any) -> Any:
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "comfy_notebook")
    return shell


def test_sweep_magic_runs_a_grid_and_returns_the_table(ip: Any, make_current_session: Any,
                                                       tmp_path: pathlib.Path) -> None:
    s = make_current_session(PACK)
    RAN.clear()
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(slow_prompt(0, steps=1)))
    table = ip.run_line_magic("comfy", f"sweep {path} --grid 1.tag=1,2,3 --grid 1.steps=1,2")
    rows = table.to_dict("records") if hasattr(table, "to_dict") else table
    assert len(rows) == 6 and sorted(RAN) == [1, 1, 2, 2, 3, 3]
    assert {(r["1.tag"], r["1.steps"]) for r in rows} == {(t, n) for t in (1, 2, 3) for n in (1, 2)}
    assert all(r["image"] is None for r in rows)  # this pack makes no images
    with pytest.raises(UsageError, match="--grid"):
        ip.run_line_magic("comfy", f"sweep {path}")
    with pytest.raises(UsageError, match="KEY=VALUE"):
        ip.run_line_magic("comfy", f"sweep {path} --grid 1.tag=1 --set nonsense")
    s.queue.close()


def test_sweep_magic_draws_an_xy_grid(ip: Any, sd_session: Any, tmp_path: pathlib.Path) -> None:
    session_module = importlib.import_module("comfy_notebook._session")
    previous = session_module._current
    session_module.use_session(sd_session)
    try:
        path = tmp_path / "default.json"
        path.write_text(json.dumps(sd_prompt()))
        fig = ip.run_line_magic("comfy", f"sweep {path} -g cfg=3,6 -g seed=1,2 --x cfg --y seed")
        assert len(fig.axes) == 4 and fig.axes[0].get_title() == "cfg = 3"
    finally:
        session_module._current = previous
