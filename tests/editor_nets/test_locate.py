"""The locate-then-edit editors (ROME, MEMIT, AlphaEdit, knowledge neurons), causal tracing and the
cached key statistics, on tiny causal LMs of the model table that learnt the built-in world."""

from __future__ import annotations

import pytest
import torch
from world_models import Learnt

from editor_nets import applied
from editor_nets.baselines import EditorSetup, build_editors
from editor_nets.keystats import Corpus, key_statistics, read_corpus
from editor_nets.locate import (
    AlphaEditEditor,
    MemitEditor,
    RomeEditor,
    mlp_output_layers,
    null_space_projection,
    subject_positions,
)
from editor_nets.scoring import score_targets
from editor_nets.trace import causal_trace, draw_trace, locate_facts
from tiny_models import build_tiny

pytestmark = pytest.mark.integration


def _answers(learnt: Learnt, records) -> torch.Tensor:
    """Whether the model gives each record's original answer (teacher-forced exact)."""
    return score_targets(
        learnt.model, learnt.tokenizer, [r.prompt for r in records], [r.original for r in records]
    ).exact


def _setup(learnt: Learnt, tmp_path) -> EditorSetup:
    return EditorSetup(
        train_records=learnt.known, model=learnt.model, tokenizer=learnt.tokenizer, corpus=learnt.corpus,
        stats_cache=str(tmp_path),
    )  # fmt: skip


def _rome_tally(learnt: Learnt, tmp_path) -> dict[str, int]:
    """Eight ROME edits, one at a time: how many reach their target, and how many other subjects'
    answers each edit changes."""
    rome = build_editors(["ROME"], _setup(learnt, tmp_path))["ROME"]
    tally = {"hit": 0, "others_changed": 0, "others": 0}
    for record in learnt.known[:8]:
        others = [r for r in learnt.known if r.subject != record.subject]
        delta = rome.compute_delta(learnt.model, learnt.tokenizer, [record])
        assert next(iter(delta.layers.values())).u.shape[0] == 1  # rank one
        with applied(learnt.model, delta):
            hit = score_targets(learnt.model, learnt.tokenizer, [record.prompt], [record.target]).exact.all()
            kept = _answers(learnt, others)
        tally["hit"] += int(hit)
        tally["others_changed"] += int((~kept).sum())
        tally["others"] += len(others)
    return tally


def test_rome_changes_the_subjects_answer(learnt, tmp_path) -> None:
    tally = _rome_tally(learnt, tmp_path)
    assert tally["hit"] == 8, tally


def test_rome_changes_no_other_subjects_answer(learnt, tmp_path, request) -> None:
    if learnt.model.config.model_type == "gpt2":
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason="issue 13's bar, not met on the tiny GPT-2: 27 of 388 other subjects' answers (7.0%) change "
                "once ROME optimises to NLL < 0.05 as its own code does (stopping as soon as the target won "
                "changed 3.9% but left 1 of 8 edits short on some machines); its fact token is the prompt's "
                "last, shared by every prompt of the same template",
            )
        )
    tally = _rome_tally(learnt, tmp_path)
    assert tally["others_changed"] / tally["others"] <= 0.05, tally


def _ten_edits(learnt: Learnt, tmp_path):
    memit = build_editors(["MEMIT"], _setup(learnt, tmp_path))["MEMIT"]
    records = learnt.known[:10]
    prompts, targets = [r.prompt for r in records], [r.target for r in records]
    before = score_targets(learnt.model, learnt.tokenizer, prompts, targets)
    delta = memit.compute_delta(learnt.model, learnt.tokenizer, records)
    with applied(learnt.model, delta):
        after = score_targets(learnt.model, learnt.tokenizer, prompts, targets)
    return delta, before, after


def test_memit_moves_ten_edits_at_once_with_a_low_rank_update(learnt, tmp_path) -> None:
    delta, before, after = _ten_edits(learnt, tmp_path)
    assert bool((after.mean_nll < before.mean_nll - 0.5).all()), (before.mean_nll, after.mean_nll)
    assert int(after.exact.sum()) >= 5
    for layer in delta.layers.values():
        assert layer.u.shape[0] <= 10  # rank at most the number of edit tokens


@pytest.mark.xfail(
    strict=True,
    reason="issue 13's bar, not met: MEMIT makes 9 of the 10 edits on the tiny GPT-2 and the tiny Llama "
    "(one block edited, keys at the prompt's last token, where these models recall facts)",
)
def test_memit_makes_all_ten_edits(learnt, tmp_path) -> None:
    _, _, after = _ten_edits(learnt, tmp_path)
    assert int(after.exact.sum()) == 10, after.exact.tolist()


