"""Ray as a backend: actors that each hold a Session with resident models.

``RayBackend(address=None)`` starts (or joins) a local Ray; an address joins a cluster.  Each
worker actor holds one :class:`~comfy_notebook.Session` (one per GPU, or a fraction of one, or CPU
workers), so models stay loaded between tasks and its cache serves repeated loaders and encoders.
The backend's ``concurrency`` is its number of workers: the session's queue keeps each worker
busy with one prompt.  A prompt goes to an idle worker that last ran the same models (the
"group": the constant inputs of its loader nodes), else to one that ran nothing yet, else to any
idle one, so a sweep is grouped by checkpoint and each worker loads a model once.  Images come back
through Ray's object store as PNG bytes.  When a worker dies, the prompt it ran is retried on
another worker, so every prompt yields its result exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from comfy_notebook.backends.protocol import EventCallback, ImageRef
from comfy_notebook.engine.events import RunFinished, RunStarted
from comfy_notebook.engine.executor import PromptResult
from comfy_notebook.errors import BackendError

__all__ = ["RayBackend", "group_key"]

log = logging.getLogger(__name__)


def group_key(prompt: Mapping[str, Any]) -> str:
    """What a worker must load for ``prompt``: its loader nodes' constant inputs."""
    loaders = sorted(
        (str(node.get("class_type")),
         json.dumps({k: v for k, v in node.get("inputs", {}).items() if not isinstance(v, list)},
                    sort_keys=True, default=str))
        for node in prompt.values() if "Loader" in str(node.get("class_type", "")))
    return json.dumps(loaders)


class _Worker:
    """The actor: a session in the worker process (of the driver session's class)."""

    def __init__(self, name: str, session_class: type, models_dir: str | None, output_dir: str | None) -> None:
        self.name = name
        self.session = session_class(models_dir=models_dir, output_dir=output_dir)
        self.session.options = {"progress": False}
        self.loads: dict[str, int] = {}
        self.ran: list[str] = []

    def run(self, prompt: dict[str, Any], prompt_id: str, extra_data: dict[str, Any] | None) -> dict[str, Any]:
        from comfy_notebook.backends.inprocess import InProcessBackend
        from comfy_notebook.backends.protocol import image_refs

        result = self.session.run_prompt(prompt, extra_data=extra_data, prompt_id=prompt_id)
        for nid in result.executed:
            node = prompt.get(nid) or {}
            if "Loader" in str(node.get("class_type", "")):
                key = f"{node['class_type']}:{json.dumps(node.get('inputs', {}), sort_keys=True, default=str)}"
                self.loads[key] = self.loads.get(key, 0) + 1
        self.ran.append(prompt_id)
        local = InProcessBackend(self.session)
        files = {(r.type, r.subfolder, r.filename): local.fetch(r) for r in image_refs(result)}
        return {"ui": result.ui, "executed": sorted(result.executed), "cached": sorted(result.cached),
                "seconds": result.seconds, "files": files, "worker": self.name, "pid": os.getpid()}

    def interrupt(self) -> None:
        self.session.executor.interrupt()

    def free(self, unload_models: bool, free_memory: bool) -> None:
        from comfy_notebook.backends.inprocess import InProcessBackend

        InProcessBackend(self.session).free(unload_models=unload_models, free_memory=free_memory)

    def object_info(self, node_class: str | None) -> dict[str, Any]:
        return self.session.registry.object_info(node_class)  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        return {"name": self.name, "pid": os.getpid(), "loads": dict(self.loads), "ran": list(self.ran)}


