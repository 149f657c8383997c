from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EditStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EDIT_STATUS_UNSPECIFIED: _ClassVar[EditStatus]
    EDIT_STATUS_ACTIVE: _ClassVar[EditStatus]
    EDIT_STATUS_ROLLED_BACK: _ClassVar[EditStatus]
EDIT_STATUS_UNSPECIFIED: EditStatus
EDIT_STATUS_ACTIVE: EditStatus
EDIT_STATUS_ROLLED_BACK: EditStatus

class EditRequest(_message.Message):
    __slots__ = ("prompt", "target", "rephrases", "idempotency_key", "provenance", "edits", "subject")
    class ProvenanceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REPHRASES_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    EDITS_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    target: str
    rephrases: _containers.RepeatedScalarFieldContainer[str]
    idempotency_key: str
    provenance: _containers.ScalarMap[str, str]
    edits: _containers.RepeatedCompositeFieldContainer[EditItem]
    subject: str
    def __init__(self, prompt: _Optional[str] = ..., target: _Optional[str] = ..., rephrases: _Optional[_Iterable[str]] = ..., idempotency_key: _Optional[str] = ..., provenance: _Optional[_Mapping[str, str]] = ..., edits: _Optional[_Iterable[_Union[EditItem, _Mapping]]] = ..., subject: _Optional[str] = ...) -> None: ...

class EditItem(_message.Message):
    __slots__ = ("prompt", "target", "rephrases", "subject")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REPHRASES_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    target: str
    rephrases: _containers.RepeatedScalarFieldContainer[str]
    subject: str
    def __init__(self, prompt: _Optional[str] = ..., target: _Optional[str] = ..., rephrases: _Optional[_Iterable[str]] = ..., subject: _Optional[str] = ...) -> None: ...

class EditItemResult(_message.Message):
    __slots__ = ("target_logprob_before", "target_logprob_after")
    TARGET_LOGPROB_BEFORE_FIELD_NUMBER: _ClassVar[int]
    TARGET_LOGPROB_AFTER_FIELD_NUMBER: _ClassVar[int]
    target_logprob_before: float
    target_logprob_after: float
    def __init__(self, target_logprob_before: _Optional[float] = ..., target_logprob_after: _Optional[float] = ...) -> None: ...

class EditReply(_message.Message):
    __slots__ = ("edit_id", "version", "latency_ms", "target_logprob_before", "target_logprob_after", "replayed", "items", "replicas")
    EDIT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TARGET_LOGPROB_BEFORE_FIELD_NUMBER: _ClassVar[int]
    TARGET_LOGPROB_AFTER_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    edit_id: str
    version: int
    latency_ms: float
    target_logprob_before: float
    target_logprob_after: float
    replayed: bool
    items: _containers.RepeatedCompositeFieldContainer[EditItemResult]
    replicas: int
    def __init__(self, edit_id: _Optional[str] = ..., version: _Optional[int] = ..., latency_ms: _Optional[float] = ..., target_logprob_before: _Optional[float] = ..., target_logprob_after: _Optional[float] = ..., replayed: _Optional[bool] = ..., items: _Optional[_Iterable[_Union[EditItemResult, _Mapping]]] = ..., replicas: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "max_new_tokens", "temperature", "top_p", "seed", "stop", "min_version")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    min_version: int
    def __init__(self, prompt: _Optional[str] = ..., max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., min_version: _Optional[int] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("text", "min_version")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    text: str
    min_version: int
    def __init__(self, text: _Optional[str] = ..., min_version: _Optional[int] = ...) -> None: ...

class LabelProbability(_message.Message):
    __slots__ = ("label", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class ClassifyReply(_message.Message):
    __slots__ = ("label", "probabilities", "version")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    label: str
    probabilities: _containers.RepeatedCompositeFieldContainer[LabelProbability]
    version: int
    def __init__(self, label: _Optional[str] = ..., probabilities: _Optional[_Iterable[_Union[LabelProbability, _Mapping]]] = ..., version: _Optional[int] = ...) -> None: ...

class GenerateReply(_message.Message):
    __slots__ = ("text", "num_tokens", "version")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    text: str
    num_tokens: int
    version: int
    def __init__(self, text: _Optional[str] = ..., num_tokens: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class GenerateChunk(_message.Message):
    __slots__ = ("text", "version", "done", "num_tokens")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    text: str
    version: int
    done: bool
    num_tokens: int
    def __init__(self, text: _Optional[str] = ..., version: _Optional[int] = ..., done: _Optional[bool] = ..., num_tokens: _Optional[int] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("edit_id", "to_version")
    EDIT_ID_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    edit_id: str
    to_version: int
    def __init__(self, edit_id: _Optional[str] = ..., to_version: _Optional[int] = ...) -> None: ...

class RollbackReply(_message.Message):
    __slots__ = ("version", "rolled_back", "replicas")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    version: int
    rolled_back: _containers.RepeatedScalarFieldContainer[str]
    replicas: int
    def __init__(self, version: _Optional[int] = ..., rolled_back: _Optional[_Iterable[str]] = ..., replicas: _Optional[int] = ...) -> None: ...

class ListEditsRequest(_message.Message):
    __slots__ = ("include_rolled_back",)
    INCLUDE_ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    include_rolled_back: bool
    def __init__(self, include_rolled_back: _Optional[bool] = ...) -> None: ...

class ListEditsReply(_message.Message):
    __slots__ = ("edits",)
    EDITS_FIELD_NUMBER: _ClassVar[int]
    edits: _containers.RepeatedCompositeFieldContainer[EditInfo]
    def __init__(self, edits: _Optional[_Iterable[_Union[EditInfo, _Mapping]]] = ...) -> None: ...

class GetEditRequest(_message.Message):
    __slots__ = ("edit_id",)
    EDIT_ID_FIELD_NUMBER: _ClassVar[int]
    edit_id: str
    def __init__(self, edit_id: _Optional[str] = ...) -> None: ...

class EditInfo(_message.Message):
    __slots__ = ("edit_id", "prompt", "target", "status", "provenance", "created_at", "rolled_back_at", "applied_at_version", "idempotency_key", "rephrases", "items")
    class ProvenanceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EDIT_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_AT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_AT_VERSION_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    REPHRASES_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    edit_id: str
    prompt: str
    target: str
    status: EditStatus
    provenance: _containers.ScalarMap[str, str]
    created_at: str
    rolled_back_at: str
    applied_at_version: int
    idempotency_key: str
    rephrases: _containers.RepeatedScalarFieldContainer[str]
    items: _containers.RepeatedCompositeFieldContainer[EditItem]
    def __init__(self, edit_id: _Optional[str] = ..., prompt: _Optional[str] = ..., target: _Optional[str] = ..., status: _Optional[_Union[EditStatus, str]] = ..., provenance: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[str] = ..., rolled_back_at: _Optional[str] = ..., applied_at_version: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., rephrases: _Optional[_Iterable[str]] = ..., items: _Optional[_Iterable[_Union[EditItem, _Mapping]]] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ("weights_digest",)
    WEIGHTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    weights_digest: bool
    def __init__(self, weights_digest: _Optional[bool] = ...) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("status", "version", "active_edits", "model", "device", "weights_sha256", "replicas")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_EDITS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    status: str
    version: int
    active_edits: int
    model: str
    device: str
    weights_sha256: str
    replicas: int
    def __init__(self, status: _Optional[str] = ..., version: _Optional[int] = ..., active_edits: _Optional[int] = ..., model: _Optional[str] = ..., device: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., replicas: _Optional[int] = ...) -> None: ...
