"""Token-by-token generation for causal and encoder-decoder LMs with a per-request random
generator: the text of one continuation (``Continuation``) and the single-request loop
(``generate_steps``), which the batched decode loop (``edit_serve.batching``) follows exactly.

We use our own loop with the KV cache rather than ``model.generate``: sampling draws from a
``torch.Generator`` owned by the request (``model.generate`` uses the process-global RNG, which
concurrent requests would share, so a ``seed`` would not reproduce), and stop strings are held
back from the stream until it is certain they do not start there.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edit_serve.requests import SamplingParams

__all__ = [
    "Continuation",
    "GenerationStep",
    "cache_argument",
    "context_length",
    "generate_steps",
    "next_token",
    "pick_token",
    "request_generator",
    "stepper",
    "token_budget",
]


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


def next_token(logits: Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """``pick_token`` on one row of model logits ``[vocab]`` (any dtype or device); NaN never wins."""
    logits = logits.float().cpu()
    if not bool(torch.isfinite(logits).all()):
        logits = torch.nan_to_num(logits, nan=-math.inf)
    return pick_token(logits, params.temperature, params.top_p, generator)


def _first_stop(text: str, stops: Sequence[str]) -> int:
    """Index where the earliest stop string starts in ``text`` (``-1`` if none)."""
    hits = [i for s in stops if (i := text.find(s)) >= 0]
    return min(hits) if hits else -1


def cache_argument(model: nn.Module) -> str:
    """The name of the KV cache in the model's arguments and outputs: transformers >= 5.2x calls
    it ``cache``, earlier ones ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def stepper(model: nn.Module, prompt_ids: Tensor) -> tuple[Callable[[Tensor, object], object], Tensor, int]:
    """How to run the model one step at a time on ``prompt_ids`` ``[1, T]``: ``(step, first, used)``.

    ``step(ids, past)`` returns the model output (``logits`` and the cache under
    ``cache_argument(model)``) for the new ``ids`` ``[1, n]`` given the cache; ``first`` are the
    ids of the first step; ``used`` the positions the answer's budget already lost. A causal LM
    continues the prompt (``used`` = T); an encoder-decoder model encodes the prompt once and
    decodes from its decoder start token (``used`` = 1, the start token's position)."""
    device = model.get_input_embeddings().weight.device
    prompt_ids = prompt_ids.to(device)
    cache = cache_argument(model)
    if not getattr(model.config, "is_encoder_decoder", False):
        return (
            lambda ids, past: model(input_ids=ids, use_cache=True, **{cache: past}),
            prompt_ids,
            int(prompt_ids.shape[1]),
        )
    encoded = model.get_encoder()(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids))
    start = torch.tensor([[model.config.decoder_start_token_id]], device=device)
    return (
        lambda ids, past: model(
            encoder_outputs=encoded, decoder_input_ids=ids, use_cache=True, **{cache: past}
        ),
        start,
        1,
    )


def token_budget(model: nn.Module, params: SamplingParams, used: int) -> int:
    """How many tokens a request may generate: ``max_new_tokens``, cut to the context length."""
    limit = context_length(model)
    return params.max_new_tokens if limit is None else min(params.max_new_tokens, max(0, limit - used))


class Continuation:
    """The text of one generation, token by token: eos, stop strings, the token budget, and the
    pieces that are safe to emit (a stop string could still start in the held-back tail).

    ``push(token)`` returns the next piece (``done`` False) or ``None``; once ``finished``,
    ``finish()`` gives the last piece (``done`` True). The pieces concatenate to the whole
    continuation, without the prompt."""

    def __init__(self, tokenizer, params: SamplingParams, budget: int) -> None:
        self.tokenizer, self.stops, self.budget = tokenizer, tuple(params.stop), budget
        self.holdback = max((len(s) for s in self.stops), default=1) - 1
        self.generated: list[int] = []
        self.emitted = ""
        self.stopped_text: str | None = None  # the text cut at a stop string
        self.finished = budget <= 0

    def push(self, token: int) -> GenerationStep | None:
        if self.tokenizer.eos_token_id is not None and token == self.tokenizer.eos_token_id:
            self.finished = True
            return None
        self.generated.append(token)
        self.finished = len(self.generated) >= self.budget
        text = self.tokenizer.decode(self.generated, skip_special_tokens=True)
        cut = _first_stop(text, self.stops) if self.stops else -1
        if cut >= 0:
            self.stopped_text, self.finished = text[:cut], True
            return None
        safe = len(text) - self.holdback
        # only emit a stable prefix (decoders may tidy the boundary, e.g. " ?" -> "?")
        if safe > len(self.emitted) and text.startswith(self.emitted):
            piece, self.emitted = text[len(self.emitted) : safe], text[:safe]
            return GenerationStep(piece, len(self.generated), False)
        return None

    def finish(self) -> GenerationStep:
        final = self.stopped_text
        if final is None:
            final = self.tokenizer.decode(self.generated, skip_special_tokens=True)
            cut = _first_stop(final, self.stops) if self.stops else -1
            final = final[:cut] if cut >= 0 else final
        rest = final[len(self.emitted) :] if final.startswith(self.emitted) else ""
        return GenerationStep(rest, len(self.generated), True)


def request_generator(params: SamplingParams) -> torch.Generator:
    """The request's own random generator, seeded with its (validated) seed."""
    return torch.Generator(device="cpu").manual_seed(int(params.seed) % (2**63))


@torch.no_grad()
def generate_steps(
    model: nn.Module, tokenizer, prompt_ids: Tensor, params: SamplingParams
) -> Iterator[GenerationStep]:
    """Yield the continuation of ``prompt_ids`` ``[1, T]`` piece by piece, one request alone; the
    last step has ``done``. ``params`` are validated (``SamplingParams.validated``: a seed and a
    length are set). Causal LMs continue the prompt; encoder-decoder models (T5, BART) answer it
    from their decoder. Stops at ``max_new_tokens``, the tokenizer's eos token, a stop string or
    the model's context length."""
    step, cur, used = stepper(model, prompt_ids)
    cache = cache_argument(model)
    generator = request_generator(params)
    text = Continuation(tokenizer, params, token_budget(model, params, used))
    past = None
    while not text.finished:
        out = step(cur, past)
        past = getattr(out, cache)
        token = next_token(out.logits[0, -1], params, generator)
        if (piece := text.push(token)) is not None:
            yield piece
        cur = torch.tensor([[token]], device=cur.device)
    yield text.finish()
