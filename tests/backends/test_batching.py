"""num_samples / batch_size: the seed rule, streaming (sync and async), PNG metadata, and cache
reuse across batches, on the tiny SD1 checkpoint through the session's queue."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import numpy as np
from PIL import Image

from comfy_notebook.backends import WorkflowTemplate, iter_batches_async, plan_batches, sample_seeds
from comfy_notebook.engine.events import NodeStarted

from .conftest import sd_prompt


def test_plan_batches_seed_rule() -> None:
    plan = plan_batches(7, 3, seed=100)
    assert [(b.first_sample, b.size, b.seed) for b in plan] == [(0, 3, 100), (3, 3, 103), (6, 1, 106)]
    seeds = [s for b in plan for s in b.sample_seeds]
    assert seeds == list(range(100, 107))  # consecutive per batch and across batches
    assert [b.size for b in plan_batches(4, 4)] == [4]
    assert len(plan_batches(1, 8)) == 1 and plan_batches(1, 8)[0].size == 1


def test_run_batches_streams_every_image_with_its_seed_and_reuses_the_cache(sd_session: Any) -> None:
    started: list[str] = []
    unsubscribe = sd_session.subscribe(
        lambda e: started.append(e.class_type) if isinstance(e, NodeStarted) else None)
    try:
        results = list(sd_session.batches(sd_prompt(), num_samples=5, batch_size=2, seed=10))
    finally:
        unsubscribe()
    assert [r.seed for r in results] == [10, 11, 12, 13, 14]
    assert [r.batch_index for r in results] == [0, 1, 0, 1, 0]
    assert [r.batch_seed for r in results] == [10, 10, 12, 12, 14]
    assert len({r.filename for r in results}) == 5 and all(r.node_id == "9" for r in results)
    # Three batches ran back to back: the loader and both text encoders ran once.
    assert started.count("CheckpointLoaderSimple") == 1 and started.count("CLIPTextEncode") == 2
    assert started.count("KSampler") == 3
    # Each image knows the prompt that made it, and its PNG says which seeds its batch holds.
    third = results[2]
    assert third.prompt["3"]["inputs"]["seed"] == 12 and third.prompt["5"]["inputs"]["batch_size"] == 2
    assert sample_seeds(third.data) == [12, 13]
    with Image.open(io.BytesIO(third.data)) as img:
        assert json.loads(img.text["prompt"])["3"]["inputs"]["seed"] == 12
        assert img.size == (64, 64)
    assert results[0].image.size == (64, 64)


def test_a_batch_image_is_reproduced_by_its_batch_prompt(sd_root: Any) -> None:
    from .conftest import new_sd_session

    s = new_sd_session(sd_root, "out_repro")
    results = list(s.batches(sd_prompt(), num_samples=4, batch_size=2, seed=3))
    fresh = new_sd_session(sd_root, "out_repro2")  # nothing cached: the batch really reruns
    again = fresh.run_prompt(sd_prompt(seed=3 + 2, batch_size=2))  # batch 1, as its PNG records
    image = again.outputs["8"][0]  # IMAGE [2, 64, 64, 3]
    for j in range(2):
        saved = np.asarray(results[2 + j].image, dtype=np.float32)
        assert np.abs(saved - np.clip(255 * image[j].numpy(), 0, 255).astype(np.uint8)).max() <= 1


def test_async_iterator_inside_a_running_loop(sd_session: Any) -> None:
    template = WorkflowTemplate.from_workflow(sd_prompt())

    async def main() -> list[Any]:
        return [r async for r in iter_batches_async(sd_session, template, num_samples=3,
                                                    batch_size=2, seed=40)]

    results = asyncio.run(main())
    assert sorted(r.seed for r in results) == [40, 41, 42]


def test_closing_the_generator_early_cancels_waiting_batches(sd_session: Any) -> None:
    gen = sd_session.batches(sd_prompt(), num_samples=6, batch_size=1, seed=60)
    first = next(gen)
    gen.close()
    assert first.seed == 60
    statuses = dict(sd_session.queue.history)
    assert "cancelled" in statuses.values()
