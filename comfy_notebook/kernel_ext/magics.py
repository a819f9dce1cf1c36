"""``%comfy`` and ``%%comfy``: thin ``magic_arguments`` parsers over the Python API.

Each subcommand parses its line and makes one call that a script can make too (mostly
:mod:`comfy_notebook.realmode.control`, the session's model manager, the widgets); a wrong
command line or a refused call becomes IPython's one-line ``UsageError``.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from comfy_notebook.errors import ComfyNotebookError

__all__ = ["USAGE", "ComfyMagics", "apply_overrides"]

USAGE = """\
%comfy status                     session, folders, cache and model summary
%comfy models                     the model panel (a text table in a terminal)
%comfy models-dir [PATH]          use PATH as the models folder now (no PATH: show it)
%comfy load NAME                  put a model on the compute device
%comfy offload NAME               move a model to CPU memory
%comfy unload NAME|all [--wait S]  free a model's weights (it reloads on next use); a running
                                  prompt is waited for up to S seconds, else refused
%comfy cache                      cache statistics
%comfy cache clear                drop every cached result
%comfy cache budget RAM [VRAM]    evict least recently used results beyond these sizes (8GB)
%comfy export FILE.json           the graph behind the last cell's outputs, as API JSON
%comfy run FILE.json [--set NODE.INPUT=VALUE ...]
                                  run an API-format prompt (NODE: id, title or class)
%comfy sweep FILE --grid K=V1,V2 [--grid ...] [--set K=V] [--x K --y K]
                                  run a grid (template variable or NODE.INPUT) -> a table
%comfy traceback                  the full traceback of the last error
%comfy gallery                    the session's newest images (newest last)
%comfy gallery this|CELL_ID       a cell's images, one group per distinct run (last 16 runs)
%comfy gallery clear [CELL_ID]    forget a cell's image history (all cells without an id)
%comfy stubs [DIR|FILE.pyi]       write a .pyi stub of the session's nodes for editors
                                  (default: ~/.cache/comfy_notebook/stubs; see README)
%comfy nodes load PATH            import ComfyUI custom node packs (a pack, a .py file or a
                                  custom_nodes folder); one line per pack, failures included
%comfy attach PATH [builtin]      import your ComfyUI and register all its nodes (its classes
                                  win shared names unless "builtin" is given)
