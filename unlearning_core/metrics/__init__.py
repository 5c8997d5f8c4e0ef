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
from unlearning_core.metrics.mia_lira import shared_std
from unlearning_core.metrics.ulira import (
    ULiraResult,
    attack_summary,
    lira_log_ratio,
    offline_lira_tpr,
    online_lira_scores,
    roc_auc,
    tpr_at_fpr,
    ulira,
)
from unlearning_core.metrics.unlearning_score import (
    UnlearningScore,
    epsilon_from_rates,
    example_epsilon,
    forget_epsilons,
    forget_quality,
    unlearning_score,
)
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
    "ULiraResult",
    "UnlearningScore",
    "accuracy",
    "attack_summary",
    "collect_outputs",
    "compute_metrics",
    "epsilon_from_rates",
    "evaluate_unlearning",
    "example_epsilon",
    "forget_epsilons",
    "forget_quality",
    "get_metric",
    "layer_distance",
    "layer_l2",
    "lira_log_ratio",
    "lira_scores",
    "logit_confidence",
    "macro_f1",
    "metric_names",
    "mia_auc",
    "mia_auc_lira",
    "mia_efficacy",
    "offline_lira_tpr",
    "online_lira_scores",
    "per_class_accuracy",
    "register_display",
    "register_metric",
    "registered_metrics",
    "relearn_steps",
    "roc_auc",
    "shared_std",
    "split_outputs",
    "split_positions",
    "tpr_at_fpr",
    "ulira",
    "unlearning_score",
    "unregister_metric",
]
