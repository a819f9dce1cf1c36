"""The README's notebook example, executed verbatim on a real kernel (nbclient).

The models folder holds the tiny random-weight checkpoint under the name the README uses, and
``COMFY_NOTEBOOK_MODELS`` points at it (one of the README's three ways).  The cell must end
without a traceback and show an image (what ``SaveImage`` wrote).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[2]


def readme_notebook_cell() -> str:
    """The first python block of the README's "In a notebook" section, as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## In a notebook"):]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "no python block in the README's notebook section"
    return match.group(1)


@pytest.mark.slow
def test_readme_notebook_example_runs_verbatim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from comfy_notebook.testing import make_checkpoint

    source = readme_notebook_cell()
    assert source.startswith("%load_ext comfy_notebook\n") and 'SaveImage(image, "bottle")' in source
    models = tmp_path / "models"
    make_checkpoint(models / "checkpoints" / "v1-5-pruned-emaonly.safetensors")
    monkeypatch.setenv("COMFY_NOTEBOOK_MODELS", str(models))
    monkeypatch.setenv("COMFY_NOTEBOOK_PROGRESS", "0")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = nb.cells[0].outputs
    assert not [o for o in outputs if o.get("output_type") == "error"], outputs
    assert not any("Traceback" in o.get("text", "") for o in outputs), outputs
    shown = [o for o in outputs if o.get("output_type") == "execute_result"]
    assert len(shown) == 1 and "image/png" in shown[0]["data"], outputs
    assert shown[0]["data"]["text/plain"].startswith("<SaveImage: saved 1 image (bottle_00001_.png)")
    assert (tmp_path / "output" / "bottle_00001_.png").is_file()
