"""Ray: a local Ray with two CPU workers runs 16-point sweeps of the tiny checkpoint; each worker
loads the checkpoint once; a worker killed mid-sweep still leaves 16 results, each once; the images
equal the in-process run; the table says which worker ran what."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from comfy_notebook._session import Session

from .conftest import new_sd_session, sd_prompt

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

GRID = {"cfg": [4.0, 8.0], "seed": list(range(8))}


@pytest.fixture(scope="module")
def ray_session(sd_root: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    from comfy_notebook.backends import RayBackend

    for attempt in range(3):  # Ray allows its raylet 30 s to start: a loaded machine may miss it
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    try:
        backend = RayBackend(num_workers=2, models_dir=sd_root,
                             output_dir=tmp_path_factory.mktemp("ray_out"))
        s = Session(backend=backend)
        yield s
        s.queue.close()
        backend.close()
    finally:
        ray.shutdown()


def rows_of(table: Any) -> list[dict[str, Any]]:
    return table.to_dict("records") if hasattr(table, "to_dict") else table


@pytest.fixture(scope="module")
def local_rows(sd_root: pathlib.Path) -> list[dict[str, Any]]:
    return rows_of(new_sd_session(sd_root, "out_ray_ref").sweep(sd_prompt(), grid=GRID))


def same_images(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> None:
    ref = {(r["cfg"], r["seed"]): np.asarray(r["image"], np.int16) for r in reference}
    for r in rows:
        assert np.abs(np.asarray(r["image"], np.int16) - ref[(r["cfg"], r["seed"])]).max() <= 1


def test_sweep_on_two_workers_loads_once_each_and_equals_in_process(
        ray_session: Session, local_rows: list[dict[str, Any]]) -> None:
    rows = rows_of(ray_session.sweep(sd_prompt(), grid=GRID))
    assert len(rows) == 16 and len({(r["cfg"], r["seed"]) for r in rows}) == 16
    workers = {r["worker"] for r in rows}
    assert workers == {"worker-0", "worker-1"}  # both worked, and the table says who ran what
    stats = ray_session.backend.stats()
    for name, st in stats.items():
        assert list(st["loads"].values()) == [1], (name, st["loads"])  # the checkpoint, once
        assert len(st["ran"]) == sum(r["worker"] == name for r in rows)
    assert stats["worker-0"]["pid"] != stats["worker-1"]["pid"]
    same_images(rows, local_rows)


def test_a_worker_killed_mid_sweep_loses_nothing_and_runs_nothing_twice(
        ray_session: Session, local_rows: list[dict[str, Any]]) -> None:
    from comfy_notebook.backends import iter_sweep

    backend = ray_session.backend
    grid = {"cfg": [5.0, 9.0], "seed": list(range(8))}
    seen = []
    for image in iter_sweep(ray_session, sd_prompt(), grid):
        seen.append(image)
        if len(seen) == 3:
            ray.kill(backend.actors["worker-1"])
    keys = [(r.params["cfg"], r.params["seed"]) for r in seen]
    assert len(keys) == 16 and len(set(keys)) == 16  # all there, each once
    assert backend.dead == {"worker-1"}
    assert {r.worker for r in seen[6:]} == {"worker-0"}  # after the kill, only the survivor
    assert backend.stats()["worker-0"]["loads"]  # the survivor carried on with its loaded model
