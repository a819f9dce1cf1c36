"""Transparent batching: ``num_samples`` images as batches of ``batch_size``, streamed as they finish.

Seed rule
---------
With ``num_samples=N``, ``batch_size=B`` and ``seed=S``, batch ``k`` (``k = 0 .. ceil(N/B)-1``)
holds samples ``k*B .. min(N, (k+1)*B) - 1`` and is rendered with ``batch_size`` = its size and
``seed = S + k*B``: the seed of its first sample.  Sample ``i`` therefore has the per-image seed
``S + i`` — consecutive seeds within a batch and across batches.  ComfyUI draws a batch's noise as
one tensor from the batch seed, so image ``j`` of a batch is reproduced by the same prompt at
``batch_size`` B and taking index ``j`` (ComfyUI's ``LatentFromBatch``), not by a single-image run
at seed ``S + i``.

Every saved PNG records this: its ``prompt`` chunk holds the batch's seed and batch size (as in
any ComfyUI PNG), and a ``comfy_notebook_batch`` chunk (``extra_pnginfo``) holds
``{"seed", "batch_size", "first_sample", "sample_seeds"}``; :func:`sample_seeds` reads it back.

Batches run back to back through the session's queue, so everything upstream of the seed (model
loaders, text encoders) is a cache hit after the first batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_notebook.backends.protocol import Backend, image_refs
from comfy_notebook.backends.templates import WorkflowTemplate, as_template
from comfy_notebook.engine.executor import PromptResult

__all__ = ["Batch", "ImageResult", "iter_batches_async", "plan_batches", "run_batches",
           "sample_seeds"]

PNG_KEY = "comfy_notebook_batch"


@dataclass(frozen=True)
class Batch:
    """One batch: its index, first sample, size and seed (see the module's seed rule)."""

    index: int
    first_sample: int
    size: int
    seed: int

    @property
    def sample_seeds(self) -> list[int]:
        return [self.seed + j for j in range(self.size)]


def plan_batches(num_samples: int, batch_size: int, seed: int = 0) -> list[Batch]:
    """Split ``num_samples`` into batches of at most ``batch_size`` with the documented seeds.

    >>> [(b.size, b.seed) for b in plan_batches(5, 2, seed=10)]
    [(2, 10), (2, 12), (1, 14)]
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"expected num_samples >= 1 and batch_size >= 1, received "
                         f"num_samples={num_samples}, batch_size={batch_size}")
    return [Batch(k, first, min(batch_size, num_samples - first), int(seed) + first)
            for k, first in enumerate(range(0, num_samples, batch_size))]


@dataclass
class ImageResult:
    """One output image with where it came from.

    ``image`` is a PIL image (read on first use from the backend); ``prompt`` is the API prompt
    that made it; ``seed`` its per-image seed (batch seed + ``batch_index``); ``params`` the sweep
    parameters; ``seconds`` the run time of its prompt; ``worker`` the backend (or Ray worker)
    that ran it.
    """

    filename: str
    subfolder: str
    type: str
    node_id: str
    prompt: dict[str, Any]
    prompt_id: str
    seed: int | None = None
    batch_seed: int | None = None
    batch_index: int = 0
    sample_index: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    worker: str = ""
    data: bytes | None = field(default=None, repr=False)
    _backend: Any = field(default=None, repr=False, compare=False)

    @property
    def image(self) -> Any:
        """The image as a PIL ``Image`` (its bytes are fetched once)."""
        from PIL import Image

        if not self.filename:  # a sweep point whose prompt made no image
            return None
        if self.data is None:
            from comfy_notebook.backends.protocol import ImageRef

            self.data = self._backend.fetch(ImageRef(self.filename, self.subfolder, self.type, self.node_id))
        img = Image.open(io.BytesIO(self.data))
        img.load()
        return img

    def _repr_png_(self) -> bytes | None:
        if not self.filename:
            return None
        if self.data is None:
            self.image  # noqa: B018  (fetches)
        return self.data if self.filename.lower().endswith(".png") else None

    def record(self) -> dict[str, Any]:
        """A flat row: the parameters, then the image and where it came from."""
        return {**self.params, "image": self.image, "seed_of_image": self.seed,
                "batch_index": self.batch_index, "filename": self.filename,
                "subfolder": self.subfolder, "node_id": self.node_id, "prompt_id": self.prompt_id,
                "seconds": self.seconds, "worker": self.worker, "prompt": self.prompt}


def collect_images(backend: Backend, result: PromptResult, prompt: Mapping[str, Any], *,
                   batch: Batch | None = None, params: Mapping[str, Any] | None = None,
                   fetch: bool = True) -> list[ImageResult]:
    """The :class:`ImageResult` of every image a finished prompt reported."""
    out = []
    worker = str(getattr(result, "worker", getattr(backend, "name", "")))
    per_node: dict[str, int] = {}
    for ref in image_refs(result):
        j = per_node.get(ref.node_id, 0)
        per_node[ref.node_id] = j + 1
        item = ImageResult(
            ref.filename, ref.subfolder, ref.type, ref.node_id, dict(prompt), result.prompt_id,
            seed=None if batch is None else batch.seed + j,
            batch_seed=None if batch is None else batch.seed, batch_index=j,
            sample_index=j if batch is None else batch.first_sample + j,
            params=dict(params or {}), seconds=result.seconds, worker=worker, _backend=backend)
        if fetch:
            item.data = backend.fetch(ref)
        out.append(item)
    return out


def sample_seeds(png: str | os.PathLike[str] | bytes) -> list[int]:
    """The per-image seeds of the batch a saved PNG belongs to (from its metadata).

    Image ``j`` of that batch (the ``j``-th file the save node wrote for it) has seed
    ``sample_seeds(png)[j]``.
    """
    from PIL import Image

    with Image.open(io.BytesIO(png) if isinstance(png, bytes) else png) as img:
        text = getattr(img, "text", {}) or {}
    if PNG_KEY not in text:
        raise KeyError(f"the PNG has no {PNG_KEY!r} chunk (it was not saved by a batched run); "
                       f"chunks present: {sorted(text)}")
    return [int(s) for s in json.loads(text[PNG_KEY])["sample_seeds"]]


def _batch_prompt(template: WorkflowTemplate, batch: Batch, variables: Mapping[str, Any],
                  input_images_dir: str | None) -> dict[str, Any]:
    values = {**variables, "seed": batch.seed, "batch_size": batch.size}
    if input_images_dir is not None:
        values["input_images_dir"] = str(input_images_dir)
    return template.render_reserved(**values)


def _extra(batch: Batch) -> dict[str, Any]:
    return {"extra_pnginfo": {PNG_KEY: {"seed": batch.seed, "batch_size": batch.size,
                                        "first_sample": batch.first_sample,
                                        "sample_seeds": batch.sample_seeds}}}


def _submit_all(session: Any, workflow: Any, num_samples: int, batch_size: int, seed: int,
                input_images_dir: str | None, variables: Mapping[str, Any] | None,
                priority: int) -> list[tuple[Batch, dict[str, Any], Any]]:
    template = as_template(workflow)
    jobs = []
    with session.queue.paused():  # all batches enter together, in order
        for batch in plan_batches(num_samples, batch_size, seed):
            prompt = _batch_prompt(template, batch, variables or {}, input_images_dir)
            fut = session.queue.submit(prompt, priority=priority, extra_data=_extra(batch))
            jobs.append((batch, prompt, fut))
    return jobs


def run_batches(session: Any, workflow: Any, *, num_samples: int, batch_size: int = 1,
                seed: int = 0, input_images_dir: str | os.PathLike[str] | None = None,
                variables: Mapping[str, Any] | None = None, priority: int = 0,
                ) -> Iterator[ImageResult]:
    """Run ``num_samples`` images in batches and yield each :class:`ImageResult` as its batch ends.

    Parameters
    ----------
    session:
        The :class:`~comfy_notebook.Session` (its queue and backend run the batches).
    workflow:
        A :class:`WorkflowTemplate`, template text, or a recorded workflow / API dict (its
        ``seed``/``noise_seed`` and ``batch_size`` inputs are templated for you).
    num_samples, batch_size, seed:
        See the module's seed rule.
    input_images_dir, variables:
        Template variables (``input_images_dir`` is reserved).

    Notes
    -----
    Closing the generator early cancels the batches that have not started.
    """
    jobs = _submit_all(session, workflow, num_samples, batch_size, seed,
                       None if input_images_dir is None else str(input_images_dir), variables, priority)
    by_future = {fut: (batch, prompt) for batch, prompt, fut in jobs}
    try:
        for fut in concurrent.futures.as_completed(by_future):
            batch, prompt = by_future[fut]
            yield from collect_images(session.backend, fut.result(), prompt, batch=batch)
    finally:
        for fut in by_future:
            if not fut.done():
                fut.cancel()


async def iter_batches_async(session: Any, workflow: Any, *, num_samples: int, batch_size: int = 1,
                             seed: int = 0, input_images_dir: str | os.PathLike[str] | None = None,
                             variables: Mapping[str, Any] | None = None, priority: int = 0,
                             ) -> AsyncIterator[ImageResult]:
    """The async twin of :func:`run_batches` (``async for image in ...``), for a running loop."""
    jobs = _submit_all(session, workflow, num_samples, batch_size, seed,
                       None if input_images_dir is None else str(input_images_dir), variables, priority)

    async def one(batch: Batch, prompt: dict[str, Any], fut: Any) -> list[ImageResult]:
        result = await fut
        return await asyncio.to_thread(collect_images, session.backend, result, prompt, batch=batch)

    tasks = [asyncio.ensure_future(one(*job)) for job in jobs]
    try:
        for next_done in asyncio.as_completed(tasks):
            for image in await next_done:
                yield image
    finally:
        for (_, _, fut), task in zip(jobs, tasks, strict=True):
            if not fut.done():
                fut.cancel()
            task.cancel()
