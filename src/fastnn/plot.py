"""Training curves as pictures (optional extra: ``pip install 'fastnn-core[plot]'``,
matplotlib).

    import fastnn.plot
    history = fn.fit(model, loss, opt, X, y, epochs=20, validation_split=0.1)
    fastnn.plot.history(history, "curves.png")
"""
import numbers


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"fastnn.plot needs matplotlib ({e}); install the extra: "
                          f"pip install 'fastnn-core[plot]'") from e
    return Figure, FigureCanvasAgg


def check_path(path):
    """Before a long run that ends in history(..., path): ImportError naming the extra
    without matplotlib, ValueError when path's suffix names no format matplotlib writes."""
    import os

    Figure, FigureCanvasAgg = _matplotlib()
    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    ext = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    if ext not in formats:
        raise ValueError(f"{os.fspath(path)!r}: the suffix must name a picture format, one of "
                         f"{', '.join('.' + f for f in sorted(formats))}; got "
                         f"{'.' + ext if ext else 'none'}")


def history(history, path=None, *, title=None, figsize=None, dpi=100):
    """Draw per-epoch curves: one panel for the loss, one per metric, each training value
    against its validation counterpart ("val_" + name) when present.

    history: a fastnn History (what fit returns), or a dict {name: list of per-epoch values}
    (e.g. ``history.history``). Entries "lr" and "epoch_time" are not drawn; a key present
    only as "val_x" gets its own panel. path: where to save the picture (format from the
    suffix, e.g. .png); None saves nothing. figsize: inches (default 4.8 wide per panel by
    3.6 high); dpi: pixels per inch of the saved file (a .png is figsize * dpi pixels).
    Returns the matplotlib Figure (no pyplot state is touched).

    Raises ImportError naming the extra without matplotlib, TypeError for another history
    type, ValueError for a history with nothing to draw or lists of non-numbers.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict):
        raise TypeError(f"history must be a fastnn History or a dict of per-epoch lists, got "
                        f"{type(history).__name__}")
    curves = {}
    for k, v in logs.items():
        if k in ("lr", "epoch_time") or v is None:
            continue
        v = list(v)
        if not all(isinstance(x, numbers.Real) for x in v):
            raise ValueError(f"history[{k!r}] must be a list of numbers")
        if v:
            curves[str(k)] = [float(x) for x in v]
    names = []
    for k in curves:
        base = k[4:] if k.startswith("val_") else k
        if base not in names:
            names.append(base)
    if not names:
        raise ValueError("history has no per-epoch values to draw")
    if "loss" in names:
        names.remove("loss")
        names.insert(0, "loss")
    width, height = figsize or (4.8 * len(names), 3.6)
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        for key, label, style in ((name, "train", "-"), ("val_" + name, "validation", "--")):
            if key in curves:
                ys = curves[key]
                ax.plot(range(1, len(ys) + 1), ys, style, marker="o" if len(ys) < 30 else None,
                        markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
