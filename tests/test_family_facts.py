"""Family facts live only in ``comfy_notebook/families/``: a grep over the family-agnostic rooms.

Runtime, sampling, the widgets, real mode and the kernel extension must ask a family object
(latent format, model sampling, text-encoding recipe) instead of naming one.  Any family name
or family constant found outside ``families/`` (and the model/testing modules that define
architectures and presets) fails this test with the file and line.
"""

from __future__ import annotations

import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "comfy_notebook"

# rooms (and root-level real-mode modules) that must stay family-agnostic
ROOMS = ("runtime", "sampling", "widgets", "realmode", "kernel_ext")
ROOT_MODULES = ("display.py", "realmode.py", "_recording.py", "stubs.py", "_session.py", "_binding.py",
                "_fingerprint.py", "_progress.py")

# family names and the constants only a family can know (latent scales, preview factors)
FACT = re.compile(
    r"\bsd-?1(?:\.x|\.5|5)?\b|\bsd-?2(?:\.x|1)?\b|sdxl|stable[ _]diffusion|"
    r"0\.18215|0\.13025|0\.3512|0\.3651|0\.8223",
    re.IGNORECASE,
)
# file names in doctest examples are data, not facts
ALLOWED = re.compile(r"v1-5-pruned|\.safetensors")


def _files() -> list[Path]:
    out = [p for room in ROOMS for p in sorted((PKG / room).rglob("*.py")) if (PKG / room).is_dir()]
    return out + [PKG / m for m in ROOT_MODULES if (PKG / m).is_file()]


def test_no_family_facts_outside_families():
    found = []
    for path in _files():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if FACT.search(line) and not ALLOWED.search(line):
                found.append(f"{path.relative_to(PKG)}:{n}: {line.strip()}")
    assert not found, "family facts outside comfy_notebook/families/:\n" + "\n".join(found)


def test_the_grep_sees_the_rooms_and_catches_a_fact(tmp_path):
    files = {p.relative_to(PKG).parts[0] for p in _files()}
    assert {"runtime", "sampling", "widgets"} <= files  # the rooms exist and are scanned
    for line in ("latent * 0.18215", "if family == 'sdxl':", "SD1 latents", "Stable Diffusion 2.x"):
        assert FACT.search(line), line
