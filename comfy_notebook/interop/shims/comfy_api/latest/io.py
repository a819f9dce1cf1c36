"""``comfy_api.latest.io``: the V3 node schema, written from its published shape.

Node classes subclass :class:`ComfyNode` and return a :class:`Schema` from ``define_schema``;
inputs and outputs are built from the typed IO classes (``Int.Input("steps", default=20)``,
``Image.Output()``, ...).  comfy_notebook's engine reads these objects through
:mod:`comfy_notebook.engine.v3`, the same way it reads ComfyUI's own ``comfy_api``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from comfy_notebook.engine.graph import ExecutionBlocker

__all__ = [
    "AnyType",
    "Boolean",
    "Clip",
    "ClipVision",
    "Combo",
    "ComfyNode",
    "ComfyTypeI",
    "ComfyTypeIO",
    "Conditioning",
    "ControlNet",
    "Custom",
    "Float",
    "FolderType",
    "Guider",
    "Hidden",
    "HiddenHolder",
    "Image",
    "Input",
    "Int",
    "Latent",
    "Mask",
    "Model",
    "MultiCombo",
    "NodeOutput",
    "Noise",
    "NumberDisplay",
    "Output",
    "Sampler",
    "Schema",
    "Sigmas",
    "String",
    "UploadType",
    "UpscaleModel",
    "Vae",
    "WidgetInput",
    "comfytype",
]


def _prune(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class FolderType(StrEnum):
    input = "input"
    output = "output"
    temp = "temp"


class UploadType(StrEnum):
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class NumberDisplay(StrEnum):
    number = "number"
    slider = "slider"


class Input:
    """A declared input (``id``, optional, tooltip, lazy, raw link)."""

    Parent: Any = None

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                 tooltip: str | None = None, lazy: bool | None = None,
                 extra_dict: dict[str, Any] | None = None, raw_link: bool | None = None) -> None:
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.extra_dict = extra_dict or {}
        self.raw_link = raw_link

    @property
    def io_type(self) -> str:
        return str(self.Parent.io_type)

    def get_io_type(self) -> str:
        return self.io_type

    def as_dict(self) -> dict[str, Any]:
        return _prune({"display_name": self.display_name, "optional": self.optional,
                       "tooltip": self.tooltip, "lazy": self.lazy,
                       "rawLink": self.raw_link}) | _prune(self.extra_dict)

    def validate(self) -> None:
        """Nothing to check beyond the schema's id rules."""


class WidgetInput(Input):
    """An input with a widget (default, socketless, forceInput)."""

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                 tooltip: str | None = None, lazy: bool | None = None, default: Any = None,
                 socketless: bool | None = None, widget_type: str | None = None,
                 force_input: bool | None = None, extra_dict: dict[str, Any] | None = None,
                 raw_link: bool | None = None) -> None:
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link)
        self.default = default
        self.socketless = socketless
        self.widget_type = widget_type
        self.force_input = force_input

    def get_io_type(self) -> str:
        return self.widget_type if self.widget_type is not None else self.io_type

    def as_dict(self) -> dict[str, Any]:
        return super().as_dict() | _prune({"default": self.default, "socketless": self.socketless,
                                           "widgetType": self.widget_type,
                                           "forceInput": self.force_input})


class Output:
    """A declared output (``id``, display name, tooltip, list output)."""

    Parent: Any = None

    def __init__(self, id: str | None = None, display_name: str | None = None,
                 tooltip: str | None = None, is_output_list: bool = False) -> None:
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    @property
    def io_type(self) -> str:
        return str(self.Parent.io_type)

    def get_io_type(self) -> str:
        return self.io_type

    def as_dict(self) -> dict[str, Any]:
        return _prune({"display_name": self.display_name, "tooltip": self.tooltip,
                       "is_output_list": self.is_output_list})

    def validate(self) -> None:
        """Nothing to check beyond the schema's id rules."""


