"""``%comfy sweep``: a thin ``magic_arguments`` parser over ``Session.sweep``."""

from __future__ import annotations

import importlib
import json
import math
from typing import Any

from IPython.core.error import UsageError

__all__ = ["sweep_magic"]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pair(text: str, flag: str) -> tuple[str, str]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise UsageError(f"%comfy sweep {flag} expects KEY=VALUE, received {text!r}")
    return key, raw


def _sweep(line: str) -> None:
    """%comfy sweep WORKFLOW --grid KEY=V1,V2 [--grid ...] [--set KEY=VALUE] [--x K --y K]"""


def _build_parser() -> Any:
    """IPython's magic_arguments, applied by hand (its decorators are untyped in IPython 8)."""
    ma: Any = importlib.import_module("IPython.core.magic_arguments")
    arguments = [
        ma.argument("workflow", help="an API-format prompt (.json) or a Jinja2 template (.json.jinja)"),
        ma.argument("--grid", "-g", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="a grid axis: a template variable or NODE.INPUT and its comma-separated values"),
        ma.argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                    help="a value held fixed (template variable or NODE.INPUT)"),
        ma.argument("--seed", type=int, default=None, help="seed for every point (unless swept)"),
        ma.argument("--batch-size", type=int, default=None, help="images per prompt"),
        ma.argument("--x", default=None, help="with --y: return plot.xy_grid of the table"),
        ma.argument("--y", default=None, help="with --x: the grid's row parameter"),
    ]
    fn: Any = _sweep
    for arg in reversed(arguments):
        fn = arg(fn)
    return ma.magic_arguments()(fn)


_parser = _build_parser()


def sweep_magic(session: Any, line: str) -> Any:
    """Parse ``line`` and run ``session.sweep``; returns the table (or its xy_grid figure)."""
    from pathlib import Path

    from comfy_notebook.backends.templates import WorkflowTemplate

    try:
        args: Any = importlib.import_module("IPython.core.magic_arguments").parse_argstring(_parser, line)
    except SystemExit:  # argparse's --help
        return None
    if not args.grid:
        raise UsageError("%comfy sweep needs at least one --grid KEY=V1,V2,...")
    grid: dict[str, list[Any]] = {}
    for item in args.grid:
        key, raw = _pair(item, "--grid")
        grid[key] = [_value(v) for v in raw.split(",")]
    fixed = {k: _value(v) for k, v in (_pair(i, "--set") for i in args.set)}
    path = Path(args.workflow.strip("'\""))
    try:
        template = WorkflowTemplate.from_file(path)
    except OSError as exc:
        raise UsageError(f"%comfy sweep: cannot read {path}: {exc}") from None
    table = session.sweep(template, grid, fixed=fixed, seed=args.seed, batch_size=args.batch_size)
    print(f"{len(table)} image(s) from {math.prod(len(v) for v in grid.values())} run(s)")
    if args.x or args.y:
        if not (args.x and args.y):
            raise UsageError("%comfy sweep: give both --x and --y for a grid plot")
        from comfy_notebook.plot import xy_grid

        return xy_grid(table, x=args.x, y=args.y)
    return table
