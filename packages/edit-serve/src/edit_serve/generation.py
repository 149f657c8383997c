"""Token-by-token generation for causal and encoder-decoder LMs with a per-request random
generator, and the stream that holds the service's read lock while it runs.

One loop serves both ``Generate`` and ``GenerateStream`` (Generate joins the stream's pieces),
so both give identical text for the same request. We use our own loop with the KV cache
rather than ``model.generate``: sampling draws from a ``torch.Generator`` owned by the request
(``model.generate`` uses the process-global RNG, which concurrent requests would share, so a
``seed`` would not reproduce), and stop strings are held back from the stream until it is
certain they do not start there.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edit_serve.requests import SamplingParams
from edit_serve.rwlock import ReadWriteLock

__all__ = ["GenerationStep", "GenerationStream", "context_length", "generate_steps", "pick_token"]


@dataclass(frozen=True)
class GenerationStep:
    """A new piece of text, the number of tokens generated so far, and whether it is the last."""

    text: str
    num_tokens: int
    done: bool


def context_length(model: nn.Module) -> int | None:
    """The model's maximum sequence length from its config, when it declares one."""
    cfg = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def pick_token(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Choose the next token from ``logits`` ``[vocab]`` (float32, CPU)."""
    if temperature <= 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = (torch.cumsum(sorted_p, dim=-1) - sorted_p) < top_p  # always keeps the first
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        choice = int(torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator))
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def _first_stop(text: str, stops: Sequence[str]) -> int:
    """Index where the earliest stop string starts in ``text`` (``-1`` if none)."""
    hits = [i for s in stops if (i := text.find(s)) >= 0]
    return min(hits) if hits else -1


def _forward(
    model: nn.Module, prompt_ids: Tensor
) -> tuple[Callable[[Tensor, object], object], Tensor, int, str]:
    """How to run the model one step at a time on ``prompt_ids`` ``[1, T]``: ``(step, first, used, cache)``.

    ``step(ids, past)`` returns the model output (``logits``, ``past_key_values``) for the new
    ``ids`` ``[1, n]`` given the cache; ``first`` are the ids of the first step; ``used`` the
    positions the answer's budget already lost. A causal LM continues the prompt (``used`` = T);
    an encoder-decoder model encodes the prompt once and decodes from its decoder start token
    (``used`` = 1, the start token's position). ``cache`` names the KV cache in the model's
    arguments and outputs."""
    device = model.get_input_embeddings().weight.device
    prompt_ids = prompt_ids.to(device)
    # transformers >= 5.2x names the KV cache argument ``cache``; earlier ones ``past_key_values``
    cache = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    if not getattr(model.config, "is_encoder_decoder", False):
        return (
            lambda ids, past: model(input_ids=ids, use_cache=True, **{cache: past}),
            prompt_ids,
            int(prompt_ids.shape[1]),
            cache,
        )
    encoded = model.get_encoder()(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids))
    start = torch.tensor([[model.config.decoder_start_token_id]], device=device)
    return (
        lambda ids, past: model(
            encoder_outputs=encoded, decoder_input_ids=ids, use_cache=True, **{cache: past}
        ),
        start,
        1,
        cache,
    )


@torch.no_grad()
def generate_steps(
    model: nn.Module, tokenizer, prompt_ids: Tensor, params: SamplingParams
) -> Iterator[GenerationStep]:
    """Yield the continuation of ``prompt_ids`` ``[1, T]`` piece by piece; the last step has ``done``.
    ``params`` are validated (``SamplingParams.validated``: a seed and a length are set). Causal
    LMs continue the prompt; encoder-decoder models (T5, BART) answer it from their decoder.

    Stops at ``max_new_tokens``, the tokenizer's eos token, a stop string or the model's
    context length. Pieces concatenate to the full continuation (without the prompt).
    """
    step, cur, used, cache = _forward(model, prompt_ids)
    generator = torch.Generator(device="cpu").manual_seed(int(params.seed) % (2**63))
    eos = tokenizer.eos_token_id
    limit = context_length(model)
    budget = params.max_new_tokens
    if limit is not None:
        budget = min(budget, max(0, limit - used))
    holdback = max((len(s) for s in params.stop), default=1) - 1
    generated: list[int] = []
    emitted = ""
    past = None
    stopped = False
    for _ in range(budget):
        out = step(cur, past)
        past = getattr(out, cache)  # the output names the cache as the argument does
        logits = out.logits[0, -1].float().cpu()
        if not bool(torch.isfinite(logits).all()):
            logits = torch.nan_to_num(logits, nan=-math.inf)
        token = pick_token(logits, params.temperature, params.top_p, generator)
        if eos is not None and token == eos:
            break
        generated.append(token)
        text = tokenizer.decode(generated, skip_special_tokens=True)
        cut = _first_stop(text, params.stop) if params.stop else -1
        if cut >= 0:
            text, stopped = text[:cut], True
        if stopped:
            break
        safe = len(text) - holdback
        # only emit a stable prefix (decoders may tidy the boundary, e.g. " ?" -> "?")
        if safe > len(emitted) and text.startswith(emitted):
            piece, emitted = text[len(emitted) : safe], text[:safe]
            yield GenerationStep(piece, len(generated), False)
        cur = torch.tensor([[token]], device=cur.device)
    final = tokenizer.decode(generated, skip_special_tokens=True) if not stopped else text
    if not stopped and params.stop:
        cut = _first_stop(final, params.stop)
        final = final[:cut] if cut >= 0 else final
    rest = final[len(emitted) :] if final.startswith(emitted) else ""
    yield GenerationStep(rest, len(generated), True)


class GenerationStream:
    """Iterator of ``(GenerationStep, version)`` over ``generate_steps`` that holds the read lock
    ``lock`` from its first step to its last, so every piece comes from the same weights (the
    version ``version_of()`` gave at the first step). ``on_close`` runs once at the end, on
    error, on ``close()`` or when the stream is dropped (the service frees a generation slot)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        prompt_ids: Tensor,
        params: SamplingParams,
        lock: ReadWriteLock,
        version_of: Callable[[], int],
        on_close: Callable[[], None],
    ) -> None:
        self._start = lambda: generate_steps(model, tokenizer, prompt_ids, params)
        self._lock, self._version_of, self._on_close = lock, version_of, on_close
        self._steps: Iterator[GenerationStep] | None = None
        self._closed = False
        self.version = -1

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> tuple[GenerationStep, int]:
        if self._closed:
            raise StopIteration
        if self._steps is None:
            self._lock.acquire_read()
            self.version = self._version_of()
            self._steps = self._start()
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
            self._lock.release_read()
        self._on_close()

    def __del__(self) -> None:  # a dropped stream must not hold the lock
        with contextlib.suppress(Exception):
            self.close()
