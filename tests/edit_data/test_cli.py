"""The edit-data command: build, world, inspect; non-zero exit with a message on bad input."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from edit_data import load_saved
from edit_data.cli import app

runner = CliRunner()


def test_build_auto_from_two_files(write, samples, tmp_path):
    a = write("train.jsonl", [samples["zsre_mend"](i) for i in range(12)])
    b = write("dev.jsonl", [samples["zsre_mend"](i) for i in range(12, 20)])
    nq = write("nq.json", {"questions": ["q1", "q2", "q3"], "answers": ["a1", "a2", "a3"]})
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["build", "auto", str(a), str(b), "--out", str(out), "--locality", str(nq), "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    splits = load_saved(out)
    assert sum(len(v) for v in splits.values()) == 20
    assert all(len(r.locality) == 3 for v in splits.values() for r in v)
    assert ", ".join(f"{name} {len(recs)}" for name, recs in splits.items()) in result.output
    shown = runner.invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0, shown.output
    assert f"== train: {len(splits['train'])} records, tasks ['qa']" in shown.output
    assert "Bridge" in shown.output and "prompt tokens: min" in shown.output


def test_build_bad_input_exits_nonzero_and_writes_nothing(write, samples, tmp_path):
    rows = [samples["counterfact"](i) for i in range(3)]
    rows[2]["requested_rewrite"]["subject"] = None
    path = write("cf.json", rows)
    out = tmp_path / "out"
    result = runner.invoke(app, ["build", "counterfact", str(path), "--out", str(out)])
    assert result.exit_code == 1
    assert "index 2" in result.output and "requested_rewrite.subject" in result.output
    assert not out.exists()

    result = runner.invoke(app, ["build", "counterfact", str(path), "--out", str(out), "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert "skipped 1" in result.output and "index 2" in result.output
    assert sum(len(v) for v in load_saved(out).values()) == 2


def test_build_bad_options(write, samples, tmp_path):
    path = write("f.jsonl", [samples["fever"](0)])
    bad_format = runner.invoke(app, ["build", "squad", str(path), "--out", str(tmp_path / "o")])
    assert bad_format.exit_code == 1 and "FORMAT" in bad_format.output
    bad_fractions = runner.invoke(
        app, ["build", "fever", str(path), "--out", str(tmp_path / "o"), "--fractions", "0.5,0.6"]
    )
    assert bad_fractions.exit_code == 1 and "--fractions" in bad_fractions.output
    missing = runner.invoke(
        app, ["build", "fever", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")]
    )
    assert missing.exit_code == 1 and "no such file" in missing.output
    assert not (tmp_path / "o").exists()


def test_world_then_inspect(tmp_path):
    out = tmp_path / "world"
    result = runner.invoke(app, ["world", "--out", str(out), "--entities", "40", "--seed", "7"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "world.json").read_text())
    assert meta["seed"] == 7 and sum(len(v) for v in meta["entities"].values()) == 40
    shown = runner.invoke(app, ["inspect", str(out), "-n", "1"])
    assert shown.exit_code == 0, shown.output
    splits = load_saved(out)
    for name, records in splits.items():
        assert f"== {name}: {len(records)} records" in shown.output
    assert "target tokens: min 1" in shown.output  # each world entity is one token
    assert runner.invoke(app, ["world", "--out", str(out), "--relations", "married_to"]).exit_code == 1
    assert runner.invoke(app, ["inspect", str(tmp_path)]).exit_code == 1


def test_build_wikitext_with_tokenizer_and_text_locality(write, samples, tmp_path):
    from edit_data import train_tokenizer

    obj = samples["wikitext"](6)
    train_tokenizer(obj["completions"]).save_pretrained(tmp_path / "tok")
    path = write("train.json", obj)
    text = write("passages.txt", "alpha beta gamma delta\nepsilon zeta eta theta\n")
    out = tmp_path / "out"
    args = ["build", "wikitext", str(path), "--out", str(out), "--tokenizer", str(tmp_path / "tok")]
    result = runner.invoke(app, [*args, "--locality", str(text), "--n-locality", "1"])
    assert result.exit_code == 0, result.output
    records = [r for v in load_saved(out).values() for r in v]
    assert len(records) == 6 and all(r.task == "generation" and len(r.locality) == 1 for r in records)
    assert {r.target for r in records} == {"stands tall today"}
    bad = runner.invoke(
        app, ["build", "wikitext", str(path), "--out", str(out), "--tokenizer", str(tmp_path / "no")]
    )
    assert bad.exit_code == 1 and "--tokenizer" in bad.output
