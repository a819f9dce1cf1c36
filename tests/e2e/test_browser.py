"""JupyterLab in headless Chromium runs ``notebooks/01_quickstart.ipynb`` in a live kernel.

The quickstart is opened as a user would open it (a copy in the server's root folder, plus one
probe cell appended at the end that prints where the session's models are) and its code cells
are run one by one with the keyboard. Asserted in the browser: the Gallery cell shows the four
images of its batch as PNG data-URL thumbnails and clicking one shows it at full size; the ``%comfy models``
panel shows the checkpoint's models on the (simulated) GPU, its "offload" button moves the UNet
to the CPU, which the kernel confirms; ``%comfy unload all`` empties the device, live in the panel.

The server runs with ``COMFY_NOTEBOOK_SIMULATED_VRAM=64MB`` (the tiny checkpoint is ~21 MB), so the
session's model manager accounts for a 64 MB device although everything computes on the CPU, and
with the notebook's own knobs ``QUICKSTART_SIZE=64`` and ``QUICKSTART_STEPS=4``. No models folder
is configured: the notebook writes its tiny checkpoint itself, as on a first run anywhere.
Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import json
import pathlib
import re
import time
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "01_quickstart.ipynb"
UNET = "tiny/unet"  # the model manager names a checkpoint's parts <file stem>/<part>
PARTS = ("tiny/clip", "tiny/unet", "tiny/vae")
PROBE = (
    "import comfy_notebook\n"
    "print('LOCATIONS=' + ' '.join(f'{i.name}:{i.location}'\n"
    "                              for i in sorted(comfy_notebook.session().models.list(),\n"
    "                                              key=lambda i: i.name)))\n"
)


@pytest.fixture(autouse=True)
def _quickstart_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the JupyterLab server (and so its kernel) inherits; autouse runs it before ``lab``."""
    monkeypatch.setenv("COMFY_NOTEBOOK_SIMULATED_VRAM", "64MB")
    monkeypatch.setenv("QUICKSTART_SIZE", "64")
    monkeypatch.setenv("QUICKSTART_STEPS", "4")
    monkeypatch.delenv("COMFY_NOTEBOOK_MODELS", raising=False)  # the notebook makes its own
    monkeypatch.delenv("QUICKSTART_CKPT", raising=False)


def _copy_quickstart(root: pathlib.Path) -> list[dict[str, Any]]:
    """Copy the quickstart into ``root`` with the probe cell appended; returns its cells."""
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    nb["cells"].append({"cell_type": "code", "execution_count": None, "id": "browser-probe",
                        "metadata": {"tags": ["probe"]}, "outputs": [], "source": PROBE})
    (root / NOTEBOOK.name).write_text(json.dumps(nb), encoding="utf-8")
    return list(nb["cells"])


def _run_cell(page: Any, index: int, timeout_s: float = 90) -> Any:
    """Run cell ``index`` with Ctrl+Enter and wait for a new execution count; returns the cell.

    Keys pressed while JupyterLab is still settling can be lost, so the key is pressed again
    until the prompt changes (to ``[*]:`` or a new count).
    """
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    prompt = cell.locator(".jp-InputPrompt")
    before = prompt.inner_text().strip()
    for _ in range(5):
        prompt.click()
        page.keyboard.press("Control+Enter")
        deadline = time.monotonic() + 5
        while prompt.inner_text().strip() == before and time.monotonic() < deadline:
            time.sleep(0.1)
        if prompt.inner_text().strip() != before:
            break
    deadline = time.monotonic() + timeout_s
    while True:
        text = prompt.inner_text().strip()
        if re.fullmatch(r"\[\d+\]:", text) and text != before:
            break
        assert time.monotonic() < deadline, f"cell {index} did not finish: {text!r}"
        time.sleep(0.1)
    errors = cell.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    texts = errors.all_inner_texts()
    assert not any("Error" in t for t in texts), f"cell {index} raised:\n{texts}"
    return cell


def _locations(cell: Any) -> dict[str, str]:
    """The probe cell's ``LOCATIONS=name:where ...`` line as a dict."""
    line = cell.locator(".jp-OutputArea-output").get_by_text(re.compile(r"^LOCATIONS=")).inner_text()
    match = re.search(r"LOCATIONS=(.*)", line)
    assert match, line
    return dict(pair.rsplit(":", 1) for pair in match.group(1).split())


