"""Matplotlib figures for comparing images: :func:`grid` and :func:`xy_grid` (seeds x cfg, ...).

Both accept IMAGE tensors ``[B,H,W,C]`` (a batch gives several images), numpy arrays, PIL
images and real-mode handles (anything with ``.value``), and return a ``matplotlib.figure.Figure``
built with the object-oriented API (no pyplot state, nothing shown as a side effect).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["grid", "xy_grid"]


def _figure(rows: int, cols: int, cell_inches: float) -> tuple[Any, Any]:
    """A Figure with a rows x cols array of axes (always 2-D)."""
    fig = _figure_class()(figsize=(cols * cell_inches, rows * cell_inches), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _blank(ax: Any) -> None:
    """Hide ticks and frame but keep the axis labels visible."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _figure_class() -> type:
    """A ``Figure`` that shows itself as a PNG in notebooks without ``%matplotlib inline``.

    Figures made without pyplot have no display hook unless the inline backend registered one;
    this subclass brings its own ``_repr_png_``, so a returned grid always renders.
    """
    global _ReprFigure
    if _ReprFigure is None:
        import io

        from matplotlib.figure import Figure

        class ReprFigure(Figure):  # type: ignore[misc]
            def _repr_png_(self) -> bytes:
                buf = io.BytesIO()
                self.savefig(buf, format="png")
                return buf.getvalue()

        _ReprFigure = ReprFigure
    return _ReprFigure


_ReprFigure: type | None = None


def grid(images: Any, *, rows: int | None = None, cols: int | None = None,
         titles: Sequence[str] | None = None, cell_inches: float = 2.5) -> Any:
    """Lay images out in a grid.

    Parameters
    ----------
    images:
        One IMAGE batch ``[B,H,W,C]``, or a list of images / batches / handles.
    rows, cols:
        Grid shape; by default as square as possible (``cols = ceil(sqrt(n))``).
    titles:
        One title per image (after batches are split).
    cell_inches:
        Size of one cell in inches.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from comfy_notebook.widgets._images import to_images

    pictures = to_images(images)
    n = len(pictures)
    if n == 0:
        raise ValueError("expected at least one image, received none")
    if titles is not None and len(titles) != n:
        raise ValueError(f"expected {n} titles (one per image), received {len(titles)}")
    if cols is None:
        cols = math.ceil(n / rows) if rows else math.ceil(math.sqrt(n))
    if rows is None:
        rows = math.ceil(n / cols)
    if rows * cols < n:
        raise ValueError(f"a {rows}x{cols} grid holds {rows * cols} images, received {n}; "
                         "raise rows or cols")
    fig, axes = _figure(rows, cols, cell_inches)
    for i, ax in enumerate(axes.flat):
        _blank(ax)
        if i < n:
            ax.imshow(pictures[i])
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=9)
        else:
            ax.remove()  # unused cell
    return fig


def _label(name: str, value: Any) -> str:
    return f"{name} = {value}" if name else str(value)


def xy_grid(results: Mapping[tuple[Any, Any], Any] | Iterable[tuple[Mapping[str, Any], Any]],
            *, x: str, y: str, x_values: Sequence[Any] | None = None,
            y_values: Sequence[Any] | None = None, cell_inches: float = 2.5) -> Any:
    """A parameter comparison: one column per ``x`` value, one row per ``y`` value.

    Parameters
    ----------
    results:
        A mapping ``{(x_value, y_value): image}``; an iterable of ``(params, image)`` pairs
        where ``params[x]`` and ``params[y]`` give the cell; or a sweep's table (a pandas
        ``DataFrame`` or list of row dicts with an ``"image"`` column, as ``session.sweep``
        returns).  An image may be a batch; its first image is shown.
    x, y:
        Names of the two parameters (axis labels; keys into ``params`` for the pair form).
    x_values, y_values:
        Order of columns and rows (default: sorted where possible, else first-seen order).
        Cells with no result stay empty.

    Returns
    -------
    matplotlib.figure.Figure
        Column headers ``"{x} = {value}"`` on top, row labels ``"{y} = {value}"`` on the left.
    """
    from comfy_notebook.widgets._images import to_images

    cells: dict[tuple[Any, Any], Any] = {}
    if hasattr(results, "to_dict") and hasattr(results, "columns"):  # a pandas DataFrame
        results = results.to_dict("records")
    if isinstance(results, list) and results and isinstance(results[0], Mapping):
        results = [(row, row["image"]) for row in results]  # a sweep's rows
    if isinstance(results, Mapping):
        for key, image in results.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ValueError(f"expected keys (x_value, y_value), received {key!r}")
            cells[key] = image
    else:
        for params, image in results:
            missing = [k for k in (x, y) if k not in params]
            if missing:
                raise KeyError(f"result parameters {dict(params)} lack {missing}; "
                               f"each result needs values for x={x!r} and y={y!r}")
            cells[(params[x], params[y])] = image
    if not cells:
        raise ValueError("expected at least one result, received none")

    def order(values: list[Any]) -> list[Any]:
        unique = list(dict.fromkeys(values))
        try:
            return sorted(unique)
        except TypeError:
            return unique

    xs = list(x_values) if x_values is not None else order([k[0] for k in cells])
    ys = list(y_values) if y_values is not None else order([k[1] for k in cells])
    fig, axes = _figure(len(ys), len(xs), cell_inches)
    for r, yv in enumerate(ys):
        for c, xv in enumerate(xs):
            ax = axes[r][c]
            _blank(ax)
            if (xv, yv) in cells:
                ax.imshow(to_images(cells[(xv, yv)])[0])
            if r == 0:
                ax.set_title(_label(x, xv), fontsize=10)
            if c == 0:
                ax.set_ylabel(_label(y, yv), fontsize=10)
    return fig
