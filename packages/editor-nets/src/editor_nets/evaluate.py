"""Evaluation of editors: edit success, drawdown, latency, in single, batched and sequential modes.

Public API (for the pipeline and the CLI)::

    evaluate_editors(model, tokenizer, editors: dict[str, Editor], records, *,
                     modes=("single", "batched", "sequential"), batch_size=10, n_sequential=10,
                     progress=True, score_batch_size=32, verify_restore=True, on_result=None,
                     on_edit_error="count") -> dict
        # {"methods": {name: {single-mode metrics..., "batched": {...}, "sequential": {...}}},
        #  "settings": {...}, "pre_edit": {...}}
    evaluate_editor(model, tokenizer, editor, records, *, mode="single", ...) -> dict
    pre_edit_scores(model, tokenizer, records, *, score_batch_size=32, progress=False) -> list[RecordScores]
    editor_size(editor) -> dict[str, int]      # {"editor_params", "editor_bytes"}

Scores come from ``editor_nets.scoring`` (``score_targets``, ``TargetScores``).

Definitions (the MEND paper's, teacher-forced):

* A target is *hit* when the argmax of the model's logits equals the target token at every
  target position, with the gold prefix fed in (teacher forcing). For a classifier the
  target is a label and a hit is a label flip to it. Token accuracy is the fraction of
  target tokens predicted.
* ES (edit success): the fraction of edits whose target is hit on the edit prompt
  (``es_edit``) and, separately, on the in-scope rephrasings (``es_rephrase``: per edit the
  fraction of its rephrasings hit, averaged over edits that have rephrasings).
* DD (drawdown): accuracy of the locality answers before the edit minus after it, pooled
  over every locality example of every edit (``dd_locality``), and separately for the hard
  locality examples (``dd_hard_locality``). Positive means the edit broke something. When
  several edits are made together (batched, sequential, lifelong), a locality prompt that is in
  scope of another of them (the same question as its prompt or a rephrasing) is left out: its
  answer was meant to change.
  ``dd_ppl_locality`` is the locality answers' perplexity after minus before (positive =
  worse); for ``"generation"`` records it is the main locality measure.
* Modes: ``single`` edits one record at a time and restores the model (bitwise) after each;
  ``batched`` applies one update for ``batch_size`` records; ``sequential`` applies
  ``n_sequential`` edits one after another, then scores all of them, then restores.
* Latency: wall time of ``editor.edit`` per edit (a batched edit's time is divided by its
  size), median and 90th percentile in milliseconds. ``seconds`` is the wall time of a whole
  mode (edits, scoring and restores), and of ``lifelong`` as a whole: what the evaluation costs.
"""

from __future__ import annotations

import contextlib
import math
import random
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from editor_nets.delta import Editor
from editor_nets.models import model_kind
from editor_nets.report import percentile
from editor_nets.scoring import TargetScores, score_targets
from editor_nets.state import WeightSnapshot, eval_mode, restoring, weights_digest

__all__ = [
    "MODES",
    "RecordScores",
    "editor_size",
    "evaluate_editor",
    "evaluate_editors",
    "lifelong_curves",
    "pre_edit_scores",
]

MODES = ("single", "batched", "sequential")


# --------------------------------------------------------------------------------------------
# Scores of records


@dataclass
class RecordScores:
    """Scores of one record's prompts under one state of the model."""

    record: Any
    edit: TargetScores  # [1]: the edit prompt with the new target
    rephrase: TargetScores  # [n_rephrases]: in-scope rephrasings with the new target
    locality: TargetScores  # [n_locality]: out-of-scope prompts with their own answers
    hard_locality: TargetScores  # [n_hard]


def _normalise(prompt: str) -> str:
    return " ".join(prompt.lower().split())


def in_scope_prompts(records: Sequence[Any]) -> frozenset[str]:
    """The normalised edit prompts and rephrasings of ``records``."""
    return frozenset(_normalise(p) for r in records for p in (r.prompt, *r.rephrases))


def outside_scope(examples: Sequence[Any], scope: frozenset[str]) -> torch.Tensor:
    """``[len(examples)]`` bool: which locality ``examples`` have a prompt outside ``scope``
    (:func:`in_scope_prompts` of the edits made together): what drawdown counts."""
    return torch.tensor([_normalise(x.prompt) not in scope for x in examples], dtype=torch.bool)


