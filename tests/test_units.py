"""Byte sizes as typed and as shown."""

from __future__ import annotations

import pytest

from comfy_notebook._units import human_bytes, parse_bytes


@pytest.mark.parametrize(("n", "text"), [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KB"),
                                         (4_300_000, "4.1 MB"), (int(1.72e9), "1.60 GB"), (-2048, "-2.0 KB")])
def test_human_bytes(n: int | None, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize(("text", "n"), [("512MB", 512 << 20), ("8GB", 8 << 30), ("1.5g", int(1.5 * (1 << 30))),
                                         ("1024", 1024), (" 64 kb ".strip(), 64 << 10)])
def test_parse_bytes(text: str, n: int) -> None:
    assert parse_bytes(text) == n


@pytest.mark.parametrize("bad", ["", "lots", "-1GB", "12TB"])
def test_parse_bytes_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="expected a size"):
        parse_bytes(bad)
