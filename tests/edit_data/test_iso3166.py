"""The real-facts dataset from pycountry: deterministic, CounterFact-shaped, subject-disjoint."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("pycountry")

from typer.testing import CliRunner

from edit_data import load_saved
from edit_data.cli import app
from edit_data.iso3166 import build_iso3166


@pytest.fixture(scope="module")
def world():
    return build_iso3166(150, seed=3)


def test_deterministic_and_real(world):
    again = build_iso3166(150, seed=3)
    assert [r.to_dict() for r in again.records] == [r.to_dict() for r in world.records]
    assert again.corpus == world.corpus
    assert [r.to_dict() for r in build_iso3166(150, seed=4).records] != [r.to_dict() for r in world.records]
    import pycountry

    names = {c.name for c in pycountry.countries} | {
        getattr(c, "common_name", "") for c in pycountry.countries
    }
    in_country = [f for f in world.facts if f.relation == "in_country"]
    assert in_country and all(f.object in names for f in in_country)
    assert {f.relation for f in world.facts} >= {"in_country", "division_type"}


def test_records_are_shaped_like_counterfact(world):
    facts = {(f.subject, f.relation): f.object for f in world.facts}
    multi_word = 0
    for r in world.records:
        assert r.target != r.original and r.original == facts[(r.subject, r.relation)]
        assert len(r.rephrases) == 3 and r.prompt not in r.rephrases
        assert len(r.locality) == 10
        neighbours = [x for x in r.locality if x.answer == r.original]
        if r.relation == "in_country":  # every kept country has at least three drawn subdivisions
            assert len(neighbours) >= 2
        assert not {x.prompt for x in r.locality} & {r.prompt, *r.rephrases}
        if r.relation != "official_name":  # countries have one relation; subdivisions two or three
            assert any(r.subject in x.prompt for x in r.hard_locality)  # same subject, other relation
        multi_word += len(r.target.split()) > 1
    assert multi_word > 0
    assert any(not r.prompt.endswith("?") for r in world.records)  # statement prompts too
    assert {c.label for c in world.claims} == {"SUPPORTS", "REFUTES"}


def test_cli_builds_subject_disjoint_splits(tmp_path):
    result = CliRunner().invoke(
        app, ["build", "iso3166", "--out", str(tmp_path / "d"), "--subdivisions", "120"]
    )
    assert result.exit_code == 0, result.output
    splits = load_saved(tmp_path / "d")
    subjects = [{r.subject for r in splits[s]} for s in ("train", "validation", "test")]
    assert all(subjects) and not (subjects[0] & subjects[1]) and not (subjects[0] & subjects[2])
    assert (tmp_path / "d" / "corpus.txt").read_text().count("\n") > 400
    assert load_saved(tmp_path / "d" / "claims")["train"]


def test_without_pycountry_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycountry", None)
    with pytest.raises(ImportError, match=r"pip install 'edit-data\[iso3166\]'"):
        build_iso3166(50)
