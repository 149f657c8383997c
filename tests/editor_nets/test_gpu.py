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
    qa_accuracy,
    validate_editor,
)
from editor_nets.baselines import EditorSetup, build_editors
from editor_nets.evaluate import evaluate_editors

pytestmark = pytest.mark.gpu


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
    r = world.records[1]
    reply = service.edit(EditItem(r.prompt, r.target))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert reply.target_logprob_after > reply.target_logprob_before
    service.rollback(edit_id=reply.edit_id)
    assert service.health(with_digest=True).weights_sha256 == digest0
    service.close()
