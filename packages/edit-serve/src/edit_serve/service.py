"""The sidecar's editing logic as a plain class, without Ray or gRPC: ``EditService``.

It owns the model, tokenizer, editor, journal and weight store, and answers Edit, Generate,
Rollback and the queries. The Ray Serve deployment wraps one ``EditService``; tests drive it
directly. Requests are checked by ``edit_serve.requests`` (errors are ``ServeError`` with the
gRPC status code name the front returns); every refusal leaves the weights and journal unchanged.

Versions: the weight version is the sequence number of the last journal event (0 = base
weights, no edit ever). Each Edit and each effective Rollback is one event, so a version
names exactly one set of active edits, across restarts too.

Memory editors (GRACE, SERAC, the edit cache: ``editor_nets.memory``): an edit is the entries
its items add to the editor's table, journaled as tensors plus their metadata (``record["entries"]``);
the weights never change. Rollback drops the edit's entries (``EntryStore``), Generate and the
edit's log-probabilities run inside ``editor.attached(model)``, without the KV cache (the
hooks see each whole sequence: the same forward the library's evaluation scores), and the Health
digest covers the weights and the table.

Leader and followers: a service on a writable journal (it holds the LOCK) is the one that edits.
A service on a read-only journal is a follower replica (``--replicas``): it refuses Edit and
Rollback, and ``sync()`` applies the events the leader journaled since its version, from the
journal's own files, so every replica holds the same bytes as a restart replay would. A read
with ``min_version`` above the replica's version syncs first (read your writes).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import secrets
import threading
import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from edit_serve.batching import DecodeLoop, GenerationStream
from edit_serve.generation import context_length
from edit_serve.journal import EditJournal, JournalEntry, active_entries, utc_now
from edit_serve.requests import (
    EditItem,
    SamplingParams,
    ServeError,
    ServeLimits,
    check_edit,
    check_text,
    invalid,
    journal_write_failed,
)
from edit_serve.results import (
    ClassifyResult,
    EditInfo,
    EditItemResult,
    EditResult,
    GenerateResult,
    HealthInfo,
    LabelProbability,
    RollbackResult,
)
from edit_serve.rwlock import ReadWriteLock
from edit_serve.weights import EntryStore, WeightStore
from editor_nets import EditDelta, label_id, model_kind, score_targets, weights_digest
from editor_nets.memory import EntryTable, MemoryEditor
from editor_nets.ridge import KeyMemory

__all__ = ["EditService"]


def _where(i: int, n: int) -> str:
    """How a message names item ``i`` of ``n`` (nothing for a single edit)."""
    return f"edits[{i}]." if n > 1 else ""


def _items_of(record: Mapping) -> list[dict]:
    """The items of a journaled edit (records written before several items per call: one)."""
    return record.get("items") or [
        {"prompt": record["prompt"], "target": record["target"], "rephrases": record.get("rephrases", [])}
    ]


class EditService:
    """Model + editor + journal + edit store behind a readers-writer lock.

    ``editor`` is a weight editor, with ``compute_delta(model, tokenizer, records, memory) ->
    EditDelta`` (``MendEditor``, the located editors), or a ``MemoryEditor`` (causal LMs only).
    On construction the journal is replayed: the active edits at the last event are applied
    to the base weights (or table) in their original order.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        editor,
        journal: EditJournal,
        limits: ServeLimits | None = None,
        *,
        model_name: str = "",
        device: str = "cpu",
    ) -> None:
        self.model = model.eval()
        self.kind = model_kind(model)  # "causal", "seq2seq" or "classifier"
        self.tokenizer = tokenizer
        self.editor = editor
        self.journal = journal
        self.limits = limits or ServeLimits()
        self.model_name = model_name
        self.device = device
        self.lock = ReadWriteLock()
        self.memory_editor = isinstance(editor, MemoryEditor)
        if self.memory_editor and self.kind != "causal":
            raise ValueError(
                f"{editor.name} edits causal language models; the served model is a {self.kind} model"
            )
        self.store = EntryStore(editor) if self.memory_editor else WeightStore(model)
        # what least-squares editors protect: C_0 from the editor, plus the active edits' keys
        self._base_memory = (
            KeyMemory() if self.memory_editor else getattr(editor, "memory", KeyMemory()).fresh()
        )
        self._memory = self._base_memory
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._edits: dict[str, JournalEntry] = {}
        self._by_key: dict[str, JournalEntry] = {}
        self._status: dict[str, str] = {}
        self._rolled_back_at: dict[str, str] = {}
        attach = editor.attached if self.memory_editor else None
        self._decoder = DecodeLoop(model, tokenizer, self.lock, lambda: self.version, attach=attach)
        self._replay()

    # ------------------------------------------------------------ start-up
    def _replay(self) -> None:
        for entry in self.journal.entries:
            if entry.op == "edit":
                self._index_edit(entry)
            else:
                self._mark_rolled_back(entry)
        active = active_entries(self.journal.entries)
        self.store.load_active((e.edit_id, self._load_change(e)) for e in active)
        self._refresh_key_memory()

    def _refresh_key_memory(self) -> None:
        """The keys a least-squares weight editor protects: C_0 plus those of the active edits."""
        if not self.memory_editor:
            self._memory = KeyMemory.of(self.store.active.values(), self._base_memory.preserved)

    def _mark_rolled_back(self, entry: JournalEntry) -> None:
        for edit_id in entry.record["edit_ids"]:
            if edit_id in self._status:  # ids of skipped (quarantined) edits are ignored
                self._status[edit_id] = "rolled_back"
                self._rolled_back_at[edit_id] = entry.record["created_at"]

    def _index_edit(self, entry: JournalEntry) -> None:
        self._edits[entry.edit_id] = entry
        self._status[entry.edit_id] = "active"
        key = entry.record.get("idempotency_key") or ""
        if key:
            self._by_key[key] = entry

    def _load_change(self, entry: JournalEntry) -> EditDelta | EntryTable:
        """What a journaled edit changes: its ``EditDelta``, or for a memory editor its entries;
        ``ValueError`` when the entry was made by the other kind of editor."""
        memory = "entries" in entry.record
        if memory != self.memory_editor:
            made, served = (
                ("memory entries", "weight updates") if memory else ("a weight update", "memory entries")
            )
            raise ValueError(
                f"journal entry {entry.seq:08d} ({self.journal.directory}) holds {made}; the served editor "
                f"{getattr(self.editor, 'name', type(self.editor).__name__)} makes {served}"
            )
        tensors = self.journal.load_tensors(entry)
        if memory:
            return type(self.store.base).from_state(tensors, entry.record["entries"])
        return EditDelta.from_tensors(tensors, entry.record.get("delta_provenance", {}))

    def _hooks(self) -> contextlib.AbstractContextManager:
        """What every forward of the served model runs under: a memory editor's hooks, or nothing."""
        return self.editor.attached(self.model) if self.memory_editor else contextlib.nullcontext()

    @property
    def max_prompt_tokens(self) -> int:
        """``limits.max_prompt_tokens``, capped below the model's context length."""
        ctx = context_length(self.model)
        return self.limits.max_prompt_tokens if ctx is None else min(self.limits.max_prompt_tokens, ctx - 1)

    @property
    def version(self) -> int:
        return self.journal.last_seq

    # ------------------------------------------------------------ helpers
    def _prompt_ids(self, prompt: str) -> torch.Tensor:
        """``[1, T]``: the prompt as edits see it: ``edit_data.encode_prompt`` for a causal LM, the
        text with all the tokenizer's special tokens for a seq2seq model's encoder or a classifier."""
        from edit_data import encode_prompt

        if self.kind in ("seq2seq", "classifier"):  # as collate_seq2seq / collate_classifier
            return torch.tensor([self.tokenizer(prompt)["input_ids"]], dtype=torch.long)
        return torch.tensor([encode_prompt(self.tokenizer, prompt)], dtype=torch.long)

    def _target_logprob(self, prompt: str, target: str) -> float:
        """log p(target | prompt) summed over the target tokens, as the editor scores it."""
        with self._hooks():
            return -float(score_targets(self.model, self.tokenizer, [prompt], [target]).nll[0])

    def _apply(self, edit_id: str, delta: EditDelta | EntryTable) -> None:
        """``store.apply`` checking that the touched parameters stay finite (``ValueError``, undone)."""
        if isinstance(delta, EntryTable):
            self.store.apply(edit_id, delta)
            return
        params = dict(self.model.named_parameters())

        def check() -> str | None:
            for name in (f"{layer}.weight" for layer in delta.layers):
                if name in params and not bool(torch.isfinite(params[name]).all()):
                    return f"applying the edit made parameter {name} non-finite; nothing was changed"
            return None

        self.store.apply(edit_id, delta, check=check)

    def _refuse_follower(self, rpc: str) -> None:
        if self.journal.read_only:
            raise ServeError(
                "FAILED_PRECONDITION",
                f"{rpc}: this replica follows the journal {self.journal.directory}; writes go to the leader",
            )

    # ------------------------------------------------------------ Edit
    def _check_edit_tokens(self, items: Sequence[EditItem]) -> None:
        for i, item in enumerate(items):
            if self.kind == "classifier":
                try:
                    label_id(self.model, item.target.strip())
                except ValueError as err:
                    raise invalid(f"{_where(i, len(items))}target: {err}") from err
            n_target = len(self.tokenizer(" " + item.target.strip(), add_special_tokens=False)["input_ids"])
            for name, p in [
                ("prompt", item.prompt),
                *[(f"rephrases[{j}]", r) for j, r in enumerate(item.rephrases)],
            ]:
                n = self._prompt_ids(p).shape[1] + n_target + 1
                if n > self.max_prompt_tokens:
                    raise ServeError(
                        "RESOURCE_EXHAUSTED",
                        f"{_where(i, len(items))}{name} + target is {n} tokens; the limit is {self.max_prompt_tokens}",
                    )

    def _replayed(self, entry: JournalEntry, items: Sequence[EditItem]) -> EditResult:
        rec = entry.record
        if [(x["prompt"], x["target"]) for x in _items_of(rec)] != [(x.prompt, x.target) for x in items]:
            raise ServeError(
                "FAILED_PRECONDITION",
                f"idempotency_key {rec['idempotency_key']!r} was already used by edit {rec['edit_id']} with a "
                "different prompt or target",
            )
        logprobs = (
            [
                EditItemResult(b, a)
                for b, a in zip(rec["logprob_before_items"], rec["logprob_after_items"], strict=True)
            ]
            if "logprob_before_items" in rec
            else [EditItemResult(rec["logprob_before"], rec["logprob_after"])]
        )
        return EditResult(
            rec["edit_id"],
            entry.seq,
            rec["latency_ms"],
            rec["logprob_before"],
            rec["logprob_after"],
            True,
            logprobs,
        )

    def _compute(self, items: Sequence[EditItem]):
        """The edit of ``items`` solved together (the prompt and rephrasings of each are edited
        together), checked: ``ServeError`` naming the item when it cannot be made."""
        from edit_data import TargetTooLongError

        try:
            delta = self._change_of(_records(items))
        except (TargetTooLongError, ValueError) as err:
            raise invalid(f"cannot compute the edit: {err}") from err
        problem = self._problem(delta)
        if problem is not None and len(items) > 1:  # find the item that causes it
            for i, item in enumerate(items):
                if (alone := self._problem(self._alone(item))) is not None:
                    raise ServeError("FAILED_PRECONDITION", f"edits[{i}]: {alone}; nothing was changed")
        if problem is not None:
            raise ServeError("FAILED_PRECONDITION", f"{problem}; nothing was changed")
        return delta

    def _change_of(self, records: list) -> EditDelta | EntryTable:
        """The weight update, or the memory entries, that ``records`` make; nothing changes."""
        if self.memory_editor:
            with self._hooks():  # as the library's sequential evaluation: on the model as edited
                return self.editor.entries_for(self.model, self.tokenizer, records)
        return self.editor.compute_delta(self.model, self.tokenizer, records, self._memory)

    def _alone(self, item: EditItem):
        return self._change_of(_records([item]))

    def _problem(self, delta: EditDelta | EntryTable) -> str | None:
        if isinstance(delta, EntryTable):  # entries have no update norm; ``max_edit_norm`` bounds weights
            for name, t in delta.to_state()[0].items():
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return f"the edit's memory entry field {name!r} is non-finite (NaN or inf)"
            return None
        if not delta.is_finite():
            return "the edit's update is non-finite (NaN or inf)"
        norm, bound = delta.norm(), self.limits.max_edit_norm
        if not math.isfinite(norm) or (bound is not None and norm > bound):
            return f"the edit's update norm {norm:.4g} exceeds the bound {bound}"
        return None

    def edit(
        self,
        items: EditItem | Sequence[EditItem],
        idempotency_key: str = "",
        provenance: Mapping[str, str] | None = None,
    ) -> EditResult:
        """Compute the edit of ``items`` (one or several ``prompt -> target`` corrections, each with
        its rephrasings, solved together), journal it durably as one entry and one version, apply it.
        Returns once the journal entry is fsync'd. A bad item refuses the whole call, naming it."""
        self._refuse_follower("Edit")
        items = [items] if isinstance(items, EditItem) else list(items)
        provenance = dict(provenance or {})
        check_edit(items, idempotency_key, provenance, self.limits)
        self._check_edit_tokens(items)
        if idempotency_key and (entry := self._by_key.get(idempotency_key)) is not None:
            return self._replayed(entry, items)
        with self.lock.write():
            if idempotency_key and (entry := self._by_key.get(idempotency_key)) is not None:
                return self._replayed(entry, items)
            start = time.perf_counter()
            before = [self._target_logprob(x.prompt, x.target) for x in items]
            delta = self._compute(items)
            edit_id = secrets.token_hex(8)
            try:
                self._apply(edit_id, delta)
            except ValueError as err:
                raise ServeError("FAILED_PRECONDITION", str(err)) from err
            try:
                after = [self._target_logprob(x.prompt, x.target) for x in items]
                latency_ms = (time.perf_counter() - start) * 1000.0
                record = {
                    "edit_id": edit_id,
                    "prompt": items[0].prompt,
                    "target": items[0].target,
                    "rephrases": list(items[0].rephrases),
                    "items": [
                        {"prompt": x.prompt, "target": x.target, "rephrases": list(x.rephrases)}
                        for x in items
                    ],
                    "provenance": provenance,
                    "idempotency_key": idempotency_key,
                    "created_at": utc_now(),
                    "logprob_before": before[0],
                    "logprob_after": after[0],
                    "logprob_before_items": before,
                    "logprob_after_items": after,
                    "latency_ms": latency_ms,
                }
                if isinstance(delta, EntryTable):
                    tensors, record["entries"] = delta.to_state()
                else:
                    tensors = delta.to_tensors()
                    record.update(norm=delta.norm(), delta_provenance=dict(delta.provenance))
                entry = self.journal.append_edit(tensors, record)
            except BaseException as err:
                self.store.rollback([edit_id])  # not journaled: undo exactly
                if isinstance(err, OSError):
                    raise journal_write_failed(err, "edit") from err
                raise
            if not self.memory_editor:
                self._memory = self._memory.with_edit(delta)
            self._index_edit(entry)
            logprobs = [EditItemResult(b, a) for b, a in zip(before, after, strict=True)]
            return EditResult(edit_id, entry.seq, latency_ms, before[0], after[0], False, logprobs)

    # ------------------------------------------------------------ Generate
    def _enter_generation(self) -> None:
        with self._inflight_lock:
            if self._inflight >= self.limits.max_concurrent_generations:
                raise ServeError(
                    "RESOURCE_EXHAUSTED",
                    f"{self._inflight} generations in flight; the limit is {self.limits.max_concurrent_generations}",
                )
            self._inflight += 1

    def _leave_generation(self) -> None:
        with self._inflight_lock:
            self._inflight -= 1

    def _served_as(self, rpc: str, classifier: bool) -> None:
        """``FAILED_PRECONDITION`` naming the served model when ``rpc`` is not for it."""
        if (self.kind == "classifier") != classifier:
            wanted = "a sequence classifier" if classifier else "a language model (causal or seq2seq)"
            served = (
                f"{self.model_name} ({type(self.model).__name__})"
                if self.model_name
                else type(self.model).__name__
            )
            raise ServeError(
                "FAILED_PRECONDITION",
                f"{rpc} needs {wanted}; the served model {served} is a {self.kind} model",
            )

    def _checked_ids(self, name: str, text: str) -> torch.Tensor:
        check_text(name, text, self.limits)
        ids = self._prompt_ids(text)
        if ids.shape[1] == 0:
            raise invalid(f"{name} has no tokens")
        if ids.shape[1] > self.max_prompt_tokens:
            raise ServeError(
                "RESOURCE_EXHAUSTED",
                f"{name} is {ids.shape[1]} tokens; the limit is {self.max_prompt_tokens}",
            )
        return ids

    def _at_least(self, min_version: int) -> None:
        """Read your writes: a follower behind ``min_version`` syncs first; ``OUT_OF_RANGE`` when the
        journal does not reach it (a version no Edit or Rollback of this sidecar returned)."""
        if min_version < 0:
            raise invalid(f"min_version={min_version} is negative")
        if self.version < min_version:
            self.sync()
        if self.version < min_version:
            raise ServeError(
                "OUT_OF_RANGE",
                f"min_version={min_version} is ahead of the journal (its last version is {self.version})",
            )

    def _submit(
        self, prompt: str, sampling: SamplingParams | None, restart: bool, min_version: int
    ) -> GenerationStream:
        self._served_as("Generate", classifier=False)
        check_text("prompt", prompt, self.limits)
        params = (sampling or SamplingParams()).validated(self.limits)
        ids = self._checked_ids("prompt", prompt)
        self._at_least(min_version)
        self._enter_generation()
        return self._decoder.submit(ids, params, restart=restart, on_close=self._leave_generation)

    def generate_stream(
        self, prompt: str, sampling: SamplingParams | None = None, min_version: int = 0
    ) -> GenerationStream:
        """Validate now (raises ``ServeError`` before any text), then iterate ``(step, version)``.

        The request joins the decode loop (``edit_serve.batching``): it is decoded together with
        the others in flight, and an edit may land between two of its steps; each piece names the
        version that produced it (versions never decrease, and are at least ``min_version``).
        ``close()`` the stream to leave early."""
        return self._submit(prompt, sampling, restart=False, min_version=min_version)

    def generate(
        self, prompt: str, sampling: SamplingParams | None = None, min_version: int = 0
    ) -> GenerateResult:
        """The whole continuation at once, all of it from the one version it names, at least
        ``min_version`` (an edit that lands meanwhile makes the request start again on the new
        weights; after three such restarts it fails ``ABORTED``, to be retried)."""
        stream = self._submit(prompt, sampling, restart=True, min_version=min_version)
        try:
            steps = [step for step, _ in stream]
        finally:
            stream.close()
        return GenerateResult(
            "".join(s.text for s in steps), steps[-1].num_tokens if steps else 0, stream.version
        )

    # ------------------------------------------------------------ Classify
    def classify(self, text: str, min_version: int = 0) -> ClassifyResult:
        """The served classifier's label for ``text`` and every label's probability, read under the
        read lock (one version, at least ``min_version``)."""
        self._served_as("Classify", classifier=True)
        ids = self._checked_ids("text", text)
        self._at_least(min_version)
        self._enter_generation()
        try:
            with self.lock.read(), torch.no_grad():
                version = self.version
                device = self.model.get_input_embeddings().weight.device
                logits = self.model(
                    input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device)
                ).logits
        finally:
            self._leave_generation()
        probs = torch.softmax(logits[0].float(), dim=-1).cpu().tolist()
        names = getattr(self.model.config, "id2label", None) or {}
        labels = [str(names.get(i, i)) for i in range(len(probs))]
        best = max(range(len(probs)), key=probs.__getitem__)
        return ClassifyResult(
            labels[best], [LabelProbability(n, p) for n, p in zip(labels, probs, strict=True)], version
        )

    # ------------------------------------------------------------ Rollback
    def rollback(self, edit_id: str | None = None, to_version: int | None = None) -> RollbackResult:
        """Undo one active edit (by id) or every active edit applied after ``to_version``."""
        self._refuse_follower("Rollback")
        if (edit_id is None) == (to_version is None):
            raise invalid("give exactly one of edit_id or to_version")
        with self.lock.write():
            if edit_id is not None:
                if not isinstance(edit_id, str) or not edit_id:
                    raise invalid("edit_id is empty")
                if edit_id not in self._status:
                    raise ServeError("NOT_FOUND", f"no edit with id {edit_id!r}")
                if self._status[edit_id] != "active":
                    raise ServeError("FAILED_PRECONDITION", f"edit {edit_id} is already rolled back")
                ids = [edit_id]
            else:
                assert to_version is not None
                if to_version < 0 or to_version > self.version:
                    raise invalid(
                        f"to_version={to_version} is not a version of this server (current {self.version})"
                    )
                ids = [
                    i for i, e in self._edits.items() if self._status[i] == "active" and e.seq > to_version
                ]
                if not ids:
                    return RollbackResult(self.version, [])
            try:
                entry = self.journal.append_rollback(ids, to_version)
            except OSError as err:
                raise journal_write_failed(err, "rollback") from err
            self.store.rollback(ids)
            self._refresh_key_memory()
            self._mark_rolled_back(entry)
            return RollbackResult(entry.seq, ids)

    # ------------------------------------------------------------ followers
    def sync(self) -> int:
        """A follower (read-only journal) applies the events journaled since its version, in order,
        under the write lock, and returns its version; the leader just returns its version.

        An edit that a later event of the same batch rolls back is never applied (so a follower
        that refused an edit, which the leader then rolled back, syncs past it). An edit that cannot
        be applied here raises ``FAILED_PRECONDITION``; the events before it stay applied, it and
        the later ones are read again on the next call."""
        if not self.journal.read_only:
            return self.version
        with self.lock.write():
            new = self.journal.read_new()
            undone = {i for e in new if e.op == "rollback" for i in e.record["edit_ids"]}
            try:
                for entry in new:
                    if entry.op == "edit":
                        if entry.edit_id not in undone:
                            try:
                                self._apply(entry.edit_id, self._load_change(entry))
                            except ValueError as err:
                                raise ServeError(
                                    "FAILED_PRECONDITION",
                                    f"edit {entry.edit_id} (version {entry.seq}) cannot be applied on "
                                    f"this replica: {err}",
                                ) from err
                        self._index_edit(entry)
                    else:
                        active = [i for i in entry.record["edit_ids"] if i in self.store.active]
                        if active:
                            self.store.rollback(active)
                        self._mark_rolled_back(entry)
                    self.journal.adopt(entry)
            finally:
                self._refresh_key_memory()
        return self.version

    # ------------------------------------------------------------ queries
    def _info(self, entry: JournalEntry) -> EditInfo:
        r = entry.record
        return EditInfo(
            edit_id=r["edit_id"],
            prompt=r["prompt"],
            target=r["target"],
            status=self._status[r["edit_id"]],
            provenance=dict(r.get("provenance", {})),
            created_at=r["created_at"],
            rolled_back_at=self._rolled_back_at.get(r["edit_id"], ""),
            applied_at_version=entry.seq,
            idempotency_key=r.get("idempotency_key", ""),
            rephrases=list(r.get("rephrases", [])),
            items=[EditItem(x["prompt"], x["target"], tuple(x["rephrases"])) for x in _items_of(r)],
        )

    def list_edits(self, include_rolled_back: bool = False) -> list[EditInfo]:
        """Edits in the order they were applied."""
        return [
            self._info(e)
            for e in self._edits.values()
            if include_rolled_back or self._status[e.edit_id] == "active"
        ]

    def get_edit(self, edit_id: str) -> EditInfo:
        if not isinstance(edit_id, str) or not edit_id:
            raise invalid("edit_id is empty")
        if edit_id not in self._edits:
            raise ServeError("NOT_FOUND", f"no edit with id {edit_id!r}")
        return self._info(self._edits[edit_id])

    def health(self, with_digest: bool = False) -> HealthInfo:
        """Status, version, active edit count; with ``with_digest`` also the sha256 of all weights
        (for a memory editor, of the weights' digest and the table's)."""
        digest = ""
        if with_digest:
            with self.lock.read():
                digest = weights_digest(self.model)
                if self.memory_editor:
                    digest = hashlib.sha256(f"{digest}:{self.editor.entries.digest()}".encode()).hexdigest()
        return HealthInfo(
            "SERVING", self.version, len(self.store.active), self.model_name, self.device, digest
        )

    def close(self) -> None:
        self._decoder.close()
        self.journal.close()


def _records(items: Sequence[EditItem]) -> list:
    """The ``EditRecord`` of each prompt and rephrasing of ``items``, in order."""
    from edit_data import EditRecord

    return [
        EditRecord(prompt=p, target=x.target, subject=x.subject or None)
        for x in items
        for p in (x.prompt, *x.rephrases)
    ]
