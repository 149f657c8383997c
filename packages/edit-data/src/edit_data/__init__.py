"""edit_data: one edit-record schema, builders for public editing datasets, a built-in synthetic
world, and tokenising collators."""

from edit_data.collate import (
    IGNORE_INDEX,
    TargetTooLongError,
    collate_causal,
    collate_classifier,
    collate_seq2seq,
    encode_prompt,
    join_prompt_target,
)
from edit_data.errors import RecordError, SkippedRecord
from edit_data.formats import (
    CLAIM_LABELS,
    FORMATS,
    LoadResult,
    detect_format,
    load_locality,
    load_records,
    read_records,
)
from edit_data.records import EditRecord, LocalityExample
from edit_data.storage import (
    SPLITS,
    load_saved,
    records_to_dataset,
    save_records,
    save_world,
    split_records,
)
from edit_data.tokenizer import train_tokenizer
from edit_data.world import DEFAULT_RELATIONS, RELATIONS, Claim, Fact, Relation, World, build_world

__all__ = [
    "CLAIM_LABELS",
    "DEFAULT_RELATIONS",
    "FORMATS",
    "IGNORE_INDEX",
    "RELATIONS",
    "SPLITS",
    "Claim",
    "EditRecord",
    "Fact",
    "LoadResult",
    "LocalityExample",
    "RecordError",
    "Relation",
    "SkippedRecord",
    "TargetTooLongError",
    "World",
    "build_world",
    "collate_causal",
    "collate_classifier",
    "collate_seq2seq",
    "detect_format",
    "encode_prompt",
    "join_prompt_target",
    "load_locality",
    "load_records",
    "load_saved",
    "read_records",
    "records_to_dataset",
    "save_records",
    "save_world",
    "split_records",
    "train_tokenizer",
]
