"""Efficacy metrics, named as in DESIGN.md (forget_acc, retain_acc, mia_auc, ...)."""

from unlearning_core.metrics.classification import accuracy, macro_f1, per_class_accuracy
from unlearning_core.metrics.distance import layer_distance, layer_l2
from unlearning_core.metrics.evaluate import evaluate_unlearning, split_outputs, split_positions
from unlearning_core.metrics.mia import mia_auc, mia_efficacy
from unlearning_core.metrics.mia_lira import lira_scores, logit_confidence, mia_auc_lira
from unlearning_core.metrics.outputs import Outputs, collect_outputs
from unlearning_core.metrics.relearn import relearn_steps

__all__ = [
    "Outputs",
    "accuracy",
    "collect_outputs",
    "evaluate_unlearning",
    "layer_distance",
    "layer_l2",
    "lira_scores",
    "logit_confidence",
    "macro_f1",
    "mia_auc",
    "mia_auc_lira",
    "mia_efficacy",
    "per_class_accuracy",
    "relearn_steps",
    "split_outputs",
    "split_positions",
]