_GROUPS = ("edit", "rephrase", "locality", "hard_locality")


def _record_pairs(record: Any) -> list[tuple[str, str, str]]:
    pairs = [("edit", record.prompt, record.target)]
    pairs += [("rephrase", p, record.target) for p in record.rephrases]
    pairs += [("locality", ex.prompt, ex.answer) for ex in record.locality]
    pairs += [("hard_locality", ex.prompt, ex.answer) for ex in record.hard_locality]
    return pairs


def score_records(
    model: nn.Module, tokenizer: Any, records: Sequence[Any], *, kind: str, batch_size: int = 32
) -> list[RecordScores]:
    """:class:`RecordScores` of each record, all prompts scored in shared batches."""
    pairs = [(i, *p) for i, r in enumerate(records) for p in _record_pairs(r)]
    scores = score_targets(
        model, tokenizer, [p[2] for p in pairs], [p[3] for p in pairs], kind=kind, batch_size=batch_size
    )
    out = []
    pos = 0
    for i in range(len(records)):
        groups: dict[str, list[int]] = {g: [] for g in _GROUPS}
        while pos < len(pairs) and pairs[pos][0] == i:
            groups[pairs[pos][1]].append(pos)
            pos += 1
        sel = {
            g: TargetScores(*(t[idx] for t in (scores.correct, scores.n_tokens, scores.nll)))
            for g, idx in groups.items()
        }
        out.append(RecordScores(records[i], **sel))
    return out


def pre_edit_scores(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[Any],
    *,
    score_batch_size: int = 32,
    progress: bool = False,
) -> list[RecordScores]:
    """Scores of every record on the unedited model (the "before" of drawdown)."""
    kind = model_kind(model)
    out: list[RecordScores] = []
    chunk = max(1, score_batch_size // 4)
    for i in tqdm(range(0, len(records), chunk), desc="pre-edit scores", disable=not progress, unit="chunk"):
        out += score_records(model, tokenizer, records[i : i + chunk], kind=kind, batch_size=score_batch_size)
    return out


@dataclass
class _Tally:
    """Running sums over the edits of one (editor, mode)."""

    es_edit: list[float] = field(default_factory=list)
    token_acc_edit: list[float] = field(default_factory=list)
    es_rephrase: list[float] = field(default_factory=list)
    token_acc_rephrase: list[float] = field(default_factory=list)
    loc_before: list[float] = field(default_factory=list)
    loc_after: list[float] = field(default_factory=list)
    hard_before: list[float] = field(default_factory=list)
    hard_after: list[float] = field(default_factory=list)
    loc_nll: list[float] = field(default_factory=lambda: [0.0, 0.0])  # before, after (summed)
    loc_tokens: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, before: RecordScores, after: RecordScores, in_scope: frozenset[str] = frozenset()) -> None:
        """Count one record; its locality prompts that are in scope of an edit of the same run
        (``in_scope``: normalised edit prompts and rephrasings) are left out: their answers were
        meant to change."""
        self.es_edit += after.edit.exact.float().tolist()
        self.token_acc_edit += after.edit.token_acc.tolist()
        if len(after.rephrase):
            self.es_rephrase.append(after.rephrase.exact.double().mean().item())
            self.token_acc_rephrase.append(after.rephrase.token_acc.double().mean().item())
        loc = outside_scope(before.record.locality, in_scope)
        hard = outside_scope(before.record.hard_locality, in_scope)
        self.loc_before += before.locality.exact[loc].float().tolist()
        self.loc_after += after.locality.exact[loc].float().tolist()
        self.hard_before += before.hard_locality.exact[hard].float().tolist()
        self.hard_after += after.hard_locality.exact[hard].float().tolist()
        self.loc_nll[0] += before.locality.nll[loc].sum().item()
        self.loc_nll[1] += after.locality.nll[loc].sum().item()
        self.loc_tokens += int(after.locality.n_tokens[loc].sum())

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_edits": len(self.es_edit),
            "es_edit": _mean(self.es_edit),
            "token_acc_edit": _mean(self.token_acc_edit),
            "es_rephrase": _mean(self.es_rephrase),
            "token_acc_rephrase": _mean(self.token_acc_rephrase),
            "locality_acc_before": _mean(self.loc_before),
            "locality_acc_after": _mean(self.loc_after),
            "dd_locality": _diff(self.loc_before, self.loc_after),
            "hard_locality_acc_before": _mean(self.hard_before),
            "hard_locality_acc_after": _mean(self.hard_after),
            "dd_hard_locality": _diff(self.hard_before, self.hard_after),
            "n_locality": len(self.loc_after),
            "n_hard_locality": len(self.hard_after),
            "n_failed_edits": len(self.failures),
        }
        if self.failures:
            out["first_failure"] = self.failures[0]
        if self.loc_tokens:
            ppl_before = math.exp(min(self.loc_nll[0] / self.loc_tokens, 700.0))
            ppl_after = math.exp(min(self.loc_nll[1] / self.loc_tokens, 700.0))
            out.update(ppl_locality_before=ppl_before, ppl_locality_after=ppl_after)
            out["dd_ppl_locality"] = ppl_after - ppl_before
        if self.latencies_ms:
            lat = sorted(self.latencies_ms)
            out["edit_latency_ms_median"] = statistics.median(lat)
            out["edit_latency_ms_p90"] = percentile(lat, 90)
        out["n_timed_edits"] = len(self.latencies_ms)
        return out


