"""Node registry: class_type -> NodeSpec, fed from ``NODE_CLASS_MAPPINGS``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from comfy_notebook.engine.protocol import NodeSpec, parse_node_class
from comfy_notebook.engine.v3 import adapt_v3, is_v3_class
from comfy_notebook.errors import GraphError

__all__ = ["Registry"]


def _jsonable(value: Any) -> Any:
    """Tuples become lists so that /object_info output is plain JSON."""
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


class Registry:
    """Maps ComfyUI class names to parsed :class:`NodeSpec` objects.

    Examples
    --------
    >>> reg = Registry()
    >>> reg.register({"MyNode": MyNode}, {"MyNode": "My node"})  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._specs: dict[str, NodeSpec] = {}
        self._display: dict[str, str | None] = {}
        self._deferred: list[Callable[[Registry], None]] = []
        self._explicit: set[str] = set()  # registered while packs were deferred: they win
        self._loading = False

    def defer(self, loader: Callable[[Registry], None]) -> None:
        """Register a pack later: ``loader(registry)`` runs on the first lookup.

        Classes registered explicitly meanwhile keep their place (a deferred pack never
        replaces them), so deferring a pack behaves as if it had been registered first.
        """
        self._deferred.append(loader)

    @property
    def deferred(self) -> bool:
        """Whether a pack is still waiting for the first lookup."""
        return bool(self._deferred)

    def _ready(self) -> dict[str, NodeSpec]:
        """The specs, after running the deferred loaders (once)."""
        while self._deferred and not self._loading:
            loader = self._deferred.pop(0)
            self._loading = True
            try:
                loader(self)
            finally:
                self._loading = False
        return self._specs

    def register(
        self, mappings: Mapping[str, type], display_names: Mapping[str, str] | None = None
    ) -> None:
        """Register every class of a ``NODE_CLASS_MAPPINGS`` dict (re-registering replaces).

        V1 classes are taken as they are; V3 classes (``define_schema`` / ``execute``) through
        :func:`comfy_notebook.engine.v3.adapt_v3`.

        Parameters
        ----------
        mappings:
            ``{class_type: NodeClass}``.
        display_names:
            Optional ``NODE_DISPLAY_NAME_MAPPINGS``.
        """
        names = display_names or {}
        if self._loading:  # a deferred pack: what was registered explicitly meanwhile stays
            mappings = {n: c for n, c in mappings.items() if n not in self._explicit}
        elif self._deferred:
            self._explicit.update(mappings)
        classes = {n: adapt_v3(c) if is_v3_class(c) else c for n, c in mappings.items()}
        shown = {n: names.get(n) or getattr(c, "V3_DISPLAY_NAME", None) for n, c in classes.items()}
        parsed = {n: parse_node_class(n, c, shown[n]) for n, c in classes.items()}
        self._specs.update(parsed)
        self._display.update(shown)

    def current(self, class_type: str) -> NodeSpec:
        """The spec of ``class_type`` with its combo lists as ``INPUT_TYPES()`` gives them now.

        Combo options such as checkpoint files change while a session lives, so (as ComfyUI
        does at every validation) a class that has combo inputs is asked again; the class is
        re-parsed only when its answer changed.
        """
        spec = self[class_type]
        if not any(isinstance(i.type, tuple) for i in spec.inputs.values()):
            return spec
        if spec.cls.INPUT_TYPES() == spec.raw_input_types:  # type: ignore[attr-defined]
            return spec
        spec = parse_node_class(class_type, spec.cls, self._display.get(class_type))
        self._specs[class_type] = spec
        return spec

    def get(self, class_type: str) -> NodeSpec | None:
        """The spec for ``class_type``, or ``None``."""
        return self._ready().get(class_type)

    def __getitem__(self, class_type: str) -> NodeSpec:
        spec = self._ready().get(class_type)
        if spec is None:
            raise GraphError(
                f"unknown node class {class_type!r}; registered: {len(self._specs)} classes. "
                "Fix: register it with session.register({...}) or check the spelling"
            )
        return spec

    def names(self) -> list[str]:
        """Registered class names, in registration order."""
        return list(self._ready())

    def __contains__(self, class_type: object) -> bool:
        return class_type in self._ready()

    def __iter__(self) -> Iterator[str]:
        return iter(self._ready())

    def __len__(self) -> int:
        return len(self._ready())

    def object_info(self, class_type: str | None = None) -> dict[str, Any]:
        """Describe nodes in the shape of ComfyUI's ``/object_info`` (one or all).

        Returns
        -------
        dict
            ``{class_type: {"input", "input_order", "output", "output_is_list", "output_name",
            "name", "display_name", "description", "python_module", "category", "output_node",
            "output_tooltips", "deprecated", "experimental", "api_node"}}``.
        """
        names = [class_type] if class_type is not None else list(self._ready())
        return {n: self._describe(self[n]) for n in names}

    @staticmethod
    def _describe(spec: NodeSpec) -> dict[str, Any]:
        raw = spec.raw_input_types
        info: dict[str, Any] = {
            "input": _jsonable({k: v for k, v in raw.items() if k in ("required", "optional", "hidden")}),
            "input_order": {k: list(raw[k]) for k in ("required", "optional", "hidden") if raw.get(k)},
            "output": list(spec.return_types),
            "output_is_list": list(spec.output_is_list),
            "output_name": list(spec.return_names),
            "name": spec.name,
            "display_name": spec.display_name,
            "description": spec.description,
            "python_module": spec.python_module,
            "category": spec.category,
            "output_node": spec.output_node,
        }
        if any(t is not None for t in spec.output_tooltips):
            info["output_tooltips"] = list(spec.output_tooltips)
        if spec.deprecated:
            info["deprecated"] = True
        if spec.experimental:
            info["experimental"] = True
        if spec.api_node:
            info["api_node"] = True
        return info
