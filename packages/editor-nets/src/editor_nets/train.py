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

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from editor_nets.delta import EditDelta, LayerDelta, applied, apply_delta, lowrank_edit
from editor_nets.evaluate import in_scope_prompts, outside_scope
from editor_nets.mend import MendEditor, edit_factors
from editor_nets.scoring import answer_logits, edit_batch, kl_divergence, score_batch
from editor_nets.state import WeightSnapshot, eval_mode, frozen, restore_weights, restoring

if TYPE_CHECKING:
    from edit_data import EditRecord

__all__ = ["MetaTrainConfig", "meta_loss", "meta_train", "validate_editor"]

STATE_NAME = "train_state.pt"


@dataclass
class MetaTrainConfig:
    """Meta-training settings. ``steps`` counts optimizer steps (each ``grad_accum`` edit batches).

    Two ways to practise sequential editing: ``max_prior_edits`` makes each training edit on top
    of 0..k earlier training edits applied for that step only; ``sequence_length`` (the lifelong
    editor's) edits one live model step after step, as in use, and starts again from the base
    weights after that many edits; the last ``n_keep`` edits of the sequence must keep their
    answers (their prompts join the locality prompts). ``c_norm`` weighs the squared Frobenius
    norm of the update in the loss."""

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
    sequence_length: int = 0
    n_keep: int = 4
    c_norm: float = 0.0
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


def meta_loss(
    editor: MendEditor,
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[EditRecord],
    config: MetaTrainConfig,
    rng: random.Random,
    *,
    keep: Sequence[EditRecord] = (),
    edit_forward: Callable = lowrank_edit,
) -> tuple[Tensor, dict[str, float], EditDelta]:
    """The meta-loss of one (batched) edit of ``records``, differentiable in the editor.

    ``keep`` are earlier edits already applied to ``model`` (sequential editing): their prompts join
    the locality prompts, so the new edit must keep them answering their new targets.
    ``edit_forward(model, delta)`` runs the edited model (default ``lowrank_edit``; benchmarks pass
    a dense variant to compare memory). Returns ``(loss, stats, delta)``: ``stats`` holds (as
    detached 0-d tensors, so that ``edit-plan`` can trace it on the meta device) ``nll``,
    ``kl``, ``es`` (in-scope exact match), ``loc_acc`` (post-edit agreement with the pre-edit argmax)
    and ``norm`` (of the update); ``delta`` is the edit (differentiable)."""
    kind = editor.spec.kind
    batch = edit_batch(model, tokenizer, [r.prompt for r in records], [r.target for r in records], kind=kind)
    delta = editor.transform(edit_factors(model, batch, editor.targets, kind=kind))
    in_batch = edit_batch(model, tokenizer, *_in_scope(records, config.n_rephrases, rng), kind=kind)
    n_hard = config.n_hard_locality if config.hard_locality else 0
    loc_p, loc_a = _out_of_scope(records, config.n_locality, n_hard, rng)
    loc_p, loc_a = loc_p + [r.prompt for r in keep], loc_a + [r.target for r in keep]
    loc_batch = edit_batch(model, tokenizer, loc_p, loc_a, kind=kind) if loc_p else None
    with torch.no_grad():
        pre_loc = answer_logits(model, loc_batch, kind=kind).logits if loc_batch else None

    with edit_forward(model, delta):
        scores = score_batch(model, in_batch, kind=kind)
        nll, es = scores.mean_nll.mean(), scores.exact.float().mean()
        if loc_batch is not None:
            post_loc = answer_logits(model, loc_batch, kind=kind).logits
            kl = kl_divergence(pre_loc, post_loc).mean()
            loc_acc = (post_loc.argmax(-1) == pre_loc.argmax(-1)).float().mean()
        else:
            kl, loc_acc = nll.new_zeros(()), nll.new_ones(())
    loss = config.c_edit * nll + config.c_loc * kl
    squared_norm = delta.squared_norm()
    if config.c_norm:
        loss = loss + config.c_norm * squared_norm
    stats = {"nll": nll, "kl": kl, "es": es, "loc_acc": loc_acc, "norm": squared_norm.sqrt()}
    return loss, {k: v.detach() for k, v in stats.items()}, delta