def _mean(xs: Sequence[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


def _diff(before: Sequence[float], after: Sequence[float]) -> float | None:
    return float((sum(before) - sum(after)) / len(after)) if after else None


# --------------------------------------------------------------------------------------------
# Editing under evaluation


def _check_unchanged(model: nn.Module, reference: dict[str, str], who: str) -> None:
    changed = [n for n, digest in _digests(model).items() if digest != reference[n]]
    if changed:
        raise RuntimeError(
            f"editor {who!r} left {len(changed)} parameter(s) changed after restoring its snapshot "
            f"(first: {changed[:3]}); an editor must return the originals of every weight it touches"
        )


def _digests(model: nn.Module) -> dict[str, str]:
    return {name: weights_digest(model, [name]) for name, _ in model.named_parameters()}


# Errors with which an editor rejects an edit (non-finite values, norm bound, bad input); by
# contract such a failed edit changes nothing.
EDIT_ERRORS = (ValueError, ArithmeticError)


def _timed_edit(
    editor: Editor, model: nn.Module, tokenizer: Any, records: Sequence[Any], tally: _Tally, on_error: str
) -> WeightSnapshot:
    """Run one (batched) edit; record its latency per edit, or count it failed."""
    cuda = next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    try:
        snapshot = editor.edit(model, tokenizer, list(records))
    except EDIT_ERRORS as err:
        if on_error == "raise":
            raise
        if not tally.failures:
            warnings.warn(f"edit failed and is counted as such: {type(err).__name__}: {err}", stacklevel=3)
        tally.failures.append(f"{type(err).__name__}: {err}"[:300])
        return {}
    if cuda:
        torch.cuda.synchronize()
    tally.latencies_ms.append((time.perf_counter() - start) * 1000.0 / len(records))
    return snapshot


def _given_or_scored(pre, model: nn.Module, tokenizer: Any, records: Sequence[Any], batch_size: int) -> list:
    """The records' pre-edit scores: ``pre`` when given, computed otherwise."""
    return (
        list(pre)
        if pre is not None
        else pre_edit_scores(model, tokenizer, records, score_batch_size=batch_size)
    )


def _attached(editor: Editor, model: nn.Module) -> contextlib.AbstractContextManager:
    """Memory-based editors (SERAC, GRACE, the edit cache) act on the model only inside
    ``editor.attached(model)``; weight editors need nothing."""
    attached = getattr(editor, "attached", None)
    return attached(model) if attached is not None else contextlib.nullcontext()


def _start(editor: Editor) -> None:
    """A new sequence of edits on the base weights: stateful editors forget earlier edits."""
    if hasattr(editor, "start"):
        editor.start()


LIFELONG_METRICS = ("es_edit", "es_rephrase", "dd_locality", "n_locality", "n_failed_edits")


def lifelong_curves(
    model: nn.Module,
    tokenizer: Any,
    editor: Editor,
    records: Sequence[Any],
    *,
    checkpoints: Sequence[int] = (1, 10, 30, 100),
    batch_sizes: Sequence[int] = (10, 100),
    orders: int = 1,
    pre: Sequence[RecordScores] | None = None,
    score_batch_size: int = 32,
    progress: bool = True,
    name: str | None = None,
    on_edit_error: str = "count",
) -> dict[str, list[dict[str, Any]]]:
    """Many edits on one model. ``sequential``: ``records`` edited one after another without
    restoring; after ``k`` edits (each of ``checkpoints`` up to ``len(records)``) ES on all ``k``
    edits so far (edit prompts and rephrasings) and DD over all their locality prompts.
    ``batched``: the first ``b`` records in one call. The model is restored afterwards.

    With ``orders`` > 1 the sequential curve is also measured on ``orders - 1`` shuffles of
    ``records`` (``random.Random(i)``, ``i = 1, 2, ...``): one order's figures at 100 edits vary by
    0.1-0.2 of ES with which edits come first, so comparisons need several. ``sequential`` stays
    the given order's curve; ``orders`` lists every order's and ``sequential_mean`` their mean
    per checkpoint."""
    name = name or getattr(editor, "name", type(editor).__name__)
    started = time.perf_counter()
    kind = model_kind(model)
    pre = _given_or_scored(pre, model, tokenizer, records, score_batch_size)
    checkpoints = sorted({k for k in checkpoints if 0 < k <= len(records)})
    out: dict[str, Any] = {"sequential": [], "batched": []}

    def scored(chosen: Sequence[Any], chosen_pre: Sequence[RecordScores], tally: _Tally) -> dict[str, Any]:
        after = score_records(model, tokenizer, chosen, kind=kind, batch_size=score_batch_size)
        in_scope = in_scope_prompts(chosen)
        for before, scores in zip(chosen_pre, after, strict=True):
            tally.add(before, scores, in_scope)
        summary = tally.summary()
        return {key: summary[key] for key in LIFELONG_METRICS}

    def sequential(order: list[int], label: str) -> list[dict[str, Any]]:
        curve, tally = [], _Tally()
        _start(editor)
        with restoring(model) as keep, tqdm(total=checkpoints[-1], desc=label, disable=not progress, unit="edit") as bar:  # fmt: skip
            for i, j in enumerate(order[: checkpoints[-1]]):
                keep(_timed_edit(editor, model, tokenizer, [records[j]], tally, on_edit_error))
                bar.update(1)
                if i + 1 in checkpoints:
                    done = order[: i + 1]
                    point = scored([records[k] for k in done], [pre[k] for k in done], _Tally(failures=list(tally.failures)))  # fmt: skip
                    curve.append({"n_edits": i + 1, **point})
                    bar.set_postfix(es=f"{point['es_edit']:.2f}", dd=f"{point['dd_locality']:.3f}")
        return curve

    with eval_mode(model), _attached(editor, model):
        if checkpoints:
            curves = [sequential(list(range(len(records))), f"{name} lifelong")]
            for o in range(1, orders):
                shuffled = list(range(len(records)))
                random.Random(o).shuffle(shuffled)
                curves.append(sequential(shuffled, f"{name} lifelong, order {o + 1}/{orders}"))
            out["sequential"] = curves[0]
            if orders > 1:
                out["orders"] = curves
                out["sequential_mean"] = [
                    {"n_edits": points[0]["n_edits"], **{m: _mean([p[m] for p in points if p[m] is not None]) for m in LIFELONG_METRICS}}
                    for points in zip(*curves, strict=True)
                ]  # fmt: skip
        for b in sorted({b for b in batch_sizes if 0 < b <= len(records)}):
            tally = _Tally()
            _start(editor)
            with restoring(model) as keep:
                keep(_timed_edit(editor, model, tokenizer, list(records[:b]), tally, on_edit_error))
                out["batched"].append({"batch_size": b, **scored(records[:b], pre[:b], tally)})
    _start(editor)
    out["seconds"] = time.perf_counter() - started
    return out


def editor_size(editor: Any) -> dict[str, Any]:
    """Trainable size of an editor: parameter count and bytes of parameters and buffers
    (about its checkpoint size; SERAC's: its classifier and counterfactual model). Editors that
    are not modules (FT) have size 0; those with key
    statistics (ROME, MEMIT, AlphaEdit) add their one-off cost and what they were taken over
    (``key_statistics``: ``n_texts``, ``n_tokens``, ``seconds``, ``cached``, ...)."""
    stats = getattr(editor, "statistics", None)
    # SERAC is made of several networks (``parts``); FT and the memory editors of none
    parts = getattr(editor, "parts", (editor,) if isinstance(editor, nn.Module) else ())
    tensors = [t for m in parts for t in (*m.parameters(), *m.buffers())]
    out: dict[str, Any] = {
        "editor_params": int(sum(p.numel() for m in parts for p in m.parameters())),
        "editor_bytes": int(sum(t.numel() * t.element_size() for t in tensors)),
    }
    return out if stats is None else {**out, "key_statistics": stats.summary()}


def _groups(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def evaluate_editor(
    model: nn.Module,
    tokenizer: Any,
    editor: Editor,
    records: Sequence[Any],
    *,
    mode: str = "single",
    batch_size: int = 10,
    n_sequential: int = 10,
    progress: bool = True,
    pre: Sequence[RecordScores] | None = None,
    score_batch_size: int = 32,
    verify_restore: bool = True,
    name: str | None = None,
    on_edit_error: str = "count",
) -> dict[str, Any]:
    """Evaluate one editor in one mode; the model is left bitwise as it was.

    ``single``: one edit per record, restored after each. ``batched``: groups of
    ``batch_size`` records edited with one update each. ``sequential``: disjoint runs of
    ``n_sequential`` records edited one after another without restoring, scored after the
    last edit of a run, restored at its end (every full run, or one shorter run when there are
    fewer records). ``pre`` are the records' :func:`pre_edit_scores` (computed when missing).
    An edit the editor rejects with ``ValueError``/``ArithmeticError`` (it must then have changed
    nothing) is counted in ``n_failed_edits`` and its records scored on the model as it is, with
    ``on_edit_error="count"``; ``"raise"`` re-raises.
    Returns the summary dict described in the module docstring.
    """
    if mode not in MODES:
        raise ValueError(f"unknown evaluation mode {mode!r}; expected one of {MODES}")
    if on_edit_error not in ("count", "raise"):
        raise ValueError(f"on_edit_error must be 'count' or 'raise', got {on_edit_error!r}")
    if not records:
        raise ValueError("evaluate_editor needs at least one record")
    name = name or getattr(editor, "name", type(editor).__name__)
    started = time.perf_counter()
    kind = model_kind(model)
    pre = _given_or_scored(pre, model, tokenizer, records, score_batch_size)
    if len(pre) != len(records):
        raise ValueError(f"{len(pre)} pre-edit scores for {len(records)} records")
    reference = _digests(model) if verify_restore else None

    if mode == "single":
        runs = _groups(len(records), 1)
    elif mode == "batched":
        runs = _groups(len(records), batch_size)
    else:
        k = min(n_sequential, len(records))
        runs = [range(i, i + k) for i in range(0, len(records) - k + 1, k)]
    # one batched update per run in "batched" mode, one edit after another otherwise
    edits = [
        [[records[i] for i in run]] if mode == "batched" else [[records[i]] for i in run] for run in runs
    ]

    tally = _Tally()
    with eval_mode(model), _attached(editor, model), tqdm(total=sum(map(len, edits)), desc=f"{name} {mode}", disable=not progress,
                                unit="batch" if mode == "batched" else "edit") as bar:  # fmt: skip
        for run, group_edits in zip(runs, edits, strict=True):
            _start(editor)
            with restoring(model) as keep:
                for group in group_edits:
                    keep(_timed_edit(editor, model, tokenizer, group, tally, on_edit_error))
                    bar.update(1)
                after = score_records(
                    model, tokenizer, [records[i] for i in run], kind=kind, batch_size=score_batch_size
                )
            in_scope = in_scope_prompts([records[i] for i in run])
            for i, scores in zip(run, after, strict=True):
                tally.add(pre[i], scores, in_scope)
            bar.set_postfix(es=f"{_mean(tally.es_edit):.2f}", refresh=False)
    _start(editor)
    if reference is not None:
        _check_unchanged(model, reference, name)

    out = tally.summary()
    out["mode"] = mode
    if mode == "batched":
        out["batch_size"] = batch_size
    if mode == "sequential":
        out["n_edits_total"] = out["n_edits"]
        out["n_edits"] = len(runs[0])
        out["n_runs"] = len(runs)
        out["es"] = out["es_edit"]
    out.update(editor_size(editor))
    out["seconds"] = time.perf_counter() - started
    return out


def evaluate_editors(
    model: nn.Module,
    tokenizer: Any,
    editors: Mapping[str, Editor],
    records: Sequence[Any],
    *,
    modes: Sequence[str] = MODES,
    batch_size: int = 10,
    n_sequential: int = 10,
    progress: bool = True,
    score_batch_size: int = 32,
    verify_restore: bool = True,
    on_result: Callable[[str, str, dict], None] | None = None,
    on_edit_error: str = "count",
    lifelong_checkpoints: Sequence[int] = (),
    lifelong_batches: Sequence[int] = (),
    lifelong_orders: int = 1,
) -> dict[str, Any]:
    """Evaluate several editors on the same records and return the ``report.json`` shape::

        {"methods": {"MEND": {"es_edit", "es_rephrase", "token_acc_rephrase", "dd_locality",
                              "dd_hard_locality", "edit_latency_ms_median", "edit_latency_ms_p90",
                              "editor_params", ..., "batched": {...}, "sequential": {"n_edits",
                              "es", "es_rephrase", "dd_locality", ...}}, "FT": {...}, ...},
         "pre_edit": {"es_edit", "locality_acc", "hard_locality_acc"}, "settings": {...}}

    The single-mode metrics sit at the top of each method (when ``"single"`` is among
    ``modes``; otherwise the first mode's). Editors with ``supports_sequential = False`` skip
    the sequential mode. ``on_result(method, mode, summary)`` is called after each run. With
    ``lifelong_checkpoints`` / ``lifelong_batches`` each method also gets ``lifelong``
    (:func:`lifelong_curves`: ``{"sequential": [{"n_edits", "es_edit", "es_rephrase",
    "dd_locality", ...}], "batched": [{"batch_size", ...}]}``, over ``lifelong_orders`` orders).
    """
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown evaluation mode(s) {bad}; expected some of {MODES}")
    if not editors:
        raise ValueError("evaluate_editors needs at least one editor")
    records = list(records)
    pre = pre_edit_scores(model, tokenizer, records, score_batch_size=score_batch_size, progress=progress)
    methods: dict[str, dict[str, Any]] = {}
    for method, editor in editors.items():
        entry: dict[str, Any] = {}
        for mode in modes:
            if mode == "sequential" and not getattr(editor, "supports_sequential", True):
                continue
            summary = evaluate_editor(
                model,
                tokenizer,
                editor,
                records,
                mode=mode,
                batch_size=batch_size,
                n_sequential=n_sequential,
                progress=progress,
                pre=pre,
                score_batch_size=score_batch_size,
                verify_restore=verify_restore,
                name=method,
                on_edit_error=on_edit_error,
            )
            if on_result is not None:
                on_result(method, mode, summary)
            if mode == "single" or (not entry and "single" not in modes):
                entry.update({k: v for k, v in summary.items() if k != "mode"})
            if mode != "single":
                entry[mode] = summary
        if lifelong_checkpoints or lifelong_batches:
            entry["lifelong"] = lifelong_curves(
                model, tokenizer, editor, records, checkpoints=lifelong_checkpoints, batch_sizes=lifelong_batches,
                orders=lifelong_orders, pre=pre, score_batch_size=score_batch_size, progress=progress, name=method, on_edit_error=on_edit_error,
            )  # fmt: skip
            if on_result is not None:
                on_result(method, "lifelong", entry["lifelong"])
        methods[method] = entry
    pre_exact = [s.edit.exact.float().item() for s in pre]
    loc = [x for s in pre for x in s.locality.exact.float().tolist()]
    hard = [x for s in pre for x in s.hard_locality.exact.float().tolist()]
    return {
        "methods": methods,
        "pre_edit": {
            "es_edit": _mean(pre_exact),
            "locality_acc": _mean(loc),
            "hard_locality_acc": _mean(hard),
        },
        "settings": {
            "n_records": len(records),
            "modes": list(modes),
            "batch_size": batch_size,
            "n_sequential": n_sequential,
            "lifelong_checkpoints": list(lifelong_checkpoints),
            "lifelong_batches": list(lifelong_batches),
            "lifelong_orders": lifelong_orders,
            "model_kind": model_kind(model),
            "es_definition": "teacher-forced argmax exact match of all target tokens",
        },
    }
