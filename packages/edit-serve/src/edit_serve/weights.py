"""The served model's edits as base + an ordered list of active edits: ``WeightStore`` for the
weight editors, ``EntryStore`` for the memory editors (GRACE, SERAC, the edit cache).

``WeightStore`` keeps the original value of every parameter an edit ever touched (copy on
first write, once), applies edits in place with ``editor_nets.apply_delta``, and rolls back
ANY active edit by restoring the touched parameters to their originals and replaying the
remaining active edits in their original order. Because ``apply_delta`` is a deterministic
function of (weights, factors), the result is bitwise equal to the weights of a server that
never applied the rolled-back edit.

Note the semantics: a later edit's factors were computed by the editor on a model that
included the earlier edit. Rolling back the earlier edit replays the later edit's stored
factors unchanged; it does not recompute them on the model without the earlier edit.

``EntryStore`` does the same for a memory editor (``editor_nets.memory``): the weights never
change; the editor's table is the base table joined with the active edits' entries in their
order, rebuilt on every apply and rollback, so after a rollback it is exactly the table of a
server that never made the edit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from editor_nets import EditDelta, apply_delta, restore_weights
from editor_nets.memory import EntryTable, MemoryEditor

__all__ = ["EntryStore", "WeightStore"]


class _ActiveEdits:
    """``active``: edit_id -> what the edit changes, insertion order = apply order; ``rebuild()``
    puts the served state back to base + ``active``."""

    active: dict

    def rebuild(self) -> None:
        raise NotImplementedError

    def rollback(self, edit_ids: Iterable[str]) -> None:
        """Remove ``edit_ids`` (any active edits) and rebuild from the rest, in order."""
        ids = list(edit_ids)
        unknown = [i for i in ids if i not in self.active]
        if unknown:
            raise KeyError(f"not active: {unknown}")
        for i in ids:
            del self.active[i]
        self.rebuild()


class WeightStore(_ActiveEdits):
    """Base weights (kept for touched parameters only) plus active edits applied in order."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.originals: dict[str, torch.Tensor] = {}
        self.active: dict[str, EditDelta] = {}

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


class EntryStore(_ActiveEdits):
    """A memory editor's base table (what it was loaded with) plus the active edits' entries."""

    def __init__(self, editor: MemoryEditor) -> None:
        self.editor = editor
        self.base: EntryTable = editor.entries
        self.active: dict[str, EntryTable] = {}

    def apply(self, edit_id: str, entries: EntryTable, check: Callable[[], str | None] | None = None) -> None:
        """Add ``entries`` under ``edit_id``; a reason from ``check()`` undoes it (``ValueError``)."""
        if edit_id in self.active:
            raise KeyError(f"edit {edit_id!r} is already active")
        self.active[edit_id] = entries
        self.rebuild()
        reason = check() if check is not None else None
        if reason is not None:
            del self.active[edit_id]
            self.rebuild()
            raise ValueError(reason)

    def rebuild(self) -> None:
        self.editor.entries = self.base.joined(list(self.active.values()))

    def load_active(self, entries: Iterable[tuple[str, EntryTable]]) -> None:
        """Start-up replay: the ``(edit_id, entries)`` pairs in order after the base table."""
        self.active.update(entries)
        self.rebuild()