@torch.no_grad()
def validate_editor(
    editor: MendEditor,
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[EditRecord],
    *,
    n_sequential: int = 0,
) -> dict[str, float]:
    """Single edits (functional, the model never changes) on ``records``.

    Returns ``es_edit``, ``es_rephrase`` (exact match of the new target), ``loc_acc_pre``,
    ``loc_acc_post`` and ``dd_locality`` (true-answer accuracy before minus after). With
    ``n_sequential``, also ``es_sequential`` and ``dd_sequential``: disjoint runs of
    ``n_sequential`` records, each edited one after another in place (then restored bitwise),
    edit-prompt success over all of them, and the drawdown over the locality prompts of all of them
    (those in scope of an edit of the run left out, as in ``editor_nets.evaluate``)."""
    kind = editor.spec.kind
    hits_edit, hits_reph, loc_pre, loc_post = [], [], [], []
    pre_of: dict[int, Tensor] = {}  # record index -> its locality hits before any edit
    with eval_mode(editor):
        for i, r in enumerate(records):
            delta = editor.compute_delta(model, tokenizer, [r])  # as edits are made (in steps, with ridge)
            prompts = [r.prompt, *r.rephrases]
            in_batch = edit_batch(model, tokenizer, prompts, [r.target] * len(prompts), kind=kind)
            loc_p, loc_a = [x.prompt for x in r.locality], [x.answer for x in r.locality]
            loc_batch = edit_batch(model, tokenizer, loc_p, loc_a, kind=kind) if loc_p else None
            if loc_batch is not None:
                pre_of[i] = score_batch(model, loc_batch, kind=kind).exact
                loc_pre.append(pre_of[i])
            with applied(model, delta):
                hit = score_batch(model, in_batch, kind=kind).exact
                if loc_batch is not None:
                    loc_post.append(score_batch(model, loc_batch, kind=kind).exact)
            hits_edit.append(hit[:1])
            hits_reph.append(hit[1:])
        out = {
            "es_edit": _share(hits_edit),
            "es_rephrase": _share(hits_reph),
            "loc_acc_pre": _share(loc_pre),
            "loc_acc_post": _share(loc_post),
        }
        out["dd_locality"] = out["loc_acc_pre"] - out["loc_acc_post"]
        if n_sequential and records:
            k = min(n_sequential, len(records))
            starts = range(0, len(records) - k + 1, k)  # disjoint runs, as in evaluation
            hits, seq_pre, seq_post = [], [], []
            for start in starts:
                run = list(records[start : start + k])
                scope = in_scope_prompts(run)
                loc, pre = [], []  # the run's locality examples outside its scope, their hits before
                for i, r in enumerate(run, start):
                    if r.locality:
                        keep = outside_scope(r.locality, scope)
                        loc += [x for x, kept in zip(r.locality, keep.tolist(), strict=True) if kept]
                        pre.append(pre_of[i][keep])
                loc_batch = (
                    edit_batch(model, tokenizer, [x.prompt for x in loc], [x.answer for x in loc], kind=kind)
                    if loc
                    else None
                )
                if loc_batch is not None:
                    seq_pre += pre
                editor.start()
                with restoring(model) as keep_original:
                    for r in run:
                        keep_original(editor.edit(model, tokenizer, [r]))
                    batch = edit_batch(
                        model, tokenizer, [r.prompt for r in run], [r.target for r in run], kind=kind
                    )
                    hits.append(score_batch(model, batch, kind=kind).exact)
                    if loc_batch is not None:
                        seq_post.append(score_batch(model, loc_batch, kind=kind).exact)
            out["es_sequential"] = _share(hits)
            if seq_pre:
                out["dd_sequential"] = _share(seq_pre) - _share(seq_post)
            editor.start()
    return out


