"""Model registry (timm-style): `@register_model("name")` adds a model class, `create_model` builds one by name.

Every model maps features [B, 1, n_bins, n_frames] to logits [B, num_classes] (softmax belongs to the loss), in
two halves: `embed(x)` -> the utterance embedding [B, embed_dim], `classify(embedding)` -> logits (what
models.adversary's speaker classifier hangs between).
This module imports no model: the model modules import it, and the package imports them (one direction only).
"""
from torch import nn

_MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str):
    """Class decorator adding a model under NAME; a second model with the same name is an error."""
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = cls
        return cls
    return add


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, n_bins: int, n_frames: int, **kwargs) -> nn.Module:
    """The model NAME sized for inputs [B, 1, n_bins, n_frames] and num_classes outputs; kwargs go to its constructor."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {list_models()}")
    return _MODELS[name](num_classes=num_classes, n_bins=n_bins, n_frames=n_frames, **kwargs)
