"""``%comfy`` and ``%%comfy``: thin parsers over the Python API.

Every subcommand calls the session, its cache, its model manager or real mode; a wrong command
line becomes IPython's one-line ``UsageError``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from comfy_notebook.errors import ComfyNotebookError

__all__ = ["ComfyMagics", "apply_overrides"]

USAGE = """\
%comfy status                     session, cache and model summary
%comfy models                     the model panel (a text table in a terminal)
%comfy load NAME                  put a model on the compute device
%comfy offload NAME               move a model to CPU memory
%comfy unload NAME|all            free a model's weights (it reloads on next use)
%comfy cache                      cache statistics
%comfy cache clear                drop every cached result
%comfy cache budget RAM [VRAM]    evict least recently used results beyond these sizes (8GB)
%comfy export FILE.json           the graph behind the last cell's outputs, as API JSON
%comfy run FILE.json [--set NODE.INPUT=VALUE ...]
                                  run an API-format prompt (NODE: id, title or class)
%comfy traceback                  the full traceback of the last error
%comfy gallery                    this cell's images, one group per distinct run (last 16 runs)
%comfy gallery clear              forget this cell's image history (frees the images it holds)
%comfy stubs [FILE.pyi]           write a .pyi stub of the session's nodes for editor completion
                                  (default: next to comfy_notebook/nodes/__init__.py)