def _share(hits: Sequence[Tensor]) -> float:
    """The share of ``True`` over boolean tensors (0 when there are none)."""
    n = sum(len(h) for h in hits)
    return float(sum(int(h.sum()) for h in hits)) / max(1, n)


def _prior_records(
    train_records: Sequence[EditRecord], current: Sequence[EditRecord], max_prior: int, rng: random.Random
) -> list[EditRecord]:
    """0..``max_prior`` other training records (other subjects) to edit before the current edit."""
    if max_prior <= 0:
        return []
    subjects = {r.subject for r in current}
    pool = [r for r in train_records if r.subject not in subjects or r.subject is None]
    return rng.sample(pool, min(rng.randint(0, max_prior), len(pool)))


# Checkpoint selection ranks first by edit-prompt success up to this floor, then by ``_score``: an
# editor that misses its own edit prompts is never kept for a low drawdown (on the real-facts world
# the drawdown term once picked a step whose validation edit success was 0.075).
ES_EDIT_FLOOR = 0.9


def _score(val: dict[str, float]) -> float:
    """Model selection: in-scope success minus five times the locality drawdown (a drawdown of 0.02
    weighs as much as 0.1 of rephrase success), for single edits and, when measured, for edits in a
    row (where single-edit drawdown is often 0 at every checkpoint and cannot tell them apart)."""
    score = val["es_rephrase"] + 0.5 * val["es_edit"] - 5.0 * max(0.0, val["dd_locality"])
    return score + 0.5 * val.get("es_sequential", 0.0) - 5.0 * max(0.0, val.get("dd_sequential", 0.0))


def _rank(val: dict[str, float]) -> tuple[float, float]:
    """What checkpoint selection maximises: ``(min(es_edit, ES_EDIT_FLOOR), _score)``, compared in
    that order, so a checkpoint below the floor never beats one at or above it."""
    return min(val["es_edit"], ES_EDIT_FLOOR), _score(val)


def _optimizer(editor: MendEditor, config: MetaTrainConfig) -> torch.optim.Adam:
    """Adam with three groups: the networks, the ``keep_mean`` gates, the step sizes ``alpha``."""
    gates = [p for n, p in editor.named_parameters() if n.endswith("keep_mean")]
    nets = [p for n, p in editor.named_parameters() if n != "alpha" and not n.endswith("keep_mean")]
    return torch.optim.Adam(
        [
            {"params": nets, "lr": config.lr},
            {"params": gates, "lr": config.lr_gate},
            {"params": [editor.alpha], "lr": config.lr_alpha},
        ]
    )


def _lr_factor(config: MetaTrainConfig) -> Callable[[int], float]:
    """With ``cosine_decay`` every group's rate decays to 10% of its own over ``steps``."""
    if not config.cosine_decay:
        return lambda step: 1.0
    return lambda step: 0.1 + 0.45 * (1 + math.cos(math.pi * step / max(1, config.steps)))


@dataclass
class _LiveSequence:
    """The training edits applied to the live model so far (``sequence_length`` mode)."""

    records: list = field(default_factory=list)
    originals: WeightSnapshot = field(default_factory=dict)

    def push(
        self, model: nn.Module, editor: MendEditor, records: Sequence[EditRecord], delta: EditDelta
    ) -> None:
        """Apply ``delta`` (detached) to the live model; its keys join the editor's memory."""
        done = EditDelta(
            {
                n: LayerDelta(x.u.detach(), x.delta.detach(), float(x.alpha), x.keys)
                for n, x in delta.layers.items()
            }
        )
        for name, value in apply_delta(model, done).items():
            self.originals.setdefault(name, value)
        editor.memory = editor.memory.with_edit(done)
        self.records += records

    def reset(self, model: nn.Module, editor: MendEditor) -> None:
        """Back to the base weights and an empty memory."""
        restore_weights(model, self.originals)
        self.records, self.originals = [], {}
        editor.start()


