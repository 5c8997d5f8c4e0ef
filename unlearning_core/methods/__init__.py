"""Unlearning methods, registered by name (see :mod:`unlearning_core.methods.base`).

Importing this package registers the built-ins; a new method is one module plus its import
here. Each method names its options model (:mod:`unlearning_core.methods.options`);
optimisation-based methods build on :mod:`unlearning_core.methods.finetune`.
"""

from unlearning_core.methods import (  # noqa: F401
    amnesiac,
    l1_sparse,
    label_flip,
    neg_grad,
    neggrad_plus,
    retrain,
    salun,
    scrub,
    sisa,
)
from unlearning_core.methods.base import (
    UnlearnContext,
    UnlearningMethod,
    UnlearnOutcome,
    get_method,
    method_catalog,
    method_names,
    register_method,
    unregister_method,
    validate_options,
    version_guarantee,
)
from unlearning_core.methods.options import MethodOptions, OptionError, PruneOptions

__all__ = [
    "MethodOptions",
    "OptionError",
    "PruneOptions",
    "UnlearnContext",
    "UnlearnOutcome",
    "UnlearningMethod",
    "get_method",
    "method_catalog",
    "method_names",
    "register_method",
    "unregister_method",
    "validate_options",
    "version_guarantee",
]
