"""The IPython extension: cell events, per-cell release, magics, one-line errors."""

from __future__ import annotations

import json
import pathlib

import pytest
from IPython.core.error import UsageError


def test_rerun_cell_is_free_and_changed_input_reruns_dependents(ip, run_cell, calls):
    cell = "x = Number(5)\ny = Add(x, 2)\nShow(y)"
    assert run_cell(ip, cell).success
    assert calls == ["Number", "Add", "Show"]
    calls.clear()
    run_cell(ip, cell)
    assert calls == []
    run_cell(ip, cell.replace("Add(x, 2)", "Add(x, 3)"))
    assert calls == ["Add", "Show"]
    assert ip.user_ns["y"].value == 8


def test_rerunning_a_cell_releases_what_it_no_longer_uses(ip, run_cell, session):
    events = ip._comfy_notebook_events
    run_cell(ip, "y = Add(Number(5), 2)", cell_id="A")
    old_sig = ip.user_ns["y"].signature
    assert any("cell:A" in session.cache.peek(k).tags for k in session.cache.keys())  # noqa: SIM118 - Cache is not iterable
    run_cell(ip, "y = Add(Number(5), 3)", cell_id="A")
    assert events.released == 1
    assert old_sig not in session.cache
    # an entry that a live handle elsewhere holds stays
    run_cell(ip, "keep = y", cell_id="B")
    sig = ip.user_ns["y"].signature
    run_cell(ip, "y = Add(Number(5), 4)", cell_id="A")
    assert events.released == 0 and sig in session.cache
    # other cells' entries are never touched by this cell
    run_cell(ip, "z = Number(9)", cell_id="C")
    run_cell(ip, "y = Add(Number(5), 5)", cell_id="A")
    assert ip.user_ns["z"].signature in session.cache


def test_errors_are_one_line_and_kernel_lives_on(ip, run_cell, capsys):
    result = run_cell(ip, "Add(Number(1), -1)")
    assert not result.success
    out = capsys.readouterr()
    text = out.out + out.err
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert "NodeCallError: (Add): failed: ValueError: b must not be negative" in lines[0]
    assert lines[0].count("Fix:") == 1 and lines[0].count("%comfy traceback") == 1  # defect 5
    run_cell(ip, "%comfy traceback")
    text = capsys.readouterr().out
    assert "Traceback" in text
    assert text.count('raise ValueError("b must not be negative")') == 1  # the chain, once
    assert run_cell(ip, "ok = Add(Number(1), 1)").success
    assert ip.user_ns["ok"].value == 2


def test_validation_error_message(ip, run_cell, capsys):
    run_cell(ip, "Number(5000)")
    text = capsys.readouterr()
    line = (text.out + text.err).strip()
    assert "(Number) input 'value'" in line and "5000" in line and "\n" not in line


def test_status_cache_and_clear(ip, run_cell, session, capsys):
    run_cell(ip, "y = Add(Number(5), 2)")
    capsys.readouterr()
    ip.run_line_magic("comfy", "status")
    out = capsys.readouterr().out
    assert "cache: 2 entries" in out and "node functions run: 2" in out and "no models loaded" in out
    ip.run_line_magic("comfy", "cache")
    assert capsys.readouterr().out.startswith("2 entries")
    ip.run_line_magic("comfy", "cache clear")
    assert len(session.cache) == 0


def test_export_then_run_with_set(ip, run_cell, session, calls, tmp_path, capsys):
    run_cell(ip, "y = Add(Number(5), 2)\nShow(y)")
    path = tmp_path / "wf.json"
    ip.run_line_magic("comfy", f"export {path}")
    api = json.loads(path.read_text())
    assert [api[k]["class_type"] for k in ("1", "2", "3")] == ["Number", "Add", "Show"]
    assert api["2"]["inputs"] == {"a": ["1", 0], "b": 2}
    calls.clear()
    result = ip.run_line_magic("comfy", f"run {path}")
    assert result.executed == set() and calls == []  # same keys as real mode: all cached
    result = ip.run_line_magic("comfy", f"run {path} --set Add.b=10")
    assert calls == ["Add", "Show"] and result.outputs["2"] == (15,)
    ip.run_line_magic("comfy", f"run {path} --set 1.value=1")
    assert session.registry["Show"].cls.SEEN[-1] == 3


