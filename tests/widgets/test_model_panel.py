"""ModelPanel: rows follow ModelMoved events; buttons call the ModelManager's verbs."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from comfy_notebook.services import Services
from comfy_notebook.widgets import show_models
from comfy_notebook.widgets.model_panel import ModelPanel


def locations(panel: ModelPanel) -> dict[str, str]:
    return {r["name"]: r["location"] for r in panel.rows}


def test_rows_follow_manager_events(manager: Any) -> None:
    panel = ModelPanel(manager)
    assert locations(panel) == {"unet": "unloaded", "vae": "unloaded"}
    manager.load("unet")  # moved by someone else (a running node): the panel follows
    assert locations(panel) == {"unet": "gpu", "vae": "unloaded"}
    row = next(r for r in panel.rows if r["name"] == "unet")
    assert row["bytes"] == (64 * 64 + 64) * 4 and row["dtype"] == "float32"
    assert row["family"] == "unet" and row["source"] == "tiny.safetensors"
    assert panel.memory["device"]["models"] == row["bytes"]
    assert panel.memory["device"]["free"] == (1 << 20) - row["bytes"]
    manager.offload("unet")
    assert locations(panel)["unet"] == "cpu"
    assert panel.memory["device"]["models"] == 0 and panel.memory["host"]["models"] == row["bytes"]


def test_buttons_call_the_manager(manager: Any) -> None:
    panel = ModelPanel(manager)
    panel._handle_custom_msg({"action": "load", "name": "vae"}, [])
    assert manager["vae"].location == "gpu" and panel.message == "loaded vae"
    panel._handle_custom_msg({"action": "offload", "name": "vae"}, [])
    assert manager["vae"].location == "cpu" and locations(panel)["vae"] == "cpu"
    panel._handle_custom_msg({"action": "load", "name": "unet"}, [])
    panel._handle_custom_msg({"action": "unload", "name": "unet"}, [])
    assert manager["unet"].location == "unloaded"
    panel._handle_custom_msg({"action": "load", "name": "unet"}, [])
    panel._handle_custom_msg({"action": "unload_all"}, [])
    assert set(locations(panel).values()) == {"unloaded"}
    assert {i.location for i in manager.list()} == {"unloaded"}
    panel._handle_custom_msg({"action": "offload", "name": "clip"}, [])
    assert panel.message == ("offload failed: LookupError: no model named 'clip'; "
                             "the manager has ['unet', 'vae']")


def test_text_table_and_unsubscribe(manager: Any) -> None:
    panel = ModelPanel(manager)
    manager.load("vae")
    lines = panel.text().splitlines()
    assert lines[0].split() == ["name", "family", "dtype", "size", "on", "device", "location"]
    assert lines[2].split()[:2] == ["unet", "unet"] and lines[2].split()[-1] == "unloaded"
    assert lines[3].split() == ["vae", "vae", "float32", "1.1", "KB", "1.1", "KB", "gpu"]
    assert panel._repr_mimebundle_()[0]["text/plain"] == panel.text()
    panel.close()
    manager.offload("vae")
    assert locations(panel)["vae"] == "gpu"  # closed: no longer follows


def test_show_models_for_a_session(manager: Any) -> None:
    assert show_models(SimpleNamespace(services=Services())) == "no models loaded"
    cache = SimpleNamespace(stats=lambda: {"bytes": 1234})
    panel = show_models(SimpleNamespace(services=Services(models=manager), cache=cache))
    assert isinstance(panel, ModelPanel) and panel.memory["host"]["cache"] == 1234


def test_rows_carry_the_captured_graphs_of_each_model() -> None:
    from torch import nn

    from comfy_notebook.runtime import DevicePolicy, ModelManager
    from comfy_notebook.runtime.graphs import GraphInfo
    from comfy_notebook.widgets.model_panel import ModelPanel

    mgr = ModelManager(DevicePolicy.cpu())
    mgr.register("u", lambda: nn.Linear(2, 2), kind="unet")
    mgr.graphs.held = lambda model=None: [GraphInfo("u", "2x4", 4096, 3)] if model in (None, "u") else []
    panel = ModelPanel(mgr)
    assert (panel.rows[0]["graphs"], panel.rows[0]["graph_bytes"]) == (1, 4096)


def test_panel_is_true_in_every_mode(manager: Any) -> None:
    """Defect 7: CPU-only, simulated VRAM and partial loading all agree with the rows."""
    import torch

    from comfy_notebook.runtime import DevicePolicy, ModelManager

    cpu = ModelManager(DevicePolicy.cpu())  # no GPU, no simulated capacity
    cpu.register("unet", lambda: torch.nn.Linear(64, 64), kind="unet")
    cpu.load("unet")
    panel = ModelPanel(cpu)
    row = panel.rows[0]
    assert panel.memory["mode"] == "cpu" and row["location"] == "cpu"
    assert row["bytes"] == (64 * 64 + 64) * 4 and row["actions"] == ["unload"]  # nothing to load to
    assert panel.memory["host"]["models"] == row["bytes"] and panel.memory["device"]["free"] is None
    assert "no GPU: models run from RAM" in panel.text() and "free -" not in panel.text()
    panel._handle_custom_msg({"action": "load", "name": "unet"}, [])
    assert panel.message.startswith("no GPU here")
    # simulated VRAM, too small for the whole model: partial, and the bar shows its device bytes
    small = ModelManager(DevicePolicy.cpu(), capacity_bytes=9000)
    small.register("unet", lambda: torch.nn.Sequential(*[torch.nn.Linear(32, 32) for _ in range(4)]), kind="unet")
    small.load("unet")
    panel = ModelPanel(small)
    row = panel.rows[0]
    assert panel.memory["mode"] == "simulated" and row["location"] == "partial"
    assert 0 < row["device_bytes"] < row["bytes"]
    assert panel.memory["device"]["models"] == row["device_bytes"]
    assert panel.memory["host"]["models"] == row["bytes"] - row["device_bytes"]
    assert set(row["actions"]) == {"load", "offload", "unload"}
    # on a (simulated) device, each row offers what moves something
    panel = ModelPanel(manager)
    manager.load("vae")
    actions = {r["name"]: r["actions"] for r in panel.rows}
    assert actions == {"unet": ["load"], "vae": ["offload", "unload"]}


def test_the_panel_shows_the_memory_plan_as_it_ran() -> None:
    """Issue 18 (memory): a text encoder runs and is evicted for a transformer that only fits in
    part; the panel lists those moves with what stays on the device and what is streamed."""
    import torch

    from comfy_notebook.runtime import DevicePolicy, ModelManager

    small = ModelManager(DevicePolicy.cpu(), capacity_bytes=20000)
    small.register("te", lambda: torch.nn.Linear(48, 48), kind="clip")
    small.register("dit", lambda: torch.nn.Sequential(*[torch.nn.Linear(32, 32) for _ in range(8)]), kind="unet")
    panel = ModelPanel(small)
    small.load("te")
    small.load("dit")
    rows = {r["name"]: r for r in panel.rows}
    assert rows["dit"]["location"] == "partial" and rows["te"]["location"] != "gpu"
    targets = [(m["name"], m["target"]) for m in panel.moves]
    assert ("te", "gpu") in targets and ("te", "cpu") in targets and targets[-1] == ("dit", "partial")
    last = panel.moves[-1]
    assert last["bytes"] == rows["dit"]["device_bytes"]
    assert last["streamed"] == rows["dit"]["bytes"] - rows["dit"]["device_bytes"] > 0
    text = panel.text()
    assert "memory plan" in text and "streamed per step" in text and "evicted" in text
    for _ in range(20):  # bounded: a long session does not grow the log
        small.offload("dit")
        small.load("dit")
    assert len(panel.moves) == ModelPanel.MAX_MOVES
