"""100 edits in a row through the sidecar, measured through Generate, then rollback and restart.

    python bench/serve_lifelong.py [--run runs/default] [--editor lifelong] [--edits 100]

``--editor``: a folder of the run (``lifelong``, ``editor`` = plain MEND, ``serac``) or an editor
without training (``grace``, ``editcache``); the memory editors are served as their entries.

Starts ``edit-serve`` on loopback with the run's model and editor, sends the first ``--edits``
held-out test edits one ``Edit`` call at a time, and after every 10 measures through greedy
``Generate``: the share of all edits so far whose prompt now gives the new target, and the share
of their locality prompts (those not in scope of an edit so far) whose answer is unchanged. Then
it rolls back edit 50 and checks that its prompt returns to its earlier answer while the other
edits hold, restarts the sidecar and checks the weights digest. The library's own figures for
the same edits in the same order (``report.json``'s lifelong curve) are put beside the served
ones. Writes ``bench/results/serve_lifelong.json`` and ``.png`` (``serve_lifelong_<editor>.*`` for
another editor than ``lifelong``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import TOKEN, Assets, free_port, start_sidecar, stop_sidecar, wait_ready

# --editor -> the method's name in report.json
METHODS = {
    "lifelong": "LifelongMEND",
    "editor": "MEND",
    "serac": "SERAC",
    "grace": "GRACE",
    "editcache": "EditCache",
}


def answers(client, prompts: list[str], targets: list[str], tokenizer) -> list[str]:
    from edit_serve import SamplingParams

    out = []
    for p, t in zip(prompts, targets, strict=True):
        n = len(tokenizer(" " + t, add_special_tokens=False)["input_ids"])
        out.append(client.generate(p, SamplingParams(max_new_tokens=n)).text.strip())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/default"))
    parser.add_argument(
        "--editor", default="lifelong", choices=sorted(METHODS), help="what the sidecar serves"
    )
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from edit_data import load_saved
    from edit_serve import EditClient
    from editor_nets.evaluate import in_scope_prompts
    from editor_nets.report import machine_info

    records = load_saved(args.run / "data")["test"][: args.edits]
    tokenizer = AutoTokenizer.from_pretrained(str(args.run / "model"))
    from edit_serve.loading import UNTRAINED_EDITORS

    editor_dir = Path(args.editor) if args.editor in UNTRAINED_EDITORS else args.run / args.editor
    assets = Assets(args.run / "model", editor_dir, str(args.run), [])
    journal = Path(tempfile.mkdtemp()) / "journal"
    port, log = free_port(), Path(tempfile.mkdtemp()) / "sidecar.log"
    address = f"127.0.0.1:{port}"
    proc = start_sidecar(assets, journal, port, log, 8)
    curve, result = [], {"machine": machine_info(), "run": str(args.run), "editor": args.editor}
    try:
        wait_ready(proc, address, log)
        with EditClient(address, token=TOKEN, timeout=300.0) as c:
            loc = [(x.prompt, x.answer) for r in records for x in r.locality]
            before_loc = dict(
                zip(loc, answers(c, [p for p, _ in loc], [a for _, a in loc], tokenizer), strict=True)
            )
            before_edit = answers(c, [r.prompt for r in records], [r.target for r in records], tokenizer)
            ids = []
            for k, r in enumerate(records, 1):
                ids.append(c.edit(r.prompt, r.target, subject=r.subject or "").edit_id)
                if k % 10 == 0 or k == len(records):
                    done = records[:k]
                    got = answers(c, [x.prompt for x in done], [x.target for x in done], tokenizer)
                    scope = in_scope_prompts(done)
                    kept = [(p, a) for x in done for p, a in [(y.prompt, y.answer) for y in x.locality]
                            if " ".join(p.lower().split()) not in scope]  # fmt: skip
                    now = answers(c, [p for p, _ in kept], [a for _, a in kept], tokenizer)
                    es = sum(g == x.target for g, x in zip(got, done, strict=True)) / k
                    unchanged = sum(n == before_loc[pa] for n, pa in zip(now, kept, strict=True)) / max(
                        1, len(kept)
                    )
                    curve.append({"n_edits": k, "es_edit": es, "locality_unchanged": unchanged})
                    print(f"after {k:3d} edits: ES {es:.3f}  locality unchanged {unchanged:.3f}", flush=True)
            j = min(49, len(ids) - 1)
            c.rollback(edit_id=ids[j])
            after = answers(c, [r.prompt for r in records], [r.target for r in records], tokenizer)
            others = [a == r.target for i, (a, r) in enumerate(zip(after, records, strict=True)) if i != j]
            result["rollback"] = {
                "edit": j + 1,
                "its_prompt_back_to_earlier_answer": after[j] == before_edit[j],
                "others_still_hold": sum(others) / len(others),
                "others_held_before": curve[-1]["es_edit"],
            }
            digest = c.health(weights_digest=True).weights_sha256
        stop_sidecar(proc)
        proc = start_sidecar(assets, journal, port, log, 8)
        wait_ready(proc, address, log)
        with EditClient(address, token=TOKEN, timeout=300.0) as c:
            result["restart_digest_equal"] = c.health(weights_digest=True).weights_sha256 == digest
    finally:
        stop_sidecar(proc)
    report = json.loads((args.run / "report.json").read_text())
    library = {p["n_edits"]: p for p in report["methods"][METHODS[args.editor]]["lifelong"]["sequential"]}
    for point in curve:
        if point["n_edits"] in library:
            lib = library[point["n_edits"]]
            point["library_es_edit"] = lib["es_edit"]
            point["library_locality_kept"] = 1.0 - lib["dd_locality"]  # pre-edit locality accuracy is 1 here
    result["curve"] = curve
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "serve_lifelong" if args.editor == "lifelong" else f"serve_lifelong_{args.editor}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    xs = [p["n_edits"] for p in curve]
    ax.plot(xs, [p["es_edit"] for p in curve], marker="o", label="served: ES (Generate)")
    ax.plot(xs, [p["locality_unchanged"] for p in curve], marker="o", label="served: locality unchanged")
    lib = [p for p in curve if "library_es_edit" in p]
    ax.scatter(
        [p["n_edits"] for p in lib], [p["library_es_edit"] for p in lib], marker="x", s=80, label="library ES"
    )
    ax.set_xlabel("edits in a row")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    ax.set_title(f"{METHODS[args.editor]} served over gRPC", fontsize=9)
    fig.savefig(args.out / f"{stem}.png", dpi=110)
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}, indent=2))


if __name__ == "__main__":
    main()