def test_usage_errors(ip, tmp_path):
    for line, pattern in [
        ("frobnicate", "unknown command 'frobnicate'"),
        ("cache purge", "takes no argument, 'clear' or 'budget"),
        ("export", "expects one FILE.json"),
        ("run", "expects FILE.json"),
        (f"run {tmp_path / 'none.json'}", "cannot read"),
        ("load", "no models loaded|expects one model NAME"),
        ("unload all", "no models loaded"),
    ]:
        with pytest.raises(UsageError, match=pattern):
            ip.run_line_magic("comfy", line)
    (tmp_path / "a.json").write_text('{"1": {"class_type": "Number", "inputs": {}}}')
    with pytest.raises(UsageError, match="no node named 'Nope'"):
        ip.run_line_magic("comfy", f"run {tmp_path / 'a.json'} --set Nope.value=1")
    with pytest.raises(UsageError, match=r"NODE\.INPUT=VALUE"):
        ip.run_line_magic("comfy", f"run {tmp_path / 'a.json'} --set oops")


def test_model_verbs_call_the_manager(ip, session, fake_manager, capsys):
    session.services.models = fake_manager
    ip.run_line_magic("comfy", "load unet")
    ip.run_line_magic("comfy", "offload unet")
    ip.run_line_magic("comfy", "unload unet")
    ip.run_line_magic("comfy", "unload all")
    ip.run_line_magic("comfy", "unload all --wait 2.5")
    assert fake_manager.log == [("load", "unet"), ("offload", "unet"), ("unload", "unet"), ("unload_all", ""),
                                ("unload_all", "wait=2.5")]
    with pytest.raises(UsageError, match="takes no --wait"):
        ip.run_line_magic("comfy", "load unet --wait 3")
    with pytest.raises(UsageError, match="no model named 'missing'"):
        ip.run_line_magic("comfy", "unload missing")
    with pytest.raises(UsageError, match="expects one model NAME"):
        ip.run_line_magic("comfy", "load a b")


def test_help(ip, capsys):
    ip.run_line_magic("comfy", "")
    assert "%comfy export FILE.json" in capsys.readouterr().out
    doc = ip.find_line_magic("comfy").__doc__
    assert "%comfy unload NAME|all" in doc and "%%comfy" in doc


def test_cell_magic_runs_the_cell_as_one_workflow(ip, run_cell, session, calls, capsys):
    result = ip.run_cell_magic("comfy", "", "s = Add(Number(2), 3)\nShow(s)")
    assert calls == ["Number", "Add", "Show"]
    assert result.outputs["2"] == (5,) and repr(result).startswith("<executed 3 nodes, 0 from cache in ")
    calls.clear()
    run_cell(ip, "r = Add(Number(2), 3)")  # real mode shares the workflow's cache entries
    assert calls == [] and ip.user_ns["r"].value == 5
    with pytest.raises(UsageError, match="made no node calls"):
        ip.run_cell_magic("comfy", "", "x = 1")


def test_works_without_extension(session, calls):
    from comfy_notebook.realmode import node_function

    add, number = node_function("Add"), node_function("Number")
    assert add(number(1), 1).value == 2
    assert add(number(1), 1).value == 2
    assert calls == ["Number", "Add"]


def test_cache_budget_magic_sets_a_memory_budget(ip, run_cell, session, capsys):
    from comfy_notebook.engine.policies import MemoryBudget

    run_cell(ip, "a = Number(1)\nb = Number(2)")
    ip.run_line_magic("comfy", "cache budget 8GB 1.5g")
    assert isinstance(session.cache.policy, MemoryBudget)
    assert (session.cache.policy.ram_bytes, session.cache.policy.vram_bytes) == (8 << 30, int(1.5 * 2**30))
    assert "evicted 0 entries" in capsys.readouterr().out
    with pytest.raises(UsageError, match="expected a size such as 512MB"):
        ip.run_line_magic("comfy", "cache budget lots")


