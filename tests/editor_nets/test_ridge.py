"""Least-squares edits: the solve, the protection of earlier keys, the key memory, the
training-free ridge editor and MEND with ridge aggregation (the lifelong editor)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("transformers")

from world_models import changed, param_state, world_gpt2

from editor_nets import (
    EditDelta,
    MendConfig,
    MendEditor,
    MetaTrainConfig,
    meta_train,
    restore_weights,
    score_targets,
)
from editor_nets.baselines import preserved_texts
from editor_nets.delta import LayerDelta, applied
from editor_nets.mend import edit_factors
from editor_nets.models import output_projections
from editor_nets.ridge import (
    KeyMemory,
    RidgeEditor,
    RidgeSystem,
    broken_answers,
    held_rows,
    layer_inputs,
    neighbour_prompts,
    preserved_moments,
    ridge_update,
    stepwise_edit,
    subject_templates,
)
from editor_nets.scoring import edit_batch


def _dense(layer) -> torch.Tensor:
    return -layer.alpha * layer.delta.double().T @ layer.u.double()


def test_ridge_update_is_the_regularised_least_squares_solution():
    g = torch.Generator().manual_seed(0)
    keys, values = torch.randn(5, 12, generator=g), torch.randn(5, 7, generator=g)
    prior = (lambda k: k.T @ k)(torch.randn(20, 12, generator=g))
    layer = ridge_update(keys, values, prior, 0.1)
    u, d = keys.double(), values.double()
    expected = d.T @ u @ torch.linalg.inv(u.T @ u + prior.double() + 0.1 * torch.eye(12, dtype=torch.float64))
    torch.testing.assert_close(_dense(layer), expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(layer.keys, keys) and layer.u.shape == (5, 12) and layer.delta.shape == (5, 7)
    # without protection and with a tiny ridge the update reaches the value changes exactly
    exact = ridge_update(keys, values, None, 1e-8)
    torch.testing.assert_close((_dense(exact) @ u.T).T, d, rtol=1e-3, atol=1e-4)


def test_a_factored_system_gives_the_direct_solve_for_every_step():
    g = torch.Generator().manual_seed(3)
    corpus = torch.randn(40, 32, generator=g)
    prior = 3000.0 * corpus.T @ corpus / 40  # strong and ill-conditioned, as C_0 is
    system = RidgeSystem.of(prior, 1e-2, 32, torch.device("cpu"))
    for _ in range(3):  # the steps of one edit: new keys, the same prior
        keys, values = torch.randn(4, 32, generator=g), torch.randn(4, 6, generator=g)
        direct, factored = ridge_update(keys, values, prior, 1e-2), system.update(keys, values)
        torch.testing.assert_close(factored.u, direct.u, rtol=1e-5, atol=1e-7)
        assert torch.equal(factored.delta, direct.delta) and torch.equal(factored.keys, keys)
    # without a prior, too
    keys, values = torch.randn(4, 32, generator=g), torch.randn(4, 6, generator=g)
    torch.testing.assert_close(
        RidgeSystem.of(None, 0.1, 32, keys.device).update(keys, values).u,
        ridge_update(keys, values, None, 0.1).u,
    )


def test_earlier_keys_in_the_prior_keep_their_outputs():
    g = torch.Generator().manual_seed(1)
    earlier = torch.randn(4, 16, generator=g)
    keys, values = torch.randn(3, 16, generator=g), torch.randn(3, 6, generator=g)
    free = _dense(ridge_update(keys, values, None, 1e-3))
    kept = _dense(ridge_update(keys, values, 1e4 * earlier.T @ earlier, 1e-3))
    assert (kept @ earlier.double().T).norm() < 1e-3 * (free @ earlier.double().T).norm()
    assert (kept @ keys.double().T).norm() > 0.1 * (free @ keys.double().T).norm()  # the edit still acts


def test_key_memory_is_rebuilt_from_stored_keys():
    g = torch.Generator().manual_seed(2)
    deltas = [
        EditDelta(
            {"l": ridge_update(torch.randn(3, 8, generator=g), torch.randn(3, 4, generator=g), None, 0.1)}
        )
        for _ in range(3)
    ]
    preserved = {"l": torch.eye(8)}
    memory = KeyMemory(preserved)
    for d in deltas:
        memory = memory.with_edit(d)
    rebuilt = KeyMemory.of(deltas, preserved)
    assert memory.n_edits == rebuilt.n_edits == 3 and torch.equal(memory.edits["l"], rebuilt.edits["l"])
    assert memory.fresh().n_edits == 0 and memory.fresh().preserved is preserved
    prior = memory.prior("l", 2.0, torch.device("cpu"))
    torch.testing.assert_close(prior, memory.edits["l"] + 2.0 * torch.eye(8))
    weighted = memory.prior("l", 2.0, torch.device("cpu"), beta=30.0)
    torch.testing.assert_close(weighted, 30.0 * memory.edits["l"] + 2.0 * torch.eye(8))


def test_a_heavier_weight_of_earlier_edits_moves_their_outputs_less():
    g = torch.Generator().manual_seed(4)
    earlier = torch.randn(6, 16, generator=g)
    memory = KeyMemory().with_edit(
        EditDelta({"l": ridge_update(earlier, torch.randn(6, 3, generator=g), None, 0.1)})
    )
    keys = earlier[:2] + 0.5 * torch.randn(2, 16, generator=g)  # a new edit close to two earlier ones
    values = torch.randn(2, 3, generator=g)
    moved = [
        (
            _dense(ridge_update(keys, values, memory.prior("l", 1.0, keys.device, beta), 1e-2))
            @ earlier.double().T
        ).norm()
        for beta in (1.0, 30.0, 1000.0)
    ]
    assert moved[0] > moved[1] > moved[2]


@pytest.fixture(scope="module")
def trained():
    return world_gpt2(0)


def test_the_ridge_editor_edits_keeps_earlier_edits_and_changes_only_its_layers(trained):
    model, tok, world = trained
    records = [
        r for r in world.records if not bool(score_targets(model, tok, [r.prompt], [r.target]).exact[0])
    ]
    targets = output_projections(model)
    texts = preserved_texts(world.records[40:])
    # this barely trained model needs a weaker preserved-key weight than the defaults' 3000
    editor = RidgeEditor(targets, gamma=10.0, memory=KeyMemory(preserved_moments(model, tok, texts, targets)))
    before = param_state(model)
    delta = editor.compute_delta(model, tok, records[:1])
    assert not changed(model, before) and set(delta.layers) == set(targets)
    prompts, answers = [r.prompt for r in records[:3]], [r.target for r in records[:3]]
    nll_before = score_targets(model, tok, prompts, answers).mean_nll
    snapshots, nll_own = [], []
    for i, r in enumerate(records[:3]):
        snapshots.append(editor.edit(model, tok, [r]))
        scores = score_targets(model, tok, prompts, answers)
        assert bool(scores.exact[i])  # each edit hits its own target when it is made
        nll_own.append(float(scores.mean_nll[i]))
    assert editor.memory.n_edits == 3
    assert changed(model, before) <= {f"{t}.weight" for t in targets}
    # the third edit did not undo the first two: their target NLL stays where their own edit put it
    # (edits stop at the first exact hit, on the argmax boundary, so exact match is not compared)
    nll_after = score_targets(model, tok, prompts, answers).mean_nll
    for i in range(2):
        assert nll_after[i] < nll_own[i] + 0.1 < nll_before[i] - 0.5
    for s in reversed(snapshots):
        restore_weights(model, s)
    assert not changed(model, before)
    editor.start()
    assert editor.memory.n_edits == 0 and editor.memory.preserved


def _ridge_editor(model, tok, world) -> RidgeEditor:
    targets = output_projections(model)
    texts = preserved_texts(world.records[40:])
    return RidgeEditor(targets, gamma=10.0, memory=KeyMemory(preserved_moments(model, tok, texts, targets)))


def _missed(model, tok, world) -> list:
    return [r for r in world.records if not bool(score_targets(model, tok, [r.prompt], [r.target]).exact[0])]


def _ridge_step(memory: KeyMemory | None = None, lr: float = 0.25):
    """A training-free ridge step (the ridge editor's), for ``stepwise_edit``."""

    def step(factors):
        prior = (lambda n, u: memory.prior(n, 10.0, u.device)) if memory else (lambda n, u: None)
        return EditDelta({
            n: RidgeSystem.of(prior(n, u), 1e-2, u.shape[1], u.device).update(u, -lr * d)
            for n, (u, d) in factors.items()
        })  # fmt: skip

    return step


def test_a_stop_nll_edit_goes_on_past_the_first_hit_to_the_margin(trained):
    model, tok, world = trained
    record, layers = _missed(model, tok, world)[0], output_projections(model)

    def nll_after(stop: float | None) -> float:
        delta = stepwise_edit(model, tok, [record], layers, _ridge_step(lr=4.0), 40, {}, stop)
        with applied(model, delta):
            scores = score_targets(model, tok, [record.prompt], [record.target])
        assert bool(scores.exact[0])
        return float(scores.mean_nll[0])

    first_hit = nll_after(None)  # stops at the first exact hit, near the argmax boundary
    assert nll_after(first_hit - 0.1) < first_hit - 0.1


def test_an_edit_that_runs_out_of_steps_keeps_its_best_steps(trained):
    """Steps that push past the first hit and then away from it (the margin is out of reach) are
    dropped: the edit is the steps up to its best point, where the target was hit."""
    model, tok, world = trained
    record, layers = _missed(model, tok, world)[0], output_projections(model)
    rows_to_first_hit, turned = [], []

    def step(factors):
        if not turned and bool(score_targets(model, tok, [record.prompt], [record.target]).exact[0]):
            turned.append(True)  # from here on every step pushes the target away
        delta = _ridge_step(lr=-4.0 if turned else 4.0)(factors)
        if not turned:
            rows_to_first_hit.append(len(delta.layers[layers[-1]].u))
        return delta

    delta = stepwise_edit(model, tok, [record], layers, step, 40, {}, 0.0)  # NLL < 0: never reached
    assert turned, "the forward steps never hit the target"
    with applied(model, delta):
        assert bool(score_targets(model, tok, [record.prompt], [record.target]).exact[0])
    assert len(delta.layers[layers[-1]].u) == sum(rows_to_first_hit)


def test_a_record_that_is_done_stops_pushing_in_a_batch(trained):
    """In a batch, a record whose target is already hit adds nothing to the step: the captured rows
    are those of the other record alone."""
    model, tok, world = trained
    hit = next(r for r in world.records if bool(score_targets(model, tok, [r.prompt], [r.target]).exact[0]))
    missed = _missed(model, tok, world)[0]
    layers = output_projections(model)
    seen = []

    def step(factors):
        seen.append(dict(factors))
        return _ridge_step()(factors)

    stepwise_edit(model, tok, [hit, missed], layers, step, 1, {})
    together = seen[0][layers[-1]]
    alone = edit_factors(model, edit_batch(model, tok, [missed.prompt], [missed.target]), [layers[-1]])[
        layers[-1]
    ]
    assert len(together.u) == len(alone.u) > 0
    torch.testing.assert_close(together.delta, alone.delta, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(together.u, alone.u, rtol=1e-4, atol=1e-6)


def test_a_fresh_ridge_mend_step_is_one_ridge_step(trained):
    """With identity networks, one step of MEND with ridge aggregation is one ridge-editor step of
    size alpha: the learned editor starts from the training-free one."""
    model, tok, world = trained
    config = MendConfig(rank=8, alpha_init=0.5, aggregation="ridge", edit_steps=1)
    editor = MendEditor.for_model(model, config)
    moments = preserved_moments(model, tok, preserved_texts(world.records[40:]), editor.targets)
    editor.set_preserved(moments)
    ridge = RidgeEditor(editor.targets, lr=0.5, ridge=config.ridge_init, gamma=config.gamma_init, max_steps=1,
                        memory=KeyMemory(moments))  # fmt: skip
    record = next(
        r for r in world.records if not bool(score_targets(model, tok, [r.prompt], [r.target]).exact[0])
    )
    a, b = editor.compute_delta(model, tok, [record]), ridge.compute_delta(model, tok, [record])
    for name in editor.targets:  # equal up to float32 rounding of exp(log(gamma)) in an ill-conditioned solve
        da, db = _dense(a.layers[name]), _dense(b.layers[name])
        assert (da - db).norm() < 1e-3 * db.norm() and db.norm() > 0


def test_ridge_mend_checkpoint_and_live_sequence_training(trained, tmp_path):
    model, tok, world = trained
    editor = MendEditor.for_model(
        model, MendConfig(rank=8, alpha_init=0.5, aggregation="ridge", edit_steps=3)
    )
    editor.set_preserved(preserved_moments(model, tok, preserved_texts(world.records[40:]), editor.targets))
    before = param_state(model)
    config = MetaTrainConfig(steps=4, grad_accum=2, val_every=4, val_edits=3, val_sequential=3, sequence_length=3,
                             c_norm=1e-3)  # fmt: skip
    summary = meta_train(editor, model, tok, world.records[:30], world.records[30:36], config, tmp_path)
    assert summary["steps"] == 4 and "es_sequential" in summary["best_validation"]
    assert not changed(model, before) and editor.memory.n_edits == 0  # the live sequence was undone
    loaded = MendEditor.from_pretrained(tmp_path, model=model)
    assert loaded.config.aggregation == "ridge" and loaded.config.edit_steps == 3
    assert torch.equal(loaded.log_beta, editor.log_beta)
    # a checkpoint saved before the earlier edits' weight was learned loads with its starting value
    state = load_file(str(tmp_path / "editor.safetensors"))
    del state["log_beta"]
    save_file(state, str(tmp_path / "editor.safetensors"))
    old = MendEditor.from_pretrained(tmp_path, model=model)
    assert torch.equal(old.log_beta, torch.zeros_like(old.log_beta)) and torch.equal(
        old.log_gamma, editor.log_gamma
    )
    assert torch.equal(loaded.memory.preserved[editor.targets[0]], editor.memory.preserved[editor.targets[0]])
    random.seed(0)
    snapshot = loaded.edit(model, tok, world.records[50:51])
    assert loaded.memory.n_edits == 1 and snapshot


def test_the_memory_keeps_the_answers_of_the_edits_it_was_built_from():
    g = torch.Generator().manual_seed(5)

    def made(prompt: str, target: str) -> EditDelta:
        layer = ridge_update(torch.randn(2, 8, generator=g), torch.randn(2, 4, generator=g), None, 0.1)
        return EditDelta({"l": layer}, {"records": json.dumps([{"prompt": prompt, "target": target}])})

    a, b, c = (
        made("Where was A born?", "Paris"),
        made("Where was B born?", "Rome"),
        made("Where was C born?", "Oslo"),
    )
    memory = KeyMemory().with_edit(a).with_edit(b).with_edit(c)
    assert memory.answers == (("Where was A born?", "Paris"), ("Where was B born?", "Rome"), ("Where was C born?", "Oslo"))  # fmt: skip
    # rolling back b: the memory of the remaining edits holds only their answers
    assert KeyMemory.of([a, c]).answers == (("Where was A born?", "Paris"), ("Where was C born?", "Oslo"))
    assert (
        memory.fresh().answers == () and KeyMemory().with_edit(EditDelta({"l": a.layers["l"]})).answers == ()
    )


def test_broken_answers_finds_the_earlier_edits_an_update_undoes(trained):
    model, tok, world = trained
    record, *missed = _missed(model, tok, world)
    other = next(r for r in missed if r.target != record.target)  # one the edit does not teach
    delta = stepwise_edit(model, tok, [record], output_projections(model), _ridge_step(lr=4.0), 40, {}, None)
    undo = EditDelta({n: LayerDelta(x.u, x.delta, -x.alpha, x.keys) for n, x in delta.layers.items()})
    before = param_state(model)
    with applied(model, delta):  # the edit is in the model: undoing it breaks its answer, and only it
        answers = [(record.prompt, record.target), (other.prompt, other.target)]
        assert broken_answers(model, tok, undo, answers) == [0]
        assert broken_answers(model, tok, delta, answers) == []  # pushing further breaks nothing
    assert not changed(model, before)


def test_an_edit_with_repair_makes_the_answers_it_breaks_again(trained, monkeypatch):
    model, tok, world = trained
    first, second = _missed(model, tok, world)[:2]
    config = MendConfig(rank=8, alpha_init=4.0, aggregation="ridge", edit_steps=40, step_scale=1.0, repair=True,
                        gamma_init=10.0)  # fmt: skip
    editor = MendEditor.for_model(model, config)
    memory = KeyMemory(answers=((first.prompt, first.target),))
    calls = []

    def breaks_the_first(model, tokenizer, delta, answers):
        calls.append(list(answers))
        return [0]

    monkeypatch.setattr("editor_nets.mend.broken_answers", breaks_the_first)
    delta = editor.compute_delta(model, tok, [second], memory)
    assert calls == [[(first.prompt, first.target)]]
    assert json.loads(delta.provenance["repaired"]) == [[first.prompt, first.target]]
    assert [r["prompt"] for r in json.loads(delta.provenance["records"])] == [second.prompt]  # as asked
    with applied(model, delta):  # made together: both answers hold
        assert bool(score_targets(model, tok, [first.prompt, second.prompt], [first.target, second.target]).exact.all())  # fmt: skip
    editor.config.repair = False
    assert "repaired" not in editor.compute_delta(model, tok, [second], memory).provenance


def test_neighbour_prompts_ask_an_edit_prompt_of_other_subjects_of_its_template():
    from edit_data import EditRecord

    train = [
        EditRecord("Where was Ada born?", "Rome", rephrases=["Ada was born in"], subject="Ada"),
        EditRecord("Where was Bo born?", "Oslo", subject="Bo"),
        EditRecord("Where was Cy born?", "Lima", subject="Cy"),
        EditRecord("Who employs Dee?", "Acme", subject="Dee"),
        EditRecord("A prompt without its subject", "x", subject="Eve"),
    ]
    templates = subject_templates(train)
    assert templates == {
        "Where was {subject} born?": ["Ada", "Bo", "Cy"],
        "{subject} was born in": ["Ada"],
        "Who employs {subject}?": ["Dee"],
    }
    edit = EditRecord("Where was Bo born?", "Kyiv", subject="Bo")
    asked = neighbour_prompts([edit], templates, 8)
    assert sorted(asked) == ["Where was Ada born?", "Where was Cy born?"]  # its template's, not its own
    assert neighbour_prompts([edit], templates, 1) == neighbour_prompts([edit], templates, 1)  # per prompt
    assert len(neighbour_prompts([edit], templates, 1)) == 1
    new = EditRecord("Name the birthplace of Bo.", "Kyiv", subject="Bo")  # a template no training edit used
    assert sorted(neighbour_prompts([new], templates, 8)) == [
        f"Name the birthplace of {s}." for s in ("Ada", "Cy", "Dee")
    ]
    assert neighbour_prompts([EditRecord("Where was Bo born?", "Kyiv")], templates, 8) == []  # no subject
    assert neighbour_prompts([edit], templates, 0) == [] and neighbour_prompts([edit], {}, 8) == []


def test_a_memory_holding_extra_moments_changes_only_that_solves_protection():
    g = torch.Generator().manual_seed(3)
    edit = EditDelta(
        {"l": ridge_update(torch.randn(2, 6, generator=g), torch.randn(2, 4, generator=g), None, 0.1)}
    )
    memory = KeyMemory({"l": torch.eye(6)}).with_edit(edit)
    extra = {"l": (lambda k: k.T @ k)(torch.randn(3, 6, generator=g)), "m": torch.eye(6)}
    held = memory.holding(extra, 5.0)
    torch.testing.assert_close(held.edits["l"], memory.edits["l"] + 5.0 * extra["l"])
    torch.testing.assert_close(held.edits["m"], 5.0 * torch.eye(6))
    assert "m" not in memory.edits and (held.n_edits, held.answers) == (memory.n_edits, memory.answers)


def test_neighbour_protection_keeps_the_neighbours_outputs_unless_the_edit_grows_too_big(trained, tmp_path):
    model, tok, world = trained
    config = MendConfig(rank=8, alpha_init=0.5, aggregation="ridge", edit_steps=4, neighbours=6)
    editor = MendEditor.for_model(model, config)
    editor.set_preserved(preserved_moments(model, tok, preserved_texts(world.records[40:]), editor.targets))
    editor.set_subjects(world.records[:40])
    record = next(r for r in _missed(model, tok, world)[40:] if neighbour_prompts([r], editor.subjects, 6))
    texts = neighbour_prompts([record], editor.subjects, 6)
    moments = preserved_moments(model, tok, texts, editor.targets)

    def spill(delta: EditDelta) -> float:  # how far the edit moves the neighbours' layer outputs
        return sum(
            float(torch.trace(_dense(x) @ moments[n].double() @ _dense(x).T)) for n, x in delta.layers.items()
        )

    held = editor.compute_delta(model, tok, [record])
    editor.config.neighbours = 0
    plain = editor.compute_delta(model, tok, [record])
    assert json.loads(held.provenance["neighbours"]) == texts and "neighbours" not in plain.provenance
    assert spill(held) < 0.5 * spill(plain)
    # an edit bigger than neighbour_norm_bound times the plain one is made without the protection
    editor.config.neighbours, editor.config.neighbour_norm_bound = 6, 1e-3
    fallback = editor.compute_delta(model, tok, [record])
    assert "neighbours" not in fallback.provenance
    for n in editor.targets:
        torch.testing.assert_close(fallback.layers[n].u, plain.layers[n].u)
    # the subjects are part of the checkpoint
    editor.save_pretrained(tmp_path)
    assert MendEditor.from_pretrained(tmp_path, model).subjects == editor.subjects
    (tmp_path / "subjects.json").write_text('{"Where was {subject} born?": "Ada"}')
    with pytest.raises(ValueError, match=r"subjects\.json: expected an object of template"):
        MendEditor.from_pretrained(tmp_path, model)


def test_held_rows_carry_the_keys_second_moment_in_fewer_rows():
    g = torch.Generator().manual_seed(4)
    shared = torch.randn(3, 10, generator=g)  # a template's tokens before the subject: the same keys
    keys = torch.cat([shared, shared, torch.randn(4, 10, generator=g), shared])
    rows = held_rows(keys, 3.0)
    assert rows.shape == (7, 10)  # the keys' rank, not their number
    torch.testing.assert_close(rows.T @ rows, 3.0 * keys.T @ keys / len(keys), rtol=1e-4, atol=1e-5)
    assert torch.equal(rows, held_rows(keys, 3.0))
    many = torch.cat([keys] * 3)  # more keys than their width: through K^T K, still the rank
    tall = held_rows(many, 3.0)
    assert tall.shape == (7, 10)
    torch.testing.assert_close(tall.T @ tall, 3.0 * many.T @ many / len(many), rtol=1e-4, atol=1e-5)


def test_layer_inputs_are_the_tokens_preserved_moments_averages(trained):
    model, tok, world = trained
    texts = [r.prompt for r in world.records[:5]]
    targets = output_projections(model)[:2]
    keys = layer_inputs(model, tok, texts, targets, batch_size=2)
    moments = preserved_moments(model, tok, texts, targets, batch_size=3)
    n_tokens = sum(len(tok(t)["input_ids"]) for t in texts)
    for name in targets:
        assert keys[name].shape[0] == n_tokens
        torch.testing.assert_close(keys[name].T @ keys[name] / n_tokens, moments[name], rtol=1e-4, atol=1e-5)


def test_pooled_neighbours_are_where_the_plain_edit_spills_and_later_edits_hold_them(trained):
    model, tok, world = trained
    config = MendConfig(
        rank=8, alpha_init=0.5, aggregation="ridge", edit_steps=4, neighbours=3, neighbour_pool=12
    )
    editor = MendEditor.for_model(model, config)
    editor.set_preserved(preserved_moments(model, tok, preserved_texts(world.records[40:]), editor.targets))
    editor.set_subjects(world.records[:40])
    record = next(
        r for r in _missed(model, tok, world)[40:] if len(neighbour_prompts([r], editor.subjects, 12)) > 3
    )
    pool = neighbour_prompts([record], editor.subjects, 12)
    plain = editor._ridge_edit(model, tok, [record], editor.memory, {})
    targets = [record.target] * len(pool)
    before = score_targets(model, tok, pool, targets).mean_nll
    with applied(model, plain):
        drop = before - score_targets(model, tok, pool, targets).mean_nll
    picked = editor._neighbours(model, tok, [record], plain)
    assert len(picked) == 3 and set(picked) <= set(pool)
    assert min(drop[pool.index(p)] for p in picked) >= max(
        drop[i] for i, p in enumerate(pool) if p not in picked
    )
    # with neighbour_memory the held neighbours' keys join the edit's keys, scaled, for later edits
    delta = editor.compute_delta(model, tok, [record])
    editor.config.neighbour_memory = 2.0
    kept = editor.compute_delta(model, tok, [record])
    neighbours = layer_inputs(model, tok, picked, editor.targets)
    for n in editor.targets:
        own = delta.layers[n].keys
        assert torch.equal(kept.layers[n].keys[: len(own)], own)
        extra = kept.layers[n].keys[len(own) :]
        torch.testing.assert_close(
            extra.T @ extra, 2.0 * neighbours[n].T @ neighbours[n] / len(neighbours[n]), rtol=1e-4, atol=1e-5
        )
    memory = KeyMemory.of([kept])
    for n in editor.targets:
        torch.testing.assert_close(memory.edits[n], kept.layers[n].keys.T @ kept.layers[n].keys)
