"""The sidecar's logic as a plain class, without Ray or gRPC: ``EditService``.

It owns the model, tokenizer, editor, journal and weight store. The Ray Serve deployment
wraps one ``EditService``; tests drive it directly. Errors are ``ServeError`` with the gRPC
status code name the front returns (``INVALID_ARGUMENT``, ``NOT_FOUND``, ``FAILED_PRECONDITION``,
``RESOURCE_EXHAUSTED``); every one of them leaves the weights and journal unchanged.

Versions: the weight version is the sequence number of the last journal event (0 = base
weights, no edit ever). Each Edit and each effective Rollback is one event, so a version
names exactly one set of active edits, across restarts too.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edit_serve.generation import GenerationStep, SamplingParams, context_length, generate_steps
from edit_serve.journal import EditJournal, JournalEntry, active_entries, utc_now
from edit_serve.rwlock import ReadWriteLock
from edit_serve.weights import WeightStore, weights_digest

__all__ = [
    "EditInfo",
    "EditResult",
    "EditService",
    "GenerateResult",
    "HealthInfo",
    "RollbackResult",
    "ServeError",
    "ServeLimits",
]


class ServeError(Exception):
    """A request the service refuses; ``code`` is a ``grpc.StatusCode`` name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self):  # picklable across Ray
        return (ServeError, (self.code, self.message))


@dataclass(frozen=True)
class ServeLimits:
    """Request limits. Text limits are in characters (INVALID_ARGUMENT when exceeded); token and
    concurrency limits give RESOURCE_EXHAUSTED. ``max_edit_norm`` bounds the Frobenius norm of an
    edit's update (FAILED_PRECONDITION above it); ``None`` only rejects non-finite edits."""

    max_text_chars: int = 4000
    max_prompt_tokens: int = 512
    max_new_tokens: int = 256
    default_new_tokens: int = 32
    max_concurrent_generations: int = 16
    max_message_bytes: int = 1 << 20
    max_rephrases: int = 16
    max_stop_strings: int = 8
    max_provenance_entries: int = 32
    max_key_chars: int = 256
    max_edit_norm: float | None = 1e4


@dataclass(frozen=True)
class EditResult:
    edit_id: str
    version: int
    latency_ms: float
    target_logprob_before: float
    target_logprob_after: float
    replayed: bool


@dataclass(frozen=True)
class GenerateResult:
    text: str
    num_tokens: int
    version: int


@dataclass(frozen=True)
class RollbackResult:
    version: int
    rolled_back: list[str]


@dataclass(frozen=True)
class EditInfo:
    edit_id: str
    prompt: str
    target: str
    status: str  # "active" | "rolled_back"
    provenance: dict[str, str]
    created_at: str
    rolled_back_at: str
    applied_at_version: int
    idempotency_key: str
    rephrases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HealthInfo:
    status: str
    version: int
    active_edits: int
    model: str
    device: str
    weights_sha256: str = ""


def _invalid(message: str) -> ServeError:
    return ServeError("INVALID_ARGUMENT", message)


