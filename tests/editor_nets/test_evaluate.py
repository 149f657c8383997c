"""Evaluation: edit success and drawdown arithmetic, modes, exact restore, reports."""

from __future__ import annotations

import json
import math
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")

from world_models import EDITED, changed, param_state, world_gpt2  # noqa: E402

from edit_data import EditRecord, LocalityExample, train_tokenizer  # noqa: E402
from editor_nets import restore_weights  # noqa: E402
from editor_nets.baselines import FTEditor  # noqa: E402
from editor_nets.evaluate import evaluate_editor, evaluate_editors, pre_edit_scores  # noqa: E402
from editor_nets.report import load_metrics, results_table, write_report  # noqa: E402
from editor_nets.scoring import answer_logits, score_batch, score_targets  # noqa: E402
from tiny_models import build_tiny  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    return world_gpt2(0)


@pytest.fixture(scope="module")
def records(trained):
    """Edits whose new target the unedited model does not produce, all with locality examples."""
    model, tok, world = trained
    pre = pre_edit_scores(model, tok, world.records)
    chosen = [r for r, s in zip(world.records, pre, strict=True) if not bool(s.edit.exact[0])]
    assert len(chosen) >= 12
    return chosen[:12]


class NullEditor:
    """Changes nothing."""

    name = "null"

    def __init__(self) -> None:
        self.calls = 0

    def edit(self, model, tokenizer, records):
        self.calls += 1
        return {}


class NoiseEditor:
    """Adds large noise to one edited weight and returns its original: must show drawdown."""

    name = "noise"

    def __init__(self, scale: float = 3.0) -> None:
        self.scale = scale

    def edit(self, model, tokenizer, records):
        w = model.get_submodule("transformer.h.2.mlp.c_proj").weight
        snap = {"transformer.h.2.mlp.c_proj.weight": w.detach().clone()}
        with torch.no_grad():
            w.add_(torch.randn_like(w) * self.scale)
        return snap


class CountingEditor:
    """Adds 1 to a bias on each call and records what it saw before its own change."""

    name = "count"

    def __init__(self) -> None:
        self.seen: list[float] = []

    def edit(self, model, tokenizer, records):
        b = model.get_submodule("transformer.h.2.mlp.c_proj").bias
        self.seen.append(float(b.detach()[0]))
        snap = {"transformer.h.2.mlp.c_proj.bias": b.detach().clone()}
        with torch.no_grad():
            b.add_(1.0)
        return snap


class LeakyEditor:
    """Changes a weight but forgets to return its original."""

    name = "leaky"

    def edit(self, model, tokenizer, records):
        with torch.no_grad():
            model.get_submodule("transformer.h.2.mlp.c_fc").weight.mul_(1.5)
        return {}


class RejectingEditor:
    """Rejects every second edit (changing nothing), like a norm bound would."""

    name = "rejecting"

    def __init__(self) -> None:
        self.calls = 0

    def edit(self, model, tokenizer, records):
        self.calls += 1
        if self.calls % 2 == 0:
            raise ValueError("edit norm exceeds the bound")
        return {}


def _assert_bitwise(model, state):
    assert not changed(model, state)


