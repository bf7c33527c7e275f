"""The models: `create_model("hybrid", num_classes, n_bins, n_frames)` builds a registered one (registry.py).

A new architecture is a module in this package with a `@register_model("name")` class (imported from
ravdess_dist.models.registry), added to the import below so that it registers.
"""
from ravdess_dist.models import cnn, crnn, hybrid, resnet  # noqa: F401  (importing them registers them)
from ravdess_dist.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
