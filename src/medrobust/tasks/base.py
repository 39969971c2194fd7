"""The Task adapter: model output -> decision units.

Classification has one unit per image (logits (N, K), labels (N,)); segmentation has one unit per pixel or
voxel (logits (N, K, *spatial), labels (N, *spatial)). The class axis is always dim 1, so loss, margin and
"unit still correct" are written once here. Attacks use only this interface.

After the attack the Task still decides: it turns (logits, labels) into the per-sample fields of a record
(:meth:`Task.outcomes`), a group of stored records into summary metrics with intervals (:meth:`Task.summary`)
and two models' per-sample scores into a paired test (:meth:`Task.paired_test`). Nothing outside ``tasks/``
asks which task it has; it asks the Task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medrobust import resampling
from medrobust.resampling import Statistic, Units

# A group's summary: metric -> value, and metric -> 95% interval (None where a metric has none).
Metrics = tuple[dict[str, float], dict[str, tuple[float, float] | None]]


@dataclass(frozen=True)
class Group:
    """Stored records of one model under one perturbation at one strength, sorted by sample, as summaries read
    them. ``kind``: "clean", "attack" or "corruption"; ``clean``: sample index -> that sample's clean record;
    ``key`` seeds the bootstrap of each interval; ``units``: the independent unit (patient, volume) of each
    record, for cluster-bootstrap intervals (default: every sample its own unit)."""

    records: list[dict[str, Any]]
    kind: str
    class_names: Sequence[str]
    clean: dict[int, dict[str, Any]]
    key: tuple[Any, ...]
    units: Units | None = None

    @property
    def sampling(self) -> Units:
        return self.units if self.units is not None else Units.samples(len(self.records))


@dataclass(frozen=True)
class Outcome:
    """The task's part of one sample's record: the label, clean and perturbed predictions and class
    probabilities (classification; -1 and [] where decisions are per pixel), the per-sample score in [0, 1]
    and task-specific details (per-structure Dice, HD95, flip rates)."""

    label: int
    clean_pred: int
    pred: int
    probs: list[float]
    score: float
    detail: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    name: str = ""
    # the kind of decision attacks are written for ("classification", "segmentation"); variants share it
    family: str = ""
    metric: str = ""  # the name of the per-sample score in summaries ("accuracy", "dice")
    metric_title: str = ""  # how text names it ("accuracy", "Dice")
    # one decision per pixel or voxel: label maps are kept for the gallery, sizes are taken over every sample
    # (there is no single decision that an attack flips), and scores are compared with a rank test
    dense: bool = False
    units_title: str = ""  # what "the share of units still correct" is called ("accuracy", ...)
    # validation scores a training run may select its checkpoint by; the first is the default
    select_metrics: tuple[str, ...] = ()

    def check(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        if logits.dim() != y.dim() + 1 or logits.shape[0] != y.shape[0] or logits.shape[2:] != y.shape[1:]:
            raise ValueError(
                f"{self.name}: model output of shape {tuple(logits.shape)} does not match labels of shape "
                f"{tuple(y.shape)}; expected output (N, K{', *spatial' if y.dim() > 1 else ''}) for labels "
                f"{tuple(y.shape)}"
            )
        if not bool(torch.isfinite(logits).all()):
            bad = int((~torch.isfinite(logits)).reshape(logits.shape[0], -1).any(1).sum())
            raise ValueError(
                f"{self.name}: the model returned NaN or infinite outputs for {bad} of {logits.shape[0]} samples; "
                "scores on such outputs would be meaningless (check the weights and the input range)"
            )
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
            raise ValueError(
                f"{self.name}: labels range over [{int(y.min())}, {int(y.max())}] but the model has "
                f"{logits.shape[1]} outputs; expected labels in [0, {logits.shape[1] - 1}]"
            )

    def unit_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy per decision unit: shape (N,) or (N, *spatial)."""
        return F.cross_entropy(logits, y, reduction="none")

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss, shape (N,): the mean unit loss of each sample."""
        return self.unit_loss(logits, y).reshape(y.shape[0], -1).mean(dim=1)

    def margin(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z_true - max_{k != true} z_k per unit; negative where the unit is misclassified."""
        true = logits.gather(1, y.unsqueeze(1))
        other = logits.scatter(1, y.unsqueeze(1), float("-inf")).amax(dim=1, keepdim=True)
        return (true - other).squeeze(1)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1)

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Boolean per unit: is this unit still labelled correctly."""
        return self.predict(logits) == y

    @abstractmethod
    def score(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample task score in [0, 1], shape (N,): accuracy (0/1) or Dice."""

    @abstractmethod
    def is_adversarial(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Boolean per sample: has the attack reached its goal."""

    def report_metrics(self, class_counts: Sequence[int]) -> list[str]:
        """Metrics the report shows beside the headline score for data with these class counts (clean test
        labels): what this field reads besides accuracy or Dice. None by default."""
        return []

    @abstractmethod
    def training_loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The loss a model of this task is trained with: (logits, labels) -> scalar."""

    @abstractmethod
    def model_scores(self, logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, float]:
        """Scores of a model on a whole split (validation, test), by name; every name in ``select_metrics``."""

    @abstractmethod
    def outcomes(
        self, logits: torch.Tensor, y: torch.Tensor, clean_pred: torch.Tensor, target: torch.Tensor | None = None
    ) -> list[Outcome]:
        """One :class:`Outcome` per sample of a perturbed batch. ``clean_pred``: the predictions on the clean
        inputs; ``target``: the label map a targeted attack aimed for (scored by IoU), if any."""

    @abstractmethod
    def summary(self, group: Group) -> Metrics:
        """Summary metrics of a :class:`Group` of records and their 95% intervals."""

    @abstractmethod
    def paired_test(self, a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
        """A paired test of two models' per-sample scores on the same samples: the test's name, its p value and
        any counts it rests on (keys test, p, only_a, only_b, samples_needed)."""

    # --- metrics compared between models and chosen per sample for the worst case ---------------------------

    # every summary metric that is a statistic of per-sample outcomes, and whether higher is better
    scored_metrics: dict[str, bool] = {}

    def compared_metrics(self, class_counts: Sequence[int], headline: str | None = None) -> list[str]:
        """The metrics two models are compared on (paired tests, drops): the task's score, the metrics the
        labels call for (:meth:`report_metrics`) and the report's headline metric, each once."""
        names = [self.metric, *self.report_metrics(class_counts)]
        if headline in self.scored_metrics:
            names.append(headline)
        return [m for m in dict.fromkeys(names) if m in self.scored_metrics]

    def unit_data(self, records: Sequence[dict[str, Any]], num_classes: int) -> dict[str, Any]:
        """Per-sample arrays of stored records that the statistics of :meth:`statistic` and :meth:`harm` read;
        at least ``score`` (n,)."""
        return {"score": np.asarray([float(r["score"]) for r in records], dtype=np.float64), "k": num_classes}

    def statistic(self, metric: str) -> Statistic:
        """``metric`` as a function of per-sample data and resampling weights (``medrobust.resampling``)."""
        raise ValueError(f"{self.name}: metric {metric!r} is not one of {sorted(self.scored_metrics)}")

    def harm(self, metric: str, data: dict[str, Any]) -> np.ndarray:
        """Per sample, how much an outcome hurts ``metric`` (n,), larger is worse: the worst case over attacks
        keeps, per sample, the outcome of largest harm for each metric."""
        return 1.0 - np.asarray(data["score"], dtype=np.float64)

    def interval(
        self, metric: str, data: dict[str, Any], units: Units, key: tuple[Any, ...]
    ) -> tuple[float, float] | None:
        """Bootstrap 95% interval of ``metric`` of ``data`` over resampled units (None with too few units)."""
        statistic = self.statistic(metric)
        return resampling.interval(lambda w: statistic(data, w), units, key=key)

    def paired_test_kind(self, metric: str, quantity: str) -> str:
        """The paired test of per-sample outcomes used when every sample is its own unit: "mcnemar" (0/1
        correctness), "wilcoxon" (a continuous score), or "permutation" (any statistic; also what units of
        several samples always use)."""
        return "permutation"
