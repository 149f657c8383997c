"""The one edit-record schema every package uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TASKS = ("qa", "generation", "classification")


@dataclass
class LocalityExample:
    """An out-of-scope prompt and the answer the model must keep giving after an edit."""

    prompt: str
    answer: str

    def to_dict(self) -> dict[str, str]:
        return {"prompt": self.prompt, "answer": self.answer}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LocalityExample:
        return cls(prompt=str(d["prompt"]), answer=str(d["answer"]))


@dataclass
class EditRecord:
    """One edit: make the model answer ``target`` to ``prompt``.

    ``rephrases`` are in-scope prompts that must also get ``target``; ``locality`` are
    out-of-scope prompts with their expected (unchanged) answers; ``hard_locality`` are the
    near misses (same subject / other relation, same relation / other subject).
    ``original`` is the pre-edit (true) answer where known. ``source`` is provenance such as
    ``"zsre.jsonl:12"`` or ``"world(seed=0)#17"``.
    """

    prompt: str
    target: str
    rephrases: list[str] = field(default_factory=list)
    locality: list[LocalityExample] = field(default_factory=list)
    hard_locality: list[LocalityExample] = field(default_factory=list)
    original: str | None = None
    subject: str | None = None
    relation: str | None = None
    task: str = "qa"
    source: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"EditRecord.task must be one of {TASKS}, got {self.task!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; every key is always present (``None`` where unknown)."""
        return {
            "prompt": self.prompt,
            "target": self.target,
            "rephrases": list(self.rephrases),
            "locality": [x.to_dict() for x in self.locality],
            "hard_locality": [x.to_dict() for x in self.hard_locality],
            "original": self.original,
            "subject": self.subject,
            "relation": self.relation,
            "task": self.task,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EditRecord:
        """Inverse of :meth:`to_dict`; missing optional keys take their defaults."""

        def examples(key: str) -> list[LocalityExample]:
            return [
                x if isinstance(x, LocalityExample) else LocalityExample.from_dict(x)
                for x in d.get(key) or []
            ]

        return cls(
            prompt=d["prompt"],
            target=d["target"],
            rephrases=list(d.get("rephrases") or []),
            locality=examples("locality"),
            hard_locality=examples("hard_locality"),
            original=d.get("original"),
            subject=d.get("subject"),
            relation=d.get("relation"),
            task=d.get("task") or "qa",
            source=d.get("source") or "",
        )
