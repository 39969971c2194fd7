"""Model wrapper, registered architectures and checkpoints."""

from medrobust.models.card import ModelCard, build_model, load_model, read_card, save_checkpoint
from medrobust.models.wrapper import Model, as_model, attack_mode
from medrobust.models.zoo import MODELS, build_network

__all__ = [
    "MODELS",
    "Model",
    "ModelCard",
    "as_model",
    "attack_mode",
    "build_model",
    "build_network",
    "load_model",
    "read_card",
    "save_checkpoint",
]
