"""Every bad-input case: the error names file, line or index, field, expected and found."""

from __future__ import annotations

import json

import pytest

from edit_data import RecordError, load_locality, load_records, read_records


def _error(path, fmt="auto", **kw) -> RecordError:
    with pytest.raises(RecordError) as info:
        load_records(path, fmt, **kw)
    return info.value


@pytest.mark.parametrize("content", [b"", b"  \n\n  \n"])
@pytest.mark.parametrize("fmt", ["auto", "zsre", "counterfact", "fever", "wikitext"])
def test_empty_file(write, content, fmt):
    path = write("empty.jsonl", content)
    err = _error(path, fmt)
    assert str(path) in str(err) and "empty" in str(err)


def test_empty_json_array(write):
    assert "array is empty" in str(_error(write("cf.json", "[]"), "counterfact"))


def test_wrong_encoding_names_line_and_byte(write, samples):
    good = json.dumps(samples["zsre_mend"](0)).encode()
    bad = json.dumps(samples["zsre_mend"](1, input="Caf\u00e9 question?"), ensure_ascii=False).encode(
        "latin-1"
    )
    path = write("latin1.jsonl", good + b"\n" + bad + b"\n")
    err = _error(path, "zsre")
    assert err.location == "line 2" and "UTF-8" in str(err) and "0xe9" in str(err)


def test_utf16_file(write, samples):
    path = write("u16.jsonl", json.dumps(samples["fever"](0)).encode("utf-16"))
    assert "UTF-16" in str(_error(path, "fever"))


def test_utf8_bom_is_accepted(write, samples):
    path = write("bom.jsonl", b"\xef\xbb\xbf" + json.dumps(samples["fever"](0)).encode())
    assert load_records(path, "fever")[0].prompt == "Claimant0 wrote a novel."


@pytest.mark.parametrize("fmt", ["zsre_mend", "fever"])
def test_json_array_where_json_lines_expected(write, samples, fmt):
    row = samples["fever" if fmt == "fever" else "zsre_mend"]
    path = write("array.json", [row(0), row(1)])  # a JSON array
    err = _error(path, fmt)
    assert "JSON lines" in str(err) and "found a JSON array" in str(err) and err.location == "line 1"


@pytest.mark.parametrize("fmt", ["counterfact", "zsre_rome", "wikitext"])
def test_json_lines_where_array_expected(write, samples, fmt):
    row = {
        "counterfact": samples["counterfact"],
        "zsre_rome": samples["zsre_rome"],
        "wikitext": lambda i: samples["wikitext"](),
    }[fmt]
    path = write("lines.jsonl", [row(0), row(1)])
    err = _error(path, fmt)
    assert "found JSON lines" in str(err) and err.location == "line 2"


def test_single_object_where_array_expected(write, samples):
    path = write("one.json", samples["counterfact"](0))
    assert "found a JSON object" in str(_error(path, "counterfact"))


def test_invalid_json_line(write, samples):
    lines = [json.dumps(samples["zsre_mend"](0)), '{"input": "broken', json.dumps(samples["zsre_mend"](2))]
    path = write("broken.jsonl", "\n".join(lines) + "\n")
    err = _error(path, "zsre")
    assert err.location == "line 2" and "a JSON object" in str(err)


def test_invalid_json_array_names_line_and_column(write):
    path = write("broken.json", '[\n {"case_id": 1,\n  oops}\n]')
    err = _error(path, "counterfact")
    assert err.location.startswith("line 3 column")


def test_line_that_is_not_an_object(write, samples):
    path = write("x.jsonl", json.dumps(samples["fever"](0)) + "\n[1, 2]\n")
    err = _error(path, "fever")
    assert err.location == "line 2" and "expected a JSON object, got [1, 2]" in str(err)


@pytest.mark.parametrize(
    ("fmt", "key", "drop", "field"),
    [
        ("zsre_mend", "zsre_mend", "input", "input"),
        ("zsre_mend", "zsre_mend", "output", "output"),
        ("zsre_rome", "zsre_rome", "alt", "alt"),
        ("counterfact", "counterfact", "paraphrase_prompts", "paraphrase_prompts"),
        ("fever", "fever", "prediction", "prediction"),
        ("wikitext", "wikitext", "n_tokens", "n_tokens"),
    ],
)
def test_missing_field(write, samples, fmt, key, drop, field):
    rows = [samples[key](i) if key != "wikitext" else samples[key]() for i in range(3)]
    del rows[1][drop]
    name = "f.jsonl" if fmt in ("zsre_mend", "fever") else "f.json"
    path = write(name, rows)
    err = _error(path, fmt)
    where = "line 2" if name.endswith("jsonl") else "index 1"
    assert err.location == where and err.field == field
    assert f"{path}:{where}: field '{field}': expected" in str(err) and "missing" in str(err)


