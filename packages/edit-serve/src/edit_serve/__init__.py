"""edit_serve: serve a language model over gRPC, correct it with MEND edits, undo them exactly.

The logic lives in plain classes (``EditService``, ``EditJournal``, ``WeightStore``); the Ray
Serve deployment and the grpc.aio front wrap them; ``EditClient`` is the Python client.
Heavy imports (Ray, transformers) happen only when a server is started.
"""

from edit_serve.client import EditClient
from edit_serve.journal import EditJournal, JournalCorruptError, JournalEntry, JournalLockedError
from edit_serve.requests import EditItem, SamplingParams, ServeError, ServeLimits
from edit_serve.results import (
    EditInfo,
    EditItemResult,
    EditResult,
    GenerateResult,
    HealthInfo,
    RollbackResult,
)
from edit_serve.rwlock import ReadWriteLock
from edit_serve.service import EditService
from edit_serve.weights import WeightStore
from editor_nets import weights_digest

__all__ = [
    "EditClient",
    "EditInfo",
    "EditItem",
    "EditItemResult",
    "EditJournal",
    "EditResult",
    "EditService",
    "GenerateResult",
    "HealthInfo",
    "JournalCorruptError",
    "JournalEntry",
    "JournalLockedError",
    "ReadWriteLock",
    "RollbackResult",
    "SamplingParams",
    "ServeError",
    "ServeLimits",
    "WeightStore",
    "weights_digest",
]
