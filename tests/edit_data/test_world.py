"""The synthetic world: determinism, structure of facts, records, corpus and claims."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from edit_data import RELATIONS, build_world, train_tokenizer


def _dump(world) -> str:
    return json.dumps(
        {
            "entities": world.entities,
            "facts": [asdict(f) for f in world.facts],
            "corpus": world.corpus,
            "records": [r.to_dict() for r in world.records],
            "claims": [asdict(c) for c in world.claims],
            "claim_records": [r.to_dict() for r in world.classification_records],
        },
        sort_keys=True,
    )


@pytest.fixture(scope="module")
def world():
    return build_world()


def test_same_seed_is_byte_identical_and_other_seed_differs():
    assert _dump(build_world(seed=3)) == _dump(build_world(seed=3))
    assert _dump(build_world(seed=3)) != _dump(build_world(seed=4))


def test_default_size_and_relations(world):
    n = sum(len(v) for v in world.entities.values())
    assert 100 <= n <= 150
    assert 6 <= len(world.relations) <= 8
    for r in world.relations:
        assert len(r.questions) >= 4 and len(r.statements) >= 2
    names = [x for v in world.entities.values() for x in v]
    assert len(set(names)) == len(names)
    assert len(world.records) == len(world.facts)


def test_every_fact_appears_in_every_template(world):
    corpus = set(world.corpus)
    by_name = {r.name: r for r in world.relations}
    for f in world.facts:
        r = by_name[f.relation]
        for q in r.questions:
            assert f"{q.format(s=f.subject)} {f.object}" in corpus
        for s in r.statements:
            assert s.format(s=f.subject, o=f.object) in corpus
    per_fact = sum(
        len(by_name[f.relation].questions) + len(by_name[f.relation].statements) for f in world.facts
    )
    assert len(world.corpus) == per_fact


def test_records_are_counterfactual_with_rephrases_and_locality(world):
    truth = {(f.subject, f.relation): f.object for f in world.facts}
    types = {n: t for t, names in world.entities.items() for n in names}
    by_name = {r.name: r for r in world.relations}
    corpus = set(world.corpus)
    for i, rec in enumerate(world.records):
        rel = by_name[rec.relation]
        assert rec.original == truth[(rec.subject, rec.relation)]
        assert rec.target != rec.original
        assert types[rec.target] == rel.object_type
        assert rec.source == f"world(seed=0)#{i}"
        # prompt + rephrases are exactly the relation's question templates for this subject
        assert sorted([rec.prompt, *rec.rephrases]) == sorted(q.format(s=rec.subject) for q in rel.questions)
        assert f"{rec.prompt} {rec.original}" in corpus
        assert len(rec.locality) == 3
        for loc in rec.locality:
            assert rec.subject not in loc.prompt
            assert f"{loc.prompt} {loc.answer}" in corpus
        for loc in rec.hard_locality:
            assert f"{loc.prompt} {loc.answer}" in corpus
            assert loc.prompt not in [rec.prompt, *rec.rephrases]


def test_hard_locality_has_both_kinds(world):
    rec = next(r for r in world.records if r.relation == "born_in")
    born_in = RELATIONS["born_in"].questions
    same_subject = [x for x in rec.hard_locality if rec.subject in x.prompt]
    same_relation = [
        x
        for x in rec.hard_locality
        if rec.subject not in x.prompt and any(x.prompt.startswith(q.split("{s}")[0]) for q in born_in)
    ]
    assert len(same_subject) == 2 and len(same_relation) == 2


def test_claims_are_true_and_false(world):
    truth = {(f.subject, f.relation): f.object for f in world.facts}
    assert len(world.claims) == 2 * len(world.facts)
    assert {c.label for c in world.claims} == {"SUPPORTS", "REFUTES"}
    for c in world.claims:
        obj = truth[(c.subject, c.relation)]
        # every statement template ends with the object
        assert (c.text.removesuffix(".").split()[-1] == obj) == (c.label == "SUPPORTS")
    for rec, claim in zip(world.classification_records, world.claims, strict=True):
        assert rec.task == "classification"
        assert rec.prompt == claim.text and rec.original == claim.label and rec.target != claim.label


def test_size_seed_and_relation_parameters():
    w = build_world(n_entities=40, seed=1, relations=["born_in", "located_in"])
    assert {r.name for r in w.relations} == {"born_in", "located_in"}
    assert set(w.entities) == {"person", "city", "country"}
    assert {f.relation for f in w.facts} == {"born_in", "located_in"}
    with pytest.raises(ValueError, match="unknown relation"):
        build_world(relations=["married_to"])


def test_word_level_tokenizer_one_token_per_name(world, tmp_path):
    tok = train_tokenizer(world.corpus)
    for names in world.entities.values():
        for name in names:
            assert len(tok(name, add_special_tokens=False)["input_ids"]) == 1, name
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert tok.pad_token_id == 0 and tok.eos_token_id == 3 and tok.unk_token_id == 1 and tok.bos_token_id == 2
    line = world.corpus[0]
    assert tok.decode(tok(line)["input_ids"]) == line
    assert tok("Qwxyz zzz")["input_ids"] == [tok.unk_token_id, tok.unk_token_id]

    tok.save_pretrained(tmp_path / "tok")
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert again(world.corpus[:5])["input_ids"] == tok(world.corpus[:5])["input_ids"]
    assert again.pad_token == "<pad>" and again.eos_token == "<eos>"
    # training is deterministic and independent of text order
    assert train_tokenizer(list(reversed(world.corpus))).get_vocab() == tok.get_vocab()


def test_tokenizer_vocab_size_cap(world):
    tok = train_tokenizer(world.corpus, vocab_size=50)
    assert len(tok) == 50
    with pytest.raises(ValueError):
        train_tokenizer([])


def test_identical_across_processes_with_different_hash_seeds():
    """No set/dict-order or hash dependence: fresh interpreters give the same bytes."""
    import hashlib
    import os
    import subprocess
    import sys

    code = (
        "import json, hashlib, edit_data as E\n"
        "w = E.build_world(n_entities=50, seed=11)\n"
        "t = E.train_tokenizer(w.corpus)\n"
        "blob = json.dumps([w.corpus, [r.to_dict() for r in w.records], t.backend_tokenizer.to_str()])\n"
        "print(hashlib.sha256(blob.encode()).hexdigest())\n"
    )
    digests = set()
    for hash_seed in ("12345",):  # this process has its own (random or CI-given) hash seed
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip())
    w = build_world(n_entities=50, seed=11)
    t = train_tokenizer(w.corpus)
    here = json.dumps([w.corpus, [r.to_dict() for r in w.records], t.backend_tokenizer.to_str()])
    digests.add(hashlib.sha256(here.encode()).hexdigest())
    assert len(digests) == 1
