"""Writing evaluation results: ``report.json`` and ``report.png``.

Public API::

    write_report(results: dict, out_dir, curves: Sequence[Mapping] | None = None, *,
                 title: str | None = None) -> dict[str, Path]   # {"json": ..., "png": ...}
    plot_report(results: dict, path, curves=None, *, title=None) -> Path
    load_metrics(path) -> list[dict]          # a metrics.jsonl file as a list of rows
    MetricsLog(path, resume=False)            # the one writer of a run's metrics.jsonl
    results_table(results: dict) -> str       # a plain-text table of the methods' main figures
    percentile(values, q) -> float            # q in 1..99, linear interpolation
    machine_info() -> dict                    # what a result was measured on

``results`` is the dict of :func:`editor_nets.evaluate.evaluate_editors` (``{"methods": {name:
{...}}}``; other top-level keys are kept as they are). ``curves`` are training-metric rows such
as those of ``metrics.jsonl``: each a dict with a ``step`` (else its index is used), an optional
``split``/``phase`` name and numeric values; losses are drawn in one panel, the other metrics
(edit success, drawdown, ...) in another.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MetricsLog",
    "load_metrics",
    "machine_info",
    "percentile",
    "plot_report",
    "results_table",
    "sequential_curve",
    "write_report",
]

BAR_METRICS = ("es_edit", "es_rephrase", "dd_locality", "dd_hard_locality")
SEQUENTIAL_METRICS = ("es", "es_rephrase", "dd_locality")
TABLE_METRICS = (
    "es_edit",
    "es_rephrase",
    "token_acc_rephrase",
    "dd_locality",
    "dd_hard_locality",
    "edit_latency_ms_median",
    "edit_latency_ms_p90",
)
_NOT_CURVES = {"step", "epoch", "time", "elapsed", "lr", "rate", "seconds", "wall_s", "split", "phase"}


def _jsonable(value: Any) -> Any:
    """Plain JSON values: tensors and numpy scalars become numbers/lists, paths strings,
    non-finite floats ``None``."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # torch / numpy
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"report value of type {type(value).__name__} is not JSON serialisable: {value!r}")


