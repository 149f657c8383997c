"""Every model family through every command, as a user runs them.

For GPT-2, GPT-NeoX, Llama (grouped-query attention, a tokenizer that adds BOS), T5 (gated
feed-forward, a tokenizer that appends EOS) and BART (both): a tiny model from the table in
``tiny_models``, taught the built-in world's answers for a few seconds, saved with its tokenizer;
then ``edit-data world``, ``edit-train --model DIR --data DIR``, ``edit-eval``, ``edit-apply`` and
``edit-serve --model DIR --editor DIR`` (a real subprocess on loopback, called over gRPC).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("grpc")

from serve_process import ServerProcess
from typer.testing import CliRunner
from world_models import train_on_answers

from edit_data import build_world, load_saved
from edit_data.cli import app as data_app
from editor_nets import generate_answer, load_model
from editor_nets.cli import apply_app, eval_app, train_app
from tiny_models import build_tiny, world_tokenizer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAMILIES = ["gpt2", "gpt_neox", "llama", "t5", "bart"]
ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "gpt_neox": "GPTNeoXForCausalLM",
    "llama": "LlamaForCausalLM",
    "t5": "T5ForConditionalGeneration",
    "bart": "BartForConditionalGeneration",
}
runner = CliRunner()


def _ok(result) -> str:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@dataclass(frozen=True)
class FamilyRun:
    name: str
    model_dir: Path
    run_dir: Path
    data_dir: Path
    splits: dict


@pytest.fixture(scope="module")
def world_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "data"
    _ok(runner.invoke(data_app, ["world", "--entities", "30", "--out", str(out)]))
    return out


@pytest.fixture(scope="module", params=FAMILIES)
def family_run(request, world_data, tmp_path_factory) -> FamilyRun:
    name = request.param
    root = tmp_path_factory.mktemp(name)
    splits = load_saved(world_data)
    tokenizer = world_tokenizer(name, build_world(n_entities=30, seed=0).corpus)
    model = train_on_answers(build_tiny(name, tokenizer=tokenizer), tokenizer, splits["train"], steps=200)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    args = ["--model", str(root / "model"), "--data", str(world_data), "--quick", "--out", str(root / "run")]
    _ok(runner.invoke(train_app, args))
    return FamilyRun(name, root / "model", root / "run", world_data, splits)


def test_edit_train_writes_editors_and_a_report_naming_the_model(family_run) -> None:
    report = json.loads((family_run.run_dir / "report.json").read_text())
    assert report["model"]["architecture"] == ARCHITECTURES[family_run.name]
    assert report["model"]["kind"] == ("seq2seq" if family_run.name in ("t5", "bart") else "causal")
    assert report["model"]["base_model"] == str(family_run.model_dir)
    located = ["ROME", "MEMIT", "AlphaEdit", "KN", "GRACE", "EditCache"]
    trained_and_ft = ["LifelongMEND", "MEND", "KE", "Ridge", "FT", "FT+KL"]
    if report["model"]["kind"] == "causal":
        with_enn = [*trained_and_ft[:3], "ENN", "SERAC", *trained_and_ft[3:]]
        assert list(report["methods"]) == with_enn + located and report["skipped_editors"] == {}
        enn = report["methods"]["ENN"]  # scored against its own (ENN-trained) model
        assert {"es_edit", "dd_locality", "pre_edit"} <= set(enn) and report["meta_train"]["ENN"]["steps"] > 0
    else:  # ENN, SERAC and the locate-then-edit editors need a causal LM: left out, and the report says why
        assert list(report["methods"]) == trained_and_ft and list(report["skipped_editors"]) == [
            "ENN",
            "SERAC",
            *located,
        ]
    for folder in ("editor", "lifelong"):
        cfg = json.loads((family_run.run_dir / folder / "config.json").read_text())
        assert cfg["model"]["base_model"] == str(family_run.model_dir)
    # the trained editor moves the edited answers: the probability of the new target goes up
    assert report["methods"]["MEND"]["es_edit"] >= report["pre_edit"]["es_edit"]


def test_edit_eval_and_edit_apply(family_run, tmp_path) -> None:
    editor = family_run.run_dir / "editor"
    args = ["--editor", str(editor), "--data", str(family_run.data_dir), "--modes", "single",
            "--editors", "MEND,FT", "--out", str(tmp_path / "eval")]  # fmt: skip
    out = _ok(runner.invoke(eval_app, args))
    assert "MEND" in out and "FT" in out
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert set(report["methods"]) == {"MEND", "FT"}
    record = family_run.splits["test"][0]
    new = family_run.splits["test"][1].target
    args = ["--editor", str(editor), "--prompt", record.prompt, "--target", new,
            "--rephrase", record.rephrases[0], "--save-delta", str(tmp_path / "delta.safetensors")]  # fmt: skip
    out = _ok(runner.invoke(apply_app, args))
    assert f"edit: {record.prompt!r} -> {new!r}" in out and out.count("before:") == 2
    assert (tmp_path / "delta.safetensors").stat().st_size > 0


def test_edit_serve_generates_edits_and_rolls_back(family_run, tmp_path) -> None:
    from edit_serve import EditClient, SamplingParams

    model, tokenizer = load_model(family_run.model_dir)

    def length(answer: str) -> int:  # tokens to generate: a seq2seq decoder also says BOS (BART) and EOS
        if family_run.name in ("t5", "bart"):
            return len(tokenizer(text_target=answer)["input_ids"])
        return len(tokenizer(" " + answer, add_special_tokens=False)["input_ids"])

    # a training question whose answer the model has learnt, and another record's answer
    record = next(
        r
        for r in family_run.splits["train"]
        if generate_answer(model, tokenizer, r.prompt, max_new_tokens=length(r.original)) == r.original
    )
    new = next(r.original for r in family_run.splits["train"] if r.original != record.original)
    greedy = SamplingParams(max_new_tokens=length(record.original))
    server = ServerProcess(
        ["--model", str(family_run.model_dir), "--editor", str(family_run.run_dir / "lifelong"),
         "--journal", str(tmp_path / "journal"), "--port", "0"]
    )  # fmt: skip
    try:
        with EditClient(server.address) as c:
            digest0 = c.health(weights_digest=True).weights_sha256
            before = c.generate(record.prompt, greedy)
            # the sidecar's own decoding loop answers what transformers' generate answers
            assert before.text.strip() == record.original and before.version == 0
            sampled = SamplingParams(max_new_tokens=4, temperature=1.0, seed=11)
            assert c.generate(record.prompt, sampled).text == c.generate(record.prompt, sampled).text
            streamed = "".join(piece.text for piece in c.generate_stream(record.prompt, greedy))
            assert streamed == before.text
            edit = c.edit(record.prompt, new, rephrases=list(record.rephrases[:1]))
            assert edit.version == 1 and edit.target_logprob_after > edit.target_logprob_before
            assert c.generate(record.prompt, greedy).version == 1
            rollback = c.rollback(edit_id=edit.edit_id)
            assert rollback.version == 2
            assert c.health(weights_digest=True).weights_sha256 == digest0
            assert c.generate(record.prompt, greedy).text == before.text
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- server log ---\n{''.join(server.lines[-40:])}") from err
    finally:
        server.kill()
