"""The evaluation core: one cell (a model under one perturbation at its strengths) on a dataset -> records.

``evaluate_cell`` is what both doors use: the runner (``medrobust run``, every cell of a spec, stored) and
``medrobust evaluate`` (one model, in memory). Every random draw comes from a generator derived from the seed,
the model's name, the perturbation's label, an attack's strength (where each strength runs on its own) and the
batch index, so the same inputs give the same numbers through either door and in any order. A corruption draws
the same numbers at every strength, scaled (common random numbers), so its severity curve shows the severity.

Per batch (:func:`evaluate_batch`): the clean predictions, then the perturbation at every strength
(``Attack.sweep`` for attacks: minimal attacks run once and are clipped to each strength; budget attacks run
in ascending strengths, each only on the samples the smaller ones left robust, unless the spec says
``sweep: independent``), and for each attack
Gaussian noise of the same per-sample L2 norm ("matched_noise[LABEL]"). Each perturbed batch becomes one
:class:`~medrobust.store.Record` per sample: sizes (L2, Linf, L0, SSIM, PSNR, relative L2) here, the task's
fields (label, predictions, probabilities, score, details) from the Task (``Task.outcomes``). The first
``gallery`` samples keep their arrays for the report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medrobust.attacks import ATTACKS, Attack
from medrobust.attacks.base import flat_norm
from medrobust.cells import Cell
from medrobust.config import PerturbationSpec
from medrobust.corruptions import CORRUPTIONS
from medrobust.corruptions.base import Corruption
from medrobust.data.base import Batch, ImageDataset, iterate_batches
from medrobust.files import finite_json
from medrobust.metrics import psnr, ssim
from medrobust.models.wrapper import Model
from medrobust.seeding import make_generator
from medrobust.store import Record
from medrobust.tasks import Task, get_task

# a gallery example: (perturbation label, strength, sample index, array name, array)
Example = tuple[str, float, int, str, np.ndarray]


@dataclass
class CellResult:
    """Everything one cell computed: its records, its threat model and its gallery examples."""

    records: list[Record] = field(default_factory=list)
    threat: dict[str, Any] = field(default_factory=dict)
    examples: list[Example] = field(default_factory=list)


def build_perturbation(p: PerturbationSpec, sources: dict[str, Model] | None = None) -> Attack | Corruption:
    """The attack or corruption of ``p``; a transfer attack gets its source models (by name) from ``sources``."""
    if p.kind == "corruption":
        return CORRUPTIONS.build(p.name, **p.params)
    attack = ATTACKS.build(p.name, **p.params)
    if attack.needs_sources:
        missing = [s for s in p.sources if s not in (sources or {})]
        if missing:
            raise ValueError(f"transfer: source models {missing} are not loaded")
        attack = attack.with_sources([(sources or {})[s] for s in p.sources])
    return attack


def threat_model(
    p: PerturbationSpec | None,
    obj: Attack | Corruption | None,
    bounds: tuple[float, float],
    strengths,
    seed: int,
    family: str | None = None,
) -> dict[str, Any]:
    """What the report's threat-model table shows for a cell: bounds and seed, and for a perturbation its name,
    strengths and settings (an attack's norm and :meth:`~medrobust.attacks.base.Attack.threat_settings`)."""
    info: dict[str, Any] = {"bounds": list(bounds), "seed": seed}
    if p is None or obj is None:
        return info
    info.update(name=p.name, strengths=list(strengths))
    if isinstance(obj, Attack):
        info.update(norm=obj.threat_norm, eps=list(strengths), minimal=obj.minimal, params=p.params)
        if not obj.minimal and len(strengths) > 1 and p.sweep == "pruned":
            info["sweep"] = "pruned"
        info.update(obj.threat_settings(family))  # an ensemble lists the members that run on this task
        if p.sources:
            info.update(sources=p.sources, source_attack=p.params.get("attack", "pgd"))
    else:
        info.update(strength_param=CORRUPTIONS.get(p.name).strength_param, params=p.params)
    return info


def _label_dtype(num_classes: int) -> type:
    return np.uint8 if num_classes <= 256 else np.int32


@dataclass
class _Batch:
    """One batch of a cell as :func:`evaluate_batch` sees it."""

    cell: Cell
    model: Model
    task: Task
    x: torch.Tensor
    y: torch.Tensor
    ids: list[str]
    offset: int
    clean_logits: torch.Tensor
    gallery: int
    groups: list[str | None] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)

    def add(
        self,
        label: str,
        kind: str,
        strength: float,
        x_pert: torch.Tensor,
        logits: torch.Tensor | None = None,
        info: dict[str, list[Any]] | None = None,
        target: torch.Tensor | None = None,
    ) -> None:
        """Records of one perturbed batch (``logits``: the model's output on it, when already computed)."""
        x, y, model = self.x, self.y, self.model
        if logits is None:
            with torch.no_grad():
                logits = model(x_pert)
        span = model.bounds[1] - model.bounds[0]
        delta = x_pert - x
        l2 = flat_norm(delta, "l2")
        sizes = {
            "l2": l2.tolist(),
            "linf": flat_norm(delta, "linf").tolist(),
            "l0": flat_norm(delta, "l0").tolist(),
            "ssim": ssim(x, x_pert, data_range=span).tolist(),
            "psnr": psnr(x, x_pert, data_range=span).tolist(),
            "rho": (l2 / flat_norm(x, "l2").clamp_min(1e-12)).tolist(),
        }
        clean_pred = self.task.predict(self.clean_logits)
        outcomes = self.task.outcomes(logits, y, clean_pred, target if kind == "attack" else None)
        if not label.startswith("matched_noise["):  # matched-noise controls keep no gallery arrays
            self._gallery(label, kind, strength, x_pert, self.task.predict(logits), logits.shape[1])
        for i, o in enumerate(outcomes):
            detail = {**o.detail, **{key: v[i] for key, v in (info or {}).items()}}
            p = sizes["psnr"][i]
            self.records.append(
                Record(
                    self.cell.key,
                    self.cell.model,
                    label,
                    kind,
                    float(strength),
                    self.offset + i,
                    self.ids[i],
                    o.label,
                    o.clean_pred,
                    o.pred,
                    o.probs,
                    sizes["l2"][i],
                    sizes["linf"][i],
                    sizes["l0"][i],
                    sizes["ssim"][i],
                    None if p == float("inf") else p,
                    sizes["rho"][i],
                    o.score,
                    finite_json(detail) if detail else None,
                    self.groups[i] if self.groups else None,
                )
            )

    def _gallery(self, label: str, kind: str, strength: float, x_pert: torch.Tensor, pred: torch.Tensor, k: int):
        """The clean input once (clean cell), each perturbation as x_pert - x (float16 where it fits), and label
        maps where the task decides per pixel."""
        dtype = _label_dtype(k)
        for i in range(min(self.x.shape[0], self.gallery - self.offset)):
            index = self.offset + i
            if kind == "clean":
                self.examples.append((label, strength, index, "image", self.x[i].detach().float().cpu().numpy()))
                if self.task.dense:
                    self.examples.append((label, strength, index, "label", self.y[i].cpu().numpy().astype(dtype)))
            else:
                delta_i = (x_pert[i] - self.x[i]).detach().float().cpu().numpy()
                if float(np.abs(delta_i).max(initial=0.0)) < 6e4:  # float16 holds it (raw intensities may not)
                    delta_i = delta_i.astype(np.float16)
                self.examples.append((label, strength, index, "delta", delta_i))
            if self.task.dense:
                self.examples.append((label, strength, index, "pred", pred[i].cpu().numpy().astype(dtype)))


