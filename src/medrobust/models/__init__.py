"""Model wrapper, registered architectures and checkpoints."""

from typing import TYPE_CHECKING

from medrobust._lazy import lazy_getattr
from medrobust.models.wrapper import Model, as_model, attack_mode
from medrobust.models.zoo import MODELS, build_network

if TYPE_CHECKING:
    from medrobust.models.card import ModelCard, build_model, load_model, read_card, save_checkpoint

# the card module (and with it pydantic) is imported on first use
__getattr__ = lazy_getattr(
    __name__,
    dict.fromkeys(("ModelCard", "build_model", "load_model", "read_card", "save_checkpoint"), "medrobust.models.card"),
)

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