class RayBackend:
    """Prompts on Ray actors (see the module doc).

    Parameters
    ----------
    address:
        ``None``: join the Ray this process already started, or start a local one;
        ``"auto"`` or ``"ray://host:10001"``: join that cluster.
    num_workers:
        Actors to start (default: one per GPU in the cluster, else 1).
    num_gpus, num_cpus:
        Resources per worker (fractions allowed, e.g. ``num_gpus=0.5`` for small models).
    models_dir, output_dir:
        The workers' sessions' folders (paths on the worker machines).
    init_kwargs:
        Passed to ``ray.init`` when this backend starts Ray.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_workers: int | None = None,
                 num_gpus: float | None = None, num_cpus: float = 1,
                 models_dir: str | os.PathLike[str] | None = None,
                 output_dir: str | os.PathLike[str] | None = None,
                 init_kwargs: Mapping[str, Any] | None = None) -> None:
        import ray

        if not ray.is_initialized():
            for attempt in range(3):  # a local raylet gets 30 s to start; a busy machine may miss it
                try:
                    ray.init(address=address, **dict(init_kwargs or {}))
                    break
                except Exception:
                    ray.shutdown()
                    if attempt == 2 or address is not None:
                        raise
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self.num_gpus = (1 if gpus else 0) if num_gpus is None else num_gpus
        self.num_cpus = num_cpus
        self.concurrency = num_workers or max(1, gpus)
        self.models_dir = None if models_dir is None else os.fspath(models_dir)
        self.output_dir = None if output_dir is None else os.fspath(output_dir)
        self.actors: dict[str, Any] = {}
        self.dead: set[str] = set()
        self._busy: dict[str, str] = {}  # worker -> prompt id
        self._group: dict[str, str] = {}  # worker -> group it last ran
        self._cond = threading.Condition()
        self._files: dict[tuple[str, str, str], bytes] = {}
        self.retries = 0

    def attach(self, session: Any) -> None:
        """Start the workers, each with a session of ``session``'s class (``Session(backend=...)``
        calls this)."""
        import ray

        if self.actors:
            return
        actor = ray.remote(_Worker).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                            max_concurrency=2, max_restarts=0)
        models_dir = self.models_dir if self.models_dir is not None else session.models_dir
        models_dir = None if models_dir is None else os.fspath(models_dir)
        for i in range(self.concurrency):
            name = f"worker-{i}"
            out = None if self.output_dir is None else os.path.join(self.output_dir, name)
            self.actors[name] = actor.remote(name, type(session), models_dir, out)

    # -- scheduling --------------------------------------------------------------------------
    def _acquire(self, key: str, prompt_id: str) -> str:
        with self._cond:
            while True:
                alive = [w for w in self.actors if w not in self.dead]
                if not self.actors:
                    raise BackendError("the RayBackend has no workers yet; Fix: use it through a "
                                       "session, Session(backend=RayBackend(...)), which starts them",
                                       backend=self.name, prompt_id=prompt_id)
                if not alive:
                    raise BackendError("every Ray worker has died; Fix: create a new RayBackend",
                                       backend=self.name, prompt_id=prompt_id)
                idle = [w for w in alive if w not in self._busy]
                pick = (next((w for w in idle if self._group.get(w) == key), None)
                        or next((w for w in idle if w not in self._group), None)
                        or (idle[0] if idle else None))
                if pick is not None:
                    self._busy[pick] = prompt_id
                    self._group[pick] = key
                    return pick
                self._cond.wait()

    def _release(self, worker: str) -> None:
        with self._cond:
            self._busy.pop(worker, None)
            self._cond.notify_all()

    def run_prompt(self, prompt: Mapping[str, Any], *, prompt_id: str | None = None,
                   extra_data: Mapping[str, Any] | None = None,
                   on_event: EventCallback | None = None) -> PromptResult:
        import ray
        from ray.exceptions import RayActorError

        pid = prompt_id or uuid.uuid4().hex
        key = group_key(prompt)
        if on_event is not None:
            on_event(RunStarted(pid, tuple(prompt)))
        t0 = time.perf_counter()
        while True:
            worker = self._acquire(key, pid)
            try:
                out = ray.get(self.actors[worker].run.remote(dict(prompt), pid, dict(extra_data or {})))
            except RayActorError as exc:
                log.warning("Ray worker %s died running %s; retrying elsewhere: %s", worker, pid, exc)
                with self._cond:
                    self.dead.add(worker)
                    self.retries += 1
                continue
            except ray.exceptions.RayTaskError as exc:
                raise exc.as_instanceof_cause() from None
            finally:
                self._release(worker)
            break
        ui: dict[str, Any] = {}
        for node_id, node_ui in (out["ui"] or {}).items():
            node_ui = dict(node_ui or {})
            if "images" in node_ui:
                node_ui["images"] = [{**img, "subfolder": "/".join(filter(None, (worker, img.get("subfolder", ""))))}
                                     for img in node_ui["images"]]
            ui[node_id] = node_ui
        for (kind, sub, name), data in out["files"].items():
            self._files[(kind, "/".join(filter(None, (worker, sub))), name)] = data
        result = PromptResult(prompt_id=pid, ui=ui, executed=set(out["executed"]),
                              cached=set(out["cached"]), seconds=float(out["seconds"]))
        result.worker = worker  # type: ignore[attr-defined]
        if on_event is not None:
            on_event(RunFinished(pid, frozenset(result.executed), frozenset(result.cached),
                                 time.perf_counter() - t0))
        return result

    # -- the rest of the protocol ------------------------------------------------------------
    def fetch(self, ref: ImageRef) -> bytes:
        try:
            return self._files[(ref.type, ref.subfolder, ref.filename)]
        except KeyError:
            raise BackendError(f"no image {ref.subfolder}/{ref.filename} came back from the Ray "
                               "workers", backend=self.name) from None

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        import ray

        worker = next(w for w in self.actors if w not in self.dead)
        return ray.get(self.actors[worker].object_info.remote(node_class))  # type: ignore[no-any-return]

    def interrupt(self) -> None:
        with self._cond:
            busy = list(self._busy)
        for w in busy:
            self.actors[w].interrupt.remote()

    def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        import ray

        ray.get([a.free.remote(unload_models, free_memory) for w, a in self.actors.items()
                 if w not in self.dead])

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per live worker: its process id, the loads of each loader (counted) and what it ran."""
        import ray

        live = [w for w in self.actors if w not in self.dead]
        return dict(zip(live, ray.get([self.actors[w].stats.remote() for w in live]), strict=True))

    def close(self) -> None:
        import ray

        for a in self.actors.values():
            ray.kill(a)
        self.dead.update(self.actors)

    def __repr__(self) -> str:
        return f"RayBackend({len(self.actors) - len(self.dead)} live workers)"
