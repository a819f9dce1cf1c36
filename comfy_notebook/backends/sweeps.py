"""Sweeps: a workflow over a parameter grid -> a tidy table of parameters, images and timings.

Grid keys are template variables (for a :class:`WorkflowTemplate`, including the reserved
``seed`` and ``batch_size``) or ``NODE.INPUT`` overrides (``"3.cfg"``, ``"KSampler.cfg"``, or a
bare input name that exactly one node has, such as ``"cfg"``).  Runs are ordered so that the cache
is reused: each parameter's cost is measured by how much of the graph a change of it invalidates
(the changed nodes and everything downstream, a loader counting as much as the rest of the graph);
the most expensive parameter varies slowest, the cheapest innermost.  A template's reserved
``seed`` and ``batch_size`` default to 0 and 1 unless given.
"""

from __future__ import annotations

import concurrent.futures
import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from comfy_notebook.backends.batching import ImageResult, collect_images
from comfy_notebook.backends.templates import (
    RESERVED,
    WorkflowTemplate,
    apply_overrides,
    as_template,
)

__all__ = ["iter_sweep", "sweep", "sweep_order", "to_table"]

_LOADER_WEIGHT = 100  # a node that reads a file from disk outweighs any compute node


def _split(template: WorkflowTemplate, keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """(template variables, NODE.INPUT overrides) among the grid keys."""
    variables = [k for k in keys if k in template.variables or k in RESERVED]
    return variables, [k for k in keys if k not in variables]


_RESERVED_DEFAULTS = {"seed": 0, "batch_size": 1}


def _render(template: WorkflowTemplate, point: Mapping[str, Any], fixed: Mapping[str, Any]) -> dict[str, Any]:
    defaults = {k: v for k, v in _RESERVED_DEFAULTS.items()
                if k in template.variables and k not in template.defaults}
    values = {**defaults, **fixed, **point}
    variables, overrides = _split(template, list(values))
    api = template.render_reserved(**{k: values[k] for k in variables})
    return apply_overrides(api, {k: values[k] for k in overrides})


def _downstream_cost(api: Mapping[str, Any], changed: set[str]) -> int:
    """Weight of the changed nodes and everything that consumes them."""
    consumers: dict[str, set[str]] = {}
    for nid, node in api.items():
        for value in node.get("inputs", {}).values():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in api:
                consumers.setdefault(str(value[0]), set()).add(nid)
    seen, stack = set(), list(changed)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(consumers.get(n, ()))
    return sum(_LOADER_WEIGHT if "Loader" in str(api[n].get("class_type", "")) else 1 for n in seen)


def sweep_order(template: WorkflowTemplate, grid: Mapping[str, Sequence[Any]],
                fixed: Mapping[str, Any] | None = None) -> list[str]:
    """Grid keys from outermost (most expensive to change) to innermost (cheapest)."""
    fixed = dict(fixed or {})
    base = {k: next(iter(v)) for k, v in grid.items()}
    base_api = _render(template, base, fixed)
    cost: dict[str, int] = {}
    for key, values in grid.items():
        values = list(values)
        if len(values) < 2:
            cost[key] = 0
            continue
        other = _render(template, {**base, key: values[1]}, fixed)
        changed = {nid for nid in base_api if base_api[nid] != other.get(nid)}
        changed |= set(other) - set(base_api)
        cost[key] = _downstream_cost({**base_api, **other}, changed)
    keys = list(grid)
    return sorted(keys, key=lambda k: (-cost[k], keys.index(k)))


def _points(grid: Mapping[str, Sequence[Any]], order: list[str]) -> list[dict[str, Any]]:
    axes = [list(grid[k]) for k in order]
    return [dict(zip(order, combo, strict=True)) for combo in itertools.product(*axes)]


def iter_sweep(session: Any, workflow: Any, grid: Mapping[str, Sequence[Any]], *,
               fixed: Mapping[str, Any] | None = None, seed: int | None = None,
               batch_size: int | None = None, priority: int = 0,
               order: Sequence[str] | None = None) -> Iterator[ImageResult]:
    """Run the grid and yield each image as its prompt finishes (see :func:`sweep`)."""
    template = as_template(workflow)
    if not grid:
        raise ValueError("expected a grid such as {'cfg': [4, 8]}, received an empty one")
    for key, values in grid.items():
        if isinstance(values, str | bytes | Mapping) or not hasattr(values, "__iter__") or not len(values):
            raise ValueError(f"grid[{key!r}] must be a non-empty list of values, received {values!r}")
    grid = {k: list(v) for k, v in grid.items()}
    fixed = dict(fixed or {})
    if seed is not None:
        fixed.setdefault("seed", seed)
    if batch_size is not None:
        fixed.setdefault("batch_size", batch_size)
    keys = list(order) if order is not None else sweep_order(template, grid, fixed)
    if sorted(keys) != sorted(grid):
        raise ValueError(f"order={list(keys)} must name each grid key once: {list(grid)}")
    jobs: dict[Any, tuple[int, dict[str, Any], dict[str, Any]]] = {}
    prompts = [(i, point, _render(template, point, fixed)) for i, point in enumerate(_points(grid, keys))]
    with session.queue.paused():  # all points enter together, in cache-friendly order
        for i, point, api in prompts:
            jobs[session.queue.submit(api, priority=priority)] = (i, point, api)
    try:
        for fut in concurrent.futures.as_completed(jobs):
            i, point, api = jobs[fut]
            result = fut.result()
            images = collect_images(session.backend, result, api, params=point) or [
                ImageResult("", "", "", "", api, result.prompt_id, params=point,  # no image: one row
                            seconds=result.seconds, worker=str(getattr(result, "worker", "")))]
            for image in images:
                image.sample_index = i
                yield image
    finally:
        for fut in jobs:
            if not fut.done():
                fut.cancel()


def to_table(images: Sequence[ImageResult], keys: Sequence[str]) -> Any:
    """Rows in run order: a pandas ``DataFrame`` when pandas is installed, else a list of dicts."""
    rows = []
    for image in sorted(images, key=lambda r: (r.sample_index, r.node_id, r.batch_index)):
        row = {k: image.params.get(k) for k in keys}
        row.update({k: v for k, v in image.record().items() if k not in row})
        row["run"] = image.sample_index
        rows.append(row)
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame.from_records(rows)


def sweep(session: Any, workflow: Any, grid: Mapping[str, Sequence[Any]], *,
          fixed: Mapping[str, Any] | None = None, seed: int | None = None,
          batch_size: int | None = None, priority: int = 0,
          order: Sequence[str] | None = None) -> Any:
    """Run ``workflow`` at every point of ``grid`` and return a tidy table.

    Parameters
    ----------
    session:
        Its queue and backend run the prompts (in this process, on a server, or on Ray).
    workflow:
        A :class:`WorkflowTemplate`, template text, or a recorded workflow / API dict.
    grid:
        ``{key: [values]}``; keys are template variables or ``NODE.INPUT`` overrides.
    fixed:
        Values held constant (template variables or overrides).
    seed, batch_size:
        Shorthands for ``fixed={"seed": ..., "batch_size": ...}``.
    order:
        Loop order, outermost first (default: :func:`sweep_order`, cheapest innermost).

    Returns
    -------
    pandas.DataFrame or list of dict
        One row per image, in run order: the grid values, then ``image`` (PIL), ``seed_of_image``,
        ``batch_index``, ``filename``, ``subfolder``, ``node_id``, ``prompt_id``, ``seconds``
        (its prompt's run time), ``worker``, ``prompt`` and ``run`` (the point's index).
        ``comfy_notebook.plot.xy_grid(table, x=..., y=...)`` draws it.
    """
    template = as_template(workflow)
    images = list(iter_sweep(session, template, grid, fixed=fixed, seed=seed,
                             batch_size=batch_size, priority=priority, order=order))
    return to_table(images, list(grid))
