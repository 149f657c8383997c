"""Memory-based editors: GRACE's codebook and the edit cache. The base weights never change.

Both keep their edits as data (a :class:`Codebook` or an :class:`EditCache`), act on the model
only inside ``editor.attached(model)`` (forward hooks, removed on exit) and undo an edit by
removing its entry, which restores exactly the answers of a model that never saw it.

* GRACE (Hartvigsen et al., NeurIPS 2023): at one layer (default the last block's MLP output
  matrix) a codebook of keys (the layer's input at the edit prompt's last token, ``[n, d_in]``),
  values (``[n, d_out]``, optimised at edit time until the model gives the target) and deferral
  radii. Where the layer's input at some position of a sequence lies within an entry's radius
  (the closest such match of the sequence, relative to the radius), the layer's output from that
  position on is replaced by the entry's value. Unlike the paper's
  incremental rules (expand a radius for the same answer, halve both for a conflicting one), the
  radii are a function of the entries alone: each entry's radius is ``radius * ||key||``, cut to
  half the distance to the nearest key with another target; so removing an entry leaves exactly
  the codebook that never had it.
* Edit cache (the talk's baseline): stored edit prompts; a query whose prompt matches one (the
  same tokens, or with ``threshold`` the cosine similarity of mean input embeddings at least that)
  is answered with the stored target, any other the base model's. Teacher-forced, the cache
  forces the logits at the answer positions onto the stored target's tokens.

They edit causal LMs; other kinds raise ``ValueError`` saying so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from editor_nets.locate import (
    _hidden,
    _records_batch,
    _with_hidden,
    mlp_output_layers,
    read_at,
    require_causal,
)
from editor_nets.memory import EntryTable, MemoryEditor
from editor_nets.scoring import edit_batch, score_batch
from editor_nets.state import eval_mode, frozen

__all__ = ["Codebook", "EditCache", "EditCacheEditor", "GraceEditor"]


@dataclass(frozen=True)
class Codebook(EntryTable):
    """GRACE's memory at one layer: ``keys [n, d_in]``, ``values [n, d_out]``, ``targets`` (n
    strings) and each entry's initial radius ``radii [n]`` (absolute)."""

    keys: Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    values: Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    radii: Tensor = field(default_factory=lambda: torch.zeros(0))
    targets: tuple[str, ...] = ()

    def effective_radii(self) -> Tensor:
        """``[n]``: each radius cut to half the distance to the nearest key with another target."""
        if len(self) < 2:
            return self.radii
        dist = torch.cdist(self.keys, self.keys)
        other = torch.tensor([[a != b for b in self.targets] for a in self.targets], device=dist.device)
        half = torch.where(other, dist / 2, torch.full_like(dist, float("inf"))).min(dim=1).values
        return torch.minimum(self.radii, half)

    def lookup(self, queries: Tensor) -> tuple[Tensor, Tensor]:
        """For ``queries [B, T, d_in]``: ``(position [B], entry [B])``, per row the position and entry
        of the closest match (the smallest distance relative to the entry's radius, among queries
        within a radius: at an edit's own prompt, its key token); ``-1`` for rows with none."""
        B, T, _ = queries.shape
        none = torch.full((B,), -1, dtype=torch.long, device=queries.device)
        if not len(self):
            return none, none.clone()
        dist = torch.cdist(queries.float().reshape(B * T, -1), self.keys.to(queries.device)).reshape(B, T, -1)
        radii = self.effective_radii().to(dist.device).clamp_min(1e-12)
        score = torch.where(dist <= radii, dist / radii, torch.inf).reshape(B, -1)  # [B, T * n]
        best, flat = score.min(dim=1)
        found = torch.isfinite(best)
        n = len(self)
        return torch.where(found, flat // n, none), torch.where(found, flat % n, none)


@dataclass
class GraceEditor(MemoryEditor):
    """GRACE: a codebook at ``layer`` (default the last block's MLP output matrix). ``edit`` adds
    one entry per record, its value optimised (Adam, ``lr``, at most ``steps``) from the layer's
    own output until the target is hit; ``radius`` is the initial deferral radius relative to the
    key's norm. ``entries`` is the codebook."""

    layer: str | None = None
    radius: float = 0.5
    steps: int = 100
    lr: float = 0.5
    entries: Codebook = field(default_factory=Codebook)
    name: str = "GRACE"

    def target_layer(self, model: nn.Module) -> str:
        return self.layer or mlp_output_layers(model)[-1]

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator[None]:
        """Inside the block, ``model``'s target layer defers to the codebook (a forward hook)."""
        module = model.get_submodule(self.target_layer(model))

        def defer(mod: nn.Module, args: tuple, output: Any) -> Any:
            position, entry = self.entries.lookup(args[0])
            if not bool((position >= 0).any()):
                return output
            h = _hidden(output)
            T = h.shape[1]
            after = torch.arange(T, device=h.device)[None, :] >= position[:, None].clamp_min(0)
            after &= (position >= 0)[:, None]
            values = self.entries.values.to(h.device, h.dtype)[entry.clamp_min(0)]  # [B, d_out]
            return _with_hidden(output, torch.where(after[..., None], values[:, None, :], h))

        handle = module.register_forward_hook(defer)
        try:
            yield
        finally:
            handle.remove()

    def entries_for(self, model: nn.Module, tokenizer: Any, records: Sequence[Any]) -> Codebook:
        """The codebook entries of ``records`` (keys, optimised values, radii); nothing changes."""
        require_causal(model, self.name)
        if not records:
            return Codebook()
        name = self.target_layer(model)
        module = model.get_submodule(name)
        batch, positions = _records_batch(model, tokenizer, records, "last")
        keys, outputs = read_at(model, batch, {name: module}, positions)[name]
        values = outputs.clone().requires_grad_(True)
        rows = torch.arange(len(records), device=positions.device)
        T = batch["input_ids"].shape[1]
        after = torch.arange(T, device=positions.device)[None, :] >= positions[:, None]  # [B, T]

        def replace_output(mod: nn.Module, args: tuple, output: Any) -> Any:
            h = _hidden(output)
            return _with_hidden(
                output, torch.where(after[..., None], values.to(h.dtype)[rows][:, None, :], h)
            )

        opt = torch.optim.Adam([values], lr=self.lr)
        handle = module.register_forward_hook(replace_output)
        try:
            with frozen(model), eval_mode(model), torch.enable_grad():
                for _ in range(self.steps):
                    scores = score_batch(model, batch, kind="causal")
                    if bool(scores.exact.all()):
                        break
                    opt.zero_grad(set_to_none=True)
                    scores.mean_nll.sum().backward()
                    opt.step()
        finally:
            handle.remove()
        radii = self.radius * keys.norm(dim=-1)
        return Codebook(
            keys.float(), values.detach().float(), radii.float(), tuple(r.target for r in records)
        )


@dataclass(frozen=True)
class EditCache(EntryTable):
    """The edit cache's memory: the stored prompts' token ids and their targets' token ids."""

    prompts: tuple[tuple[int, ...], ...] = ()
    targets: tuple[tuple[int, ...], ...] = ()


@dataclass
class EditCacheEditor(MemoryEditor):
    """The edit cache: ``edit`` stores each record's prompt and target; inside ``attached(model)``
    a sequence that starts with a stored prompt (``threshold=None``: the same tokens; else a prefix
    whose mean input embedding has cosine similarity at least ``threshold`` with a stored prompt's,
    the most similar one) is given the stored target's tokens at the answer positions."""

    threshold: float | None = None
    entries: EditCache = field(default_factory=EditCache)
    name: str = "EditCache"

    def entries_for(self, model: nn.Module, tokenizer: Any, records: Sequence[Any]) -> EditCache:
        require_causal(model, self.name)
        prompts, targets = [], []
        for r in records:  # tokenised exactly as edits and scoring see them (prompt and target jointly)
            batch = edit_batch(model, tokenizer, [r.prompt], [r.target], kind="causal")
            ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0]
            start = int(labels.ne(-100).nonzero()[0, 0])
            prompts.append(tuple(ids[:start]))
            targets.append(tuple(labels[labels.ne(-100)].tolist()))
        return EditCache(tuple(prompts), tuple(targets))

    def _match(self, model: nn.Module, ids: Tensor) -> list[tuple[int, int] | None]:
        """Per row of ``ids [B, T]``: ``(prompt length, entry)`` of the matching stored prompt."""
        out: list[tuple[int, int] | None] = []
        if self.threshold is not None:
            table = model.get_input_embeddings().weight
            with torch.no_grad():
                emb = table[ids].float()  # [B, T, d]
                prefix = emb.cumsum(1) / torch.arange(1, ids.shape[1] + 1, device=ids.device)[None, :, None]
                keys = torch.stack([table[list(p)].float().mean(0) for p in self.entries.prompts])  # [n, d]
                sim = torch.nn.functional.cosine_similarity(prefix[:, :, None], keys[None, None], dim=-1)
        for b, row in enumerate(ids.tolist()):
            found = None
            for j, p in enumerate(self.entries.prompts):
                if tuple(row[: len(p)]) == p:
                    found = (len(p), j)
                    break
            if found is None and self.threshold is not None:
                best = sim[b].max(dim=-1)  # over entries, per prefix length
                ok = (best.values >= self.threshold).nonzero()
                if len(ok):
                    t = int(ok[0, 0])  # the shortest matching prefix: the prompt ends there
                    found = (t + 1, int(best.indices[t]))
            out.append(found)
        return out

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator[None]:
        """Inside the block, ``model``'s logits at a matched prompt's answer positions are forced
        onto the stored target (a forward hook on the whole model)."""

        def force(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None or not len(self.entries):
                return output
            logits = output.logits.clone()
            for b, found in enumerate(self._match(mod, ids)):
                if found is None:
                    continue
                length, j = found
                for i, token in enumerate(self.entries.targets[j]):
                    if length - 1 + i < logits.shape[1]:
                        logits[b, length - 1 + i] = torch.finfo(logits.dtype).min
                        logits[b, length - 1 + i, token] = 0.0
            output.logits = logits
            return output

        handle = model.register_forward_hook(force, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
