"""Builders for the public formats: small files written here, then read back as EditRecords."""

from __future__ import annotations

import pytest

from edit_data import (
    EditRecord,
    LocalityExample,
    RecordError,
    build_world,
    detect_format,
    load_locality,
    load_records,
    read_records,
    train_tokenizer,
)


def test_zsre_mend(write, samples):
    path = write("zsre.jsonl", [samples["zsre_mend"](i) for i in range(3)])
    records = load_records(path, "zsre")
    assert len(records) == 3
    r = records[1]
    assert r.prompt == "Which river does Bridge1 cross?"
    assert r.target == "Altriver1"
    assert r.rephrases == ["Which river is crossed by Bridge1?"]  # the input itself is dropped
    assert r.original == "Goldriver1" and r.task == "qa" and r.locality == []
    assert r.source == "zsre.jsonl:2"
    assert load_records(path) == records  # auto detects it
    assert detect_format(path) == "zsre_mend"


def test_zsre_mend_target_skips_alternatives_equal_to_prediction_or_gold(write, samples):
    row = samples["zsre_mend"](0, alternatives=["Wrongriver", "Goldriver0", "Newriver"])
    assert load_records(write("z.jsonl", [row]), "zsre_mend")[0].target == "Newriver"


def test_zsre_mend_unusable_records_are_counted_not_fatal(write, samples):
    rows = [
        samples["zsre_mend"](0),
        samples["zsre_mend"](1, alternatives=[]),
        samples["zsre_mend"](2, filtered_rephrases=["Which river does Bridge2 cross?"]),
        samples["zsre_mend"](3),
    ]
    result = read_records(write("zsre.jsonl", rows), "zsre_mend")
    assert [r.prompt for r in result.records] == [rows[0]["input"], rows[3]["input"]]
    assert [s.location for s in result.skipped] == ["line 2", "line 3"]
    assert "alternatives" in result.skipped[0].reason and "filtered_rephrases" in result.skipped[1].reason
    assert "skipped 2" in result.summary()


def test_zsre_mend_with_natural_questions_locality(write, samples):
    path = write("zsre.jsonl", [samples["zsre_mend"](i) for i in range(4)])
    nq = write(
        "nq.json",
        {"questions": [f"who is person {k}" for k in range(5)], "answers": [[f"P{k}"] for k in range(5)]},
    )
    records = load_records(path, locality_path=nq)
    pool = {(f"nq question: who is person {k}", f"P{k}") for k in range(5)}
    for r in records:
        assert len(r.locality) == 3
        assert len({x.prompt for x in r.locality}) == 3
        assert {(x.prompt, x.answer) for x in r.locality} <= pool
    assert load_records(path, locality_path=nq) == records  # deterministic


def test_zsre_rome(write, samples):
    rows = [samples["zsre_rome"](i) for i in range(3)]
    rows.append(samples["zsre_rome"](9, subject="Bridge0", src="Who built Bridge0?", answers=["Builder"]))
    path = write("zsre_mend_eval.json", rows)
    records = load_records(path, "zsre")
    assert detect_format(path) == "zsre_rome"
    r = records[0]
    assert (r.prompt, r.target, r.subject, r.original) == (
        "Which river does Bridge0 cross?",
        "Altriver0",  # leading space stripped
        "Bridge0",
        "Goldriver0",
    )
    assert r.rephrases == ["Which river is crossed by Bridge0?"]
    assert r.locality == [LocalityExample("nq question: who wrote book 0", "Author0")]
    assert r.hard_locality == [LocalityExample("Who built Bridge0?", "Builder")]  # same subject
    assert records[1].hard_locality == []
    assert r.source == "zsre_mend_eval.json[0]"