class FixedLogits(torch.nn.Module):
    """A stand-in model whose forward returns the given logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, **inputs):
        return types.SimpleNamespace(logits=self.logits)


def test_scores_hand_computed():
    # Causal: position t predicts token t + 1; targets are tokens 2 and 3 of row 0, token 3 of row 1.
    vocab = 5
    labels = torch.tensor([[-100, -100, 4, 1], [-100, -100, -100, 2]])
    batch = {
        "input_ids": torch.zeros_like(labels),
        "attention_mask": torch.ones_like(labels),
        "labels": labels,
    }
    logits = torch.full((2, 4, vocab), -10.0)
    logits[0, 1, 4] = 10.0  # right: predicts 4 at position 2
    logits[0, 2, 0] = 10.0  # wrong: predicts 0, target 1
    logits[1, 2, 2] = 10.0  # right
    s = score_batch(FixedLogits(logits), batch, kind="causal")
    assert (
        s.correct.tolist() == [1, 1] and s.n_tokens.tolist() == [2, 1] and s.exact.tolist() == [False, True]
    )
    assert s.nll[1] < 1e-3 < 19.0 < s.nll[0]  # row 0 has one confidently wrong token
    assert s.token_acc.tolist() == [0.5, 1.0]
    assert answer_logits(FixedLogits(logits), batch, kind="causal").rows.tolist() == [0, 0, 1]
    # Seq2seq: logits aligned with labels, -100 ignored.
    s = score_batch(FixedLogits(logits), batch, kind="seq2seq")
    assert s.n_tokens.tolist() == [2, 1] and s.correct.tolist() == [0, 0]
    # Classifier: one label per row.
    batch = {"input_ids": labels, "attention_mask": labels, "labels": torch.tensor([1, 1])}
    s = score_batch(FixedLogits(torch.tensor([[0.0, 1.0], [2.0, 1.0]])), batch, kind="classifier")
    assert s.correct.tolist() == [1, 0] and s.n_tokens.tolist() == [1, 1]


def test_scores_match_greedy_generation(trained):
    model, tok, world = trained
    recs = world.records[:6]
    prompts = [ex.prompt for r in recs for ex in r.locality]
    answers = [ex.answer for r in recs for ex in r.locality]
    scores = score_targets(model, tok, prompts, answers)
    for prompt, answer, hit in zip(prompts, answers, scores.exact.tolist(), strict=True):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        n = len(tok(" " + answer)["input_ids"])
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)
        assert (tok.decode(out[0, ids.shape[1] :]).strip() == answer) == hit
    assert 0.0 < scores.exact.float().mean() <= 1.0  # the pre-trained model knows some facts


def test_editor_that_does_nothing_scores_zero(trained, records):
    model, tok, _ = trained
    editor = NullEditor()
    res = evaluate_editors(
        model, tok, {"null": editor}, records, n_sequential=4, batch_size=4, progress=False
    )
    m = res["methods"]["null"]
    assert m["es_edit"] == 0.0 and m["token_acc_edit"] < 1.0
    assert m["dd_locality"] == 0.0 and m["dd_hard_locality"] == 0.0 and m["dd_ppl_locality"] == 0.0
    assert m["locality_acc_before"] == m["locality_acc_after"] == res["pre_edit"]["locality_acc"]
    for mode in ("batched", "sequential"):
        assert m[mode]["es_edit"] == 0.0 and m[mode]["dd_locality"] == 0.0
    assert m["sequential"]["n_edits"] == 4 and m["sequential"]["n_runs"] == 3
    assert editor.calls == 12 + 3 + 12  # single, batched (12 / 4), sequential
    assert m["edit_latency_ms_p90"] >= m["edit_latency_ms_median"] >= 0.0
    assert m["editor_params"] == 0
    # a mode's wall time covers its edits: at least the twelve single edits' median
    assert m["seconds"] >= 6 * m["edit_latency_ms_median"] / 1000.0 and m["seconds"] > 0.0
    assert m["batched"]["seconds"] > 0.0 and m["sequential"]["seconds"] > 0.0


def test_noise_editor_shows_drawdown_and_is_restored(trained, records):
    model, tok, _ = trained
    before = param_state(model)
    torch.manual_seed(0)
    for mode in ("single", "batched", "sequential"):
        out = evaluate_editor(
            model, tok, NoiseEditor(), records[:6], mode=mode, batch_size=3, n_sequential=3, progress=False
        )
        assert out["dd_locality"] > 0.0 and out["dd_ppl_locality"] > 0.0
        assert out["locality_acc_after"] < out["locality_acc_before"]
        _assert_bitwise(model, before)


def test_fine_tuning_reaches_edit_success(trained, records):
    model, tok, _ = trained
    before = param_state(model)
    res = evaluate_editors(
        model,
        tok,
        {"FT": FTEditor(targets=EDITED, lr=3e-3, max_steps=40)},
        records[:6],
        modes=("single",),
        progress=False,
    )
    m = res["methods"]["FT"]
    assert m["es_edit"] == 1.0 and m["token_acc_edit"] == 1.0
    assert "sequential" not in m
    _assert_bitwise(model, before)
    # the rephrase and locality figures are the means of what each edit does, measured by hand
    ft, reph, loc_before, loc_after = FTEditor(targets=EDITED, lr=3e-3, max_steps=40), [], 0, 0
    for r in records[:6]:
        loc = ([x.prompt for x in r.locality], [x.answer for x in r.locality])
        loc_before += int(score_targets(model, tok, *loc).exact.sum())
        snapshot = ft.edit(model, tok, [r])
        reph.append(
            float(score_targets(model, tok, r.rephrases, [r.target] * len(r.rephrases)).exact.float().mean())
        )
        loc_after += int(score_targets(model, tok, *loc).exact.sum())
        restore_weights(model, snapshot)
    assert m["es_rephrase"] == pytest.approx(sum(reph) / len(reph))
    assert m["dd_locality"] == pytest.approx((loc_before - loc_after) / m["n_locality"])


def test_sequential_edits_stack_and_are_restored(trained, records):
    model, tok, _ = trained
    before = param_state(model)
    b0 = float(model.get_submodule("transformer.h.2.mlp.c_proj").bias.detach()[0])
    editor = CountingEditor()
    out = evaluate_editor(model, tok, editor, records[:7], mode="sequential", n_sequential=3, progress=False)
    assert out["n_edits"] == 3 and out["n_runs"] == 2 and out["n_edits_total"] == 6
    assert [round(s - b0, 4) for s in editor.seen] == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]
    _assert_bitwise(model, before)
    editor.seen.clear()
    evaluate_editor(model, tok, editor, records[:3], mode="single", progress=False)
    assert [round(s - b0, 4) for s in editor.seen] == [0.0, 0.0, 0.0]


def test_editor_leaving_changes_is_caught(trained, records):
    model, tok, _ = trained
    before = param_state(model)
    with pytest.raises(RuntimeError, match="leaky"):
        evaluate_editor(model, tok, LeakyEditor(), records[:1], progress=False)
    model.load_state_dict(before)


def test_rejected_edits_are_counted_or_raised(trained, records):
    model, tok, _ = trained
    with pytest.warns(UserWarning, match="norm"):
        out = evaluate_editor(model, tok, RejectingEditor(), records[:4], progress=False)
    assert out["n_failed_edits"] == 2 and "norm" in out["first_failure"]
    assert out["n_edits"] == 4 and out["n_timed_edits"] == 2  # rejected edits are not timed
    with pytest.raises(ValueError, match="norm"):
        evaluate_editor(model, tok, RejectingEditor(), records[:4], progress=False, on_edit_error="raise")


def test_bad_arguments_are_named(trained, records):
    model, tok, _ = trained
    with pytest.raises(ValueError, match="mode"):
        evaluate_editor(model, tok, NullEditor(), records[:1], mode="parallel")
    with pytest.raises(ValueError, match="mode"):
        evaluate_editors(model, tok, {"null": NullEditor()}, records[:1], modes=("single", "bogus"))
    with pytest.raises(ValueError, match="record"):
        evaluate_editor(model, tok, NullEditor(), [])


def test_classifier_label_flip():
    texts = ["the sky is blue", "the sky is green", "grass is green", "grass is red", "snow is white"]
    tok = train_tokenizer(texts)
    model = build_tiny("bert")
    with torch.no_grad():
        pred = model(**tok(texts[:2], return_tensors="pt", padding=True)).logits.argmax(-1).tolist()
    names = ["REFUTES", "SUPPORTS"]
    recs = [
        EditRecord(
            prompt=texts[i],
            target=names[1 - pred[i]],
            rephrases=[texts[i] + " ."],
            locality=[LocalityExample(texts[4], "SUPPORTS")],
            task="classification",
        )
        for i in range(2)
    ]
    editors = {"null": NullEditor(), "FT": FTEditor(lr=1e-2, max_steps=30)}
    res = evaluate_editors(model, tok, editors, recs, modes=("single",), progress=False)
    assert res["settings"]["model_kind"] == "classifier"
    assert res["methods"]["null"]["es_edit"] == 0.0
    assert res["methods"]["FT"]["es_edit"] == 1.0


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_seq2seq_evaluation(name):
    tok = train_tokenizer(["Where does Ana live ?", "Rome Paris Oslo", "grass is green", "snow is white"])
    model = build_tiny(name)
    record = EditRecord(
        "Where does Ana live ?",
        "Rome",
        rephrases=["Where does Ana live"],
        locality=[LocalityExample("grass is", "green"), LocalityExample("snow is", "white")],
    )
    before = param_state(model)
    editors = {"null": NullEditor(), "FT": FTEditor(lr=1e-2, max_steps=60)}
    res = evaluate_editors(model, tok, editors, [record], modes=("single", "sequential"), progress=False)
    assert res["settings"]["model_kind"] == "seq2seq"
    assert res["pre_edit"]["es_edit"] == 0.0 and res["methods"]["null"]["es_edit"] == 0.0
    assert res["methods"]["null"]["dd_locality"] == 0.0
    assert res["methods"]["FT"]["es_edit"] == 1.0 and res["methods"]["FT"]["sequential"]["es"] == 1.0
    _assert_bitwise(model, before)


def test_report_writes_json_and_png(tmp_path, trained, records):
    model, tok, _ = trained
    res = evaluate_editors(
        model, tok, {"null": NullEditor()}, records[:4], n_sequential=2, batch_size=2, progress=False
    )
    res["methods"]["null"]["odd"] = float("nan")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        "\n".join(json.dumps({"step": i, "loss": 1.0 / (i + 1), "val_es": i / 10}) for i in range(10))
    )
    paths = write_report(res, tmp_path / "out", load_metrics(metrics))
    loaded = json.loads(paths["json"].read_text())
    assert loaded["methods"]["null"]["es_edit"] == 0.0 and loaded["methods"]["null"]["odd"] is None
    assert loaded["methods"]["null"]["sequential"]["n_edits"] == 2
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "null" in results_table(res)
    with pytest.raises(ValueError, match="methods"):
        write_report({"MEND": {}}, tmp_path / "bad")
    assert not (tmp_path / "bad" / "report.json").exists()
    metrics.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        load_metrics(metrics)


def test_percentile_and_ppl_are_consistent(trained, records):
    model, tok, _ = trained
    out = evaluate_editor(model, tok, NullEditor(), records[:3], progress=False)
    pre = pre_edit_scores(model, tok, records[:3])
    nll = sum(float(s.locality.nll.sum()) for s in pre)
    n = sum(int(s.locality.n_tokens.sum()) for s in pre)
    assert math.isclose(out["ppl_locality_before"], math.exp(nll / n), rel_tol=1e-9)
