"""Batched decoding: every generation in flight advances one token per step, together.

One thread, the decode loop, runs all generation of a service. Each step it takes the service's
read lock, admits the requests that arrived, runs one forward pass for all of them and hands each
its next piece, then releases the lock. An Edit or Rollback (the write side of the lock) so waits
for at most one step, never for whole streams.

**The version rule.** Every forward pass runs under one weight version, and every piece names the
version that produced its token. When the version changes between two steps (an edit or a
rollback landed), the loop rebuilds the KV cache of each request in flight under the new weights,
so no cache mixes versions either:

- a **stream** (``GenerateStream``) continues from the text it has sent, recomputed under the new
  weights; its chunks name their versions, which never decrease;
- a **whole reply** (``Generate``, ``restart=True``) starts again from its prompt, with its seed,
  under the new weights, so its text is exactly what the version it names produces. After
  ``max_restarts`` such restarts it fails with ``ABORTED`` (the weights kept changing under it;
  the client retries), so a stream of edits cannot keep it running forever.

Causal LMs whose forward takes ``position_ids`` decode as one left-padded batch (attention mask
and per-row positions; a row that ends is dropped from the cache, a row that joins rebuilds it).
Other models (encoder-decoder) advance one request at a time inside the same step. Each request
samples from its own seeded generator, so a seeded request gives the same text alone or in a
batch, up to the rounding of batched kernels.

With ``attach`` (a memory editor's ``attached``, whose hooks look at whole sequences), every step
runs inside ``attach(model)`` and each request is run alone on its whole sequence, without a KV
cache or padding: the forward the library's evaluation scores, at a cost quadratic in length.
"""

from __future__ import annotations

import contextlib
import inspect
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from edit_serve.generation import (
    Continuation,
    GenerationStep,
    cache_argument,
    next_token,
    request_generator,
    stepper,
    token_budget,
)
from edit_serve.requests import SamplingParams, ServeError
from edit_serve.rwlock import ReadWriteLock

__all__ = ["DecodeLoop", "GenerationStream"]

_END = object()


@dataclass(eq=False)
class _Request:
    """One generation in the loop: its prompt, sampling, text so far and the queue of its pieces."""

    prompt: Tensor  # [1, T], on CPU
    params: SamplingParams
    restart: bool  # start again on a new version (a whole reply) instead of continuing (a stream)
    restarts: int = 0
    pieces: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False
    text: Continuation | None = None
    generator: torch.Generator | None = None
    single: tuple | None = None  # (step, past) of a request decoded alone (encoder-decoder models)

    def reset(self, model: nn.Module, tokenizer) -> None:
        """Start (or start again) from the prompt, with a fresh generator of the same seed."""
        used = 1 if getattr(model.config, "is_encoder_decoder", False) else int(self.prompt.shape[1])
        self.text = Continuation(tokenizer, self.params, token_budget(model, self.params, used))
        self.generator = request_generator(self.params)

    def ids(self) -> list[int]:
        """Prompt and generated tokens: what a causal LM's cache holds for this request."""
        assert self.text is not None
        return self.prompt[0].tolist() + self.text.generated


class GenerationStream:
    """Iterator of ``(GenerationStep, version)`` for one request of a ``DecodeLoop``; ``version``
    is that of the last piece. ``close()`` (or dropping the stream) leaves the loop at its next
    step; ``on_close`` runs once (the service frees a generation slot)."""

    def __init__(self, request: _Request, on_close: Callable[[], None]) -> None:
        self._request, self._on_close = request, on_close
        self._closed = False
        self.version = -1

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> tuple[GenerationStep, int]:
        if self._closed:
            raise StopIteration
        item = self._request.pieces.get()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        step, self.version = item
        return step, self.version

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._request.cancelled = True
        self._on_close()

    def __del__(self) -> None:  # a dropped stream must leave the loop and free its slot
        with contextlib.suppress(Exception):
            self.close()


