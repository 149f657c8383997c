"""Lifelong editing at scale: 1,000 held-out edits one after another on each built-in dataset.

    python bench/lifelong.py [--world synthetic iso3166] [--edits 1000] [--out bench/results]

For each dataset the main job runs with a world big enough to hold ``--edits`` held-out edits
(70% of the subjects held out), the default model pre-trained proportionally longer, the default
editor settings, and an evaluation of LifelongMEND, plain MEND, Ridge, ROME, MEMIT, AlphaEdit and FT
(``--editors`` to choose): single edits, then ES and
DD after 1, 10, 30, 100, 300, 1,000 edits in a row and batches of 10 and 100. Each run writes the
job's ``report.json`` / ``report.png`` under ``OUT/lifelong_<world>/``; this script adds
``OUT/lifelong.json`` and ``OUT/lifelong.png`` (the sequential curves of every method on every
dataset; a run of one ``--world`` keeps the other worlds an earlier run of the same ``--edits``
wrote there) and prints a table. Baselines are measured in the same run: plain MEND, Ridge, the locate-then-edit editors and FT.
With every editor this is hours of CPU on a 2-core machine (``--editors LifelongMEND,MEND``, 34 min on the synthetic world,
is the short version); ``--edits 200`` gives a smaller world, and
``--reuse-model`` skips the pre-training when an earlier run of the same
world left its model and data under ``OUT/lifelong_<world>/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


EDITORS = ("LifelongMEND", "MEND", "Ridge", "ROME", "MEMIT", "AlphaEdit", "FT")
FRACTIONS = (0.25, 0.05, 0.7)  # train, validation, test subjects
HELD_OUT = FRACTIONS[2]


def config_for(world: str, edits: int, editors: tuple[str, ...] = EDITORS):
    """The main job's settings on a world with ``edits`` held-out edits: the default model, editors
    and meta-training, with 70% of the subjects held out (the editors still meta-train on about as
    many edits as in the default job) and pre-training as many times longer as the world is bigger
    than the default one, so the model sees each fact as often."""
    from editor_nets.pipeline import EvalConfig, JobConfig

    base = JobConfig()
    # about 2.3 facts per entity (synthetic) and 1.7 per subdivision (iso3166); 70% held out
    size = int(edits / HELD_OUT / (2.3 if world == "synthetic" else 1.7) * 1.15) + 1
    default_size = base.world.n_entities if world == "synthetic" else base.world.n_subdivisions
    return dataclasses.replace(
        base,
        world=dataclasses.replace(
            base.world, name=world, n_entities=size, n_subdivisions=size, fractions=FRACTIONS
        ),
        pretrain=dataclasses.replace(
            base.pretrain, max_steps=round(base.pretrain.max_steps * max(1.0, size / default_size))
        ),
        eval=EvalConfig(
            editors=editors,
            modes=("single",),
            lifelong_checkpoints=(*(k for k in (1, 10, 30, 100, 300, 1000) if k < edits), edits),
            lifelong_batches=(10, 100),
        ),
    )


def plot(summary: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    worlds = list(summary["worlds"])
    fig = Figure(figsize=(11, 4 * len(worlds)))
    axes = fig.subplots(len(worlds), 2, squeeze=False)
    for row, world in zip(axes, worlds, strict=True):
        for j, (method, curve) in enumerate(summary["worlds"][world]["sequential"].items()):
            xs = [p["n_edits"] for p in curve]
            row[0].plot(xs, [p["es_edit"] for p in curve], marker="o", color=f"C{j}", label=method)
            row[1].plot(xs, [p["dd_locality"] for p in curve], marker="o", color=f"C{j}", label=method)
        for ax, title in zip(row, ("ES on all edits so far", "locality drawdown"), strict=True):
            ax.set_xscale("log")
            ax.set_title(f"{world}: {title}")
            ax.set_xlabel("edits in a row")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def job_on_saved(run: Path, config) -> dict:
    """The main job's editor part on the model and data an earlier run saved under ``run``."""
    from edit_data import load_saved
    from editor_nets.keystats import read_corpus
    from editor_nets.models import load_model
    from editor_nets.pipeline import run_job

    model, tokenizer = load_model(run / "model")
    splits = load_saved(run / "data")
    print(f"reusing {run / 'model'} and {run / 'data'} ({ {k: len(v) for k, v in splits.items()} })")
    corpus = read_corpus(run / "data" / "corpus.txt")
    return run_job(model, tokenizer, splits, run, config, base_model=str(run / "model"), corpus=corpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--world", nargs="+", default=["synthetic", "iso3166"], choices=["synthetic", "iso3166"]
    )
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--editors", default=",".join(EDITORS), help="comma-separated registered editors")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--reuse-model", action="store_true", help="reuse OUT/lifelong_<world>/model and data when present"
    )
    args = parser.parse_args()
    from editor_nets.pipeline import run_default_job
    from editor_nets.report import machine_info

    summary: dict = {"machine": machine_info(), "edits": args.edits, "worlds": {}}
    earlier = args.out / "lifelong.json"
    if earlier.is_file() and json.loads(earlier.read_text()).get("edits") == args.edits:
        # one world at a time: keep the other worlds an earlier run of the same size measured
        summary["worlds"] = json.loads(earlier.read_text())["worlds"]
    for world in args.world:
        start = time.perf_counter()
        run, config = (
            args.out / f"lifelong_{world}",
            config_for(world, args.edits, tuple(args.editors.split(","))),
        )
        if args.reuse_model and (run / "model" / "config.json").is_file() and (run / "data").is_dir():
            report = job_on_saved(run, config)
        else:
            report = run_default_job(run, config)
        summary["worlds"][world] = {
            "n_test_edits": next(iter(report["methods"].values()))["n_edits"],
            "seconds": time.perf_counter() - start,
            "sequential": {m: v["lifelong"]["sequential"] for m, v in report["methods"].items()},
            "batched": {m: v["lifelong"]["batched"] for m, v in report["methods"].items()},
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lifelong.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, args.out / "lifelong.png")
    for world, entry in summary["worlds"].items():
        print(f"\n{world} ({entry['n_test_edits']} held-out edits, {entry['seconds'] / 60:.0f} min)")
        for method, curve in entry["sequential"].items():
            last = curve[-1]
            print(
                f"  {method:13s} after {last['n_edits']:4d} edits: ES edit {last['es_edit']:.3f}  "
                f"ES rephrase {last['es_rephrase']:.3f}  DD {last['dd_locality']:+.3f}"
            )
    print(f"\nwrote {args.out / 'lifelong.json'}, {args.out / 'lifelong.png'}")


if __name__ == "__main__":
    main()
