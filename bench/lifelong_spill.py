"""Where the locality drawdown of a sequence of edits goes: which unrelated answers break, and
what they answer instead.

    python bench/lifelong_spill.py [--run runs/default] [--editor lifelong] [--edits 100]
                                   [--out bench/results]

Loads ``<run>/model`` and the trained editor ``<run>/<editor>`` (``bash scripts/train.sh``
writes ``runs/default``; ``edit-train --world iso3166`` writes ``runs/iso3166``), makes the run's
first ``--edits`` test edits in a row, and looks at every locality example of those edits (outside
their scope) that the model answered right before and wrong after. Each broken answer is decoded
greedily and put in one of three classes:

* **took the new target of an edit that had its answer**: the example's true answer is the
  original answer of an edit in the sequence, and the model now gives that edit's new target (an
  edit "X's country: France -> Germany" moved "Y's country" to Germany too: CounterFact's
  neighbourhood failure);
* **took another edit's new target**;
* **something else**.

Writes ``OUT/lifelong_spill_<run name>.json`` (counts, every broken example with its decoded
answer) and ``.png`` (the three classes as a bar), and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
CLASSES = (
    "took the new target of an edit that had its answer",
    "took another edit's new target",
    "something else",
)


def classify(answer: str, decoded: str, edits: list) -> str:
    """Which of ``CLASSES`` a broken answer falls in: its true ``answer``, the ``decoded`` answer
    after the edits, the ``edits`` (records with ``target`` and ``original``) made."""
    took = [e for e in edits if decoded.startswith(e.target)]
    if any(e.original == answer for e in took):
        return CLASSES[0]
    return CLASSES[1] if took else CLASSES[2]


def plot(counts: dict, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 2.6))
    ax = fig.subplots()
    left = 0
    for i, name in enumerate(CLASSES):
        ax.barh([0], [counts[name]], left=left, color=f"C{i}", label=f"{name} ({counts[name]})")
        left += counts[name]
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "default")
    ap.add_argument("--editor", default="lifelong", help="the trained editor's directory in --run")
    ap.add_argument("--edits", type=int, default=100)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()

    import torch
    from tqdm.auto import tqdm

    from edit_data import load_saved
    from editor_nets import MendEditor
    from editor_nets.evaluate import in_scope_prompts, outside_scope
    from editor_nets.models import generate_answer, load_model
    from editor_nets.report import machine_info
    from editor_nets.scoring import score_targets
    from editor_nets.state import restoring

    model, tokenizer = load_model(str(args.run / "model"))
    records = load_saved(args.run / "data")["test"][: args.edits]
    if len(records) < args.edits:
        raise SystemExit(
            f"{args.run / 'data'} has {len(records)} test edits, fewer than --edits {args.edits}"
        )
    editor = MendEditor.from_pretrained(args.run / args.editor, model).eval()
    kind = editor.spec.kind
    if kind != "causal":
        raise SystemExit(
            f"{args.run / args.editor} edits a {kind} model; this benchmark decodes answers of causal models"
        )
    locality = [x for r in records for x in r.locality]
    keep = outside_scope(locality, in_scope_prompts(records))
    examples = [x for x, kept in zip(locality, keep.tolist(), strict=True) if kept]

    def hits() -> torch.Tensor:
        scores = score_targets(
            model, tokenizer, [x.prompt for x in examples], [x.answer for x in examples], kind=kind
        )
        return scores.exact

    start = time.perf_counter()
    longest = max(len(tokenizer(r.target, add_special_tokens=False)["input_ids"]) for r in records)
    with restoring(model) as keep_originals:
        before = hits()
        editor.start()
        for r in tqdm(records, desc=f"{args.editor}: edits in a row", unit="edit"):
            keep_originals(editor.edit(model, tokenizer, [r]))
        after = hits()
        broken = [x for x, b, a in zip(examples, before.tolist(), after.tolist(), strict=True) if b and not a]
        rows = []
        for x in tqdm(broken, desc="decoding broken answers", unit="answer"):
            decoded = generate_answer(model, tokenizer, x.prompt, max_new_tokens=longest + 1, kind=kind)
            rows.append(
                {
                    "prompt": x.prompt,
                    "answer": x.answer,
                    "now": decoded,
                    "class": classify(x.answer, decoded, records),
                }
            )
    counts = {name: sum(row["class"] == name for row in rows) for name in CLASSES}
    summary = {
        "machine": machine_info(),
        "run": str(args.run),
        "editor": args.editor,
        "edits": args.edits,
        "locality_examples": len(examples),
        "right_before": int(before.sum()),
        "broken": len(rows),
        "counts": counts,
        "seconds": time.perf_counter() - start,
        "examples": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"lifelong_spill_{args.run.name}"
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    title = f"{args.run.name}, {args.editor}: {len(rows)} of {int(before.sum())} locality answers broken by {args.edits} edits in a row"
    plot(counts, stem.with_suffix(".png"), title)
    print(title)
    for name in CLASSES:
        print(f"  {counts[name]:4d}  {name}")
    print(f"{stem}.json, {stem}.png ({summary['seconds']:.0f} s; {summary['machine']})")


if __name__ == "__main__":
    main()
