"""What the memory-based editors (GRACE, SERAC, the edit cache) share: their edits are entries of
a table held as data, never weight changes.

* An **entry table** (:class:`EntryTable`: GRACE's ``Codebook``, SERAC's ``EditMemory``, the
  ``EditCache``) is an immutable dataclass whose fields are, per entry, a row of a tensor
  (``[n, ...]``) or an item of a tuple (``n`` strings or token-id tuples). Tables are joined in
  order (``joined``), lose an entry (``without``), and go to and from plain data
  (``to_state``: tensors plus JSON-able metadata) for checkpoints and the sidecar's journal.
* A **memory editor** (:class:`MemoryEditor`) holds its current table in ``entries``, computes the
  entries some records would add without changing anything (``entries_for``), and acts on a model
  only inside ``attached(model)`` (forward hooks, removed on exit). ``edit`` appends the records'
  entries, ``remove(i)`` drops entry ``i``, ``start()`` empties the table. Because what the hooks
  do is a function of the table alone, the table of the active edits joined in their order gives
  exactly the answers of a model that never saw the others: how the sidecar undoes one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from editor_nets.state import WeightSnapshot

__all__ = ["EntryTable", "MemoryEditor"]

T = TypeVar("T", bound="EntryTable")


def _as_tuples(value: Any) -> Any:
    """JSON lists back to the tuples a table holds (token ids stay tuples of ints)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


@dataclasses.dataclass(frozen=True)
class EntryTable:
    """Base of the entry tables (see the module docstring). The number of entries is the length
    of the first tuple field."""

    def _fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self))

    def __len__(self) -> int:
        return next(
            len(getattr(self, f.name)) for f in self._fields() if isinstance(getattr(self, f.name), tuple)
        )

    def joined(self: T, parts: Sequence[T]) -> T:
        """These entries followed by those of ``parts``, in order."""
        tables = [t for t in (self, *parts) if len(t)]
        if len(tables) < 2:
            return tables[0] if tables else self
        values = {}
        for f in self._fields():
            items = [getattr(t, f.name) for t in tables]
            if isinstance(items[0], Tensor):
                values[f.name] = torch.cat([x.to(items[0].device) for x in items])
            else:
                values[f.name] = sum(items, ())
        return type(self)(**values)

    def without(self: T, index: int) -> T:
        """This table less entry ``index`` (``IndexError`` naming it when there is none)."""
        if not 0 <= index < len(self):
            raise IndexError(f"{type(self).__name__} entry {index} does not exist (it has {len(self)})")
        keep = [i for i in range(len(self)) if i != index]
        values = {}
        for f in self._fields():
            value = getattr(self, f.name)
            values[f.name] = value[keep] if isinstance(value, Tensor) else tuple(value[i] for i in keep)
        return type(self)(**values)

    def to_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``(tensors, meta)``: the tensor fields (on CPU, contiguous) and the others as JSON lists."""
        tensors, meta = {}, {}
        for f in self._fields():
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                tensors[f.name] = value.detach().cpu().contiguous()
            else:
                meta[f.name] = json.loads(json.dumps(value))
        return tensors, meta

    @classmethod
    def from_state(cls: type[T], tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> T:
        """The table ``to_state`` gave; ``ValueError`` naming the field when the sizes disagree."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in tensors and n not in meta]
        if missing:
            raise ValueError(f"a {cls.__name__} needs the fields {missing}")
        table = cls(**{n: tensors[n] if n in tensors else _as_tuples(meta[n]) for n in names})
        n = len(table)
        for name in names:
            value = getattr(table, name)
            size = (value.shape[0] if value.dim() else 0) if isinstance(value, Tensor) else len(value)
            if size != n:
                raise ValueError(f"a {cls.__name__} of {n} entries has {size} rows in its field {name!r}")
        return table

    def digest(self) -> str:
        """sha256 over the table's fields (equal digests: the same entries, bitwise)."""
        tensors, meta = self.to_state()
        h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
        for name, t in sorted(tensors.items()):
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def save(self, path: str | Path) -> None:
        """One safetensors file: the tensor fields, the others as JSON in its metadata."""
        from safetensors.torch import save_file

        tensors, meta = self.to_state()
        save_file(tensors, str(path), metadata={"entries": json.dumps(meta)})

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("entries", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        try:
            return cls.from_state(tensors, meta)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err


class MemoryEditor:
    """Base of the editors whose edits are entries of ``entries`` (an :class:`EntryTable`).
    Subclasses (dataclasses with an ``entries`` field) give ``entries_for`` and ``attached``."""

    entries: Any

    def entries_for(self, model: nn.Module, tokenizer: Any, records: Sequence[Any]) -> EntryTable:
        """The entries ``records`` would add (one per record); nothing changes."""
        raise NotImplementedError

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator[None]:
        """Inside the block, ``model`` answers as edited by ``entries``."""
        raise NotImplementedError
        yield

    def start(self) -> None:
        self.entries = type(self.entries)()

    def remove(self, index: int) -> None:
        self.entries = self.entries.without(index)

    def edit(self, model: nn.Module, tokenizer: Any, records: Sequence[Any]) -> WeightSnapshot:
        """Add one entry per record; the weights are not touched (an empty snapshot)."""
        self.entries = self.entries.joined([self.entries_for(model, tokenizer, records)])
        return {}
