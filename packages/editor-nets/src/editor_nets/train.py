"""The MEND meta-training loop, readable top to bottom.

Each step samples a batch of edits, captures the edit gradient's factors on the frozen base
model, maps them through the editor, and evaluates the edited model functionally (the
low-rank update is added inside each edited layer's forward) on

* the in-scope prompts (edit prompt + rephrasings) -> ``NLL(new target)`` (edit loss), and
* the locality prompts -> ``KL(pre-edit || post-edit)`` at the answer positions.

``loss = c_edit * NLL + c_loc * KL`` is back-propagated into the editor networks and the
per-layer step sizes ``alpha`` (own parameter group, own learning rate).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from editor_nets.delta import lowrank_edit, restore_weights
from editor_nets.families import answer_logits, edit_batch
from editor_nets.mend import MendEditor, edit_factors

if TYPE_CHECKING:
    from edit_data import EditRecord

__all__ = ["MetaTrainConfig", "meta_loss", "meta_train", "validate_editor"]

STATE_NAME = "train_state.pt"


@dataclass
class MetaTrainConfig:
    """Meta-training settings. ``steps`` counts optimizer steps (each ``grad_accum`` edit batches)."""

    steps: int = 600
    edit_batch_size: int = 1
    grad_accum: int = 4
    lr: float = 1e-3
    lr_alpha: float = 1e-2
    lr_gate: float = 1e-2
    c_edit: float = 0.1
    c_loc: float = 1.0
    max_grad_norm: float = 10.0
    n_rephrases: int = 3
    n_locality: int = 3
    hard_locality: bool = True
    n_hard_locality: int = 1
    log_every: int = 10
    val_every: int = 100
    val_edits: int = 40
    val_sequential: int = 10
    max_prior_edits: int = 0
    patience: int = 4
    cosine_decay: bool = False
    seed: int = 0


def _in_scope(
    records: Sequence[EditRecord], n_rephrases: int, rng: random.Random
) -> tuple[list[str], list[str]]:
    prompts, targets = [], []
    for r in records:
        reph = list(r.rephrases)
        rng.shuffle(reph)
        for p in [r.prompt, *reph[:n_rephrases]]:
            prompts.append(p)
            targets.append(r.target)
    return prompts, targets


def _out_of_scope(
    records: Sequence[EditRecord], n_locality: int, n_hard: int, rng: random.Random
) -> tuple[list[str], list[str]]:
    prompts, answers = [], []
    for r in records:
        pool = list(r.locality)
        rng.shuffle(pool)
        chosen = pool[:n_locality]
        if n_hard and r.hard_locality:
            chosen = [*chosen, *rng.sample(r.hard_locality, min(n_hard, len(r.hard_locality)))]
        for x in chosen:
            prompts.append(x.prompt)
            answers.append(x.answer)
    return prompts, answers


def _exact_match(logits: Tensor, labels: Tensor, rows: Tensor, n: int) -> Tensor:
    """``[n]`` bool: every answer token of the example is the argmax."""
    wrong = torch.zeros(n, dtype=torch.long, device=labels.device).index_add(
        0, rows, (logits.argmax(-1) != labels).long()
    )
    return wrong == 0


def meta_loss(
    editor: MendEditor,
    model: nn.Module,
    tokenizer,
    records: Sequence[EditRecord],
    config: MetaTrainConfig,
    rng: random.Random,
    *,
    keep: Sequence[EditRecord] = (),
) -> tuple[Tensor, dict[str, float]]:
    """The meta-loss of one (batched) edit of ``records``, differentiable in the editor.

    ``keep`` are earlier edits already applied to ``model`` (sequential editing): their prompts join
    the locality prompts, so the new edit must keep them answering their new targets.
    Returns ``(loss, stats)`` with ``stats`` holding ``nll``, ``kl``, ``es`` (in-scope exact match)
    and ``loc_acc`` (post-edit locality agreement with the pre-edit argmax)."""
    kind = editor.config.kind
    batch = edit_batch(model, tokenizer, [r.prompt for r in records], [r.target for r in records], kind=kind)
    factors = edit_factors(model, batch, editor.config.targets, kind=kind)
    updates = editor.transform(factors)

    in_p, in_t = _in_scope(records, config.n_rephrases, rng)
    in_batch = edit_batch(model, tokenizer, in_p, in_t, kind=kind)
    n_hard = config.n_hard_locality if config.hard_locality else 0
    loc_p, loc_a = _out_of_scope(records, config.n_locality, n_hard, rng)
    loc_p, loc_a = loc_p + [r.prompt for r in keep], loc_a + [r.target for r in keep]
    loc_batch = edit_batch(model, tokenizer, loc_p, loc_a, kind=kind) if loc_p else None
    with torch.no_grad():
        pre_loc = answer_logits(model, loc_batch, kind=kind)[0].float() if loc_batch else None

    with lowrank_edit(model, updates):
        logits, labels, rows = answer_logits(model, in_batch, kind=kind)
        tok_nll = F.cross_entropy(logits.float(), labels, reduction="none")
        n_in = len(in_p)
        per_ex = tok_nll.new_zeros(n_in).index_add(0, rows, tok_nll) / tok_nll.new_zeros(n_in).index_add(
            0, rows, torch.ones_like(tok_nll)
        ).clamp_min(1)
        nll = per_ex.mean()
        es = _exact_match(logits.detach(), labels, rows, n_in).float().mean()
        if loc_batch is not None:
            post_loc = answer_logits(model, loc_batch, kind=kind)[0].float()
            pre_logp = F.log_softmax(pre_loc, -1)
            kl = (pre_logp.exp() * (pre_logp - F.log_softmax(post_loc, -1))).sum(-1).mean()
            loc_acc = (post_loc.argmax(-1) == pre_loc.argmax(-1)).float().mean()
        else:
            kl, loc_acc = torch.zeros(()), torch.ones(())
    loss = config.c_edit * nll + config.c_loc * kl
    stats = {"nll": float(nll.detach()), "kl": float(kl.detach()), "es": float(es), "loc_acc": float(loc_acc)}
    return loss, stats


@torch.no_grad()
def validate_editor(
    editor: MendEditor, model: nn.Module, tokenizer, records: Sequence[EditRecord], *, n_sequential: int = 0
) -> dict[str, float]:
    """Single edits (functional, the model never changes) on ``records``.

    Returns ``es_edit``, ``es_rephrase`` (exact match of the new target), ``loc_acc_pre``,
    ``loc_acc_post`` and ``dd_locality`` (true-answer accuracy before minus after). With
    ``n_sequential``, also ``es_sequential``: disjoint runs of ``n_sequential`` records, each edited
    one after another in place (then restored bitwise), edit-prompt success over all of them."""
    was_training = editor.training
    editor.eval()
    kind = editor.config.kind
    es_edit, es_reph, n_reph, loc_pre, loc_post, n_loc = 0.0, 0.0, 0, 0.0, 0.0, 0
    for r in records:
        batch = edit_batch(model, tokenizer, [r.prompt], [r.target], kind=kind)
        factors = edit_factors(model, batch, editor.config.targets, kind=kind)
        updates = editor.transform(factors)
        prompts = [r.prompt, *r.rephrases]
        in_batch = edit_batch(model, tokenizer, prompts, [r.target] * len(prompts), kind=kind)
        loc = r.locality
        loc_batch = (
            edit_batch(model, tokenizer, [x.prompt for x in loc], [x.answer for x in loc], kind=kind)
            if loc
            else None
        )
        if loc_batch is not None:
            pre = _exact_match(*answer_logits(model, loc_batch, kind=kind), len(loc))
        with lowrank_edit(model, updates):
            hit = _exact_match(*answer_logits(model, in_batch, kind=kind), len(prompts))
            if loc_batch is not None:
                post = _exact_match(*answer_logits(model, loc_batch, kind=kind), len(loc))
        es_edit += float(hit[0])
        es_reph += float(hit[1:].sum())
        n_reph += len(prompts) - 1
        if loc_batch is not None:
            loc_pre += float(pre.sum())
            loc_post += float(post.sum())
            n_loc += len(loc)
    n = max(1, len(records))
    out = {
        "es_edit": es_edit / n,
        "es_rephrase": es_reph / max(1, n_reph),
        "loc_acc_pre": loc_pre / max(1, n_loc),
        "loc_acc_post": loc_post / max(1, n_loc),
    }
    out["dd_locality"] = out["loc_acc_pre"] - out["loc_acc_post"]
    if n_sequential and records:
        records = list(records)
        k = min(n_sequential, len(records))
        hits = []
        for start in range(0, len(records) - k + 1, k):  # disjoint runs, as in the evaluation
            run = records[start : start + k]
            snapshot: dict = {}
            try:
                for r in run:
                    for key, value in editor.edit(model, tokenizer, [r]).items():
                        snapshot.setdefault(key, value)
                batch = edit_batch(
                    model, tokenizer, [r.prompt for r in run], [r.target for r in run], kind=kind
                )
                hits.append(_exact_match(*answer_logits(model, batch, kind=kind), len(run)).float())
            finally:
                restore_weights(model, snapshot)
        out["es_sequential"] = float(torch.cat(hits).mean())
    editor.train(was_training)
    return out


def _prior_records(
    train_records: Sequence[EditRecord], current: Sequence[EditRecord], max_prior: int, rng: random.Random
) -> list[EditRecord]:
    """0..``max_prior`` other training records (other subjects) to edit before the current edit."""
    if max_prior <= 0:
        return []
    subjects = {r.subject for r in current}
    pool = [r for r in train_records if r.subject not in subjects or r.subject is None]
    return rng.sample(pool, min(rng.randint(0, max_prior), len(pool)))


@torch.no_grad()
def _apply_prior_edits(editor: MendEditor, model: nn.Module, tokenizer, prior: Sequence[EditRecord]) -> dict:
    """Edit ``model`` in place with the current editor, one record after another (sequential
    editing); returns the snapshot that undoes all of them."""
    snapshot: dict = {}
    try:
        for r in prior:
            for key, value in editor.edit(model, tokenizer, [r]).items():
                snapshot.setdefault(key, value)
    except BaseException:
        restore_weights(model, snapshot)
        raise
    return snapshot


def _score(val: dict[str, float]) -> float:
    """Model selection: in-scope success (and sequential success when measured) minus five times
    the locality drawdown (a drawdown of 0.02 weighs as much as 0.1 of rephrase success)."""
    score = val["es_rephrase"] + 0.5 * val["es_edit"] - 5.0 * max(0.0, val["dd_locality"])
    return score + 0.5 * val.get("es_sequential", 0.0)


def meta_train(
    editor: MendEditor,
    model: nn.Module,
    tokenizer,
    train_records: Sequence[EditRecord],
    val_records: Sequence[EditRecord],
    config: MetaTrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    log: Callable[[dict], None] | None = None,
    metrics_path: str | Path | None = None,
) -> dict:
    """Meta-train ``editor`` for ``model`` (frozen); keep the best editor in ``out_dir``.

    Writes ``out_dir/config.json`` + ``editor.safetensors`` (best so far), ``out_dir/train_state.pt``
    (resume point) and one JSON line per log/validation to ``metrics_path`` (appended; default
    ``out_dir/metrics.jsonl``, started afresh unless resuming); ``log`` also gets each row. With
    ``resume``, continues from ``train_state.pt``. Returns a summary with the best validation
    metrics, the number of steps run, skipped non-finite steps and the seconds taken. The editor
    is left holding the best weights."""
    if not train_records:
        raise ValueError("meta_train needs at least one training record")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = Path(metrics_path) if metrics_path is not None else out_dir / "metrics.jsonl"
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model.eval()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    gates = [p for n, p in editor.named_parameters() if n.endswith("keep_mean")]
    net_params = [p for n, p in editor.named_parameters() if n != "alpha" and not n.endswith("keep_mean")]
    opt = torch.optim.Adam(
        [
            {"params": net_params, "lr": config.lr},
            {"params": gates, "lr": config.lr_gate},
            {"params": [editor.alpha], "lr": config.lr_alpha},
        ]
    )
    val_set = list(val_records)[: config.val_edits]
    start, best, best_val, bad_evals, skipped = 0, -math.inf, None, 0, 0
    state_file = out_dir / STATE_NAME
    if resume and state_file.is_file():
        state = torch.load(state_file, weights_only=False)
        editor.load_state_dict(state["editor"])
        opt.load_state_dict(state["optimizer"])
        start, best, best_val = state["step"], state["best"], state["best_val"]
        bad_evals, skipped = state["bad_evals"], state["skipped"]
        rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
    elif metrics_path is None and metrics_file.exists():
        metrics_file.unlink()  # a fresh run owns its default metrics file

    def write(row: dict) -> None:
        with metrics_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if log is not None:
            log(row)

    editor.config.training = asdict(config)
    t0 = time.perf_counter()
    editor.train()
    ema: dict[str, float] = {}
    bar = tqdm(
        range(start, config.steps),
        desc="meta-train MEND",
        unit="step",
        dynamic_ncols=True,
        initial=start,
        total=config.steps,
    )
    done = start
    stopped_early = False
    base_lrs = [config.lr, config.lr_gate, config.lr_alpha]  # the groups' order; not the resumed state's
    try:
        for step in bar:
            done = step + 1
            if config.cosine_decay:  # every group's rate decays to 10% of its own over `steps`
                factor = 0.1 + 0.45 * (1 + math.cos(math.pi * step / max(1, config.steps)))
                for group, base in zip(opt.param_groups, base_lrs, strict=True):
                    group["lr"] = base * factor
            opt.zero_grad(set_to_none=True)
            stats_sum: dict[str, float] = {}
            finite = True
            for _ in range(config.grad_accum):
                records = rng.sample(list(train_records), min(config.edit_batch_size, len(train_records)))
                prior = _prior_records(train_records, records, config.max_prior_edits, rng)
                snapshot = _apply_prior_edits(editor, model, tokenizer, prior)
                try:  # backward before restoring: the graph holds the edited weights
                    loss, stats = meta_loss(editor, model, tokenizer, records, config, rng, keep=prior)
                    if torch.isfinite(loss):
                        (loss / config.grad_accum).backward()
                finally:
                    restore_weights(model, snapshot)
                if not torch.isfinite(loss):
                    finite = False
                    break
                for k, v in {"loss": float(loss.detach()), **stats}.items():
                    stats_sum[k] = stats_sum.get(k, 0.0) + v / config.grad_accum
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(editor.parameters(), config.max_grad_norm) if finite else None
            )
            if not finite or grad_norm is None or not torch.isfinite(grad_norm):
                skipped += 1
                opt.zero_grad(set_to_none=True)
                write({"step": step + 1, "skipped": True, "reason": "non-finite loss or gradient"})
                continue
            opt.step()
            for k, v in stats_sum.items():
                ema[k] = v if k not in ema else 0.9 * ema[k] + 0.1 * v
            bar.set_postfix(loss=f"{ema['loss']:.3f}", es=f"{ema['es']:.2f}", loc=f"{ema['loc_acc']:.2f}")
            if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
                write(
                    {
                        "step": step + 1,
                        "phase": "meta-train",
                        **stats_sum,
                        "grad_norm": float(grad_norm),
                        "alpha_mean": float(editor.alpha.detach().mean()),
                        "seconds": time.perf_counter() - t0,
                    }
                )
            if val_set and ((step + 1) % config.val_every == 0 or step + 1 == config.steps):
                val = validate_editor(editor, model, tokenizer, val_set, n_sequential=config.val_sequential)
                score = _score(val)
                improved = score > best
                if improved:
                    best, best_val, bad_evals = score, val, 0
                    editor.save_pretrained(out_dir)
                else:
                    bad_evals += 1
                write({"step": step + 1, "phase": "validation", **val, "score": score, "best": improved})
                tqdm.write(
                    f"[val step {step + 1}] ES edit {val['es_edit']:.3f}  ES rephrase {val['es_rephrase']:.3f}  "
                    f"DD {val['dd_locality']:+.3f}"
                    + (f"  ES sequential {val['es_sequential']:.3f}" if "es_sequential" in val else "")
                    + ("  (best)" if improved else "")
                )
                torch.save(
                    {
                        "step": step + 1,
                        "editor": editor.state_dict(),
                        "optimizer": opt.state_dict(),
                        "best": best,
                        "best_val": best_val,
                        "bad_evals": bad_evals,
                        "skipped": skipped,
                        "python_rng": rng.getstate(),
                        "torch_rng": torch.get_rng_state(),
                    },
                    state_file,
                )
                if bad_evals >= config.patience:
                    stopped_early = True
                    break
    finally:
        bar.close()
        for p in frozen:
            p.requires_grad_(True)
    if best_val is not None and (out_dir / "editor.safetensors").is_file():
        best_editor = MendEditor.from_pretrained(out_dir)
        editor.load_state_dict(best_editor.state_dict())
    else:
        editor.save_pretrained(out_dir)
    editor.eval()
    return {
        "steps": done,
        "stopped_early": stopped_early,
        "skipped_steps": skipped,
        "best_validation": best_val,
        "seconds": time.perf_counter() - t0,
    }
