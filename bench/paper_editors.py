"""The MEND paper's other editors (KnowledgeEditor, ENN) and SERAC beside MEND on the default job's model and
held-out edits, without rerunning the whole job: trains KE (``JobConfig().ke``) on ``runs/default``'s
training edits on the trained MEND editor's layers, and ENN (``JobConfig().enn``) on a copy of the
model, and SERAC (``JobConfig().serac``: the MiniLM scope classifier and a counterfactual copy of
the model), then evaluates each with the main job's harness (single edits, 10 summed, 10 and 100 in a
row; ENN against its own copy). Needs ``runs/default`` (``bash scripts/train.sh``).

    python bench/paper_editors.py [--run runs/default] [--out bench/results]

Writes ``<out>/paper_editors.json``.
"""

from __future__ import annotations

import argparse
import copy
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
    from editor_nets.enn import enn_train
    from editor_nets.evaluate import evaluate_editors
    from editor_nets.knowledge_editor import train_knowledge_editor
    from editor_nets.pipeline import JobConfig
    from editor_nets.report import machine_info, results_table
    from editor_nets.serac import train_serac

    model = AutoModelForCausalLM.from_pretrained(args.run / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(args.run / "model")
    splits, config = load_saved(args.run / "data"), JobConfig()
    mend = MendEditor.from_pretrained(args.run / "editor", model)
    settings = dict(lifelong_checkpoints=(1, 10, 100))

    def trained(train, *a, **k) -> tuple:
        start = time.perf_counter()
        editor, log = train(*a, **k)
        return editor, {
            "steps": len(log),
            "seconds": time.perf_counter() - start,
            "first": log[0],
            "last": log[-1],
        }

    ke, ke_cost = trained(
        train_knowledge_editor, model, tokenizer, splits["train"], config.ke, targets=mend.targets
    )
    start = time.perf_counter()
    serac, serac_log = train_serac(
        model, tokenizer, splits["train"], config.serac, held_out=splits["validation"]
    )
    serac_cost = {
        "seconds": time.perf_counter() - start,
        "scope_accuracy_validation": serac_log["scope_accuracy_held_out"],
        "scope_last": serac_log["scope_loss"][-1],
        "cf_last": serac_log["cf_loss"][-1],
    }
    editors = {"MEND": mend, "KE": ke, "SERAC": serac}
    results = evaluate_editors(model, tokenizer, editors, splits["test"], **settings)
    enn_model = copy.deepcopy(model)
    enn, enn_cost = trained(
        enn_train, enn_model, tokenizer, splits["train"], config.enn, targets=mend.targets
    )
    on_copy = evaluate_editors(enn_model, tokenizer, {"ENN": enn}, splits["test"], **settings)
    results["methods"]["ENN"] = {**on_copy["methods"]["ENN"], "pre_edit": on_copy["pre_edit"]}
    results.update(machine=machine_info(), training={"KE": ke_cost, "ENN": enn_cost, "SERAC": serac_cost})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "paper_editors.json").write_text(json.dumps(results, indent=2) + "\n")
    print(results_table(results))
    print(f"ENN's own model before any edit: {on_copy['pre_edit']} (base: {results['pre_edit']})")
    print(
        f"training: KE {ke_cost['seconds']:.0f} s, ENN {enn_cost['seconds']:.0f} s, SERAC {serac_cost['seconds']:.0f} s"
    )
    print(f"SERAC scope classifier on validation pairs: {serac_cost['scope_accuracy_validation']}")
    print(f"wrote {args.out / 'paper_editors.json'}")


if __name__ == "__main__":
    main()