def _train_step(
    editor: MendEditor,
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[EditRecord],
    config: MetaTrainConfig,
    rng: random.Random,
    opt: torch.optim.Optimizer,
    live: _LiveSequence,
) -> dict[str, float] | None:
    """One optimizer step over ``grad_accum`` edit batches. Each is made on top of 0..``max_prior_edits``
    earlier training edits applied in place for it (restored bitwise after the backward pass) or, with
    ``sequence_length``, on the live sequence, which it then joins. Returns the averaged stats, or
    ``None`` (and leaves the editor unchanged) when a loss or the gradient is not finite."""
    opt.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    for _ in range(config.grad_accum):
        if config.sequence_length:
            if len(live.records) >= config.sequence_length:
                live.reset(model, editor)
            used = {r.subject for r in live.records}
            pool = [r for r in records if r.subject is None or r.subject not in used] or list(records)
            batch = rng.sample(pool, min(config.edit_batch_size, len(pool)))
            keep = live.records[-config.n_keep :] if config.n_keep else []
            loss, stats, delta = meta_loss(editor, model, tokenizer, batch, config, rng, keep=keep)
            if not torch.isfinite(loss):
                opt.zero_grad(set_to_none=True)
                live.reset(model, editor)
                return None
            (loss / config.grad_accum).backward()  # before the edit joins the live model
            live.push(model, editor, batch, delta)
        else:
            batch = rng.sample(list(records), min(config.edit_batch_size, len(records)))
            prior = _prior_records(records, batch, config.max_prior_edits, rng)
            editor.start()  # the prior edits' keys join the editor's memory (ridge aggregation)
            with restoring(model) as keep_originals:
                for r in prior:
                    keep_originals(editor.edit(model, tokenizer, [r]))
                loss, stats, _ = meta_loss(editor, model, tokenizer, batch, config, rng, keep=prior)
                if not torch.isfinite(loss):
                    opt.zero_grad(set_to_none=True)
                    editor.start()
                    return None
                (loss / config.grad_accum).backward()  # before restoring: the graph holds the edited weights
            editor.start()
        for k, v in {"loss": loss.detach(), **stats}.items():
            sums[k] = sums.get(k, 0.0) + float(v) / config.grad_accum
    grad_norm = torch.nn.utils.clip_grad_norm_(editor.parameters(), config.max_grad_norm)
    if not torch.isfinite(grad_norm):
        opt.zero_grad(set_to_none=True)
        return None
    opt.step()
    return {**sums, "grad_norm": float(grad_norm), "alpha_mean": float(editor.alpha.detach().mean())}


@dataclass
class _Progress:
    """What the loop carries from step to step (and across ``--resume``)."""

    step: int = 0
    best: tuple[float, ...] = ()  # the best ``_rank`` so far (every rank beats the empty tuple)
    best_val: dict | None = None
    bad_evals: int = 0
    skipped: int = 0


def _save_state(path: Path, progress: _Progress, editor: MendEditor, opt: torch.optim.Optimizer, rng) -> None:
    state = {"progress": progress.__dict__, "editor": editor.state_dict(), "optimizer": opt.state_dict()}
    torch.save({**state, "python_rng": rng.getstate(), "torch_rng": torch.get_rng_state()}, path)


def _load_state(path: Path, editor: MendEditor, opt: torch.optim.Optimizer, rng) -> _Progress:
    state = torch.load(path, weights_only=False)
    editor.load_state_dict(state["editor"])
    opt.load_state_dict(state["optimizer"])
    rng.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    saved = state["progress"]
    if not isinstance(saved.get("best"), (tuple, list)):  # a state saved before ranks were tuples
        saved = {**saved, "best": ()}
    return _Progress(**saved)


