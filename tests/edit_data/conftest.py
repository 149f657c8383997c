"""Small files of every public format, written by the tests themselves (shapes from docs/FORMATS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def zsre_mend_row(i: int, **over) -> dict:
    row = {
        "input": f"Which river does Bridge{i} cross?",
        "prediction": "Wrongriver",
        "alternatives": [f"Altriver{i}", "Otherriver"],
        "filtered_rephrases": [f"Which river is crossed by Bridge{i}?", f"Which river does Bridge{i} cross?"],
        "output": [{"answer": f"Goldriver{i}"}],
    }
    row.update(over)
    return row


def zsre_rome_row(i: int, **over) -> dict:
    row = {
        "subject": f"Bridge{i}",
        "src": f"Which river does Bridge{i} cross?",
        "pred": "Wrongriver",
        "rephrase": f"Which river is crossed by Bridge{i}?",
        "alt": f" Altriver{i}",
        "answers": [f"Goldriver{i}"],
        "loc": f"nq question: who wrote book {i}",
        "loc_ans": f"Author{i}",
        "cond": f"Wrongriver >> Altriver{i} || Which river does Bridge{i} cross?",
    }
    row.update(over)
    return row


def counterfact_row(i: int, **over) -> dict:
    row = {
        "case_id": i,
        "requested_rewrite": {
            "prompt": "{} is located in the country of",
            "subject": f"Town{i}",
            "relation_id": "P17",
            "target_new": {"str": "Quoria", "id": "Q1"},
            "target_true": {"str": "Zembla", "id": "Q2"},
        },
        "paraphrase_prompts": [f"Some text. Town{i} lies in", f"Town{i}, which is in"],
        "neighborhood_prompts": [f"Village{i} is in the country of", f"Hamlet{i} is located in"],
        "attribute_prompts": [f"Quoriaville{i} is located in the country of"],
        "generation_prompts": [f"Town{i} is known for"],
    }
    row.update(over)
    return row


def fever_row(i: int, **over) -> dict:
    row = {
        "input": f"Claimant{i} wrote a novel.",
        "prediction": "SUPPORTS",
        "alternatives": ["REFUTES"],
        "filtered_rephrases": [f"A novel was written by Claimant{i}."],
        "output": [{"answer": "SUPPORTS" if i % 2 else "REFUTES"}],
        "logit": 1.5,
    }
    row.update(over)
    return row


def wikitext_object(n: int = 3, **over) -> dict:
    obj = {
        "original": [f"passage {j}" for j in range(n)],
        "completions": [
            f"The tower number {j} was built in the old town by masons and it still stands tall today"
            for j in range(n)
        ],
        "n_tokens": 3,
    }
    obj.update(over)
    return obj


@pytest.fixture
def write(tmp_path: Path):
    """write(name, content): dict/list -> JSON; list of dicts with name *.jsonl -> JSON lines;
    str -> text; bytes -> raw."""

    def _write(name: str, content) -> Path:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        elif name.endswith(".jsonl"):
            path.write_text("".join(json.dumps(r) + "\n" for r in content), encoding="utf-8")
        else:
            path.write_text(json.dumps(content, indent=1), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def samples():
    return {
        "zsre_mend": zsre_mend_row,
        "zsre_rome": zsre_rome_row,
        "counterfact": counterfact_row,
        "fever": fever_row,
        "wikitext": wikitext_object,
    }
