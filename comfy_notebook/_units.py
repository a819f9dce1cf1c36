"""Byte sizes: parsing what people type ("512MB") and printing what they read ("4.1 MB").

Standard library only (the engine and the magics use it without torch).
"""

from __future__ import annotations

__all__ = ["human_bytes", "parse_bytes"]

_GIB = 1 << 30
_MIB = 1 << 20

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30}


def parse_bytes(text: str) -> int:
    """``"512MB"``, ``"8GB"``, ``"1.5g"`` or ``"1024"`` -> bytes.

    Raises
    ------
    ValueError
        When the text is not a number with an optional unit (B, KB, MB, GB).
    """
    t = text.strip().lower()
    digits = t.rstrip("kmgb")
    unit = t[len(digits):]
    try:
        number = float(digits)
    except ValueError:
        number = -1.0
    if unit not in _UNITS or number < 0:
        raise ValueError(f"expected a size such as 512MB or 8GB, received {text!r}")
    return int(number * _UNITS[unit])


def human_bytes(n: float | None) -> str:
    """``4_300_000`` -> ``"4.1 MB"`` (binary units; GB with two decimals; ``None`` -> ``"-"``)."""
    if n is None:
        return "-"
    size = abs(n)
    sign = "-" if n < 0 else ""
    if size >= _GIB:
        return f"{sign}{size / _GIB:.2f} GB"
    if size >= _MIB:
        return f"{sign}{size / _MIB:.1f} MB"
    return f"{sign}{size / 1024:.1f} KB" if size >= 1024 else f"{sign}{size:.0f} B"
