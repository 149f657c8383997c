"""Every path on a CUDA device: capture, the editor, meta-training, evaluation, the baselines and
the sidecar's service (tensors created without the input's device fail here). Skipped without CUDA."""

from __future__ import annotations

import copy
import random

import pytest
import torch

pytest.importorskip("transformers")

from world_models import world_gpt2

from edit_serve import EditItem, EditJournal, EditService, SamplingParams
from editor_nets import (
    MendConfig,
    MendEditor,
    MetaTrainConfig,
    meta_loss,
    meta_train,
    qa_accuracy,
    restore_weights,
    validate_editor,
)
from editor_nets.baselines import EDITORS, EditorSetup, build_editors, preserved_texts
from editor_nets.enn import EnnConfig, enn_train
from editor_nets.evaluate import evaluate_editors
from editor_nets.knowledge_editor import KnowledgeEditor
from editor_nets.ridge import preserved_moments
from editor_nets.scoring import score_targets
from editor_nets.serac import ScopeClassifier, SeracConfig, train_serac
from tiny_models import build_tiny

pytestmark = pytest.mark.gpu
DEVICE = "cuda"


@pytest.fixture(scope="module")
def on_gpu():
    model, tok, world = world_gpt2(0)
    return model.cuda(), tok, world


def test_training_and_evaluation_paths_run_on_the_gpu(on_gpu):
    model, tok, world = on_gpu
    records = world.records[:4]
    assert 0.0 <= qa_accuracy(model, tok, [r.prompt for r in records], [r.original for r in records]) <= 1.0
    editor = MendEditor.for_model(model, MendConfig(rank=8, alpha_init=0.1)).cuda().train()
    loss, _, _ = meta_loss(editor, model, tok, records[:1], MetaTrainConfig(), random.Random(0))
    loss.backward()
    assert editor.alpha.grad is not None and editor.alpha.grad.is_cuda
    assert "es_sequential" in validate_editor(editor.eval(), model, tok, records, n_sequential=2)
    editors = build_editors(
        ["MEND", "FT", "FT+KL"], EditorSetup(editor.targets, world.records[4:8], {"MEND": editor})
    )
    res = evaluate_editors(model, tok, editors, records, n_sequential=2, batch_size=2, progress=False)
    assert set(res["methods"]) == {"MEND", "FT", "FT+KL"}


def test_the_sidecar_service_edits_and_generates_on_the_gpu(on_gpu, tmp_path):
    model, tok, world = on_gpu
    editor = MendEditor.for_model(model, MendConfig(rank=8, alpha_init=0.1)).cuda()
    service = EditService(model, tok, editor, EditJournal(tmp_path / "journal"), device="cuda:0")
    r = world.records[0]
    reply = service.edit(EditItem(r.prompt, r.target))
    assert reply.target_logprob_after > reply.target_logprob_before
    assert service.generate(r.prompt, SamplingParams(max_new_tokens=2)).version == reply.version
    digest = service.health(with_digest=True).weights_sha256
    service.rollback(edit_id=reply.edit_id)
    assert service.health(with_digest=True).weights_sha256 != digest
    service.close()


def test_a_bf16_model_edits_and_rolls_back_bitwise_on_the_gpu(on_gpu, tmp_path):
    model, tok, world = on_gpu
    model = copy.deepcopy(model).to(torch.bfloat16)
    editor = MendEditor.for_model(model, MendConfig(rank=8, alpha_init=0.1)).cuda()
    service = EditService(model, tok, editor, EditJournal(tmp_path / "journal"), device="cuda:0")
    digest0 = service.health(with_digest=True).weights_sha256
    # the fp32 test's record: one step of this untrained editor overshoots on some others, in fp32 too
    r = world.records[0]
    reply = service.edit(EditItem(r.prompt, r.target))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert reply.target_logprob_after > reply.target_logprob_before
    service.rollback(edit_id=reply.edit_id)
    assert service.health(with_digest=True).weights_sha256 == digest0
    service.close()


def test_every_registered_editor_edits_and_restores_on_the_gpu(learnt, tmp_path):
    """Every editor of the registry on CUDA, each of the tiny causal models: the trained editors
    after a few training steps there (LifelongMEND through its live-sequence loop), single edits,
    a batch, the lifelong curves, and the model bitwise restored after each (``verify_restore``)."""
    model, tok = copy.deepcopy(learnt.model).to(DEVICE), learnt.tokenizer
    train, test = learnt.known[:-6], learnt.known[-6:]
    lifelong = MendEditor.for_model(
        model, MendConfig(rank=8, alpha_init=0.5, aggregation="ridge", edit_steps=3)
    ).to(DEVICE)
    lifelong.set_preserved(preserved_moments(model, tok, preserved_texts(train), lifelong.targets))
    config = MetaTrainConfig(steps=2, grad_accum=1, val_every=2, val_edits=2, val_sequential=2, sequence_length=2,
                             c_norm=1e-3)  # fmt: skip
    meta_train(lifelong, model, tok, train, test[:2], config, tmp_path / "lifelong")
    serac, _ = train_serac(
        model, tok, train, SeracConfig(classifier_steps=3, classifier_batch=8, cf_steps=3, cf_batch=8),
        classifier=ScopeClassifier(build_tiny("bert", tokenizer=tok).bert.to(DEVICE), tok), progress=False,
    )  # fmt: skip
    trained = {"LifelongMEND": lifelong.eval(), "KE": KnowledgeEditor(model).to(DEVICE), "SERAC": serac}
    names = [n for n in EDITORS if n not in ("MEND", "ENN")]  # MEND: the test above; ENN trains its own model
    setup = EditorSetup(
        train_records=train, trained=trained, model=model, tokenizer=tok, corpus=learnt.corpus,
        stats_cache=str(tmp_path), ft_max_steps=3,
    )  # fmt: skip
    editors = build_editors(names, setup)
    res = evaluate_editors(
        model, tok, editors, test, modes=("single", "batched"), batch_size=3,
        lifelong_checkpoints=(1, 3), lifelong_batches=(3,), progress=False,
    )  # fmt: skip
    assert list(res["methods"]) == names
    for name, method in res["methods"].items():
        curve = method["lifelong"]["sequential"]
        assert [p["n_edits"] for p in curve] == [1, 3], name
        assert all(p["n_failed_edits"] == 0 for p in curve), (name, curve)


def test_enn_trains_and_edits_on_the_gpu(learnt):
    model, tok = copy.deepcopy(learnt.model).to(DEVICE), learnt.tokenizer
    editor, log = enn_train(model, tok, learnt.known[:8], EnnConfig(steps=2, batch_size=2), progress=False)
    assert len(log) == 2
    record, state = learnt.known[-1], copy.deepcopy(model.state_dict())
    before = score_targets(model, tok, [record.prompt], [record.target]).nll
    snapshot = editor.edit(model, tok, [record])
    after = score_targets(model, tok, [record.prompt], [record.target]).nll
    assert torch.isfinite(after).all() and bool(after < before)
    restore_weights(model, snapshot)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
