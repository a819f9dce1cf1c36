"""Workflow templates: API-format JSON rendered with Jinja2 (the comfy-executors model).

A template is a ComfyUI API-format prompt in which any value may be a Jinja2 expression::

    {
      "5": {"class_type": "EmptyLatentImage",
            "inputs": {"width": 512, "height": 512,
                       {# set by the batcher #}
                       "batch_size": {{ batch_size|int }}}},
      "3": {"class_type": "KSampler", "inputs": {"seed": {{ seed }}, "cfg": {{ cfg|float }}, ...}}
    }

Undefined variables are errors (``StrictUndefined``), ``{# comments #}`` are allowed, and the
filters ``int``, ``float`` and ``tojson`` are Jinja2's own.  Three variable names are reserved and
always defined when rendering through the batcher or a sweep: ``batch_size``, ``seed`` and
``input_images_dir``.  Trailing commas left after a templated-out entry (``{"a": 1,}``) are
accepted, as in comfy-executors' documented example.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from comfy_notebook.errors import TemplateError

__all__ = ["RESERVED", "WorkflowTemplate", "as_template"]

RESERVED = ("batch_size", "seed", "input_images_dir")
_NAME = "<workflow template>"
# A string literal (kept) or a comma directly before a closing bracket (dropped).
_TRAILING_COMMA = re.compile(r'("(?:\\.|[^"\\])*")|,(\s*[}\]])')
_UNDEFINED = re.compile(r"'([^']+)' is undefined")
_NO_ATTRIBUTE = re.compile(r"has no attribute '([^']+)'")
# Inputs the batcher fills when a plain workflow (not a template) is batched.
SEED_INPUTS = ("seed", "noise_seed")
BATCH_INPUTS = ("batch_size",)


def _environment() -> Any:
    import jinja2

    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              autoescape=False)


def _error_line(exc: BaseException) -> int | None:
    """The template line of a render-time error (Jinja2 rewrites tracebacks onto the template)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _NAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _strip_trailing_commas(text: str) -> str:
    return _TRAILING_COMMA.sub(lambda m: m.group(1) or m.group(2), text)


