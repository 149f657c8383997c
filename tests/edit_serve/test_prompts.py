"""One prompt encoding for edits, evaluation and generation, with a tokenizer that adds BOS (as
Llama's and Mistral's do): an edit is computed on exactly the ids Generate later runs on."""

from __future__ import annotations

import pytest

from tiny_models import build_tiny

pytest.importorskip("transformers")

from edit_data import collate_causal, encode_prompt, train_tokenizer
from edit_serve import EditItem, EditJournal, EditService, SamplingParams
from editor_nets import MendConfig, MendEditor, edit_batch, generate_answer

TEXTS = ["Where does Ana live ? Oslo", "Where does Bo live ? Rome", "Paris Lima Kyiv", "grass is green"]
PROMPT, TARGET = "Where does Ana live ?", "Paris"


@pytest.fixture
def bos_tokenizer():
    tok = train_tokenizer(TEXTS, add_bos=True)
    assert tok(PROMPT)["input_ids"][0] == tok.bos_token_id  # the tokenizer really adds BOS
    return tok


def test_edit_evaluation_and_generation_see_the_same_prompt_ids(bos_tokenizer, tmp_path):
    tok, model = bos_tokenizer, build_tiny("llama")
    prompt_ids = encode_prompt(tok, PROMPT)
    assert prompt_ids[0] == tok.bos_token_id and tok.bos_token_id not in prompt_ids[1:]
    edit_ids = collate_causal(tok, [PROMPT], [TARGET])["input_ids"][0].tolist()
    assert edit_ids[: len(prompt_ids)] == prompt_ids  # the edit batch: prompt ids, then the target
    assert edit_batch(model, tok, [PROMPT], [TARGET])["input_ids"][0].tolist() == edit_ids  # evaluation
    seen: list[list[int]] = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["input_ids"][0].tolist()), with_kwargs=True
    )
    try:
        generate_answer(model, tok, PROMPT, max_new_tokens=1)
        service = EditService(
            model, tok, MendEditor.for_model(model, MendConfig(rank=8)), EditJournal(tmp_path / "j")
        )
        service.generate(PROMPT, SamplingParams(max_new_tokens=1))
    finally:
        hook.remove()
    assert seen[0] == prompt_ids  # generate_answer
    assert seen[-1] == prompt_ids  # the sidecar's Generate (its first forward runs the prompt)
    service.close()


def test_an_edit_through_the_sidecar_changes_what_generate_returns(bos_tokenizer, tmp_path):
    tok, model = bos_tokenizer, build_tiny("llama")
    editor = MendEditor.for_model(model, MendConfig(rank=8, alpha_init=1.0))  # one fine-tuning step of size 1
    service = EditService(model, tok, editor, EditJournal(tmp_path / "j"))
    greedy = SamplingParams(max_new_tokens=1)
    before = service.generate(PROMPT, greedy).text
    assert before != TARGET
    reply = service.edit(EditItem(PROMPT, TARGET))
    assert reply.target_logprob_after > reply.target_logprob_before
    assert service.generate(PROMPT, greedy).text == TARGET
    service.rollback(edit_id=reply.edit_id)
    assert service.generate(PROMPT, greedy).text == before
    service.close()
