"""What each part of the lifelong editor does: one trained editor, with one part taken away at
edit time, over several orders of held-out edits in a row.

    python bench/lifelong_ablation.py [--run runs/default] [--edits 100] [--orders 4] [--out bench/results]
                                      [--extra NAME=EDITOR_DIR ...]

Loads ``<run>/lifelong`` (``bash scripts/train.sh`` writes it) and measures, with the
evaluation's ``lifelong_curves`` on the run's test edits, ES on the edit prompts and rephrasings
of all edits so far and the locality drawdown after ``--edits`` edits in a row, in ``--orders``
orders (the first the test split's, then shuffles), for:

* the editor as trained;
* no preserved-key protection (``gamma`` -> 0: the solve no longer holds ordinary keys' outputs);
* no earlier-edit protection (``beta`` -> 0: earlier edits' keys are not held);
* no repair (an edit that breaks an earlier edit's answer is not made again with it);
* no neighbour protection (``neighbours`` -> 0: an edit does not hold its prompt asked of other
  subjects);
* no margin (each edit stops at its first hit instead of a mean NLL below ``stop_nll``);
* one whole learned step instead of up to ``edit_steps`` steps of ``step_scale``.

Parts that need training (sequence training itself, ridge aggregation) are measured by training
an editor without them and passing it with ``--extra "name=DIR"`` (a directory
``MendEditor.save_pretrained`` wrote for the same model), e.g. networks trained without
sequences: ``edit-train --model runs/default/model --data runs/default/data --out DIR --config F``
with ``{"lifelong_meta": {"sequence_length": 0, "max_prior_edits": 4, "c_norm": 0}, "eval":
{"editors": ["LifelongMEND"]}}``, then ``--extra "no sequences=DIR/lifelong"``; plain MEND (``<run>/editor``, sum
aggregation, none of the parts) is added when present. Writes ``OUT/lifelong_ablation.json``
and ``OUT/lifelong_ablation.png`` (mean over orders, the lowest and highest order as a range)
and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
METRICS = ("es_edit", "es_rephrase", "dd_locality")


def variants(editor) -> dict:
    """Name -> the editor with one part taken away (copies; ``editor`` is unchanged)."""

    def changed(config=None, **logs):
        out = copy.deepcopy(editor)
        if config:
            out.config = dataclasses.replace(out.config, **config)
        for name, value in logs.items():  # log-weights of the solve, per layer
            getattr(out, name).data.fill_(value)
        return out

    steps = {"edit_steps": 1, "step_scale": 1.0, "stop_nll": None}
    return {
        "as trained": editor,
        "no preserved-key protection (gamma -> 0)": changed(log_gamma=-30.0),
        "no earlier-edit protection (beta -> 0)": changed(log_beta=-30.0),
        "no repair": changed({"repair": False}),
        "no neighbour protection": changed({"neighbours": 0}),
        "no margin (stop at the first hit)": changed({"stop_nll": None}),
        "one whole learned step": changed(steps),
    }


def plot(rows: dict, path: Path, n_edits: int) -> None:
    from matplotlib.figure import Figure

    names = list(rows)
    fig = Figure(figsize=(12, 0.55 * len(names) + 2))
    axes = fig.subplots(1, len(METRICS), sharey=True)
    for ax, metric in zip(axes, METRICS, strict=True):
        means = [rows[n]["mean"][metric] for n in names]
        low = [m - rows[n]["lowest"][metric] for n, m in zip(names, means, strict=True)]
        high = [rows[n]["highest"][metric] - m for n, m in zip(names, means, strict=True)]
        ax.barh(range(len(names)), means, xerr=[low, high], color="C0", alpha=0.8, capsize=3)
        ax.set_title(f"{metric} after {n_edits} edits in a row")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "default")
    ap.add_argument("--edits", type=int, default=100)
    ap.add_argument("--orders", type=int, default=4)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument(
        "--extra", nargs="*", default=[], metavar="NAME=DIR", help="more trained editors to measure"
    )
    args = ap.parse_args()

    from edit_data import load_saved
    from editor_nets import MendEditor
    from editor_nets.evaluate import lifelong_curves
    from editor_nets.models import load_model
    from editor_nets.report import machine_info

    model, tokenizer = load_model(str(args.run / "model"))
    records = load_saved(args.run / "data")["test"]
    if len(records) < args.edits:
        raise SystemExit(
            f"{args.run / 'data'} has {len(records)} test edits, fewer than --edits {args.edits}"
        )
    editors = variants(MendEditor.from_pretrained(args.run / "lifelong", model).eval())
    for spec in args.extra:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"--extra takes NAME=DIR, got {spec!r}")
        editors[name] = MendEditor.from_pretrained(path, model).eval()
    if (args.run / "editor").is_dir():
        editors["plain MEND (sum, none of the parts)"] = MendEditor.from_pretrained(
            args.run / "editor", model
        ).eval()

    rows = {}
    for name, editor in editors.items():
        start = time.perf_counter()
        curves = lifelong_curves(
            model, tokenizer, editor, records, checkpoints=(args.edits,), batch_sizes=(), orders=args.orders,
            name=name,
        )  # fmt: skip
        ends = [order[-1] for order in curves.get("orders", [curves["sequential"]])]
        rows[name] = {
            "mean": {m: sum(p[m] for p in ends) / len(ends) for m in METRICS},
            "lowest": {m: min(p[m] for p in ends) for m in METRICS},
            "highest": {m: max(p[m] for p in ends) for m in METRICS},
            "orders": ends,
            "seconds": time.perf_counter() - start,
        }
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"machine": machine_info(), "run": str(args.run), "edits": args.edits, "orders": args.orders,
               "variants": rows}  # fmt: skip
    (args.out / "lifelong_ablation.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(rows, args.out / "lifelong_ablation.png", args.edits)
    print(f"\n{args.edits} held-out edits in a row, mean of {args.orders} orders (lowest-highest order):")
    for name, row in rows.items():
        cells = "  ".join(
            f"{m} {row['mean'][m]:.3f} ({row['lowest'][m]:.2f}-{row['highest'][m]:.2f})" for m in METRICS
        )
        print(f"  {name:45s} {cells}")
    print(f"wrote {args.out / 'lifelong_ablation.json'}, {args.out / 'lifelong_ablation.png'}")


if __name__ == "__main__":
    main()