%%comfy                           record the cell's node calls as one workflow and run it
"""

_COMMANDS = ("status", "models", "models-dir", "load", "offload", "unload", "cache", "export", "run",
             "sweep", "traceback", "gallery", "stubs", "nodes", "attach", "help")


def apply_overrides(api: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """:func:`comfy_notebook.realmode.control.apply_overrides` (kept here for old imports)."""
    from comfy_notebook.realmode.control import apply_overrides as apply

    return apply(api, overrides)


def _session() -> Any:
    from comfy_notebook._session import session

    return session()


def _control() -> Any:
    from comfy_notebook.realmode import control

    return control


@magics_class
class ComfyMagics(Magics):
    """The ``%comfy`` magics (see :data:`USAGE`)."""

    def __init__(self, shell: Any, events: Any = None) -> None:
        super().__init__(shell)  # type: ignore[no-untyped-call,unused-ignore]  # untyped before IPython 9
        self.events = events

    # IPython's magic_arguments are untyped: hence the ignores on the four decorators.
    @magic_arguments()  # type: ignore[no-untyped-call,untyped-decorator,unused-ignore]
    @argument("command", nargs="?", default="help",  # type: ignore[no-untyped-call,untyped-decorator,unused-ignore]
              help="one of: " + ", ".join(_COMMANDS))
    @argument("args", nargs="*", help="the command's arguments")  # type: ignore[no-untyped-call,untyped-decorator,unused-ignore]
    @argument("--set", dest="overrides", action="append", default=[],  # type: ignore[no-untyped-call,untyped-decorator,unused-ignore]
              metavar="NODE.INPUT=VALUE", help="run: override an input (repeatable)")
    @argument("--wait", dest="wait", type=float, default=None,  # type: ignore[no-untyped-call,untyped-decorator,unused-ignore]
              metavar="SECONDS", help="unload: wait this long for a running prompt")
    @line_cell_magic  # type: ignore[untyped-decorator,unused-ignore]  # untyped before IPython 9
    def comfy(self, line: str, cell: str | None = None) -> Any:
        """Control comfy_notebook from the notebook.

        %comfy status                     session, folders, cache and model summary
        %comfy models                     the model panel (a text table in a terminal)
        %comfy models-dir [PATH]          use PATH as the models folder now
        %comfy load NAME                  put a model on the compute device
        %comfy offload NAME               move a model to CPU memory
        %comfy unload NAME|all [--wait S] free a model's weights (it reloads on next use)
        %comfy cache [clear | budget RAM [VRAM]]   statistics, drop all, or byte budgets
        %comfy export FILE.json           the graph behind the last cell's outputs, as API JSON
        %comfy run FILE.json [--set NODE.INPUT=VALUE ...]
                                          run an API-format prompt (NODE: id, title or class)
        %comfy traceback                  the full traceback of the last error
        %comfy gallery [this|CELL_ID|clear [CELL_ID]]   recent images, or a cell's runs
        %comfy stubs [DIR|FILE.pyi]       a .pyi stub of the session's nodes for editors
        %comfy nodes load PATH            import ComfyUI custom node packs, one report per pack
        %comfy attach PATH [builtin]      import your ComfyUI and register all its nodes
        %%comfy                           record the cell's node calls as one workflow, run it
        """
        if cell is not None:
            return self._cell(line, cell)
        head, _, rest = line.strip().partition(" ")
        if head == "sweep":  # its own options (--grid, --x, ...): kernel_ext/sweep_magic.py
            return self._sweep(rest)
        try:
            args = parse_argstring(self.comfy, line)  # type: ignore[no-untyped-call,unused-ignore]
        except UsageError as exc:
            raise UsageError(f"%comfy: {exc}") from None
        command = args.command
        if command in ("help", "-h"):
            print(USAGE)
            return None
        handler = getattr(self, "_cmd_" + command.replace("-", "_"), None)
        if handler is None:
            raise UsageError(f"%comfy: unknown command {command!r}; one of {', '.join(_COMMANDS)} "
                             "(%comfy? for help)")
        if args.overrides and command != "run":
            raise UsageError(f"%comfy {command} takes no --set")
        if args.wait is not None and command != "unload":
            raise UsageError(f"%comfy {command} takes no --wait")
        try:
            if command == "unload":
                return handler(args.args, args.wait or 0.0)
            return handler(args.args, args.overrides) if command == "run" else handler(args.args)
        except ComfyNotebookError as exc:
            raise UsageError(f"%comfy {command}: {exc}") from None
        except (KeyError, LookupError) as exc:
            message = exc.args[0] if exc.args else exc
            raise UsageError(f"%comfy {command}: {message}") from None

    # -- subcommands: each parses, then makes one Python-API call ----------------------------
    def _cmd_status(self, args: list[str]) -> None:
        print(_control().status())

    def _cmd_models_dir(self, args: list[str]) -> None:
        if len(args) > 1:
            raise UsageError("%comfy models-dir takes at most one PATH")
        if args:
            folders = _control().set_models_dir(args[0])
            print(f"models folder: {folders.models_dir}")
        else:
            print(f"models folder: {_control().models_dir_summary()}")

    def _cmd_models(self, args: list[str]) -> Any:
        from comfy_notebook.widgets import show_models

        result = show_models(_session())
        if isinstance(result, str):
            print(result)
            return None
        return result

    def _one_name(self, verb: str, args: list[str]) -> tuple[Any, str]:
        if len(args) != 1:
            raise UsageError(f"%comfy {verb} expects one model NAME (see %comfy models)")
        return _control().manager(), args[0]

    def _cmd_load(self, args: list[str]) -> None:
        manager, name = self._one_name("load", args)
        manager.load(name)

    def _cmd_offload(self, args: list[str]) -> None:
        manager, name = self._one_name("offload", args)
        manager.offload(name)

    def _cmd_unload(self, args: list[str], wait: float = 0.0) -> None:
        if args == ["all"]:  # also a remote backend's models (a ComfyUI server's /free)
            _control().unload_all(wait=wait)
            return
        manager, name = self._one_name("unload", args)
        manager.unload(name, wait=wait) if wait else manager.unload(name)

    def _cmd_cache(self, args: list[str]) -> None:
        control = _control()
        if args == ["clear"]:
            print(f"cache cleared ({control.clear_cache()} entries)")
        elif args and args[0] == "budget" and len(args) in (2, 3):
            evicted = control.set_cache_budget(*args[1:])
            print(f"cache policy: {_session().cache.policy!r}; evicted {evicted} entries now")
        elif args:
            raise UsageError("%comfy cache takes no argument, 'clear' or 'budget RAM [VRAM]'")
        else:
            print(control.cache_summary())

    def _cmd_export(self, args: list[str]) -> None:
        if len(args) != 1:
            raise UsageError("%comfy export expects one FILE.json")
        api = _control().export_last(args[0])
        print(f"wrote {len(api)} nodes to {args[0]}")

    def _cmd_run(self, args: list[str], overrides: list[str]) -> Any:
        if len(args) != 1:
            raise UsageError("%comfy run expects FILE.json|FILE.png [--set NODE.INPUT=VALUE ...]")
        result = _control().run_file(args[0], overrides)
        print(f"executed {len(result.executed)} nodes, {len(result.cached)} from cache")
        return result

    def _cmd_stubs(self, args: list[str]) -> None:
        if len(args) > 1:
            raise UsageError("%comfy stubs takes at most one DIR or FILE.pyi")
        path = _control().write_stubs(args[0] if args else None)
        print(f"wrote {path}")

    def _cmd_gallery(self, args: list[str]) -> Any:
        from comfy_notebook.realmode import cell_runs, state
        from comfy_notebook.widgets import Gallery

        if args and args[0] == "clear":
            if len(args) > 2:
                raise UsageError("%comfy gallery clear takes at most one CELL_ID")
            history = state(_session()).history
            cell = args[1] if len(args) == 2 else (self.events.cell_id if self.events is not None else None)
            n = len(history.runs(cell)) if cell is not None else len(history)
            history.forget(cell)
            print(f"forgot {n} run(s) of {'this cell' if len(args) == 1 and cell is not None else cell or 'every cell'}")
            return None
        if len(args) > 1:
            raise UsageError("%comfy gallery takes no argument, 'this', a CELL_ID or 'clear [CELL_ID]'")
        if not args:
            gallery = Gallery.recent()
            if not gallery.items:
                print("no images yet: node calls that make an IMAGE show up here")
                return None
            return gallery
        cell = None if args[0] == "this" else args[0]
        if cell is None and (self.events is None or self.events.cell_id is None):
            raise UsageError("%comfy gallery this shows the cell it runs in; no cell is running")
        if not cell_runs(cell):
            print("no images from this cell yet: none of its runs made an IMAGE with a node call")
            return None
        return Gallery.for_cell(cell)

    def _sweep(self, line: str) -> Any:
        from comfy_notebook.kernel_ext.sweep_magic import sweep_magic

        try:
            return sweep_magic(_session(), line)
        except ComfyNotebookError as exc:
            raise UsageError(f"%comfy sweep: {exc}") from None

    def _cmd_nodes(self, args: list[str]) -> Any:
        if len(args) != 2 or args[0] != "load":
            raise UsageError("usage: %comfy nodes load PATH")
        reports = _control().load_custom_nodes(args[1])
        print(reports)
        return None

    def _cmd_attach(self, args: list[str]) -> Any:
        if len(args) not in (1, 2) or (len(args) == 2 and args[1] not in ("builtin", "comfyui")):
            raise UsageError("usage: %comfy attach PATH [builtin]")
        state = _control().attach_comfyui(args[0], prefer=args[1] if len(args) == 2 else "comfyui")
        print(state)
        return None

    def _cmd_traceback(self, args: list[str]) -> None:
        text = self.events.last_traceback if self.events is not None else ""
        print(text or "no comfy_notebook error so far")

    # -- cell magic --------------------------------------------------------------------------
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
        return _control().run_workflow(wf)
