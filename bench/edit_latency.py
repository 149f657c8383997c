"""How fast is one MEND edit, and how much memory does the in-forward low-rank update save?

Three measurements, each compared with a baseline in the same run:

1. On a GPT-2-small-shaped model (random weights; 12 blocks, width 768, vocabulary 50257), the
   median time of one MEND edit (capture of ``(u, delta)``, editor networks, in-place apply)
   divided by the median time of one plain forward+backward on the same input (all
   parameters' gradients, as a fine-tuning step computes them). Target: at most 1.0, since
   MEND's backward stops at the first edited layer.
2. On a trained default model (``runs/default/`` when present, else a small one built here in a
   minute or two), the median time of one MEND edit divided by the median time FT takes to
   reach edit success (teacher-forced argmax of the target, the evaluation's definition) on the
   same held-out edits. Target: at most 0.1.
3. The peak memory of one meta-training step (meta-loss forward and backward into the editor,
   GPT-2-small shape) with the low-rank update applied inside the layers' forward versus a dense
   ``d_out x d_in`` update materialised per edited layer; each variant runs in its own process
   and its peak resident memory above the pre-step level is read from ``/proc`` (VmHWM after a
   reset through ``clear_refs``), after one warm-up step.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python bench/edit_latency.py`` (``--quick`` for a smoke run).
Writes ``bench/results/edit_latency.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def machine() -> dict:
    from editor_nets.report import machine_info

    return {**machine_info(), "device": "cpu"}


# ---------------------------------------------------------------------------------------------
# Models and edits


def _world(n_entities: int = 60, seed: int = 0):
    from edit_data import build_world, train_tokenizer

    world = build_world(n_entities=n_entities, seed=seed)
    return world, train_tokenizer(world.corpus)


def gpt2_small(seed: int = 0) -> nn.Module:
    """GPT-2-small shape with random weights, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024)
    return GPT2LMHeadModel(config).eval()


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def edit_vs_forward_backward(repeats: int, seed: int = 0) -> dict:
    """Median ms of one MEND edit and of one plain forward+backward on the same edit batch."""
    from editor_nets import MendEditor, edit_batch, restore_weights, target_nll

    world, tok = _world(seed=seed)
    model = gpt2_small(seed)
    editor = MendEditor.for_model(model).eval()
    records = world.records[: repeats + 3]
    batches = [edit_batch(model, tok, [r.prompt], [r.target]) for r in records]

    def fwd_bwd(batch) -> None:
        model.zero_grad(set_to_none=True)
        target_nll(model, batch).sum().backward()

    def mend_edit(record) -> None:
        snapshot = editor.edit(model, tok, [record])
        restore_weights(model, snapshot)

    fb, me = [], []
    for i, (record, batch) in enumerate(zip(records, batches, strict=True)):
        t_fb = _timed(lambda batch=batch: fwd_bwd(batch))
        model.zero_grad(set_to_none=True)
        t_me = _timed(lambda record=record: mend_edit(record))
        if i >= 3:  # warm-up
            fb.append(t_fb)
            me.append(t_me)
    n_tokens = [int(b["attention_mask"].sum()) for b in batches]
    return {
        "model": "gpt2-small shape (random weights)",
        "edited_layers": editor.targets,
        "editor_params": editor.n_parameters(),
        "tokens_per_edit_median": statistics.median(n_tokens),
        "repeats": len(me),
        "mend_edit_ms_median": statistics.median(me),
        "forward_backward_ms_median": statistics.median(fb),
        "ratio_edit_over_forward_backward": statistics.median(me) / statistics.median(fb),
        "target_ratio": 1.0,
    }


