"""KnowledgeEditor beside MEND on the default job's model and held-out edits, without rerunning
the whole job: trains KE (``JobConfig().ke``) on ``runs/default``'s training edits, on the trained
MEND editor's layers, and evaluates both (single edits, 10 summed, 10 and 100 in a row) on the test
split with the main job's harness. Needs ``runs/default`` (``bash scripts/train.sh``).

    python bench/ke_beside_mend.py [--run runs/default] [--out bench/results]

Writes ``<out>/ke_beside_mend.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "default")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edit_data import load_saved
    from editor_nets import MendEditor
    from editor_nets.evaluate import evaluate_editors
    from editor_nets.knowledge_editor import train_knowledge_editor
    from editor_nets.pipeline import JobConfig
    from editor_nets.report import machine_info, results_table

    model = AutoModelForCausalLM.from_pretrained(args.run / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(args.run / "model")
    splits = load_saved(args.run / "data")
    mend = MendEditor.from_pretrained(args.run / "editor", model)
    start = time.perf_counter()
    ke, log = train_knowledge_editor(model, tokenizer, splits["train"], JobConfig().ke, targets=mend.targets)
    summary = {"steps": len(log), "seconds": time.perf_counter() - start, "first": log[0], "last": log[-1]}
    results = evaluate_editors(
        model, tokenizer, {"MEND": mend, "KE": ke}, splits["test"], lifelong_checkpoints=(1, 10, 100)
    )
    results.update(machine=machine_info(), ke_training=summary, seconds=time.perf_counter() - start)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ke_beside_mend.json").write_text(json.dumps(results, indent=2) + "\n")
    print(results_table(results))
    print(f"wrote {args.out / 'ke_beside_mend.json'}")


if __name__ == "__main__":
    main()