def _check_text(name: str, value: Any, limits: ServeLimits, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{name} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise _invalid(f"{name} is empty")
    if len(value) > limits.max_text_chars:
        raise _invalid(f"{name} has {len(value)} characters; the limit is {limits.max_text_chars}")
    if "\x00" in value:
        raise _invalid(f"{name} contains a NUL character")
    return value


class EditService:
    """Model + editor + journal + weight store behind a readers-writer lock.

    ``editor`` has ``compute_delta(model, tokenizer, records) -> EditDelta`` (``MendEditor``).
    On construction the journal is replayed: the active edits at the last event are applied
    to the base weights in their original order.
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
        from editor_nets import EditDelta

        self._EditDelta = EditDelta
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.editor = editor
        self.journal = journal
        self.limits = limits or ServeLimits()
        self.model_name = model_name
        self.device = device
        self.lock = ReadWriteLock()
        self.weights = WeightStore(model)
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._edits: dict[str, JournalEntry] = {}
        self._by_key: dict[str, JournalEntry] = {}
        self._status: dict[str, str] = {}
        self._rolled_back_at: dict[str, str] = {}
        self._replay()

    # ------------------------------------------------------------ start-up
    def _replay(self) -> None:
        for entry in self.journal.entries:
            if entry.op == "edit":
                self._index_edit(entry)
            else:
                for edit_id in entry.record["edit_ids"]:
                    if edit_id in self._status:  # ids of skipped (quarantined) edits are ignored
                        self._status[edit_id] = "rolled_back"
                        self._rolled_back_at[edit_id] = entry.record["created_at"]
        active = active_entries(self.journal.entries)
        self.weights.load_active((e.edit_id, self._load_delta(e)) for e in active)

    def _index_edit(self, entry: JournalEntry) -> None:
        self._edits[entry.edit_id] = entry
        self._status[entry.edit_id] = "active"
        key = entry.record.get("idempotency_key") or ""
        if key:
            self._by_key[key] = entry

    def _load_delta(self, entry: JournalEntry):
        return self._EditDelta.from_tensors(
            self.journal.load_tensors(entry), entry.record.get("delta_provenance", {})
        )

    @property
    def max_prompt_tokens(self) -> int:
        """``limits.max_prompt_tokens``, capped below the model's context length."""
        ctx = context_length(self.model)
        return self.limits.max_prompt_tokens if ctx is None else min(self.limits.max_prompt_tokens, ctx - 1)

    @property
    def version(self) -> int:
        return self.journal.last_seq

    # ------------------------------------------------------------ helpers
    def _input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def _count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _target_logprob(self, prompt: str, target: str) -> float:
        """log p(target | prompt) summed over the target tokens (text = prompt + " " + target)."""
        from edit_data import collate_causal

        batch = collate_causal(self.tokenizer, [prompt], [target])
        device = self._input_device()
        with torch.no_grad():
            logits = self.model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
        logp = torch.log_softmax(logits[0, :-1].float(), dim=-1).cpu()
        labels = batch["labels"][0, 1:]
        keep = labels != -100
        return float(logp[keep].gather(1, labels[keep].unsqueeze(1)).sum())

    def _check_model_finite(self, names: Sequence[str]) -> str | None:
        params = dict(self.model.named_parameters())
        for name in names:
            if name in params and not bool(torch.isfinite(params[name]).all()):
                return f"applying the edit made parameter {name} non-finite; nothing was changed"
        return None

    # ------------------------------------------------------------ Edit
    def _validate_edit(
        self,
        prompt: str,
        target: str,
        rephrases: Sequence[str],
        idempotency_key: str,
        provenance: Mapping[str, str],
    ) -> None:
        lim = self.limits
        _check_text("prompt", prompt, lim)
        _check_text("target", target, lim)
        if len(rephrases) > lim.max_rephrases:
            raise _invalid(f"{len(rephrases)} rephrases; the limit is {lim.max_rephrases}")
        for i, r in enumerate(rephrases):
            _check_text(f"rephrases[{i}]", r, lim)
        if not isinstance(idempotency_key, str) or len(idempotency_key) > lim.max_key_chars:
            raise _invalid(f"idempotency_key must be a string of at most {lim.max_key_chars} characters")
        if len(provenance) > lim.max_provenance_entries:
            raise _invalid(f"{len(provenance)} provenance entries; the limit is {lim.max_provenance_entries}")
        for k, v in provenance.items():
            if not isinstance(k, str) or not isinstance(v, str) or not k or len(k) > lim.max_key_chars:
                raise _invalid(
                    f"provenance key {k!r} must be a non-empty string of at most {lim.max_key_chars} characters"
                )
            _check_text(f"provenance[{k!r}]", v, lim, allow_empty=True)
        for name, p in [("prompt", prompt), *[(f"rephrases[{i}]", r) for i, r in enumerate(rephrases)]]:
            n = self._count_tokens(p) + self._count_tokens(target) + 1
            if n > self.max_prompt_tokens:
                raise ServeError(
                    "RESOURCE_EXHAUSTED",
                    f"{name} + target is {n} tokens; the limit is {self.max_prompt_tokens}",
                )

    def _replayed(self, entry: JournalEntry, prompt: str, target: str) -> EditResult:
        rec = entry.record
        if rec["prompt"] != prompt or rec["target"] != target:
            raise ServeError(
                "FAILED_PRECONDITION",
                f"idempotency_key {rec['idempotency_key']!r} was already used by edit {rec['edit_id']} with a "
                "different prompt or target",
            )
        return EditResult(
            rec["edit_id"], entry.seq, rec["latency_ms"], rec["logprob_before"], rec["logprob_after"], True
        )

    def edit(
        self,
        prompt: str,
        target: str,
        rephrases: Sequence[str] = (),
        idempotency_key: str = "",
        provenance: Mapping[str, str] | None = None,
    ) -> EditResult:
        """Compute one MEND edit for ``prompt -> target`` (plus rephrases, as one batched edit),
        journal it durably, apply it. Returns once the journal entry is fsync'd."""
        from edit_data import EditRecord, TargetTooLongError

        provenance = dict(provenance or {})
        rephrases = list(rephrases)
        self._validate_edit(prompt, target, rephrases, idempotency_key, provenance)
        if idempotency_key and (entry := self._by_key.get(idempotency_key)) is not None:
            return self._replayed(entry, prompt, target)
        with self.lock.write():
            if idempotency_key and (entry := self._by_key.get(idempotency_key)) is not None:
                return self._replayed(entry, prompt, target)
            start = time.perf_counter()
            records = [EditRecord(prompt=p, target=target) for p in [prompt, *rephrases]]
            try:
                before = self._target_logprob(prompt, target)
                delta = self.editor.compute_delta(self.model, self.tokenizer, records)
            except (TargetTooLongError, ValueError) as err:
                raise _invalid(f"cannot compute the edit: {err}") from err
            if not delta.is_finite():
                raise ServeError(
                    "FAILED_PRECONDITION", "the edit's update is non-finite (NaN or inf); nothing was changed"
                )
            norm = delta.norm()
            bound = self.limits.max_edit_norm
            if not math.isfinite(norm) or (bound is not None and norm > bound):
                raise ServeError(
                    "FAILED_PRECONDITION",
                    f"the edit's update norm {norm:.4g} exceeds the bound {bound}; nothing was changed",
                )
            edit_id = secrets.token_hex(8)
            touched = [f"{name}.weight" for name in delta.layers]
            try:
                self.weights.apply(edit_id, delta, check=lambda: self._check_model_finite(touched))
            except ValueError as err:
                raise ServeError("FAILED_PRECONDITION", str(err)) from err
            try:
                after = self._target_logprob(prompt, target)
                latency_ms = (time.perf_counter() - start) * 1000.0
                record = {
                    "edit_id": edit_id,
                    "prompt": prompt,
                    "target": target,
                    "rephrases": rephrases,
                    "provenance": provenance,
                    "idempotency_key": idempotency_key,
                    "created_at": utc_now(),
                    "logprob_before": before,
                    "logprob_after": after,
                    "latency_ms": latency_ms,
                    "norm": norm,
                    "delta_provenance": dict(delta.provenance),
                }
                entry = self.journal.append_edit(delta.to_tensors(), record)
            except BaseException:
                self.weights.rollback([edit_id])  # not journaled: undo exactly
                raise
            self._index_edit(entry)
            return EditResult(edit_id, entry.seq, latency_ms, before, after, False)

    # ------------------------------------------------------------ Generate
    def _sampling(
        self,
        prompt: str,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        stop: Sequence[str],
    ) -> tuple[torch.Tensor, SamplingParams]:
        lim = self.limits
        _check_text("prompt", prompt, lim)
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise _invalid(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
        if max_new_tokens > lim.max_new_tokens:
            raise ServeError(
                "RESOURCE_EXHAUSTED", f"max_new_tokens={max_new_tokens}; the limit is {lim.max_new_tokens}"
            )
        if not math.isfinite(temperature) or temperature < 0 or temperature > 100:
            raise _invalid(f"temperature must be in [0, 100], got {temperature}")
        if not math.isfinite(top_p) or top_p < 0 or top_p > 1:
            raise _invalid(f"top_p must be in [0, 1] (0 means 1), got {top_p}")
        if len(stop) > lim.max_stop_strings:
            raise _invalid(f"{len(stop)} stop strings; the limit is {lim.max_stop_strings}")
        for i, s in enumerate(stop):
            if not isinstance(s, str) or not s or len(s) > 256:
                raise _invalid(f"stop[{i}] must be a non-empty string of at most 256 characters")
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if ids.shape[1] == 0:
            raise _invalid("prompt has no tokens")
        if ids.shape[1] > self.max_prompt_tokens:
            raise ServeError(
                "RESOURCE_EXHAUSTED",
                f"prompt is {ids.shape[1]} tokens; the limit is {self.max_prompt_tokens}",
            )
        if seed is None:
            seed = secrets.randbits(63)
        params = SamplingParams(
            max_new_tokens=max_new_tokens or lim.default_new_tokens,
            temperature=float(temperature),
            top_p=float(top_p) if top_p > 0 else 1.0,
            seed=int(seed),
            stop=tuple(stop),
        )
        return ids, params

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

    def generate_stream(
        self,
        prompt: str,
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        top_p: float = 0.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> GenerationStream:
        """Validate now (raises ``ServeError`` before any text), then iterate ``(step, version)``.

        The read lock is taken at the first step and held until the last, so every piece comes
        from the same weights (the version). ``close()`` the stream to release it early."""
        ids, params = self._sampling(prompt, max_new_tokens, temperature, top_p, seed, list(stop))
        self._enter_generation()
        return GenerationStream(self, ids, params)

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        top_p: float = 0.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> GenerateResult:
        """The whole continuation at once (the stream's pieces joined)."""
        pieces: list[str] = []
        n = 0
        with contextlib.closing(
            self.generate_stream(prompt, max_new_tokens, temperature, top_p, seed, stop)
        ) as stream:
            for step, _ in stream:
                pieces.append(step.text)
                n = step.num_tokens
            version = stream.version
        return GenerateResult("".join(pieces), n, version)

    # ------------------------------------------------------------ Rollback
    def rollback(self, edit_id: str | None = None, to_version: int | None = None) -> RollbackResult:
        """Undo one active edit (by id) or every active edit applied after ``to_version``."""
        if (edit_id is None) == (to_version is None):
            raise _invalid("give exactly one of edit_id or to_version")
        with self.lock.write():
            if edit_id is not None:
                if not isinstance(edit_id, str) or not edit_id:
                    raise _invalid("edit_id is empty")
                if edit_id not in self._status:
                    raise ServeError("NOT_FOUND", f"no edit with id {edit_id!r}")
                if self._status[edit_id] != "active":
                    raise ServeError("FAILED_PRECONDITION", f"edit {edit_id} is already rolled back")
                ids = [edit_id]
            else:
                assert to_version is not None
                if to_version < 0 or to_version > self.version:
                    raise _invalid(
                        f"to_version={to_version} is not a version of this server (current {self.version})"
                    )
                ids = [
                    i for i, e in self._edits.items() if self._status[i] == "active" and e.seq > to_version
                ]
                if not ids:
                    return RollbackResult(self.version, [])
            entry = self.journal.append_rollback(ids, to_version)
            self.weights.rollback(ids)
            for i in ids:
                self._status[i] = "rolled_back"
                self._rolled_back_at[i] = entry.record["created_at"]
            return RollbackResult(entry.seq, ids)

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
            raise _invalid("edit_id is empty")
        if edit_id not in self._edits:
            raise ServeError("NOT_FOUND", f"no edit with id {edit_id!r}")
        return self._info(self._edits[edit_id])

    def health(self, with_digest: bool = False) -> HealthInfo:
        """Status, version, active edit count; with ``with_digest`` also the sha256 of all weights."""
        digest = ""
        if with_digest:
            with self.lock.read():
                digest = weights_digest(self.model)
        return HealthInfo(
            "SERVING", self.version, len(self.weights.active), self.model_name, self.device, digest
        )

    def close(self) -> None:
        self.journal.close()


class GenerationStream:
    """Iterator of ``(GenerationStep, version)`` holding a generation slot and (from the first
    step on) the read lock; both are released at the end, on error, or on ``close()``."""

    def __init__(self, service: EditService, ids: torch.Tensor, params: SamplingParams) -> None:
        self._service = service
        self._ids = ids
        self._params = params
        self._steps: Iterator[GenerationStep] | None = None
        self._closed = False
        self.version = -1

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> tuple[GenerationStep, int]:
        if self._closed:
            raise StopIteration
        if self._steps is None:
            self._service.lock.acquire_read()
            self.version = self._service.version
            self._steps = generate_steps(
                self._service.model, self._service.tokenizer, self._ids, self._params
            )
        try:
            return next(self._steps), self.version
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._steps is not None:
            self._steps.close()
            self._service.lock.release_read()
        self._service._leave_generation()

    def __del__(self) -> None:  # a dropped stream must not hold the lock
        with contextlib.suppress(Exception):
            self.close()