class ComfyTypeI:
    """A type with an ``Input`` class."""

    io_type: str = ""
    Type: Any = Any

    class Input(Input):
        pass


class ComfyTypeIO(ComfyTypeI):
    """A type with ``Input`` and ``Output`` classes."""

    class Output(Output):
        pass


def comfytype(io_type: str, **_: Any) -> Any:
    """Class decorator binding ``io_type`` (and fresh Input/Output subclasses) to a type."""

    def decorate(cls: Any) -> Any:
        if not issubclass(cls, ComfyTypeI):
            cls = type(cls.__name__, (cls, ComfyTypeIO), dict(cls.__dict__))
        cls.io_type = io_type
        for name in ("Input", "Output"):
            inner = getattr(cls, name, None)
            if inner is not None:
                sub = type(inner.__name__, (inner,), {"Parent": cls})
                setattr(cls, name, sub)
        return cls

    return decorate


def Custom(io_type: str) -> Any:
    """A type for a custom ``io_type`` string."""
    return comfytype(io_type)(type(io_type, (ComfyTypeIO,), {}))


@comfytype("BOOLEAN")
class Boolean(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: bool | None = None,
                     label_on: str | None = None, label_off: str | None = None, **kw: Any) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, default, **kw)
            self.label_on, self.label_off = label_on, label_off

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _prune({"label_on": self.label_on, "label_off": self.label_off})


class _Number(WidgetInput):
    def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                 tooltip: str | None = None, lazy: bool | None = None, default: Any = None,
                 min: Any = None, max: Any = None, step: Any = None, round: Any = None,
                 control_after_generate: bool | None = None,
                 display_mode: NumberDisplay | None = None, **kw: Any) -> None:
        super().__init__(id, display_name, optional, tooltip, lazy, default, **kw)
        self.min, self.max, self.step, self.round = min, max, step, round
        self.control_after_generate = control_after_generate
        self.display_mode = display_mode

    def as_dict(self) -> dict[str, Any]:
        display = self.display_mode.value if isinstance(self.display_mode, Enum) else self.display_mode
        return super().as_dict() | _prune({
            "min": self.min, "max": self.max, "step": self.step, "round": self.round,
            "control_after_generate": self.control_after_generate, "display": display})


@comfytype("INT")
class Int(ComfyTypeIO):
    class Input(_Number):
        pass


@comfytype("FLOAT")
class Float(ComfyTypeIO):
    class Input(_Number):
        pass


@comfytype("STRING")
class String(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, multiline: bool = False,
                     placeholder: str | None = None, default: str | None = None,
                     dynamic_prompts: bool | None = None, **kw: Any) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, default, **kw)
            self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _prune({"multiline": self.multiline,
                                               "placeholder": self.placeholder,
                                               "dynamicPrompts": self.dynamic_prompts})


@comfytype("COMBO")
class Combo(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, options: Any = None, display_name: str | None = None,
                     optional: bool = False, tooltip: str | None = None, lazy: bool | None = None,
                     default: Any = None, control_after_generate: bool | None = None,
                     upload: UploadType | None = None, image_folder: FolderType | None = None,
                     **kw: Any) -> None:
            if isinstance(options, type) and issubclass(options, Enum):
                options = [m.value for m in options]
            if isinstance(default, Enum):
                default = default.value
            super().__init__(id, display_name, optional, tooltip, lazy, default, **kw)
            self.options = list(options or [])
            self.multiselect = False
            self.control_after_generate = control_after_generate
            self.upload, self.image_folder = upload, image_folder

        def as_dict(self) -> dict[str, Any]:
            extra = {self.upload.value: True} if self.upload is not None else {}
            folder = self.image_folder.value if self.image_folder is not None else None
            return super().as_dict() | _prune({
                "multiselect": self.multiselect or None, "options": self.options,
                "control_after_generate": self.control_after_generate,
                "image_folder": folder, **extra})


