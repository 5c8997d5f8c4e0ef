"""Model registry: ``create_model(name, in_channels=, image_size=, num_classes=)``.

Importing this package registers the built-ins; :data:`MODEL_NAMES` lists them and
:func:`model_names` also shows models registered later with :func:`register_model` and
those installed packages declare in the ``lethe.models`` entry-point group
(:mod:`unlearning_core.models.registry`).
"""

from unlearning_core.models import simple, torchvision_models  # noqa: F401  (registers)
from unlearning_core.models.registry import (
    ENTRY_POINT_GROUP,
    create_model,
    is_registered,
    model_names,
    refresh_plugins,
    register_model,
    resolve_factory,
)

#: Built-in model names, in registration order (simple models first).
MODEL_NAMES: tuple[str, ...] = model_names()

__all__ = [
    "ENTRY_POINT_GROUP",
    "MODEL_NAMES",
    "create_model",
    "is_registered",
    "model_names",
    "refresh_plugins",
    "register_model",
    "resolve_factory",
]