def test_interrupt_ends_the_cell_with_one_line_and_next_run_works(ip, run_cell, session, capsys):
    run_cell(ip, "from comfy_notebook.realmode import node_function as _nf\nSlow = _nf('Slow')")
    result = run_cell(ip, "x = Slow(Number(13))")
    assert not result.success
    out = capsys.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if ln.strip()]
    assert lines == ["ExecutionInterrupted: interrupted at step 3/10 of node Slow  (%comfy traceback for details)"]
    n_entries = len(session.cache)  # Number is cached, the interrupted node stored nothing
    assert n_entries == 1
    assert run_cell(ip, "y = Slow(Number(12))").success and ip.user_ns["y"].value == 12


def test_cell_magic_without_output_node_runs_the_leaves(ip, session, calls, capsys):
    result = ip.run_cell_magic("comfy", "", "t = Add(Number(4), 4)")
    assert calls == ["Number", "Add"] and result.outputs["2"] == (8,)


def test_stubs_magic_writes_signatures_of_session_nodes(ip, session, tmp_path, capsys):
    target = tmp_path / "nodes.pyi"
    ip.run_line_magic("comfy", f"stubs {target}")
    text = target.read_text()
    for name in session.registry.names():
        assert f"def {name}(" in text
    assert str(target) in capsys.readouterr().out
    compile(text, str(target), "exec")  # the stub is valid Python syntax


def test_star_import_lists_session_nodes(session):
    import comfy_notebook.nodes as nodes

    names = dir(nodes)
    assert set(session.registry.names()) <= set(names)
    assert "register_builtins" in names


def test_models_dir_magic_takes_effect_in_the_running_session(ip, session, tmp_path, capsys):
    """Defect 2: a models folder named after the session started is used at once."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "a.safetensors").write_bytes(b"")
    ip.run_line_magic("comfy", f"models-dir {tmp_path}")
    assert capsys.readouterr().out.strip() == f"models folder: {tmp_path}"
    assert session.folders.list("checkpoints") == ["a.safetensors"]
    ip.run_line_magic("comfy", "status")
    assert f"models folder: {tmp_path}\n" in capsys.readouterr().out
    with pytest.raises(UsageError, match="does not exist"):
        ip.run_line_magic("comfy", f"models-dir {tmp_path / 'nope'}")


def test_run_png_fills_defaults_an_older_prompt_lacks(ip, run_cell, session, calls, tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from comfy_notebook.pnginfo import FilledDefaultsWarning

    # an "older" prompt: Add.b (default 0) did not exist yet
    meta = PngInfo()
    meta.add_text("prompt", json.dumps({
        "1": {"class_type": "Number", "inputs": {"value": 4}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0]}},
        "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}))
    png = tmp_path / "old.png"
    Image.new("RGB", (2, 2)).save(png, pnginfo=meta)
    with pytest.warns(FilledDefaultsWarning, match=r"node 2 \(Add\)\.b=0"):
        result = ip.run_line_magic("comfy", f"run {png}")
    assert result.outputs["2"] == (4,)


def test_nodes_load_magic_reports_each_pack(ip, session, capsys):
    """``%comfy nodes load PATH`` is a thin parser over control.load_custom_nodes (issue 17)."""
    import sys

    packs = pathlib.Path(__file__).parents[1] / "interop" / "packs"
    path, modules = list(sys.path), set(sys.modules)
    try:
        ip.run_line_magic("comfy", f"nodes load {packs / 'v1_pack'}")
        assert "v1_pack: loaded 2 nodes" in capsys.readouterr().out
        assert "TestSolidImage" in session.registry
        ip.run_line_magic("comfy", f"nodes load {packs / 'broken_pack'}")
        out = capsys.readouterr().out
        assert "broken_pack: FAILED" in out and "needs ComfyUI itself" in out
        with pytest.raises(UsageError, match="usage: %comfy nodes load PATH"):
            ip.run_line_magic("comfy", "nodes PATH")
        with pytest.raises(UsageError, match="is not a ComfyUI installation"):
            ip.run_line_magic("comfy", f"attach {packs}")
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            del sys.modules[name]