@comfytype("COMBO")
class MultiCombo(ComfyTypeI):
    class Input(Combo.Input):
        def __init__(self, id: str, options: Any, **kw: Any) -> None:
            super().__init__(id, options, **kw)
            self.multiselect = True


def _plain(io_type: str) -> Any:
    return comfytype(io_type)(type(io_type.title().replace("_", ""), (ComfyTypeIO,), {}))


Image = _plain("IMAGE")
Mask = _plain("MASK")
Latent = _plain("LATENT")
Conditioning = _plain("CONDITIONING")
Model = _plain("MODEL")
Clip = _plain("CLIP")
Vae = _plain("VAE")
ClipVision = _plain("CLIP_VISION")
ControlNet = _plain("CONTROL_NET")
UpscaleModel = _plain("UPSCALE_MODEL")
Sampler = _plain("SAMPLER")
Sigmas = _plain("SIGMAS")
Noise = _plain("NOISE")
Guider = _plain("GUIDER")
AnyType = _plain("*")


class Hidden(StrEnum):
    """Hidden values a node can ask for (``cls.hidden.<name>`` at run time)."""

    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


class HiddenHolder:
    """``cls.hidden`` during a call; unrequested values read as ``None``."""

    def __init__(self, values: dict[str, Any]) -> None:
        for member in Hidden:
            setattr(self, member.name, values.get(member.value))

    def __getattr__(self, name: str) -> Any:
        return None


@dataclass
class Schema:
    """A V3 node's definition."""

    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list[Any] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)
    hidden: list[Hidden] = field(default_factory=list)
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self) -> None:
        """Ids are unique among inputs, among outputs, and between the two."""
        ins = [i.id for i in self.inputs]
        outs = [o.id for o in self.outputs]
        problems = []
        for label, ids in (("input", ins), ("output", outs)):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            if dup:
                problems.append(f"{label} ids must be unique, but {dup} are not")
        both = set(ins) & set(outs)
        if both:
            problems.append(f"ids must differ between inputs and outputs: {sorted(both)}")
        if problems:
            raise ValueError("; ".join(problems))

    def finalize(self) -> None:
        """Output nodes get PROMPT/EXTRA_PNGINFO; outputs without ids get ComfyUI's default ids."""
        if self.is_output_node:
            for h in (Hidden.prompt, Hidden.extra_pnginfo):
                if h not in self.hidden:
                    self.hidden.append(h)
        for i, out in enumerate(self.outputs):
            if out.id is None:
                out.id = f"_{i}_{out.io_type}_"


class NodeOutput:
    """What ``execute`` returns: output values, optional ``ui``, ``expand``, ``block_execution``."""

    def __init__(self, *args: Any, ui: Any = None, expand: dict[str, Any] | None = None,
                 block_execution: str | None = None) -> None:
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self) -> tuple[Any, ...] | None:
        return self.args if self.args else None

    def __getitem__(self, index: int) -> Any:
        return self.args[index]


class ComfyNode:
    """Base class of V3 nodes: override ``define_schema`` and ``execute`` (classmethods)."""

    hidden: Any = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs: Any) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs: Any) -> bool | str:
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def check_lazy_status(cls, **kwargs: Any) -> list[str]:
        return [name for name, value in kwargs.items() if value is None]

    @classmethod
    def GET_BASE_CLASS(cls) -> type:
        return ComfyNode

    @classmethod
    def PREPARE_CLASS_CLONE(cls, v3_data: dict[str, Any] | None) -> type:
        """A subclass carrying this call's hidden values (the node class is never mutated)."""
        values = (v3_data or {}).get("hidden_inputs", {})
        return type(cls.__name__, (cls,), {"hidden": HiddenHolder(values), "__module__": cls.__module__})


# ComfyUI re-exports its blocker through the V3 module too.
__all__ += ["ExecutionBlocker"]