def test_alphaedit_leaves_preserved_keys_outputs_unchanged(learnt, tmp_path) -> None:
    """With ``C_0`` from fewer tokens than the layer is wide, its null space is exact: the edit moves
    the layer's output on none of those tokens (to float precision), yet moves the answer towards
    the target (a zero update would keep them trivially)."""
    layers = mlp_output_layers(learnt.model)
    preserved = Corpus(tuple(learnt.world.corpus[:6]), "six lines")
    stats = key_statistics(
        learnt.model, learnt.tokenizer, layers, preserved, progress=False, cache_dir=tmp_path
    )
    d_in = next(iter(stats.moments.values())).shape[0]
    assert stats.n_tokens < d_in
    site = locate_facts(learnt.model, learnt.tokenizer, learnt.known)
    editor = AlphaEditEditor(
        statistics=stats, fact_token=site.fact_token, threshold=1e-6
    )  # the exact null space
    record = learnt.known[0]
    delta = editor.compute_delta(learnt.model, learnt.tokenizer, [record])
    for name, layer in delta.layers.items():
        module = learnt.model.get_submodule(name)
        keys = _layer_inputs(learnt, module, preserved.texts)  # [tokens, d_in]
        update = delta.dense(name, module)
        change = keys @ (update.T if isinstance(module, torch.nn.Linear) else update)  # [tokens, d_out]
        scale = (keys.norm(dim=1).max() * update.norm()).item()
        assert change.abs().max().item() <= 1e-5 * scale, (name, change.abs().max().item(), scale)
        p = null_space_projection(stats.moments[name], editor.threshold).float()
        assert torch.allclose(layer.u @ p, layer.u, atol=1e-5)  # the update lives in the null space
    before = score_targets(learnt.model, learnt.tokenizer, [record.prompt], [record.target]).mean_nll
    with applied(learnt.model, delta):
        after = score_targets(learnt.model, learnt.tokenizer, [record.prompt], [record.target]).mean_nll
    assert float(after) < float(before) - 0.5, (float(before), float(after))


def _layer_inputs(learnt: Learnt, module, texts) -> torch.Tensor:
    from edit_data import encode_prompt

    seen = []
    handle = module.register_forward_hook(lambda m, a, o: seen.append(a[0][0]))
    try:
        with torch.no_grad():
            for text in texts:
                learnt.model(input_ids=torch.tensor([encode_prompt(learnt.tokenizer, text)]))
    finally:
        handle.remove()
    return torch.cat(seen).float()


def test_key_statistics_are_cached_and_recomputed_when_the_weights_change(learnt, tmp_path) -> None:
    layers = mlp_output_layers(learnt.model)
    first = key_statistics(
        learnt.model, learnt.tokenizer, layers, learnt.corpus, cache_dir=tmp_path, progress=False
    )
    again = key_statistics(
        learnt.model, learnt.tokenizer, layers, learnt.corpus, cache_dir=tmp_path, progress=False
    )
    assert not first.cached and again.cached and again.path == first.path
    assert all(torch.equal(first.moments[n], again.moments[n]) for n in layers)
    assert first.n_texts == len(learnt.corpus.texts) and first.n_tokens > first.n_texts
    fewer = key_statistics(
        learnt.model,
        learnt.tokenizer,
        layers,
        read_corpus_first(learnt, 5),
        cache_dir=tmp_path,
        progress=False,
    )
    assert not fewer.cached and fewer.n_texts == 5
    rome = RomeEditor(statistics=first)
    with applied(learnt.model, rome.compute_delta(learnt.model, learnt.tokenizer, [learnt.known[0]])):
        edited = key_statistics(
            learnt.model, learnt.tokenizer, layers, learnt.corpus, cache_dir=tmp_path, progress=False
        )
    assert not edited.cached and edited.path != first.path


def read_corpus_first(learnt: Learnt, n: int) -> Corpus:
    return Corpus(learnt.corpus.texts[:n], "first lines")


def test_read_corpus_takes_text_files_and_saved_datasets(tmp_path) -> None:
    import datasets

    path = tmp_path / "lines.txt"
    path.write_text("one line\n\nanother line\nthird\n")
    assert read_corpus(path).texts == ("one line", "another line", "third")
    assert read_corpus(path, 2).texts == ("one line", "another line")
    datasets.Dataset.from_dict({"text": ["a b", "c d"]}).save_to_disk(str(tmp_path / "ds"))
    assert read_corpus(tmp_path / "ds").texts == ("a b", "c d")
    with pytest.raises(ValueError, match="no column 'body'"):
        read_corpus(tmp_path / "ds", column="body")
    with pytest.raises(FileNotFoundError, match="missing"):
        read_corpus(tmp_path / "missing.txt")
    assert len(read_corpus().texts) > 1000  # the built-in world's corpus


def test_causal_trace_draws_a_heat_map(learnt, tmp_path) -> None:
    record = learnt.known[0]
    traces = [
        causal_trace(learnt.model, learnt.tokenizer, record.prompt, record.subject, record.original, site=s)
        for s in ("hidden", "mlp")
    ]
    for tr in traces:
        assert tr.effects.shape == (len(tr.tokens), len(mlp_output_layers(learnt.model)))
        assert tr.p_clean > tr.p_corrupted  # corrupting the subject hides the answer
        assert 0 <= tr.subject_tokens[0] < tr.subject_tokens[1] <= len(tr.tokens)
    # restoring the whole residual stream at the last token after the last block restores the clean run
    assert traces[0].effects[-1, -1] == pytest.approx(traces[0].p_clean, abs=1e-5)
    png = draw_trace(traces, tmp_path / "trace.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_subject_positions_point_at_the_subjects_last_token(learnt) -> None:
    from edit_data import encode_prompt

    record = learnt.known[0]
    (pos,) = subject_positions(learnt.tokenizer, [record.prompt], [record.subject])
    ids = encode_prompt(learnt.tokenizer, record.prompt)
    assert record.subject.endswith(learnt.tokenizer.decode(ids[pos]).strip())
    with pytest.raises(ValueError, match="subject"):
        subject_positions(learnt.tokenizer, [record.prompt], ["Nobody"])


@pytest.mark.parametrize("name", ["t5", "bert"])
def test_locate_editors_refuse_other_kinds_of_model(name) -> None:
    model = build_tiny(name)
    for editor in ("ROME", "MEMIT", "AlphaEdit", "KN"):
        with pytest.raises(ValueError, match="causal language models"):
            build_editors([editor], EditorSetup(model=model, tokenizer=object()))
    with pytest.raises(ValueError, match="causal language models"):
        MemitEditor().compute_delta(model, None, [object()])
