"""Model registry: ``create_model(name, in_channels=, image_size=, num_classes=)``.

Importing this package registers the built-ins; :data:`MODEL_NAMES` lists them and
:func:`model_names` also shows models registered later with :func:`register_model`.
"""

from unlearning_core.models import simple, torchvision_models  # noqa: F401  (registers)
from unlearning_core.models.registry import create_model, model_names, register_model

#: Built-in model names, in registration order (simple models first).
MODEL_NAMES: tuple[str, ...] = model_names()

__all__ = ["MODEL_NAMES", "create_model", "model_names", "register_model"]
