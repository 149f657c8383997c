"""A word-level tokenizer trained offline, for tiny models pre-trained on the synthetic world."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)  # ids 0, 1, 2, 3


def train_tokenizer(
    texts: Iterable[str], *, vocab_size: int | None = None, add_bos: bool = False, add_eos: bool = False
) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on ``texts`` (no download, deterministic).

    Words are split on whitespace and every punctuation character is its own token, so each
    single-word entity name of the world is exactly one token. ``vocab_size`` caps the vocabulary
    (most frequent words kept, specials included); ``None`` keeps every word. Special tokens:
    ``<pad>``=0, ``<unk>``=1, ``<bos>``=2, ``<eos>``=3. Nothing is added automatically around a
    text (like GPT-2), unless ``add_bos``: then every text starts with ``<bos>`` (like Llama), or
    ``add_eos``: then every text ends with ``<eos>`` (like T5; both: like BART). Save and reload
    with ``save_pretrained`` / ``AutoTokenizer.from_pretrained``.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("train_tokenizer needs at least one text")
    if vocab_size is not None and vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins with spaces, tidies " ?" -> "?"
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size if vocab_size is not None else 10**9,
        min_frequency=0,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    # Sorting makes the vocabulary independent of text order among equal-frequency words.
    tok.train_from_iterator(sorted(texts), trainer=trainer)
    if add_bos or add_eos:
        head, tail = (f"{BOS} " if add_bos else ""), (f" {EOS}" if add_eos else "")
        tok.post_processor = processors.TemplateProcessing(
            single=f"{head}$A{tail}",
            pair=f"{head}$A $B{tail}",
            special_tokens=[(t, tok.token_to_id(t)) for t in (BOS, EOS)],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
