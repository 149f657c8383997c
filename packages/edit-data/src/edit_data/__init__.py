"""edit_data: one edit-record schema, builders for public editing datasets, a synthetic world,
and tokenising collators."""

from edit_data.collate import (
    IGNORE_INDEX,
    TargetTooLongError,
    collate_causal,
    collate_classifier,
    collate_seq2seq,
)
from edit_data.records import EditRecord, LocalityExample
from edit_data.tokenizer import train_tokenizer
from edit_data.world import RELATIONS, Claim, Fact, Relation, World, build_world

__all__ = [
    "IGNORE_INDEX",
    "TargetTooLongError",
    "collate_causal",
    "collate_classifier",
    "collate_seq2seq",
    "RELATIONS",
    "Claim",
    "EditRecord",
    "Fact",
    "LocalityExample",
    "Relation",
    "World",
    "build_world",
    "train_tokenizer",
]
