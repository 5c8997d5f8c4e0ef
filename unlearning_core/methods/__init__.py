"""Unlearning methods, registered by name (see :mod:`unlearning_core.methods.base`).

Importing this package registers the built-ins; a new method is one module plus its import
here.
"""

from unlearning_core.methods import amnesiac, label_flip, neg_grad, retrain, sisa  # noqa: F401
from unlearning_core.methods.base import (
    UnlearnContext,
    UnlearningMethod,
    UnlearnOptions,
    UnlearnOutcome,
    get_method,
    method_names,
    register_method,
)

__all__ = [
    "UnlearnContext",
    "UnlearnOptions",
    "UnlearnOutcome",
    "UnlearningMethod",
    "get_method",
    "method_names",
    "register_method",
]