@pytest.mark.parametrize(
    ("fmt", "key", "change", "field", "expected"),
    [
        ("zsre_mend", "zsre_mend", {"alternatives": "Altriver"}, "alternatives", "a list of strings"),
        ("zsre_mend", "zsre_mend", {"filtered_rephrases": ["ok", 3]}, "filtered_rephrases[1]", "a string"),
        ("zsre_mend", "zsre_mend", {"output": [{"text": "x"}]}, "output[0].answer", "a value"),
        ("zsre_rome", "zsre_rome", {"answers": "Goldriver"}, "answers", "a list of strings"),
        ("zsre_rome", "zsre_rome", {"alt": "  "}, "alt", "a non-empty string"),
        ("counterfact", "counterfact", {"case_id": "7"}, "case_id", "an integer"),
        ("fever", "fever", {"prediction": "MAYBE"}, "prediction", "one of"),
        ("fever", "fever", {"alternatives": ["SUPPORTS"]}, "alternatives[0]", "the flipped label"),
        ("fever", "fever", {"logit": "high"}, "logit", "a number"),
        ("wikitext", "wikitext", {"n_tokens": 40}, "completions", "a text longer than"),
        ("wikitext", "wikitext", {"completions": ["a b c d e"]}, "completions", "one completion per"),
    ],
)
def test_wrong_type_or_value(write, samples, fmt, key, change, field, expected):
    rows = [samples[key](i) if key != "wikitext" else samples[key]() for i in range(2)]
    rows[1].update(change)
    name = "f.jsonl" if fmt in ("zsre_mend", "fever") else "f.json"
    err = _error(write(name, rows), fmt)
    assert err.field == field and expected in err.expected
    assert err.location.startswith("line 2" if name.endswith("jsonl") else "index 1")


def test_counterfact_nested_field_and_template(write, samples):
    row = samples["counterfact"](0)
    row["requested_rewrite"]["target_new"]["str"] = 5
    err = _error(write("cf.json", [row]), "counterfact")
    assert err.field == "requested_rewrite.target_new.str" and "expected a string, got 5" in str(err)
    row = samples["counterfact"](0)
    row["requested_rewrite"]["prompt"] = "is located in"
    assert "'{}'" in _error(write("cf2.json", [row]), "counterfact").expected


def test_unknown_format_and_undetectable_file(write):
    path = write("odd.jsonl", [{"question": "q", "reply": "r"}])
    with pytest.raises(ValueError, match="unknown format"):
        load_records(path, "squad")
    err = _error(path)
    assert "known format" in str(err) and "['question', 'reply']" in str(err)
    assert "JSON" in str(_error(write("plain.txt", "hello world\n")))


def test_missing_file():
    with pytest.raises(FileNotFoundError, match=r"no-such\.jsonl"):
        load_records("/nonexistent/no-such.jsonl")


def test_skip_bad_reports_how_many_and_why(write, samples):
    rows = [json.dumps(samples["zsre_mend"](i)) for i in range(5)]
    rows[1] = "not json"
    bad = samples["zsre_mend"](3)
    del bad["input"]
    rows[3] = json.dumps(bad)
    rows.append(json.dumps(samples["zsre_mend"](5, alternatives=[])))
    path = write("mixed.jsonl", "\n".join(rows) + "\n")
    with pytest.raises(RecordError, match="line 2"):
        load_records(path, "zsre")
    result = read_records(path, "zsre", skip_bad=True)
    assert len(result.records) == 3
    assert [(s.location, s.reason.split(":")[0]) for s in result.skipped] == [
        ("line 2", "not a JSON object"),
        ("line 4", "field 'input'"),
        ("line 6", "unusable for editing"),
    ]
    summary = result.summary()
    assert "3 records" in summary and "skipped 3" in summary
    assert [r.source for r in result.records] == ["mixed.jsonl:1", "mixed.jsonl:3", "mixed.jsonl:5"]
    assert len(load_records(path, "zsre", skip_bad=True)) == 3


def test_skip_bad_in_json_array_uses_indices(write, samples):
    rows = [samples["counterfact"](i) for i in range(3)]
    rows[0]["paraphrase_prompts"] = "oops"
    result = read_records(write("cf.json", rows), "counterfact", skip_bad=True)
    assert [s.location for s in result.skipped] == ["index 0"] and len(result.records) == 2


def test_all_records_bad_is_an_error_even_with_skip_bad(write, samples):
    path = write("z.jsonl", [samples["zsre_mend"](i, alternatives=[]) for i in range(2)])
    err = _error(path, "zsre", skip_bad=True)
    assert "at least one usable record" in str(err) and "2 skipped" in str(err)


def test_bad_locality_files(write, samples):
    nq = write("nq.json", {"questions": ["a", "b"], "answers": ["x"]})
    with pytest.raises(RecordError, match="answers"):
        load_locality(nq)
    with pytest.raises(RecordError, match="index 1"):
        load_locality(write("nq2.json", [{"question": "a", "answer": "x"}, {"question": "b", "answer": 3}]))
    with pytest.raises(RecordError, match="empty"):
        load_records(write("z.jsonl", [samples["zsre_mend"](0)]), locality_path=write("e.txt", ""))