def _quick_default(out_dir: Path, seed: int = 0) -> Path:
    """A small trained default run (pre-trained GPT-2, meta-trained MEND) when runs/default is absent."""
    from edit_data import save_records, split_records
    from editor_nets import (
        MendConfig,
        MendEditor,
        MetaTrainConfig,
        PretrainConfig,
        meta_train,
        pretrain_causal_lm,
    )

    world, tok = _world(n_entities=40, seed=seed)
    model, _ = pretrain_causal_lm(
        world.corpus,
        tok,
        PretrainConfig(
            n_embd=64,
            n_layer=3,
            max_steps=800,
            batch_size=32,
            eval_every=200,
            target_accuracy=0.95,
            seed=seed,
        ),
        eval_prompts=[r.prompt for r in world.records],
        eval_answers=[r.original for r in world.records],
    )
    splits = split_records(world.records, seed=seed)
    editor = MendEditor.for_model(model, MendConfig(rank=256))
    meta_train(
        editor,
        model,
        tok,
        splits["train"],
        splits["validation"],
        MetaTrainConfig(steps=200, grad_accum=2, val_every=100, val_edits=20, seed=seed),
        out_dir / "editor",
    )
    model.save_pretrained(out_dir / "model")
    tok.save_pretrained(out_dir / "model")
    save_records(splits, out_dir / "data")
    return out_dir