def meta_train(
    editor: MendEditor,
    model: nn.Module,
    tokenizer: Any,
    train_records: Sequence[EditRecord],
    val_records: Sequence[EditRecord],
    config: MetaTrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    log: Callable[[dict], None] | None = None,
) -> dict:
    """Meta-train ``editor`` for ``model`` (frozen); keep the best editor in ``out_dir``.

    Writes ``out_dir/config.json`` + ``editor.safetensors`` (best so far) and ``out_dir/train_state.pt``
    (resume point); ``log`` gets one row per log step and validation. With ``resume``, continues
    from ``train_state.pt``. Returns the best validation metrics, the steps run, skipped non-finite
    steps and the seconds taken. The editor is left holding the best weights, in eval mode."""
    if not train_records:
        raise ValueError("meta_train needs at least one training record")
    out_dir, log = Path(out_dir), log or (lambda row: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    rng, opt = random.Random(config.seed), _optimizer(editor, config)
    state_file, progress = out_dir / STATE_NAME, _Progress()
    if resume and state_file.is_file():
        progress = _load_state(state_file, editor, opt, rng)
    # last_epoch: a resumed run takes the rate of its next step from this config's schedule
    sched = LambdaLR(opt, _lr_factor(config), last_epoch=progress.step - 1)
    val_set, t0, ema, stopped_early = list(val_records)[: config.val_edits], time.perf_counter(), {}, False
    bar = tqdm(range(progress.step, config.steps), desc=f"meta-train {editor.name}", unit="step", dynamic_ncols=True,
               initial=progress.step, total=config.steps)  # fmt: skip
    live = _LiveSequence()
    with frozen(model), eval_mode(model), eval_mode(editor, training=True):
        try:
            for step in bar:
                progress.step = step + 1
                stats = _train_step(editor, model, tokenizer, train_records, config, rng, opt, live)
                if stats is None:
                    progress.skipped += 1
                    log({"step": step + 1, "skipped": True, "reason": "non-finite loss or gradient"})
                else:
                    ema = {k: v if k not in ema else 0.9 * ema[k] + 0.1 * v for k, v in stats.items()}
                    bar.set_postfix(
                        loss=f"{ema['loss']:.3f}", es=f"{ema['es']:.2f}", loc=f"{ema['loc_acc']:.2f}"
                    )
                    if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
                        log(
                            {
                                "step": step + 1,
                                "phase": "meta-train",
                                **stats,
                                "seconds": time.perf_counter() - t0,
                            }
                        )
                if val_set and ((step + 1) % config.val_every == 0 or step + 1 == config.steps):
                    live.reset(model, editor)  # validation starts from the base weights
                    _validate(editor, model, tokenizer, val_set, config, progress, out_dir, log)
                    _save_state(state_file, progress, editor, opt, rng)
                sched.step()
                if progress.bad_evals >= config.patience:
                    stopped_early = True
                    break
        finally:
            live.reset(model, editor)
    bar.close()
    if progress.best_val is not None and (out_dir / "editor.safetensors").is_file():
        editor.load_state_dict(MendEditor.from_pretrained(out_dir).state_dict())
    else:
        editor.save_pretrained(out_dir)
    editor.eval()
    return {
        "steps": progress.step,
        "stopped_early": stopped_early,
        "skipped_steps": progress.skipped,
        "best_validation": progress.best_val,
        "seconds": time.perf_counter() - t0,
    }


def _validate(editor, model, tokenizer, val_set, config, progress: _Progress, out_dir: Path, log) -> None:
    """Validate, keep the editor in ``out_dir`` when it is the best so far, log and print the row."""
    val = validate_editor(editor, model, tokenizer, val_set, n_sequential=config.val_sequential)
    rank = _rank(val)
    improved = rank > tuple(progress.best)
    if improved:
        progress.best, progress.best_val, progress.bad_evals = rank, val, 0
        editor.save_pretrained(out_dir)
    else:
        progress.bad_evals += 1
    log({"step": progress.step, "phase": "validation", **val, "score": rank[1], "best": improved})
    tqdm.write(
        f"[val step {progress.step}] ES edit {val['es_edit']:.3f}  ES rephrase {val['es_rephrase']:.3f}  "
        f"DD {val['dd_locality']:+.3f}"
        + (f"  ES sequential {val['es_sequential']:.3f}" if "es_sequential" in val else "")
        + (f"  DD sequential {val['dd_sequential']:+.3f}" if "dd_sequential" in val else "")
        + ("  (best)" if improved else "")
    )
