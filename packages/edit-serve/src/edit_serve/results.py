"""What the service answers: one dataclass per reply. Their fields are named as in the proto's
messages, so the gRPC front builds each reply from ``dataclasses.asdict`` of one of these."""

from __future__ import annotations

from dataclasses import dataclass, field

from edit_serve.requests import EditItem

__all__ = [
    "ClassifyResult",
    "EditInfo",
    "EditItemResult",
    "EditResult",
    "GenerateResult",
    "HealthInfo",
    "LabelProbability",
    "RollbackResult",
]


@dataclass(frozen=True)
class EditItemResult:
    target_logprob_before: float
    target_logprob_after: float


@dataclass(frozen=True)
class EditResult:
    """One Edit call (one version); ``target_logprob_*`` are of its first item, ``items`` of each."""

    edit_id: str
    version: int
    latency_ms: float
    target_logprob_before: float
    target_logprob_after: float
    replayed: bool
    items: list[EditItemResult] = field(default_factory=list)
    replicas: int = 1  # replicas serving this version when the reply was sent


@dataclass(frozen=True)
class GenerateResult:
    text: str
    num_tokens: int
    version: int


@dataclass(frozen=True)
class LabelProbability:
    label: str
    probability: float


@dataclass(frozen=True)
class ClassifyResult:
    """The most probable label, every label's probability (in the model's label order), the version."""

    label: str
    probabilities: list[LabelProbability]
    version: int


@dataclass(frozen=True)
class RollbackResult:
    version: int
    rolled_back: list[str]
    replicas: int = 1


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
    items: list[EditItem] = field(default_factory=list)


@dataclass(frozen=True)
class HealthInfo:
    status: str
    version: int
    active_edits: int
    model: str
    device: str
    weights_sha256: str = ""
    replicas: int = 1  # replicas serving (status "DIVERGED" when their digests differ)
