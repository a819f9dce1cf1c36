"""Generation parameters of an image, read from the API prompt behind it."""

from __future__ import annotations

from collections import deque
from typing import Any

SAMPLERS = {"KSampler": "seed", "KSamplerAdvanced": "noise_seed", "SamplerCustom": "noise_seed"}
LOADERS = {"CheckpointLoaderSimple": "ckpt_name", "CheckpointLoader": "ckpt_name",
           "UNETLoader": "unet_name"}
FIELDS = ("seed", "steps", "cfg", "sampler", "scheduler", "checkpoint")


def _is_link(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[1], int) \
        and isinstance(value[0], str | int)


def _resolve(prompt: dict[str, Any], value: Any) -> Any:
    """A constant, or for a link the single constant input of the linked node (a primitive)."""
    for _ in range(16):
        if not _is_link(value):
            return value
        node = prompt.get(str(value[0]), {})
        consts = [v for v in node.get("inputs", {}).values() if not _is_link(v)]
        links = [v for v in node.get("inputs", {}).values() if _is_link(v)]
        if len(consts) == 1 and not links:
            return consts[0]
        if len(links) == 1 and not consts:
            value = links[0]
            continue
        return None
    return None


def upstream(prompt: dict[str, Any], start: list[str]) -> list[str]:
    """Node ids reachable upstream of ``start`` in breadth-first order (nearest first)."""
    seen, order, queue = set(start), [], deque(start)
    while queue:
        node_id = queue.popleft()
        order.append(node_id)
        for value in prompt.get(node_id, {}).get("inputs", {}).values():
            if _is_link(value) and str(value[0]) not in seen and str(value[0]) in prompt:
                seen.add(str(value[0]))
                queue.append(str(value[0]))
    return order


def prompt_metadata(prompt: dict[str, Any] | None, node_id: str | None = None) -> dict[str, Any]:
    """Seed, steps, cfg, sampler, scheduler and checkpoint of the image made by ``node_id``.

    Walks upstream from ``node_id`` (or from every node when it is None) to the nearest sampler
    node (KSampler, KSamplerAdvanced) and the checkpoint loader above it.  Missing values are
    left out.
    """
    if not prompt:
        return {}
    start = [str(node_id)] if node_id is not None and str(node_id) in prompt else list(prompt)
    meta: dict[str, Any] = {}
    order = upstream(prompt, start)
    sampler = next((n for n in order if prompt[n].get("class_type") in SAMPLERS), None)
    if sampler is not None:
        inputs = prompt[sampler].get("inputs", {})
        pairs = {"seed": SAMPLERS[prompt[sampler]["class_type"]], "steps": "steps", "cfg": "cfg",
                 "sampler": "sampler_name", "scheduler": "scheduler"}
        for field, key in pairs.items():
            value = _resolve(prompt, inputs.get(key))
            if value is not None:
                meta[field] = value
        order = upstream(prompt, [sampler])
    loader = next((n for n in order if prompt[n].get("class_type") in LOADERS), None)
    if loader is not None:
        value = _resolve(prompt, prompt[loader]["inputs"].get(LOADERS[prompt[loader]["class_type"]]))
        if value is not None:
            meta["checkpoint"] = value
    return meta
