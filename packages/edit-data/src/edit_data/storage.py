"""Subject-disjoint splits, the on-disk format (``datasets``' ``save_to_disk``) and world files."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict, Features, Value

from edit_data.records import EditRecord
from edit_data.world import World

SPLITS = ("train", "validation", "test")
META_FILE = "edit_data.json"

_EXAMPLE = {"prompt": Value("string"), "answer": Value("string")}
FEATURES = Features(
    {
        "prompt": Value("string"),
        "target": Value("string"),
        "rephrases": [Value("string")],
        "locality": [_EXAMPLE],
        "hard_locality": [_EXAMPLE],
        "original": Value("string"),
        "subject": Value("string"),
        "relation": Value("string"),
        "task": Value("string"),
        "source": Value("string"),
    }
)


def group_key(record: EditRecord) -> str:
    """What a split must not share: the subject, or the normalised prompt where no subject is known."""
    if record.subject:
        return "subject:" + record.subject.strip().lower()
    return "prompt:" + " ".join(record.prompt.lower().split())


def split_records(
    records: Sequence[EditRecord], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[EditRecord]]:
    """Deterministic ``train`` / ``validation`` / ``test`` split; no subject is in two splits.

    Records are grouped by :func:`group_key`, the groups shuffled with ``seed`` and laid end to
    end; a group goes to the split its middle record falls in, so split sizes follow
    ``fractions`` up to one group. Records keep their input order within a split.
    """
    fractions = [float(f) for f in fractions]
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {list(fractions)}")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(group_key(r), []).append(i)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    bounds = [sum(fractions[: k + 1]) * len(records) for k in range(len(SPLITS))]
    chosen: dict[str, list[int]] = {name: [] for name in SPLITS}
    placed = 0
    for key in keys:
        members = groups[key]
        middle = placed + len(members) / 2
        k = next((k for k, b in enumerate(bounds) if middle < b), len(SPLITS) - 1)
        chosen[SPLITS[k]].extend(members)
        placed += len(members)
    return {name: [records[i] for i in sorted(chosen[name])] for name in SPLITS}


def records_to_dataset(records: Sequence[EditRecord]) -> Dataset:
    """A ``datasets.Dataset`` with one row per record (columns as in ``EditRecord.to_dict``)."""
    rows = [r.to_dict() for r in records]
    return Dataset.from_dict({k: [row[k] for row in rows] for k in FEATURES}, features=FEATURES)


def dataset_to_records(dataset: Dataset) -> list[EditRecord]:
    return [EditRecord.from_dict(row) for row in dataset]


def save_records(
    splits: dict[str, Sequence[EditRecord]], out_dir: str | Path, *, info: dict[str, Any] | None = None
) -> Path:
    """Write splits with ``DatasetDict.save_to_disk`` plus ``edit_data.json`` (split names and
    sizes, and ``info``). Empty splits are listed there and come back empty from :func:`load_saved`."""
    out = Path(out_dir)
    if not splits:
        raise ValueError("no splits to save")
    non_empty = {name: records_to_dataset(recs) for name, recs in splits.items() if len(recs)}
    out.mkdir(parents=True, exist_ok=True)
    if non_empty:
        bars_were_on = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            DatasetDict(non_empty).save_to_disk(str(out))
        finally:
            if bars_were_on:
                datasets.enable_progress_bars()
    meta = {
        "order": list(splits),
        "splits": {name: len(recs) for name, recs in splits.items()},
        "info": info or {},
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def load_saved(out_dir: str | Path) -> dict[str, list[EditRecord]]:
    """Read what :func:`save_records` wrote: split name -> records, in the saved order."""
    out = Path(out_dir)
    meta_path = out / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{out}: not an edit_data directory (no {META_FILE}; write one with save_records)"
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    sizes: dict[str, int] = meta["splits"]
    saved = DatasetDict.load_from_disk(str(out)) if any(sizes.values()) else DatasetDict()
    result = {}
    for name in meta.get("order", sorted(sizes)):
        size = sizes[name]
        result[name] = dataset_to_records(saved[name]) if size else []
        if len(result[name]) != size:
            raise ValueError(
                f"{out}: split {name!r} has {len(result[name])} records, {META_FILE} says {size}"
            )
    return result


def saved_info(out_dir: str | Path) -> dict[str, Any]:
    """The ``info`` dict stored by :func:`save_records`."""
    return json.loads((Path(out_dir) / META_FILE).read_text(encoding="utf-8"))["info"]


def save_world(
    world: World,
    out_dir: str | Path,
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    tokenizer: bool = True,
) -> Path:
    """Write a world: ``corpus.txt`` (one line each), ``facts.jsonl``, ``claims.jsonl``,
    ``world.json`` (seed, relations, entities), the QA edit records as subject-disjoint splits
    (``save_records`` layout at ``out_dir``, read back with :func:`load_saved`), the label-flip
    records under ``claims/`` and, with ``tokenizer``, a word-level tokenizer under ``tokenizer/``."""
    from edit_data.tokenizer import train_tokenizer

    out = Path(out_dir)
    info = {"source": f"{world.name}(seed={world.seed})", "relations": [r.name for r in world.relations]}
    save_records(split_records(world.records, fractions, split_seed), out, info=info)
    save_records(
        split_records(world.classification_records, fractions, split_seed), out / "claims", info=info
    )
    (out / "corpus.txt").write_text("".join(line + "\n" for line in world.corpus), encoding="utf-8")
    for name, rows in (("facts", world.facts), ("claims", world.claims)):
        text = "".join(json.dumps(asdict(x), sort_keys=True) + "\n" for x in rows)
        (out / f"{name}.jsonl").write_text(text, encoding="utf-8")
    meta = {
        "seed": world.seed,
        "relations": [asdict(r) for r in world.relations],
        "entities": world.entities,
        "counts": {"facts": len(world.facts), "corpus": len(world.corpus), "records": len(world.records)},
    }
    (out / "world.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if tokenizer:
        train_tokenizer(world.corpus).save_pretrained(str(out / "tokenizer"))
    return out