def test_counterfact(write, samples):
    path = write("counterfact.json", [samples["counterfact"](i) for i in range(2)])
    records = load_records(path, "counterfact")
    assert detect_format(path) == "counterfact"
    r = records[1]
    assert r.prompt == "Town1 is located in the country of"
    assert (r.target, r.original, r.subject, r.relation) == ("Quoria", "Zembla", "Town1", "P17")
    assert r.rephrases == ["Some text. Town1 lies in", "Town1, which is in"]
    assert r.locality == [
        LocalityExample("Village1 is in the country of", "Zembla"),
        LocalityExample("Hamlet1 is located in", "Zembla"),
    ]
    assert r.hard_locality == [LocalityExample("Quoriaville1 is located in the country of", "Quoria")]
    assert r.source == "counterfact.json[1]"


def test_fever_label_flips_with_other_claims_as_locality(write, samples):
    rows = [samples["fever"](i) for i in range(6)]
    rows.append(samples["fever"](6, alternatives=[]))
    result = read_records(write("fever-dev-kilt.jsonl", rows), "fever")
    assert detect_format(write("f2.jsonl", rows)) == "fever"
    assert len(result.records) == 6 and result.skipped[0].location == "line 7"
    gold = {row["input"]: row["output"][0]["answer"] for row in rows}
    for r in result.records:
        assert r.task == "classification" and r.target == "REFUTES"
        assert r.original == gold[r.prompt]
        assert r.rephrases and r.prompt not in r.rephrases
        assert len(r.locality) == 3
        for loc in r.locality:
            assert loc.prompt != r.prompt and loc.answer == gold[loc.prompt]


@pytest.mark.parametrize("as_list", [True, False])
def test_wikitext(write, samples, as_list):
    obj = samples["wikitext"](3)
    path = write("train.json", [obj] if as_list else obj)
    records = load_records(path)
    assert detect_format(path) == "wikitext"
    assert len(records) == 3
    for j, r in enumerate(records):
        completion = obj["completions"][j]
        assert r.task == "generation"
        assert r.target == "still stands tall today"[len("still ") :]  # last n_tokens=3 words
        assert r.prompt + " " + r.target == completion
        (rephrase,) = r.rephrases
        assert r.prompt.endswith(rephrase) and len(rephrase) < len(r.prompt)
        assert r.source == (f"train.json[0].completions[{j}]")
    assert load_records(path) == records  # the leading-token cut is seeded


def test_wikitext_with_model_tokenizer_and_text_locality(write, samples):
    obj = samples["wikitext"](2)
    tok = train_tokenizer(obj["completions"])
    passages = write(
        "wiki103.txt", " = Heading = \n\nthe first passage has eight words in it\n\nshort\nanother one here\n"
    )
    records = load_records(write("w.json", obj), "wikitext", tokenizer=tok, locality_path=passages)
    assert records[0].target == "stands tall today"
    assert {(x.prompt, x.answer) for x in records[0].locality} == {
        ("the first passage has", "eight words in it"),
        ("another", "one here"),
    }


def test_locality_file_shapes(write):
    as_list = write(
        "nq_list.json", [{"question": "q1", "answer": "a1"}, {"prompt": "p2", "answers": ["a2", "b"]}]
    )
    assert load_locality(as_list) == [LocalityExample("nq question: q1", "a1"), LocalityExample("p2", "a2")]
    as_lines = write("nq.jsonl", [{"question": "nq question: q1", "answer": "a1"}])
    assert load_locality(as_lines) == [LocalityExample("nq question: q1", "a1")]


def test_records_format_round_trip(write):
    records = build_world(n_entities=30, seed=2).records[:10]
    path = write("mine.jsonl", [r.to_dict() for r in records])
    assert detect_format(path) == "records"
    assert load_records(path) == records
    assert [EditRecord.from_dict(r.to_dict()) for r in records] == records


def test_zsre_on_a_file_of_another_format_names_what_the_file_looks_like(write, samples):
    path = write("cf.json", [samples["counterfact"](i) for i in range(2)])
    with pytest.raises(
        RecordError, match=r"cf\.json:index 0: .*looks like counterfact.*format='counterfact'"
    ):
        load_records(path, "zsre")
    assert len(load_records(path, "auto")) == 2