%%comfy                           record the cell's node calls as one workflow and run it
"""


def _session() -> Any:
    from comfy_notebook._session import session

    return session()


def _parse_value(text: str) -> Any:
    """JSON when it parses (numbers, booleans, lists), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(api: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``NODE.INPUT=VALUE`` overrides to an API prompt (NODE: id, title or class_type).

    Raises
    ------
    UsageError
        When an override is malformed or names no (or more than one) node.
    """
    for item in overrides:
        target, sep, raw = item.partition("=")
        node_name, dot, input_name = target.rpartition(".")
        if not sep or not dot or not node_name or not input_name:
            raise UsageError(f"--set expects NODE.INPUT=VALUE, received {item!r}")
        if node_name in api:
            matches = [node_name]
        else:
            matches = [
                nid for nid, node in api.items()
                if (node.get("_meta") or {}).get("title") == node_name or node.get("class_type") == node_name
            ]
        if len(matches) != 1:
            found = "no node" if not matches else f"{len(matches)} nodes ({', '.join(matches)})"
            raise UsageError(f"--set {item!r}: {found} named {node_name!r}; use the node id")
        api[matches[0]].setdefault("inputs", {})[input_name] = _parse_value(raw)
    return api


@magics_class
class ComfyMagics(Magics):
    """The ``%comfy`` magics (see :data:`USAGE`)."""

    def __init__(self, shell: Any, events: Any = None) -> None:
        super().__init__(shell)  # type: ignore[no-untyped-call,unused-ignore]  # untyped before IPython 9
        self.events = events

    @line_cell_magic  # type: ignore[untyped-decorator,unused-ignore]  # untyped before IPython 9
    def comfy(self, line: str, cell: str | None = None) -> Any:
        """Control comfy_notebook from the notebook.

        %comfy status                     session, cache and model summary
        %comfy models                     the model panel (a text table in a terminal)
        %comfy load NAME                  put a model on the compute device
        %comfy offload NAME               move a model to CPU memory
        %comfy unload NAME|all            free a model's weights (it reloads on next use)
        %comfy cache                      cache statistics
        %comfy cache clear                drop every cached result
        %comfy cache budget RAM [VRAM]    evict least recently used results beyond these sizes
        %comfy export FILE.json           the graph behind the last cell's outputs, as API JSON
        %comfy run FILE.json [--set NODE.INPUT=VALUE ...]
                                          run an API-format prompt (NODE: id, title or class)
        %comfy traceback                  the full traceback of the last error
        %comfy gallery [clear]            this cell's images per distinct run (clear: forget them)
        %comfy stubs [FILE.pyi]           a .pyi stub of the session's nodes for editors
        %%comfy                           record the cell's node calls as one workflow, run it
        """
        if cell is not None:
            return self._cell(line, cell)
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%comfy: {exc}") from None
        if not words or words[0] in ("help", "-h", "--help"):
            print(USAGE)
            return None
        command, args = words[0], words[1:]
        handler = getattr(self, "_cmd_" + command, None)
        if handler is None:
            raise UsageError(f"%comfy: unknown command {command!r}; one of status, models, load, "
                             "offload, unload, cache, export, run, stubs, traceback, gallery "
                             "(%comfy? for help)")
        try:
            return handler(args)
        except ComfyNotebookError as exc:
            raise UsageError(f"%comfy {command}: {exc}") from None
        except (KeyError, LookupError) as exc:
            message = exc.args[0] if exc.args else exc
            raise UsageError(f"%comfy {command}: {message}") from None

    # -- subcommands -------------------------------------------------------------------
    def _cmd_status(self, args: list[str]) -> None:
        from comfy_notebook.realmode import state

        session = _session()
        st = state(session)
        stats = session.cache.stats()
        manager = session.services.models_loaded
        n_models = len(manager.list()) if manager is not None else 0
        print(f"nodes registered: {len(session.registry)}")
        print(f"cache: {stats.entries} entries, {stats.bytes / 2**20:.1f} MB, "
              f"{stats.hits} hits / {stats.misses} misses, policy {session.cache.policy!r}")
        print(f"real-mode calls: {st.calls}, node functions run: {st.executed}")
        print(f"models: {n_models} managed" if manager is not None else "models: no models loaded")

    def _cmd_models(self, args: list[str]) -> Any:
        session = _session()
        if session.services.models_loaded is None:
            print("no models loaded")
            return None
        try:
            from comfy_notebook.widgets import show_models

            return show_models(session)
        except ImportError:  # widgets unavailable: the manager's own table
            print(repr(session.services.models_loaded))
            return None

    def _manager(self, verb: str, args: list[str]) -> Any:
        if len(args) != 1:
            raise UsageError(f"%comfy {verb} expects one model NAME (see %comfy models)")
        manager = _session().services.models_loaded
        if manager is None:
            raise UsageError(f"%comfy {verb}: no models loaded")
        return manager

    def _cmd_load(self, args: list[str]) -> None:
        self._manager("load", args).load(args[0])

    def _cmd_offload(self, args: list[str]) -> None:
        self._manager("offload", args).offload(args[0])

    def _cmd_unload(self, args: list[str]) -> None:
        manager = self._manager("unload", args)
        if args[0] == "all":
            manager.unload_all()
        else:
            manager.unload(args[0])

    def _cmd_cache(self, args: list[str]) -> None:
        cache = _session().cache
        if args == ["clear"]:
            n = len(cache)
            cache.clear()
            print(f"cache cleared ({n} entries)")
            return
        if args and args[0] == "budget" and len(args) in (2, 3):
            from comfy_notebook._units import parse_bytes
            from comfy_notebook.engine.policies import MemoryBudget

            try:
                sizes = [None if a == "none" else parse_bytes(a) for a in args[1:]]
            except ValueError as exc:
                raise UsageError(f"%comfy cache budget: {exc}") from None
            cache.policy = MemoryBudget(*sizes)
            from collections import OrderedDict

            entries = OrderedDict((k, cache.peek(k)) for k in cache.keys())  # noqa: SIM118 - least recent first
            evicted = [k for k in list(cache.policy.victims(entries, 0)) if cache.release(k)]
            print(f"cache policy: {cache.policy!r}; evicted {len(evicted)} entries now")
            return
        if args:
            raise UsageError("%comfy cache takes no argument, 'clear' or 'budget RAM [VRAM]'")
        s = cache.stats()
        print(f"{s.entries} entries, {s.bytes / 2**20:.1f} MB, {s.hits} hits, {s.misses} misses, "
              f"{s.evictions} evictions, policy {cache.policy!r}")

    def _cmd_export(self, args: list[str]) -> None:
        from comfy_notebook.realmode import state, to_api

        if len(args) != 1:
            raise UsageError("%comfy export expects one FILE.json")
        outputs = state(_session()).last_outputs
        if not outputs:
            raise UsageError("%comfy export: no real-mode outputs yet; run a cell with node calls first")
        api = to_api(outputs)
        Path(args[0]).write_text(json.dumps(api, indent=2), encoding="utf-8")
        print(f"wrote {len(api)} nodes to {args[0]}")

    def _cmd_run(self, args: list[str]) -> Any:
        if not args:
            raise UsageError("%comfy run expects FILE.json [--set NODE.INPUT=VALUE ...]")
        path, rest, overrides = args[0], args[1:], []
        while rest:
            if rest[0] != "--set" or len(rest) < 2:
                raise UsageError(f"%comfy run: unexpected {rest[0]!r}; use --set NODE.INPUT=VALUE")
            overrides.append(rest[1])
            rest = rest[2:]
        try:
            api = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"%comfy run: cannot read {path}: {exc}") from None
        if isinstance(api, dict) and isinstance(api.get("prompt"), dict):
            api = api["prompt"]  # a /prompt request body
        result = _session().run_prompt(apply_overrides(api, overrides))
        print(f"executed {len(result.executed)} nodes, {len(result.cached)} from cache")
        return result

    def _cmd_stubs(self, args: list[str]) -> None:
        from pathlib import Path

        import comfy_notebook.nodes
        from comfy_notebook.realmode.stubs import write_stub

        if len(args) > 1:
            raise UsageError("%comfy stubs takes at most one path")
        default = Path(comfy_notebook.nodes.__file__).with_suffix(".pyi")
        path = write_stub(_session().registry, args[0] if args else default)
        print(f"wrote {path}")

    def _cmd_gallery(self, args: list[str]) -> Any:
        from comfy_notebook.kernel_ext.cells import cell_runs

        if args not in ([], ["clear"]):
            raise UsageError("%comfy gallery takes no argument or 'clear'")
        events = self.events
        if events is None or events.cell_id is None:
            raise UsageError("%comfy gallery shows the images of the cell it runs in; no cell is running")
        if args == ["clear"]:
            n = len(events.images.runs(events.cell_id))
            events.images.forget(events.cell_id)
            print(f"forgot {n} run(s) of this cell")
            return None
        if not cell_runs(None):
            print("no images from this cell yet: none of its runs made an IMAGE with a node call")
            return None
        from comfy_notebook.widgets import Gallery

        return Gallery.for_cell(None)

    def _cmd_traceback(self, args: list[str]) -> None:
        text = self.events.last_traceback if self.events is not None else ""
        print(text or "no comfy_notebook error so far")

    # -- cell magic --------------------------------------------------------------------
    def _cell(self, line: str, cell: str) -> Any:
        """Record the cell's node calls (virtual mode) and run them as one workflow."""
        from comfy_notebook.realmode import Workflow

        if line.strip():
            raise UsageError("%%comfy takes no arguments")
        shell = self.shell
        if shell is None:
            raise UsageError("%%comfy needs an IPython shell")
        with Workflow() as wf:
            shell.ex(cell)  # type: ignore[no-untyped-call,unused-ignore]  # untyped in IPython 9
        if not wf.nodes:
            raise UsageError("%%comfy: the cell made no node calls")
        from comfy_notebook.realmode import state

        session = _session()
        state(session)  # attaches the progress bars
        result = wf.run(session)
        print(f"executed {len(result.executed)} nodes, {len(result.cached)} from cache")
        return result