class WorkflowTemplate:
    """An API-format prompt template.

    Build one with :meth:`from_file`, :meth:`from_string` or :meth:`from_workflow` and call
    :meth:`render` with the template's variables.

    Examples
    --------
    >>> t = WorkflowTemplate.from_string('{"1": {"class_type": "X", "inputs": {"n": {{ n|int }}}}}')
    >>> t.render(n="3")
    {'1': {'class_type': 'X', 'inputs': {'n': 3}}}
    """

    def __init__(self, source: str, *, name: str | None = None,
                 defaults: Mapping[str, Any] | None = None) -> None:
        import jinja2

        self.source = source
        self.name = name or "template"
        self.defaults: dict[str, Any] = dict(defaults or {})
        env = _environment()
        try:
            self._template = env.from_string(source)
            self._template.filename = _NAME
            parsed = env.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"{self.name}, line {exc.lineno}: template syntax error: {exc.message}\n"
                f"  {self._line(exc.lineno)}\nFix: correct the Jinja2 syntax on that line.",
                line=exc.lineno, source=self.name) from None
        from jinja2 import meta

        self.variables: frozenset[str] = frozenset(meta.find_undeclared_variables(parsed))

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def from_string(cls, source: str, *, name: str | None = None) -> WorkflowTemplate:
        """A template from its text."""
        return cls(source, name=name)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> WorkflowTemplate:
        """A template from a file (``workflow.json.jinja``, or a plain ``workflow.json``)."""
        p = Path(path)
        return cls(p.read_text(encoding="utf-8"), name=p.name)

    @classmethod
    def from_workflow(cls, workflow: Any, *, template_seed: bool = True,
                      template_batch_size: bool = True) -> WorkflowTemplate:
        """A template from a recorded workflow (``Workflow``, a handle, or an API dict).

        Every ``seed`` / ``noise_seed`` constant becomes ``{{ seed }}`` and every ``batch_size``
        constant ``{{ batch_size }}``, with the recorded values as defaults, so the batcher can
        set them.  Other inputs are changed with ``NODE.INPUT`` keys (see :func:`apply_overrides`).
        """
        api = workflow.to_api() if hasattr(workflow, "to_api") else copy.deepcopy(dict(workflow))
        defaults: dict[str, Any] = {}
        marks: dict[str, str] = {}
        for node in api.values():
            inputs = node.get("inputs", {})
            for key, value in list(inputs.items()):
                if isinstance(value, list):
                    continue
                var = ("seed" if template_seed and key in SEED_INPUTS else
                       "batch_size" if template_batch_size and key in BATCH_INPUTS else None)
                if var is None:
                    continue
                defaults.setdefault(var, value)
                mark = f"@@{var}@@{len(marks)}"
                marks[mark] = var
                inputs[key] = mark
        text = json.dumps(api, indent=2)
        for mark, var in marks.items():
            text = text.replace(json.dumps(mark), f"{{{{ {var}|int }}}}")
        return cls(text, name="recorded workflow", defaults=defaults)

    # -- rendering -------------------------------------------------------------------------
    def _line(self, line: int | None) -> str:
        lines = self.source.splitlines()
        return lines[line - 1].strip() if line and 0 < line <= len(lines) else ""

    def render_text(self, **variables: Any) -> str:
        """The rendered JSON text (before parsing)."""
        import jinja2

        values = {**self.defaults, **variables}
        try:
            return self._template.render(**values)
        except jinja2.UndefinedError as exc:
            line = _error_line(exc)
            m = _UNDEFINED.search(str(exc)) or _NO_ATTRIBUTE.search(str(exc))
            var = m.group(1) if m else None
            known = sorted(values)
            where = f"line {line}" if line else "unknown line"
            raise TemplateError(
                f"{self.name}, {where}: variable {var!r} is undefined ({exc.message})\n"
                f"  {self._line(line)}\n"
                f"Expected values for {sorted(self.variables)}; received {known}.\n"
                f"Fix: pass {var}=... to render() / the sweep grid, or give it a default in the "
                "template ({{ %s|default(...) }})." % (var or "name"),
                line=line, variable=var, source=self.name) from None
        except (TypeError, ValueError, jinja2.TemplateError) as exc:
            line = _error_line(exc)
            raise TemplateError(
                f"{self.name}, line {line}: rendering failed: {type(exc).__name__}: {exc}\n"
                f"  {self._line(line)}", line=line, source=self.name) from None

    def render(self, **variables: Any) -> dict[str, Any]:
        """Render to an API-format prompt dict.

        Raises
        ------
        TemplateError
            An undefined variable (naming it and its line), or output that is not JSON (naming
            the rendered line).
        """
        text = self.render_text(**variables)
        try:
            api = json.loads(_strip_trailing_commas(text))
        except json.JSONDecodeError as exc:
            bad = text.splitlines()[exc.lineno - 1].strip() if text.splitlines() else ""
            raise TemplateError(
                f"{self.name}: rendered text is not JSON at rendered line {exc.lineno}, column "
                f"{exc.colno}: {exc.msg}\n  {bad}\nFix: quote string values (\"{{{{ x }}}}\") and "
                "use |tojson for lists and dicts.", line=exc.lineno, source=self.name) from None
        if not isinstance(api, dict):
            raise TemplateError(f"{self.name}: rendered a {type(api).__name__}; expected an "
                                "API-format prompt object {node_id: {...}}", source=self.name)
        return api

    def render_reserved(self, **variables: Any) -> dict[str, Any]:
        """:meth:`render`, then ``seed`` / ``batch_size`` given but not used by the template are
        written into every constant ``seed``/``noise_seed`` / ``batch_size`` input."""
        api = self.render(**variables)
        for var, inputs in (("seed", SEED_INPUTS), ("batch_size", BATCH_INPUTS)):
            if var in variables and var not in self.variables:
                for node in api.values():
                    for key in inputs:
                        if key in node.get("inputs", {}) and not isinstance(node["inputs"][key], list):
                            node["inputs"][key] = variables[var]
        return api

    def __repr__(self) -> str:
        return f"WorkflowTemplate({self.name!r}, variables={sorted(self.variables)})"


def as_template(workflow: Any) -> WorkflowTemplate:
    """``workflow`` as a template: templates pass through, text is parsed, prompts are wrapped."""
    if isinstance(workflow, WorkflowTemplate):
        return workflow
    if isinstance(workflow, str):
        return WorkflowTemplate.from_string(workflow)
    if isinstance(workflow, os.PathLike):
        return WorkflowTemplate.from_file(workflow)
    return WorkflowTemplate.from_workflow(workflow)


def apply_overrides(api: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set ``NODE.INPUT`` values in an API prompt (in place; returns it).

    ``NODE`` is a node id, a ``_meta.title`` or a ``class_type`` that names exactly one node; a
    bare ``INPUT`` is accepted when exactly one node has a constant input of that name.

    Raises
    ------
    TemplateError
        A key that names no node or input, or more than one.
    """
    for key, value in overrides.items():
        node_name, dot, input_name = key.rpartition(".")
        if not dot:
            matches = [nid for nid, node in api.items()
                       if key in node.get("inputs", {}) and not isinstance(node["inputs"][key], list)]
            input_name = key
        elif node_name in api:
            matches = [node_name]
        else:
            matches = [nid for nid, node in api.items()
                       if (node.get("_meta") or {}).get("title") == node_name
                       or node.get("class_type") == node_name]
        if len(matches) != 1:
            found = "no node" if not matches else f"{len(matches)} nodes ({', '.join(matches)})"
            raise TemplateError(
                f"parameter {key!r}: {found} has that input; expected exactly one.\n"
                "Fix: name it NODE_ID.INPUT (e.g. '3.cfg'), or make it a template variable.",
                variable=key)
        api[matches[0]].setdefault("inputs", {})[input_name] = value
    return api
