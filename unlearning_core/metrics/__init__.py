"""Efficacy metrics, named as in DESIGN.md (forget_acc, retain_acc, mia_auc, ...).

Each metric is registered by name in :mod:`unlearning_core.metrics.registry` (see there
how to add one). The imports below register the built-ins; their order is the order of
the metrics in ``evaluate_unlearning``'s result and in every table, so keep it.
"""

from unlearning_core.metrics.registry import (
    MetricContext,
    MetricError,
    MetricNames,
    MetricSpec,
    compute_metrics,
    get_metric,
    metric_names,
    register_display,
    register_metric,
    registered_metrics,
    unregister_metric,
)
from unlearning_core.metrics.classification import accuracy, macro_f1, per_class_accuracy
from unlearning_core.metrics.mia import mia_auc, mia_efficacy
from unlearning_core.metrics.mia_lira import lira_scores, logit_confidence, mia_auc_lira
from unlearning_core.metrics.distance import layer_distance, layer_l2
from unlearning_core.metrics.relearn import relearn_steps
from unlearning_core.metrics import display  # noqa: F401  (display-only entries, after the metrics)
from unlearning_core.metrics.evaluate import evaluate_unlearning, split_outputs, split_positions
from unlearning_core.metrics.outputs import Outputs, collect_outputs

__all__ = [
    "MetricContext",
    "MetricError",
    "MetricNames",
    "MetricSpec",
    "Outputs",
    "accuracy",
    "collect_outputs",
    "compute_metrics",
    "evaluate_unlearning",
    "get_metric",
    "layer_distance",
    "layer_l2",
    "lira_scores",
    "logit_confidence",
    "macro_f1",
    "metric_names",
    "mia_auc",
    "mia_auc_lira",
    "mia_efficacy",
    "per_class_accuracy",
    "register_display",
    "register_metric",
    "registered_metrics",
    "relearn_steps",
    "split_outputs",
    "split_positions",
    "unregister_metric",
]
