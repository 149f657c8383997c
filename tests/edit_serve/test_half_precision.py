"""Half precision: a bf16 or fp16 model is edited, served, rolled back and replayed bitwise.

The editor and the edit's factors stay in float32 (they are what the journal stores); the
weights stay in the model's dtype, so the update is rounded once, when it is written, and
replaying the journal on the saved half-precision weights gives the same bits.
"""

from __future__ import annotations

import pytest
import torch

from edit_serve import EditItem, SamplingParams
from editor_nets import load_model


@pytest.fixture(params=[torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def half_model_dir(request, tiny_artifacts, tmp_path):
    model, tokenizer = load_model(tiny_artifacts.model_dir)
    out = tmp_path / "model"
    model.to(request.param).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, request.param


@pytest.mark.filterwarnings("ignore:the model's edited weights differ")
def test_half_precision_edit_serve_rollback_replay(
    half_model_dir, tiny_artifacts, serve_dirs, tmp_path
) -> None:
    model_dir, dtype = half_model_dir
    (p1, t1), (p2, t2) = tiny_artifacts.prompts[:2]
    greedy = SamplingParams(max_new_tokens=4)
    service = serve_dirs(model_dir, tiny_artifacts.editor_dir, tmp_path / "journal")
    try:
        assert {p.dtype for p in service.model.parameters()} == {dtype}
        digest0 = service.health(with_digest=True).weights_sha256
        before = service.generate(p1, greedy)
        first = service.edit(EditItem(p1, t1))
        assert first.target_logprob_after > first.target_logprob_before
        second = service.edit(EditItem(p2, t2))
        assert {p.dtype for p in service.model.parameters()} == {dtype}  # weights keep their dtype
        entry = service.journal.entries[-1]
        factors = service.journal.load_tensors(entry)
        assert {t.dtype for k, t in factors.items() if not k.endswith(".alpha")} == {torch.float32}
        assert service.generate(p1, greedy).version == second.version
        digest2 = service.health(with_digest=True).weights_sha256
    finally:
        service.close()

    # a restart replays the journal onto the saved half-precision weights: the same bits
    service = serve_dirs(model_dir, tiny_artifacts.editor_dir, tmp_path / "journal")
    try:
        assert service.health(with_digest=True).weights_sha256 == digest2
        service.rollback(edit_id=second.edit_id)
        service.rollback(edit_id=first.edit_id)
        assert service.health(with_digest=True).weights_sha256 == digest0
        assert service.generate(p1, greedy).text == before.text
    finally:
        service.close()
