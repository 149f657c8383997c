"""editor_nets: MEND editor networks, edits as data, the meta-learning loop and the main job.

Quick use::

    from editor_nets import MendEditor, restore_weights
    editor = MendEditor.from_pretrained("runs/default/editor", model=model)
    snapshot = editor.edit(model, tokenizer, [record])   # W <- W - alpha * sum delta~ u~^T, in place
    restore_weights(model, snapshot)                     # bitwise undo
"""

from editor_nets.delta import (
    EditDelta,
    Editor,
    LayerDelta,
    WeightSnapshot,
    apply_delta,
    lowrank_edit,
    restore_weights,
)
from editor_nets.families import (
    answer_logits,
    default_targets,
    edit_batch,
    generate_answer,
    label_id,
    model_kind,
    target_nll,
)
from editor_nets.mend import INPUT_MODES, MendConfig, MendEditor, edit_factors, edited_weights_hash
from editor_nets.pretrain import PretrainConfig, pretrain_causal_lm, qa_accuracy
from editor_nets.train import MetaTrainConfig, meta_loss, meta_train, validate_editor

__all__ = [
    "INPUT_MODES",
    "EditDelta",
    "Editor",
    "LayerDelta",
    "MendConfig",
    "MendEditor",
    "MetaTrainConfig",
    "PretrainConfig",
    "WeightSnapshot",
    "answer_logits",
    "apply_delta",
    "default_targets",
    "edit_batch",
    "edit_factors",
    "edited_weights_hash",
    "generate_answer",
    "label_id",
    "lowrank_edit",
    "meta_loss",
    "meta_train",
    "model_kind",
    "pretrain_causal_lm",
    "qa_accuracy",
    "restore_weights",
    "target_nll",
    "validate_editor",
]
