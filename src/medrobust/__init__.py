"""medrobust: generalizability vs robustness of medical-imaging networks.

Implements the evaluation of Paschali et al., "Generalizability vs. Robustness: Investigating Medical Imaging
Networks Using Adversarial Examples" (MICCAI 2018): score a model on clean unseen data and under adversarial
examples, noise, outliers and artifacts of matched size.
"""

__version__ = "0.1.0"

from medrobust.api import attack, corrupt, list_attacks, list_corruptions, list_datasets, list_models  # noqa: E402
from medrobust.data import load_dataset  # noqa: E402
from medrobust.evaluate import Perturbation, evaluate, parse_perturbation  # noqa: E402
from medrobust.metrics.clever import clever  # noqa: E402
from medrobust.models import Model, ModelCard, load_model  # noqa: E402
from medrobust.train import TrainSettings, train  # noqa: E402

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
