"""The served model's weights as base + an ordered list of active edits.

``WeightStore`` keeps the original value of every parameter an edit ever touched (copy on
first write, once), applies edits in place with ``editor_nets.apply_delta``, and rolls back
ANY active edit by restoring the touched parameters to their originals and replaying the
remaining active edits in their original order. Because ``apply_delta`` is a deterministic
function of (weights, factors), the result is bitwise equal to the weights of a server that
never applied the rolled-back edit.

Note the semantics: a later edit's factors were computed by the editor on a model that
included the earlier edit. Rolling back the earlier edit replays the later edit's stored
factors unchanged; it does not recompute them on the model without the earlier edit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from editor_nets import EditDelta, apply_delta, restore_weights

__all__ = ["WeightStore"]


class WeightStore:
    """Base weights (kept for touched parameters only) plus active edits applied in order."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.originals: dict[str, torch.Tensor] = {}
        self.active: dict[str, EditDelta] = {}  # edit_id -> EditDelta, insertion order = apply order

    def _apply_one(self, delta: EditDelta) -> dict[str, torch.Tensor]:
        snapshot = apply_delta(self.model, delta)
        for name, value in snapshot.items():
            self.originals.setdefault(name, value)  # copy on first write: the pre-edit value
        return snapshot

    def apply(self, edit_id: str, delta: EditDelta, check: Callable[[], str | None] | None = None) -> None:
        """Apply ``delta`` in place and record it as active under ``edit_id``.

        ``check()`` runs after the update; if it returns a reason (e.g. non-finite weights) the
        update is undone bitwise and ``ValueError(reason)`` raised. On any failure nothing changes.
        """
        if edit_id in self.active:
            raise KeyError(f"edit {edit_id!r} is already active")
        known = set(self.originals)
        snapshot = self._apply_one(delta)
        reason = check() if check is not None else None
        if reason is not None:
            restore_weights(self.model, snapshot)
            for name in set(snapshot) - known:
                del self.originals[name]
            raise ValueError(reason)
        self.active[edit_id] = delta

    def rollback(self, edit_ids: Iterable[str]) -> None:
        """Remove ``edit_ids`` (any active edits): restore originals, replay the rest in order."""
        ids = list(edit_ids)
        unknown = [i for i in ids if i not in self.active]
        if unknown:
            raise KeyError(f"not active: {unknown}")
        for i in ids:
            del self.active[i]
        self.rebuild()

    def rebuild(self) -> None:
        """Put every touched parameter back to its original, then replay the active edits in order."""
        if self.originals:
            restore_weights(self.model, self.originals)
        for delta in self.active.values():
            self._apply_one(delta)

    def load_active(self, deltas: Iterable[tuple[str, EditDelta]]) -> None:
        """Start-up replay: apply ``(edit_id, delta)`` pairs in order on the base weights."""
        for edit_id, delta in deltas:
            self._apply_one(delta)
            self.active[edit_id] = delta