def evaluate_batch(
    cell: Cell,
    model: Model,
    task: Task,
    perturbation: Attack | Corruption | None,
    batch: Batch,
    offset: int,
    generator_for: Callable[..., torch.Generator],
    *,
    classes: Sequence[str],
    device: torch.device,
    data_name: str = "",
    matched_noise: bool = True,
    gallery: int = 0,
) -> tuple[list[Record], list[Example]]:
    """The records (and gallery examples) of one batch of ``cell``. ``generator_for(*keys)`` derives the
    batch's generators; ``offset``: the index of the batch's first sample in the evaluated set; ``classes``:
    the data's class names (``data_name``: the dataset's, for messages)."""
    x, y = batch.x.to(device), batch.y.to(device)
    with torch.no_grad():
        clean_logits = model(x)
    try:
        task.check(clean_logits, y)
        if clean_logits.shape[1] != len(classes):
            raise ValueError(
                f"the model returns {clean_logits.shape[1]} outputs per {'pixel' if task.dense else 'sample'} "
                f"but dataset {data_name or 'given'!r} has {len(classes)} classes {list(classes)}"
            )
    except ValueError as err:  # NaN outputs, wrong shapes: say which model and samples
        raise ValueError(f"model {cell.model!r} on samples {batch.ids[0]!r}..{batch.ids[-1]!r}: {err}") from None
    b = _Batch(cell, model, task, x, y, list(batch.ids), offset, clean_logits, gallery, list(batch.groups))
    bounds = model.bounds
    if perturbation is None:
        b.add("clean", "clean", 0.0, x, clean_logits)
    elif isinstance(perturbation, Attack):
        attack = perturbation
        # a targeted structured-output attack (ASMA) is also scored by IoU with its target label map
        target = attack.target_map(y, clean_logits.shape[1])

        def attack_generator(eps: float | None) -> torch.Generator:
            return generator_for("attack") if eps is None else generator_for("attack", eps)

        prune = cell.pert is None or cell.pert.sweep == "pruned"
        for s, result in attack.sweep(model, task, x, y, cell.strengths, attack_generator, prune=prune):
            b.add(cell.label, "attack", s, result.x_adv, result.logits, result.info, target)
            if matched_noise:
                noise = CORRUPTIONS.build("matched_noise", reference=(result.x_adv - x), norm="l2")
                x_noise = noise(x, generator=generator_for("matched", s), bounds=bounds)
                b.add(f"matched_noise[{cell.label}]", "corruption", s, x_noise)
    else:
        for s in cell.strengths:
            # common random numbers: every strength gets the same draw, scaled, so a severity curve shows the
            # effect of the severity and not of a new draw at each one
            x_c = perturbation.with_strength(s)(x, generator=generator_for("corruption"), bounds=bounds)
            b.add(cell.label, "corruption", s, x_c)
    return b.records, b.examples


