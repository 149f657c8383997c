"""What a request may hold: the limits, the sampling parameters, their validation, the error type.

Every check here raises ``ServeError`` with the gRPC status code name the front returns
(``INVALID_ARGUMENT`` for malformed values, ``RESOURCE_EXHAUSTED`` for sizes over a limit) and
runs before anything changes; ``journal_write_failed`` is the refusal of a call whose journal
write failed. Nothing here imports torch, so the client can use it too.
"""

from __future__ import annotations

import errno
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

__all__ = [
    "EditItem",
    "SamplingParams",
    "ServeError",
    "ServeLimits",
    "check_edit",
    "check_text",
    "journal_write_failed",
]


class ServeError(Exception):
    """A request the service refuses; ``code`` is a ``grpc.StatusCode`` name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self):  # picklable across Ray
        return (ServeError, (self.code, self.message))


def invalid(message: str) -> ServeError:
    return ServeError("INVALID_ARGUMENT", message)


def journal_write_failed(err: OSError, what: str) -> ServeError:
    """The refusal of a call whose journal write failed (the journal removed what it wrote):
    ``RESOURCE_EXHAUSTED`` when the disk is full (or over quota), ``UNAVAILABLE`` otherwise."""
    code = "RESOURCE_EXHAUSTED" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "UNAVAILABLE"
    where = f" writing {Path(err.filename).name}" if err.filename else ""
    return ServeError(
        code, f"the journal could not store the {what}{where}: {err.strerror or err}; nothing was changed"
    )


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
    max_edit_items: int = 128
    max_stop_strings: int = 8
    max_provenance_entries: int = 32
    max_key_chars: int = 256
    max_edit_norm: float | None = 1e4


@dataclass(frozen=True)
class EditItem:
    """One correction of an Edit call: ``prompt -> target``, and in-scope ``rephrases`` edited with it.
    ``subject`` (optional) names the entity inside the prompt; ROME, MEMIT and AlphaEdit read their
    key at its last token (they refuse an edit without one when they key on the subject)."""

    prompt: str
    target: str
    rephrases: tuple[str, ...] = ()
    subject: str = ""


@dataclass(frozen=True)
class SamplingParams:
    """How to continue a prompt. ``max_new_tokens`` 0 = the server default; ``temperature`` 0 =
    greedy; ``top_p`` in (0, 1] keeps the smallest set of tokens whose probability mass reaches it
    (0 = 1); ``seed`` ``None`` = the server picks one; ``stop`` strings end the text (and are not
    part of it). ``validated`` checks them against the limits and fills in the defaults."""

    max_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def validated(self, limits: ServeLimits) -> SamplingParams:
        """These parameters with defaults filled in (``top_p`` 1, a seed, the default length), or
        ``ServeError`` naming the first bad field."""
        n = self.max_new_tokens
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise invalid(f"max_new_tokens must be a non-negative integer, got {n!r}")
        if n > limits.max_new_tokens:
            raise ServeError(
                "RESOURCE_EXHAUSTED", f"max_new_tokens={n}; the limit is {limits.max_new_tokens}"
            )
        if not math.isfinite(self.temperature) or not 0 <= self.temperature <= 100:
            raise invalid(f"temperature must be in [0, 100], got {self.temperature}")
        if not math.isfinite(self.top_p) or not 0 <= self.top_p <= 1:
            raise invalid(f"top_p must be in [0, 1] (0 means 1), got {self.top_p}")
        if len(self.stop) > limits.max_stop_strings:
            raise invalid(f"{len(self.stop)} stop strings; the limit is {limits.max_stop_strings}")
        for i, s in enumerate(self.stop):
            if not isinstance(s, str) or not s or len(s) > 256:
                raise invalid(f"stop[{i}] must be a non-empty string of at most 256 characters")
        return replace(
            self,
            max_new_tokens=n or limits.default_new_tokens,
            temperature=float(self.temperature),
            top_p=float(self.top_p) if self.top_p > 0 else 1.0,
            seed=int(self.seed) if self.seed is not None else secrets.randbits(63),
            stop=tuple(self.stop),
        )


def check_text(name: str, value: Any, limits: ServeLimits, *, allow_empty: bool = False) -> str:
    """``value`` if it is a string within the limits (no NUL, non-empty unless allowed)."""
    if not isinstance(value, str):
        raise invalid(f"{name} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise invalid(f"{name} is empty")
    if len(value) > limits.max_text_chars:
        raise invalid(f"{name} has {len(value)} characters; the limit is {limits.max_text_chars}")
    if "\x00" in value:
        raise invalid(f"{name} contains a NUL character")
    return value


def check_edit(
    items: Sequence[EditItem], idempotency_key: str, provenance: Mapping[str, str], limits: ServeLimits
) -> None:
    """The fields of an Edit request; with several items a message names the item (``edits[3].target``).
    Token lengths are checked by the service, which has the tokenizer."""
    if not items:
        raise invalid("an Edit needs at least one edit")
    if len(items) > limits.max_edit_items:
        raise invalid(f"{len(items)} edits in one call; the limit is {limits.max_edit_items}")
    for i, item in enumerate(items):
        where = f"edits[{i}]." if len(items) > 1 else ""
        check_text(f"{where}prompt", item.prompt, limits)
        check_text(f"{where}target", item.target, limits)
        if len(item.rephrases) > limits.max_rephrases:
            within = f" in edits[{i}]" if len(items) > 1 else ""
            raise invalid(f"{len(item.rephrases)} rephrases{within}; the limit is {limits.max_rephrases}")
        for j, r in enumerate(item.rephrases):
            check_text(f"{where}rephrases[{j}]", r, limits)
    if not isinstance(idempotency_key, str) or len(idempotency_key) > limits.max_key_chars:
        raise invalid(f"idempotency_key must be a string of at most {limits.max_key_chars} characters")
    if len(provenance) > limits.max_provenance_entries:
        raise invalid(f"{len(provenance)} provenance entries; the limit is {limits.max_provenance_entries}")
    for k, v in provenance.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k or len(k) > limits.max_key_chars:
            raise invalid(
                f"provenance key {k!r} must be a non-empty string of at most {limits.max_key_chars} characters"
            )
        check_text(f"provenance[{k!r}]", v, limits, allow_empty=True)