def write_report(
    results: Mapping[str, Any],
    out_dir: str | os.PathLike,
    curves: Sequence[Mapping[str, Any]] | None = None,
    *,
    title: str | None = None,
) -> dict[str, Path]:
    """Write ``out_dir/report.json`` (``results``) and ``out_dir/report.png`` (ES/DD bars per
    method, the sequential mode beside them, and the training ``curves`` when given).
    Returns the two paths."""
    if "methods" not in results or not isinstance(results["methods"], Mapping):
        raise ValueError("results must hold a 'methods' dict (the output of evaluate_editors)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(_jsonable(results), indent=2, allow_nan=False) + "\n"
    json_path = out / "report.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(payload)
    tmp.replace(json_path)
    png_path = plot_report(results, out / "report.png", curves, title=title)
    return {"json": json_path, "png": png_path}


def _curve_series(curves: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, row in enumerate(curves):
        step = row.get("step", i)
        prefix = row.get("split") or row.get("phase") or ""
        for key, value in row.items():
            if key in _NOT_CURVES or key.endswith(("_s", "_per_s", "_ms")):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                continue
            name = f"{prefix}/{key}" if prefix else key
            xs, ys = series.setdefault(name, ([], []))
            xs.append(float(step))
            ys.append(float(value))
    return series


def _is_loss(name: str) -> bool:
    return any(w in name.lower() for w in ("loss", "nll", "kl"))


def _color(j: int) -> Any:
    """Method ``j``'s colour, the same in every panel: tab20's ten dark colours, then their light
    pairs (the default cycle has ten, and the report compares more editors than that)."""
    from matplotlib import colormaps

    return colormaps["tab20"]((2 * j) % 20 + (j // 10) % 2)


def _bars(ax: Any, methods: Mapping[str, Mapping[str, Any]], metrics: Sequence[str], title: str) -> None:
    names = list(methods)
    width = 0.8 / max(1, len(names))
    for j, method in enumerate(names):
        values = [methods[method].get(m) for m in metrics]
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(metrics))]
        heights = [v if isinstance(v, int | float) else 0.0 for v in values]
        bars = ax.bar(xs, heights, width, label=method, color=_color(j))
        for bar, v in zip(bars, values, strict=True):
            text = "n/a" if v is None else f"{v:.2f}"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom" if bar.get_height() >= 0 else "top", fontsize=7)  # fmt: skip
    ax.set_xticks(range(len(metrics)), metrics, rotation=15)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylim(min(-0.1, ax.get_ylim()[0]), max(1.1, ax.get_ylim()[1]))
    ax.set_title(title)
    ax.legend(fontsize=8)


def sequential_curve(lifelong: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The sequential curve to compare from a ``lifelong`` entry: the mean over orders when it was
    measured in several (``sequential_mean``), else the one order's ``sequential``."""
    return list(lifelong.get("sequential_mean") or lifelong.get("sequential") or [])


def _lifelong(ax: Any, curves: Mapping[str, Mapping[str, Any]], metric: str) -> None:
    """ES (or DD) after k edits in a row (lines: the mean over orders, shaded between the lowest and
    highest order when there are several) and after one call with k edits (crosses), log x."""
    for j, (method, curve) in enumerate(curves.items()):
        color = _color(j)
        seq = [p for p in sequential_curve(curve) if p.get(metric) is not None]
        ax.plot([p["n_edits"] for p in seq], [p[metric] for p in seq], marker="o", color=color, label=method)
        if curve.get("orders"):
            xs = [p["n_edits"] for p in seq]
            values = [[p[metric] for p in order if p.get(metric) is not None] for order in curve["orders"]]
            if all(len(v) == len(xs) for v in values):
                per_point = list(zip(*values, strict=True))
                ax.fill_between(
                    xs, [min(v) for v in per_point], [max(v) for v in per_point], color=color, alpha=0.15
                )
        bat = [p for p in curve.get("batched", []) if p.get(metric) is not None]
        ax.scatter([p["batch_size"] for p in bat], [p[metric] for p in bat], marker="x", s=60, color=color)
    ax.set_xscale("log")
    ax.set_xlabel("edits (lines: one after another; x: in one call)")
    ax.set_title(
        "edit success on all edits so far" if metric == "es_edit" else "locality drawdown (lower better)"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_report(
    results: Mapping[str, Any],
    path: str | os.PathLike,
    curves: Sequence[Mapping[str, Any]] | None = None,
    *,
    title: str | None = None,
) -> Path:
    """Draw the report figure to ``path`` (PNG; a standalone matplotlib ``Figure``, so the
    process's pyplot backend is left alone)."""
    from matplotlib.figure import Figure

    methods = results["methods"]
    sequential = {m: v["sequential"] for m, v in methods.items() if isinstance(v.get("sequential"), Mapping)}
    series = _curve_series(curves) if curves else {}
    losses = {k: v for k, v in series.items() if _is_loss(k)}
    others = {k: v for k, v in series.items() if not _is_loss(k)}
    lifelong = {m: v["lifelong"] for m, v in methods.items() if isinstance(v.get("lifelong"), Mapping)}
    panels = (
        ["bars"]
        + (["sequential"] if sequential else [])
        + (["lifelong ES", "lifelong DD"] if lifelong else [])
    )
    panels += ["losses"] if losses else []
    panels += ["others"] if others else []
    fig = Figure(figsize=(5.5 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "bars":
            _bars(ax, methods, BAR_METRICS, "single edits: ES (higher better) / DD (lower better)")
        elif panel == "sequential":
            n = {v.get("n_edits") for v in sequential.values()}
            _bars(ax, sequential, SEQUENTIAL_METRICS, f"sequential ({'/'.join(map(str, sorted(n)))} edits)")
        elif panel.startswith("lifelong"):
            _lifelong(ax, lifelong, "es_edit" if panel.endswith("ES") else "dd_locality")
        else:
            for name, (xs, ys) in (losses if panel == "losses" else others).items():
                ax.plot(xs, ys, label=name, marker="." if len(xs) < 30 else None)
            ax.set_xlabel("step")
            ax.set_title("training losses" if panel == "losses" else "training metrics")
            if panel == "losses" and all(y > 0 for _, ys in losses.values() for y in ys):
                ax.set_yscale("log")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def load_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a JSON-lines metrics file; a bad line raises ``ValueError`` naming file and line."""
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


class MetricsLog:
    """The one writer of a run's ``metrics.jsonl``: a fresh file unless ``resume`` (then appended).
    Call it with a row (a JSON-ready dict) to append one line."""

    def __init__(self, path: str | os.PathLike, *, resume: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume:
            self.path.write_text("")

    def __call__(self, row: Mapping[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(_jsonable(row)) + "\n")


def percentile(values: Sequence[float], q: int) -> float:
    """The ``q``-th percentile (an integer in 1..99) with linear interpolation (numpy's default)."""
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[q - 1])


def machine_info() -> dict[str, Any]:
    """What a measurement ran on: processor, platform, CPU count, torch and its threads, GPU if any."""
    import torch

    info = {
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def results_table(results: Mapping[str, Any]) -> str:
    """The methods' main figures as an aligned plain-text table (one row per method)."""
    methods = results["methods"]
    cols = ["method", *TABLE_METRICS, "seq_n", "seq_es", "seq_dd"]
    rows = []
    for name, m in methods.items():
        seq = m.get("sequential") or {}  # the runs-of-k mode, else the lifelong curve's last point
        if not seq and sequential_curve(m.get("lifelong") or {}):
            last = sequential_curve(m["lifelong"])[-1]
            seq = {"n_edits": last["n_edits"], "es": last["es_edit"], "dd_locality": last["dd_locality"]}
        values = [m.get(k) for k in TABLE_METRICS] + [
            seq.get("n_edits"),
            seq.get("es"),
            seq.get("dd_locality"),
        ]
        rows.append(
            [name] + ["-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in values]
        )
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