class DecodeLoop:
    """The decode loop of one model (see the module docstring). ``submit`` adds a request and
    returns its stream; the thread starts with the first request and stops on ``close()``."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        lock: ReadWriteLock,
        version_of: Callable[[], int],
        max_restarts: int = 3,
        attach: Callable[[nn.Module], contextlib.AbstractContextManager] | None = None,
    ) -> None:
        self.model, self.tokenizer, self.lock, self.version_of = model, tokenizer, lock, version_of
        self.max_restarts = max_restarts
        self.attach = attach
        self.cache = cache_argument(model)
        forward = inspect.signature(model.forward).parameters
        self.batched = (
            attach is None
            and not getattr(model.config, "is_encoder_decoder", False)
            and "position_ids" in forward
        )
        self._arrived: list[_Request] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        # the batch (causal LMs): its requests, KV cache, attention mask [B, S], next positions [B]
        self._rows: list[_Request] = []
        self._past = None
        self._mask: Tensor | None = None
        self._next_pos: Tensor | None = None
        self._version = -1  # the version the caches were built under
        self.steps = 0  # decode steps run (counters for benchmarks and tests)
        self.largest_batch = 0  # most requests one forward pass has decoded together
        self.merged_joins = 0  # requests that joined a running batch without rebuilding it

    def submit(
        self, prompt_ids: Tensor, params: SamplingParams, *, restart: bool, on_close
    ) -> GenerationStream:
        """Queue ``prompt_ids`` ``[1, T]`` (validated ``params``); the stream yields its pieces."""
        request = _Request(prompt_ids.detach().cpu(), params, restart)
        with self._wake:
            if self._stopping:
                raise RuntimeError("the decode loop is closed")
            self._arrived.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="edit-serve-decode")
                self._thread.start()
            self._wake.notify()
        return GenerationStream(request, on_close)

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(30)

    # ---------------------------------------------------------------- the loop
    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._arrived and not self._rows:
                    self._wake.wait()
                if self._stopping:
                    break
                arrived, self._arrived = self._arrived, []
            try:
                with self.lock.read(), torch.no_grad(), self._hooks():
                    self._step(arrived)
            except Exception as err:  # a failed forward fails the requests in it, not the loop
                for request in self._rows + arrived:
                    request.pieces.put(err)
                self._rows, self._past = [], None
        for request in self._rows + self._arrived:
            request.pieces.put(RuntimeError("the service is closing"))

    def _hooks(self) -> contextlib.AbstractContextManager:
        return self.attach(self.model) if self.attach is not None else contextlib.nullcontext()

    def _step(self, arrived: list[_Request]) -> None:
        """One token for every request in flight, under one version."""
        self._drop([r for r in self._rows if r.cancelled])
        arrived = [r for r in arrived if not r.cancelled]
        version = self.version_of()
        changed = version != self._version
        if changed:  # an edit or rollback landed: no cache survives it
            aborted = []
            for request in self._rows:
                if request.restart:
                    request.restarts += 1
                    if request.restarts > self.max_restarts:
                        request.pieces.put(
                            ServeError(
                                "ABORTED",
                                f"the weights changed {request.restarts} times during this Generate "
                                f"(now version {version}); retry it",
                            )
                        )
                        aborted.append(request)
                        continue
                    request.reset(self.model, self.tokenizer)
                request.single = None
            self._drop(aborted)
        for request in arrived:
            request.reset(self.model, self.tokenizer)
        self._version = version
        live = self._rows + arrived
        self.steps += 1
        self.largest_batch = max(self.largest_batch, len(live))
        if self.batched:
            logits = self._batch_forward(self._rows, arrived, rebuild=changed)
        else:
            logits = [self._single_forward(r) for r in live]
            self._rows = live
        done = []
        for request, row_logits in zip(live, logits, strict=True):
            text = request.text
            assert text is not None and request.generator is not None
            if not text.finished:
                piece = text.push(next_token(row_logits, request.params, request.generator))
                if piece is not None and not request.restart:
                    request.pieces.put((piece, version))
            if text.finished:
                last = text.finish()
                if request.restart:  # a whole reply: one piece, all from this version
                    last = GenerationStep(text.emitted + last.text, last.num_tokens, True)
                request.pieces.put((last, version))
                request.pieces.put(_END)
                done.append(request)
        self._drop(done)

    def _forward(self, ids: Tensor, mask: Tensor, positions: Tensor, past) -> tuple[Tensor, object]:
        """One forward pass: logits of each row's last position ``[B, vocab]``, and the cache."""
        device = self.model.get_input_embeddings().weight.device
        out = self.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=True,
            **{self.cache: past},
        )
        return out.logits[:, -1], getattr(out, self.cache)

    def _prefill(self, rows: list[_Request]) -> tuple[Tensor, object, Tensor, Tensor]:
        """``(logits, cache, mask, next positions)`` of ``rows`` from scratch, left-padded."""
        seqs = [r.ids() for r in rows]
        width = max(len(q) for q in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, seq in enumerate(seqs):  # left padding: every row's last token is at the end
            ids[i, width - len(seq) :] = torch.tensor(seq)
            mask[i, width - len(seq) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, past = self._forward(ids, mask, positions, None)
        return logits, past, mask, positions[:, -1] + 1

    def _batch_forward(self, rows: list[_Request], arrived: list[_Request], rebuild: bool) -> list[Tensor]:
        """Logits ``[vocab]`` of the next token of each of ``rows + arrived`` (causal LMs). The rows
        in the batch advance by one token on their cache; the arrived ones are prefilled alone and
        their cache rows merged in (left-padded to a common length). ``rebuild`` (a new version),
        or a cache that cannot be merged, prefills everyone from scratch."""
        live = rows + arrived
        if not live:
            self._rows, self._past = [], None
            return []
        if rebuild or self._past is None or not rows or (arrived and not _mergeable(self._past)):
            logits, self._past, self._mask, self._next_pos = self._prefill(live)
            self._rows = live
            return list(logits)
        assert self._mask is not None and self._next_pos is not None
        ids = torch.tensor([r.text.generated[-1] for r in rows]).unsqueeze(1)  # type: ignore[union-attr]
        mask = torch.cat([self._mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
        logits, past = self._forward(ids, mask, self._next_pos.unsqueeze(1), self._past)
        self._past, self._mask, self._next_pos = past, mask, self._next_pos + 1
        if arrived:
            new_logits, new_past, new_mask, new_pos = self._prefill(arrived)
            if not _mergeable(new_past):
                logits, self._past, self._mask, self._next_pos = self._prefill(live)
                self._rows = live
                return list(logits)
            self._mask = _merge_cache(self._past, self._mask, new_past, new_mask)
            self._next_pos = torch.cat([self._next_pos, new_pos])
            self.merged_joins += len(arrived)
            logits = torch.cat([logits, new_logits.to(logits.device)])
        self._rows = live
        return list(logits)

    def _single_forward(self, request: _Request) -> Tensor:
        """Logits of the next token of a request decoded alone (its own cache)."""
        assert request.text is not None
        if request.single is None or self.attach is not None:  # hooks see whole sequences: no cache
            step, first, _ = stepper(self.model, request.prompt)
            generated = torch.tensor([request.text.generated], dtype=torch.long, device=first.device)
            out = step(torch.cat([first, generated.reshape(1, -1)], dim=1), None)
        else:
            step, past = request.single
            out = step(torch.tensor([[request.text.generated[-1]]], device=request.prompt.device), past)
        request.single = (step, getattr(out, self.cache))
        return out.logits[0, -1]

    def _drop(self, leaving: list[_Request]) -> None:
        """Remove ``leaving`` (finished or cancelled) from the batch and their rows of the cache."""
        if not leaving:
            return
        keep = [i for i, r in enumerate(self._rows) if r not in leaving]
        if self.batched and self._past is not None and keep:
            device = self.model.get_input_embeddings().weight.device
            self._past.batch_select_indices(torch.tensor(keep, device=device))
            assert self._mask is not None and self._next_pos is not None
            self._mask, self._next_pos = self._mask[keep], self._next_pos[keep]
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._past = None


def _mergeable(past) -> bool:
    """Whether ``past`` is a plain dynamic KV cache (every layer full-attention keys and values
    ``[B, heads, S, head_dim]``), whose rows ``_merge_cache`` can join."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    layers = getattr(past, "layers", None)
    return (
        type(past) is DynamicCache
        and bool(layers)
        and all(type(layer) is DynamicLayer and getattr(layer, "keys", None) is not None for layer in layers)
    )


def _merge_cache(past, mask: Tensor, other, other_mask: Tensor) -> Tensor:
    """Append the rows of cache ``other`` to ``past`` in place, left-padding the shorter one with
    zeros (masked out) to a common length; returns the merged attention mask ``[B1 + B2, S]``."""
    width = max(mask.shape[1], other_mask.shape[1])

    def padded(t: Tensor, dim: int) -> Tensor:
        missing = width - t.shape[dim]
        if missing == 0:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    for layer, new in zip(past.layers, other.layers, strict=True):
        layer.keys = torch.cat([padded(layer.keys, 2), padded(new.keys.to(layer.keys.device), 2)])
        layer.values = torch.cat([padded(layer.values, 2), padded(new.values.to(layer.values.device), 2)])
    return torch.cat([padded(mask, 1), padded(other_mask, 1)])