def test_quickstart_gallery_and_offload(lab: Any, page: Any, artifacts: pathlib.Path) -> None:
    from playwright.sync_api import expect

    source = _copy_quickstart(lab.root)
    tags = {tag: i for i, c in enumerate(source) for tag in c["metadata"].get("tags", [])}
    page.set_viewport_size({"width": 1400, "height": 1800})  # the gallery cell fits in a screenshot
    page.goto(lab.url(f"lab/tree/{NOTEBOOK.name}"))
    cells = page.locator(".jp-Notebook .jp-Cell")
    cells.first.wait_for(timeout=60_000)
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(
        state="attached", timeout=60_000)
    expect(cells).to_have_count(len(source), timeout=30_000)  # all in the DOM: indices match

    for index, cell in enumerate(source[:tags["unload"]]):  # the notebook up to "unload all"
        if cell["cell_type"] == "code":
            _run_cell(page, index)

    # the gallery: the batch's four images as PNG data URLs, a full-size view on click
    gallery = cells.nth(tags["gallery"]).locator(".cn-gallery")
    thumbs = gallery.locator("img.cn-thumb")
    expect(thumbs).to_have_count(4, timeout=60_000)
    srcs = thumbs.evaluate_all("imgs => imgs.map(i => i.getAttribute('src'))")
    assert all(s.startswith("data:image/png;base64,") for s in srcs), [s[:40] for s in srcs]
    assert len(set(srcs)) == 4  # each image of the batch from its own noise
    for i in range(4):
        expect(thumbs.nth(i)).to_have_js_property("naturalWidth", 64, timeout=30_000)
    # one run, each card captioned with the parameters read from the prompt behind it
    assert gallery.locator(".cn-run-label").all_inner_texts() == ["seed 42, a batch of 4"]
    assert gallery.locator("figcaption").all_inner_texts() == [
        "seed 42 · steps 4 · cfg 8 · sampler euler · scheduler normal · checkpoint tiny.safetensors"] * 4
    cells.nth(tags["gallery"]).screenshot(path=str(artifacts / "browser_quickstart_gallery.png"))

    thumbs.nth(1).click()  # the kernel answers with the full-size image of the selection
    full = page.locator(".cn-lightbox img.cn-full")
    full.wait_for(timeout=30_000)
    assert full.get_attribute("src").startswith("data:image/png;base64,")
    expect(full).to_have_js_property("naturalWidth", 64, timeout=30_000)
    page.screenshot(path=str(artifacts / "browser_quickstart_lightbox.png"))
    page.locator(".cn-lightbox").click()
    full.wait_for(state="detached", timeout=30_000)

    # the model panel: the checkpoint's parts on the simulated GPU
    panel = cells.nth(tags["models"]).locator(".cn-models")
    rows = panel.locator("tr.cn-model-row")
    rows.nth(len(PARTS) - 1).wait_for(timeout=60_000)
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.name)")) == list(PARTS)
    expect(panel.locator(".cn-loc")).to_have_text(["gpu"] * len(PARTS), timeout=30_000)
    cells.nth(tags["models"]).screenshot(path=str(artifacts / "browser_quickstart_models.png"))

    probe = _run_cell(page, tags["probe"])
    assert _locations(probe) == dict.fromkeys(PARTS, "gpu")

    # "offload" in the UNet's row: the panel and the kernel both say cpu; the others stay
    panel.locator(f"tr[data-name='{UNET}'] button.cn-offload").click()
    panel.locator(".cn-message", has_text=f"offloaded {UNET}").wait_for(timeout=30_000)
    panel.locator(f"tr[data-name='{UNET}'] .cn-loc", has_text="cpu").wait_for(timeout=30_000)
    probe = _run_cell(page, tags["probe"])
    assert _locations(probe) == {**dict.fromkeys(PARTS, "gpu"), UNET: "cpu"}
    assert {r: panel.locator(f"tr[data-name='{r}'] .cn-loc").inner_text() for r in PARTS} == \
        {**dict.fromkeys(PARTS, "gpu"), UNET: "cpu"}
    cells.nth(tags["models"]).screenshot(path=str(artifacts / "browser_quickstart_offloaded.png"))

    # the notebook's last cell, %comfy unload all: the live panel follows
    _run_cell(page, tags["unload"])
    expect(panel.locator(".cn-loc")).to_have_text(["unloaded"] * len(PARTS), timeout=30_000)
    probe = _run_cell(page, tags["probe"])
    assert _locations(probe) == dict.fromkeys(PARTS, "unloaded")
    page.screenshot(path=str(artifacts / "browser_quickstart_after.png"), full_page=True)
