"""editor_nets: MEND editor networks, edits as data, the meta-learning loop and the main job.

Quick use::

    from editor_nets import MendEditor, applied
    editor = MendEditor.from_pretrained("runs/default/editor", model=model)
    delta = editor.compute_delta(model, tokenizer, [record])   # an EditDelta: factors per layer
    with applied(model, delta):                                # W <- W - alpha * sum delta~ u~^T
        ...                                                    # restored bitwise on exit
"""

from editor_nets.delta import EditDelta, Editor, LayerDelta, applied, apply_delta, lowrank_edit
from editor_nets.mend import INPUT_MODES, MendConfig, MendEditor, ModelSpec, edit_factors
from editor_nets.models import default_targets, generate_answer, label_id, load_model, model_kind
from editor_nets.pretrain import PretrainConfig, pretrain_causal_lm, qa_accuracy
from editor_nets.scoring import TargetScores, answer_logits, edit_batch, score_targets, target_nll
from editor_nets.state import WeightSnapshot, eval_mode, frozen, restore_weights, restoring, weights_digest
from editor_nets.train import MetaTrainConfig, meta_loss, meta_train, validate_editor

__all__ = [
    "INPUT_MODES",
    "EditDelta",
    "Editor",
    "LayerDelta",
    "MendConfig",
    "MendEditor",
    "MetaTrainConfig",
    "ModelSpec",
    "PretrainConfig",
    "TargetScores",
    "WeightSnapshot",
    "answer_logits",
    "applied",
    "apply_delta",
    "default_targets",
    "edit_batch",
    "edit_factors",
    "eval_mode",
    "frozen",
    "generate_answer",
    "label_id",
    "load_model",
    "lowrank_edit",
    "meta_loss",
    "meta_train",
    "model_kind",
    "pretrain_causal_lm",
    "qa_accuracy",
    "restore_weights",
    "restoring",
    "score_targets",
    "target_nll",
    "validate_editor",
    "weights_digest",
]
