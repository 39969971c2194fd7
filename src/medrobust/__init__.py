"""medrobust: generalizability vs robustness of medical-imaging networks.

Implements the evaluation of Paschali et al., "Generalizability vs. Robustness: Investigating Medical Imaging
Networks Using Adversarial Examples" (MICCAI 2018): score a model on clean unseen data and under adversarial
examples, noise, outliers and artifacts of matched size.
"""

from __future__ import annotations

import sys
from types import ModuleType as _ModuleType  # not `types`: medrobust.types is a submodule
from typing import TYPE_CHECKING, Any

from medrobust._lazy import lazy_getattr
from medrobust._version import __version__

if TYPE_CHECKING:
    from medrobust.api import attack, corrupt, list_attacks, list_corruptions, list_datasets, list_models
    from medrobust.data import load_dataset
    from medrobust.evaluate import Perturbation, evaluate, parse_perturbation
    from medrobust.metrics.clever import clever
    from medrobust.models import Model, ModelCard, load_model
    from medrobust.train import TrainSettings, train

# The public API, imported on first use (PEP 562), so `import medrobust` and the command line's --help import
# neither torch nor MONAI until a name is used: name -> the module that defines it.
_PUBLIC = {
    **dict.fromkeys(
        ("attack", "corrupt", "list_attacks", "list_corruptions", "list_datasets", "list_models"), "medrobust.api"
    ),
    "load_dataset": "medrobust.data",
    **dict.fromkeys(("Perturbation", "evaluate", "parse_perturbation"), "medrobust.evaluate"),
    "clever": "medrobust.metrics.clever",
    **dict.fromkeys(("Model", "ModelCard", "load_model"), "medrobust.models"),
    **dict.fromkeys(("TrainSettings", "train"), "medrobust.train"),
}
__getattr__ = lazy_getattr(__name__, _PUBLIC)


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


class _Package(_ModuleType):
    """Keeps ``medrobust.evaluate`` and ``medrobust.train`` the functions: the import system binds a submodule to
    its name on the package when it first loads it, which would hide the function that module defines."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("evaluate", "train") and isinstance(value, _ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "Model",
    "ModelCard",
    "Perturbation",
    "TrainSettings",
    "__version__",
    "attack",
    "clever",
    "corrupt",
    "evaluate",
    "list_attacks",
    "list_corruptions",
    "list_datasets",
    "list_models",
    "load_dataset",
    "load_model",
    "parse_perturbation",
    "train",
]