def edit_vs_fine_tuning(run_dir: Path | None, n_edits: int, seed: int = 0) -> dict:
    """Median ms of one MEND edit vs the time FT takes to reach edit success, same edits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edit_data import load_saved
    from editor_nets.baselines import FTEditor
    from editor_nets.delta import restore_weights
    from editor_nets.evaluate import score_targets
    from editor_nets.mend import MendEditor

    source = str(run_dir)
    tmp = None
    if run_dir is None or not (run_dir / "editor" / "editor.safetensors").is_file():
        tmp = tempfile.TemporaryDirectory(prefix="edit_latency_")
        print(f"[bench] {run_dir} has no trained run; building a small default in {tmp.name} ...", flush=True)
        run_dir = _quick_default(Path(tmp.name), seed)
        source = "built by the bench (small, quick)"
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model").eval()
    tok = AutoTokenizer.from_pretrained(run_dir / "model")
    editor = MendEditor.from_pretrained(run_dir / "editor", model=model).eval()
    records = load_saved(run_dir / "data")["test"][:n_edits]
    ft = FTEditor(targets=editor.targets, max_steps=200)  # the evaluation's FT, more steps

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model: one thread, less exposed to other processes' load

    def best_of(editor_, record, tries: int = 3) -> tuple[float, bool]:
        """Fastest of ``tries`` timed edits of ``record`` (restored after each) and whether it hit."""
        times = []
        for _ in range(tries):
            start = time.perf_counter()
            snapshot = editor_.edit(model, tok, [record])
            times.append((time.perf_counter() - start) * 1000.0)
            hit = bool(score_targets(model, tok, [record.prompt], [record.target]).exact[0])
            restore_weights(model, snapshot)
        return min(times), hit

    for record in records[:2]:  # warm-up
        best_of(editor, record, 1)
        best_of(ft, record, 1)
    rows = []
    for record in records:
        t_mend, mend_hit = best_of(editor, record)
        t_ft, _ = best_of(ft, record)
        rows.append((t_mend, mend_hit, t_ft, ft.last.success, ft.last.steps))
    sweep = {}
    for lr in (1e-4, 1e-2):  # how the FT time depends on its learning rate
        other = FTEditor(targets=editor.targets, lr=lr, max_steps=200)
        times, hits, steps = [], [], []
        for record in records:
            times.append(best_of(other, record)[0])
            hits.append(other.last.success)
            steps.append(other.last.steps)
        sweep[str(lr)] = {
            "ft_to_success_ms_median": statistics.median(times),
            "ft_es_edit": sum(hits) / len(hits),
            "ft_steps_median": statistics.median(steps),
        }
    in_scope = ft_to_in_scope_success(model, tok, editor, records, [r[0] for r in rows])
    torch.set_num_threads(threads)
    both = [r for r in rows if r[1] and r[3]]
    used = both or rows
    mend_ms = statistics.median(r[0] for r in used)
    ft_ms = statistics.median(r[2] for r in used)
    if tmp is not None:
        tmp.cleanup()
    return {
        "model_source": source,
        "n_edits": len(rows),
        "n_edits_both_succeeded": len(both),
        "mend_es_edit": sum(r[1] for r in rows) / len(rows),
        "ft_es_edit": sum(r[3] for r in rows) / len(rows),
        "ft_steps_median": statistics.median(r[4] for r in rows),
        "ft_settings": {"lr": ft.lr, "max_steps": ft.max_steps, "optimizer": ft.optimizer},
        "mend_edit_ms_median": mend_ms,
        "ft_to_success_ms_median": ft_ms,
        "ratio_edit_over_ft": mend_ms / ft_ms,
        "ratio_over": "edits where both succeeded" if both else "all edits (none where both succeeded)",
        "target_ratio": 0.1,
        "timing": "fastest of 3 per edit, 1 torch thread; medians over edits",
        "ft_other_learning_rates": sweep,
        "in_scope": in_scope,
    }


def ft_to_in_scope_success(
    model: nn.Module, tok, editor, records, mend_ms: list[float], lr: float = 1e-3, max_steps: int = 200
) -> dict:
    """MEND's edit success counts the rephrasings too: time FT (the evaluation's FT, Adam on the
    edit prompt) until it answers as many in-scope prompts (edit prompt + rephrasings) with the new
    target as MEND's edit did, checking after every step (``FTEditor.until``; the checks are not
    timed). An edit FT does not bring there in ``max_steps`` counts with the time of those steps, a
    lower bound of its real time, so the ratio is then an upper bound."""
    from editor_nets.baselines import FTEditor
    from editor_nets.delta import restore_weights
    from editor_nets.evaluate import score_targets

    def hits(record) -> int:
        prompts = [record.prompt, *record.rephrases]
        return int(score_targets(model, tok, prompts, [record.target] * len(prompts)).exact.sum())

    rows = []
    for record, t_mend in zip(records, mend_ms, strict=True):  # MEND's time: fastest of 3, as above
        snapshot = editor.edit(model, tok, [record])
        goal = hits(record)
        restore_weights(model, snapshot)
        ft = FTEditor(
            targets=editor.targets,
            lr=lr,
            max_steps=max_steps,
            until=lambda r=record, g=goal: hits(r) >= g,
        )
        snapshot = ft.edit(model, tok, [record])
        reached = hits(record) >= goal
        restore_weights(model, snapshot)
        rows.append((t_mend, goal, ft.last.step_seconds * 1000.0, ft.last.steps, reached))
    mend_ms = statistics.median(r[0] for r in rows)
    ft_ms = statistics.median(r[2] for r in rows)
    return {
        "definition": "FT steps until as many in-scope prompts (edit prompt + rephrasings) hit as with MEND",
        "mend_in_scope_hits_mean": sum(r[1] for r in rows) / len(rows),
        "ft_reached": sum(r[4] for r in rows),
        "ft_not_reached_in_max_steps": sum(not r[4] for r in rows),
        "ft_max_steps": max_steps,
        "ft_lr": lr,
        "ft_steps_median": statistics.median(r[3] for r in rows),
        "mend_edit_ms_median": mend_ms,
        "ft_ms_median": ft_ms,
        "ratio_edit_over_ft": mend_ms / ft_ms,
        "ratio_is": "an upper bound" if any(not r[4] for r in rows) else "exact",
    }


# ---------------------------------------------------------------------------------------------
# Peak memory of one meta-training step (each variant in its own process)


@contextmanager
def dense_edit(model: nn.Module, delta):
    """Like ``editor_nets.lowrank_edit`` but materialising ``W' = W - alpha * delta~^T u~``
    ([d_out, d_in], in the layer's own layout) for every edited layer during the block."""
    from graddecomp.capture import _is_conv1d

    saved = {}
    try:
        for name, layer in delta.layers.items():
            module = model.get_submodule(name)
            dense = layer.alpha * (layer.delta.transpose(0, 1) @ layer.u)  # [d_out, d_in]
            if _is_conv1d(module):
                dense = dense.transpose(0, 1)  # Conv1D stores [d_in, d_out]
            saved[name] = module._parameters["weight"]
            module._parameters["weight"] = saved[name] - dense.to(saved[name].dtype)
        yield model
    finally:
        for name, weight in saved.items():
            model.get_submodule(name)._parameters["weight"] = weight


def memory_child(variant: str, seed: int = 0) -> dict:
    """One meta-training step's peak memory above the pre-step resident size (run in a fresh process)."""
    from editor_nets import EditDelta, LayerDelta, MendEditor, MetaTrainConfig, lowrank_edit, meta_loss
    from editor_nets.plan import ResidentPeak, TensorPeak

    world, tok = _world(seed=seed)
    model = gpt2_small(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    editor = MendEditor.for_model(model).train()
    config = MetaTrainConfig()
    rng = random.Random(seed)
    edit_forward = dense_edit if variant == "dense" else lowrank_edit

    def step(records, forward=edit_forward) -> None:
        loss, _, _ = meta_loss(editor, model, tok, records, config, rng, edit_forward=forward)
        loss.backward()

    step(world.records[:1])  # warm-up: lazy initialisation, editor grads allocated
    editor.zero_grad(set_to_none=False)  # keep the grad buffers: both variants need them alike
    gc.collect()
    with ResidentPeak() as rss:
        start = time.perf_counter()
        step(world.records[1:2])
        seconds = time.perf_counter() - start
    editor.zero_grad(set_to_none=False)
    with TensorPeak() as tensors:  # the same step again, counting tensor storage exactly
        step(world.records[1:2])

    # The edited-model part alone: the editor's outputs become leaves, so backward stops at
    # u~, delta~ and alpha and the editor networks' own backward (same in both variants) is left out.
    def as_leaves(model, delta):
        leaves = {
            n: LayerDelta(*(t.detach().requires_grad_() for t in (x.u, x.delta, x.alpha)))
            for n, x in delta.layers.items()
        }
        return edit_forward(model, EditDelta(leaves))

    with TensorPeak() as model_part:
        step(world.records[1:2], as_leaves)
    return {
        "variant": variant,
        "tensor_peak_mib": tensors.peak / 2**20,
        "tensor_peak_without_editor_backward_mib": model_part.peak / 2**20,
        "rss_peak_above_base_mib": rss.above / 2**20,  # allocator-dependent, for reference
        "base_rss_mib": rss.base / 2**20,
        "hwm_reset": rss.reset,
        "step_seconds": seconds,
        "editor_params": editor.n_parameters(),
    }


def memory_ratio(seed: int = 0) -> dict:
    out = {}
    for variant in ("lowrank", "dense"):
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", variant, "--seed", str(seed)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"memory child {variant} failed:\n{proc.stderr[-3000:]}")
        out[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    d_out_in = [(3072, 768), (768, 3072)] * 3
    out["dense_update_bytes_theory"] = sum(a * b * 4 for a, b in d_out_in)
    out["ratio_lowrank_over_dense"] = out["lowrank"]["tensor_peak_mib"] / out["dense"]["tensor_peak_mib"]
    out["ratio_without_editor_backward"] = (
        out["lowrank"]["tensor_peak_without_editor_backward_mib"]
        / out["dense"]["tensor_peak_without_editor_backward_mib"]
    )
    return out


# ---------------------------------------------------------------------------------------------


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels = [k for k in ("latency", "fine_tuning", "memory") if k in results]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        r = results[key]
        if key == "latency":
            labels, values = (
                ["MEND edit", "fwd+bwd"],
                [r["mend_edit_ms_median"], r["forward_backward_ms_median"]],
            )
            title, unit = f"GPT-2-small shape: ratio {r['ratio_edit_over_forward_backward']:.2f}", "ms"
        elif key == "fine_tuning":
            labels, values = (
                ["MEND edit", "FT to success"],
                [r["mend_edit_ms_median"], r["ft_to_success_ms_median"]],
            )
            title = f"trained default: ratio {r['ratio_edit_over_ft']:.3f}"
            if "in_scope" in r:
                labels.append("FT to MEND's\nin-scope success")
                values.append(r["in_scope"]["ft_ms_median"])
                title += f" (in-scope: {r['in_scope']['ratio_edit_over_ft']:.3f})"
            unit = "ms"
        else:
            lo, de = r["lowrank"], r["dense"]
            labels = ["step: low-rank", "step: dense", "model part: low-rank", "model part: dense"]
            values = [lo["tensor_peak_mib"], de["tensor_peak_mib"]]
            values += [
                lo["tensor_peak_without_editor_backward_mib"],
                de["tensor_peak_without_editor_backward_mib"],
            ]
            title = (
                f"meta-step peak tensor memory: ratio {r['ratio_lowrank_over_dense']:.2f}\n"
                f"(model part, no editor backward: {r['ratio_without_editor_backward']:.2f})"
            )
            unit = "MiB"
        bars = ax.bar(labels, values, color=["tab:blue", "tab:orange"] * (len(values) // 2))
        ax.tick_params(axis="x", labelsize=7, rotation=15)
        ax.bar_label(bars, fmt="%.1f")
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed edits / forward+backward passes")
    parser.add_argument("--n-edits", type=int, default=20, help="held-out edits for the FT comparison")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "default")
    parser.add_argument("--out", type=Path, default=RESULTS / "edit_latency.json")
    parser.add_argument("--skip", nargs="*", default=[], choices=["latency", "fine_tuning", "memory"])
    parser.add_argument("--quick", action="store_true", help="few repeats (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-child", choices=["lowrank", "dense"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.seed)))
        return {}
    if args.quick:
        args.repeats, args.n_edits = 4, 5

    results: dict = {"machine": machine()}
    print("[bench] machine:", json.dumps(results["machine"]))
    if args.skip and args.out.is_file():  # a partial run keeps the other sections of the last run
        previous = json.loads(args.out.read_text())
        results.update({k: v for k, v in previous.items() if k in args.skip})
    stamp = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_avg_1m": os.getloadavg()[0],
    }
    if "latency" not in args.skip:
        r = results["latency"] = {**edit_vs_forward_backward(args.repeats, args.seed), **stamp}
        print(
            f"[bench] GPT-2-small shape, {r['tokens_per_edit_median']} tokens: MEND edit "
            f"{r['mend_edit_ms_median']:.1f} ms / forward+backward {r['forward_backward_ms_median']:.1f} ms "
            f"= {r['ratio_edit_over_forward_backward']:.3f} (target <= 1.0)"
        )
    if "fine_tuning" not in args.skip:
        r = results["fine_tuning"] = {**edit_vs_fine_tuning(args.run_dir, args.n_edits, args.seed), **stamp}
        print(
            f"[bench] trained default ({r['model_source']}): MEND edit {r['mend_edit_ms_median']:.2f} ms "
            f"(ES {r['mend_es_edit']:.2f}) / FT to success {r['ft_to_success_ms_median']:.1f} ms "
            f"(ES {r['ft_es_edit']:.2f}, median {r['ft_steps_median']} steps) = {r['ratio_edit_over_ft']:.4f} "
            f"(target <= 0.1; over {r['ratio_over']})"
        )
        q = r["in_scope"]
        print(
            f"[bench] same in-scope success as MEND (prompt + rephrasings): MEND {q['mend_edit_ms_median']:.2f} ms "
            f"/ FT {q['ft_ms_median']:.1f} ms (median {q['ft_steps_median']} steps; {q['ft_not_reached_in_max_steps']} "
            f"of {r['n_edits']} edits not reached in {q['ft_max_steps']} steps) = {q['ratio_edit_over_ft']:.4f} "
            f"({q['ratio_is']}; target <= 0.1)"
        )
    if "memory" not in args.skip:
        r = results["memory"] = {**memory_ratio(args.seed), **stamp}
        lo, de = r["lowrank"], r["dense"]
        print(
            f"[bench] meta-step peak tensor memory: low-rank {lo['tensor_peak_mib']:.1f} MiB / dense "
            f"{de['tensor_peak_mib']:.1f} MiB = {r['ratio_lowrank_over_dense']:.3f}; without the editor "
            f"networks' own backward: {lo['tensor_peak_without_editor_backward_mib']:.1f} / "
            f"{de['tensor_peak_without_editor_backward_mib']:.1f} MiB = {r['ratio_without_editor_backward']:.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(f"[bench] wrote {args.out} and {args.out.with_suffix('.png')}")
    return results


if __name__ == "__main__":
    main()