def evaluate_cell(
    cell: Cell,
    model: Model,
    dataset: ImageDataset,
    *,
    seed: int,
    batch_size: int,
    device: str | torch.device = "cpu",
    limit: int | None = None,
    matched_noise: bool = True,
    gallery: int = 0,
    sources: dict[str, Model] | None = None,
    on_batch: Callable[[int], None] | None = None,
    batches: range | None = None,
) -> CellResult:
    """All records of one cell on ``dataset`` (nothing is written here), or of the sample batches ``batches`` of
    it (a shard: each batch draws from the same generators as in the whole cell, so shards add up to the cell).
    ``sources``: transfer source models by name; ``on_batch(n)`` is told after each batch of n samples."""
    task = get_task(dataset.task)
    obj = build_perturbation(cell.pert, sources) if cell.pert is not None else None
    out = CellResult(threat=threat_model(cell.pert, obj, model.bounds, cell.strengths, seed, task.family))
    if cell.pert is None and dataset.orientation:
        out.threat["orientation"] = dataset.orientation  # how the report's gallery draws slices
    if cell.pert is None and dataset.groups is not None:
        out.threat["group_unit"] = dataset.group_unit  # what the samples' groups are (volume, patient)
    first = 0 if batches is None else batches.start
    offset, device = first * batch_size, torch.device(device)
    for b, batch in enumerate(iterate_batches(dataset, batch_size, limit, batches), start=first):

        def gen(*keys: Any, _b: int = b) -> torch.Generator:
            return make_generator(seed, cell.model, cell.label, *keys, _b, device=device)

        records, examples = evaluate_batch(
            cell,
            model,
            task,
            obj,
            batch,
            offset,
            gen,
            classes=dataset.class_names,
            device=device,
            data_name=dataset.name,
            matched_noise=matched_noise,
            gallery=gallery,
        )
        out.records += records
        out.examples += examples
        offset += len(batch)
        if on_batch is not None:
            on_batch(len(batch))
    return out
