"""The built-in demo: several architectures on derm-synth, clean vs adversarial vs noise of the same size.

Models are trained once and cached in ``<out>/models/<arch>`` (reused while the training settings match).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medrobust.data import load_dataset
from medrobust.evaluate import evaluate, parse_perturbation
from medrobust.models import load_model
from medrobust.train import TrainSettings, train

log = logging.getLogger(__name__)

DEMO_ARCHITECTURES = ("small-cnn", "densenet", "resnet")
DEMO_EPS_LINF = 2 / 255
DEMO_ATTACKS = (
    f"fgsm:eps={DEMO_EPS_LINF}",
    f"pgd:eps={DEMO_EPS_LINF},steps=10",
    "deepfool:steps=50",
    "jsma:gamma=0.05",
    "cw:steps=50,binary_search_steps=4,lr=0.01",
)
DEMO_CORRUPTIONS = ("gaussian_noise:sigma=0.05", "salt_pepper:amount=0.02")


def demo_settings(arch: str, quick: bool) -> TrainSettings:
    params: dict[str, Any] = {"size": 32, "n": 300} if quick else {}
    return TrainSettings(architecture=arch, dataset="derm-synth", dataset_params=params, epochs=3 if quick else 12)


def cached_model(settings: TrainSettings, folder: Path, notify: Callable[[str], None]):
    card_path = folder / "model.json"
    if card_path.exists():
        try:
            model, card = load_model(folder)
            wanted = {k: v for k, v in asdict(settings).items() if k not in ("dataset", "dataset_params", "architecture")}
            if all(card.training.get(k) == v for k, v in wanted.items()) and card.dataset.get("params") == settings.dataset_params:
                notify(f"reusing {folder}")
                return model, card
        except (ValueError, FileNotFoundError) as err:
            log.warning("retraining %s: cached model unusable (%s)", folder, err)
    notify(f"training {settings.architecture} on {settings.dataset} -> {folder}")
    return train(settings, folder)


def run_demo(
    out: str | Path = "runs/demo",
    *,
    quick: bool = False,
    limit: int | None = 100,
    notify: Callable[[str], None] = log.info,
) -> dict[str, list[dict[str, Any]]]:
    """Train (or reuse) the demo models and evaluate each; returns model name -> summary rows."""
    out = Path(out)
    perts = [parse_perturbation("attack", s) for s in DEMO_ATTACKS]
    perts += [parse_perturbation("corruption", s) for s in DEMO_CORRUPTIONS]
    results: dict[str, list[dict[str, Any]]] = {}
    for arch in DEMO_ARCHITECTURES:
        settings = demo_settings(arch, quick)
        model, card = cached_model(settings, out / "models" / arch, notify)
        dataset = load_dataset("derm-synth", split="test", **settings.dataset_params)
        notify(f"evaluating {arch} under {len(perts)} perturbations on {min(limit or len(dataset), len(dataset))} test images")
        result = evaluate(model, dataset, perts, limit=limit, seed=0)
        results[arch] = result["rows"]
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return results
