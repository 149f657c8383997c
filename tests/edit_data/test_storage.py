"""Subject-disjoint splits and save/load round trips through the datasets on-disk format."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from edit_data import (
    EditRecord,
    LocalityExample,
    build_world,
    load_saved,
    records_to_dataset,
    save_records,
    save_world,
    split_records,
)


@pytest.fixture(scope="module")
def world():
    return build_world(n_entities=80, seed=5)


def test_split_is_subject_disjoint_complete_and_deterministic(world):
    splits = split_records(world.records, (0.8, 0.1, 0.1), seed=1)
    assert list(splits) == ["train", "validation", "test"]
    subjects = {name: {r.subject for r in recs} for name, recs in splits.items()}
    assert not subjects["train"] & subjects["validation"]
    assert not subjects["train"] & subjects["test"]
    assert not subjects["validation"] & subjects["test"]
    all_sources = sorted(r.source for recs in splits.values() for r in recs)
    assert all_sources == sorted(r.source for r in world.records)
    n = len(world.records)
    biggest_group = max(
        sum(r.subject == s for r in world.records) for s in {r.subject for r in world.records}
    )
    for name, frac in zip(splits, (0.8, 0.1, 0.1), strict=True):
        assert abs(len(splits[name]) - frac * n) <= biggest_group
    assert split_records(world.records, (0.8, 0.1, 0.1), seed=1) == splits
    assert split_records(world.records, (0.8, 0.1, 0.1), seed=2) != splits


def test_split_without_subjects_groups_by_prompt():
    records = [EditRecord(f"Question {i % 7}?", f"t{i}") for i in range(40)]
    splits = split_records(records, (0.5, 0.25, 0.25), seed=0)
    prompts = [{r.prompt.lower() for r in recs} for recs in splits.values()]
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2]) and not (prompts[1] & prompts[2])
    assert sum(len(v) for v in splits.values()) == 40
    assert split_records(records, (1, 0, 0))["validation"] == []


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.8, 0.3, -0.1), (0.5, 0.2, 0.2)])
def test_split_rejects_bad_fractions(world, fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_records(world.records, fractions)


def test_save_load_round_trip_keeps_everything(tmp_path):
    records = [
        EditRecord(
            "p1",
            "t1",
            ["r1", "r2"],
            [LocalityExample("l", "a")],
            [LocalityExample("h", "b")],
            original="o",
            subject="s",
            relation="rel",
            task="qa",
            source="x.jsonl:1",
        ),
        EditRecord("p2", "t2", task="generation"),  # None fields and empty lists
        EditRecord("p3", "REFUTES", original="SUPPORTS", task="classification"),
    ]
    splits = {"train": records[:2], "validation": [], "test": records[2:]}
    save_records(splits, tmp_path / "out", info={"note": "hi"})
    back = load_saved(tmp_path / "out")
    assert back == splits and list(back) == ["train", "validation", "test"]
    assert back["train"][1].original is None and back["train"][1].rephrases == []
    ds = records_to_dataset(records)
    assert ds.num_rows == 3 and ds[0]["locality"] == [{"prompt": "l", "answer": "a"}]


def test_load_saved_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"edit_data\.json"):
        load_saved(tmp_path)


def test_save_world(tmp_path, world):
    save_world(world, tmp_path / "w")
    out = tmp_path / "w"
    assert (out / "corpus.txt").read_text(encoding="utf-8").splitlines() == world.corpus
    back = load_saved(out)
    assert sorted(r.source for v in back.values() for r in v) == sorted(r.source for r in world.records)
    claims = load_saved(out / "claims")
    assert sum(map(len, claims.values())) == len(world.claims)
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert len(tok(world.records[0].target, add_special_tokens=False)["input_ids"]) == 1
    # byte-identical output for the same world
    save_world(build_world(n_entities=80, seed=5), tmp_path / "w2")
    for name in ("corpus.txt", "facts.jsonl", "claims.jsonl", "world.json", "tokenizer/tokenizer.json"):
        assert (out / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name
