"""Does a model fit the data it is scored on? The classes (after a spec's ``class_map``), the input shape its
card records, and the geometry of volumes (voxel size, orientation, slice plane); and a forward pass on two
samples. Used alike by ``medrobust run`` (every model of a spec) and ``medrobust evaluate`` (one checkpoint), so
both refuse the same mismatches with the same one line, before any attack runs."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import numpy as np
import torch

from medrobust.data.base import ImageDataset, iterate_batches
from medrobust.models.card import ModelCard
from medrobust.tasks import get_task

log = logging.getLogger(__name__)


def normalised(name: str) -> str:
    return re.sub(r"[\s_-]+", "_", name.strip().lower())


def check_geometry(
    name: str, card: ModelCard, dataset: ImageDataset, label: str, notify: Callable[[str], None] = log.warning
) -> None:
    """A model must see its data as it was trained: the voxel size its card records against the data's (an
    error), the orientation (an error where both are known and differ, a warning where the data records none)
    and the slice plane (a warning: a model may be scored across planes on purpose); and the input size of its card
    (:func:`check_input_shape`)."""
    check_input_shape(name, card, dataset, label, notify)
    seen = dataset.geometry()
    trained, here = card.dataset.get("spacing"), seen.get("spacing")
    if trained and here and not np.allclose(trained, here, rtol=1e-3):
        raise ValueError(
            f"model {name!r} was trained on voxels of {list(trained)} mm but dataset {label!r} has {list(here)} mm; "
            f"resample the data to the model's: add spacing: {list(trained)} to the dataset's params"
        )
    oriented = card.dataset.get("orientation")
    if oriented and seen.get("orientation") and oriented != seen["orientation"]:
        raise ValueError(
            f"model {name!r} was trained on {oriented}-oriented volumes but dataset {label!r} is "
            f"{seen['orientation']}-oriented; reorient the data to {oriented}"
        )
    if oriented and not seen.get("orientation") and get_task(dataset.task).dense:
        notify(
            f"warning: model {name!r} was trained on {oriented}-oriented volumes; dataset {label!r} records no "
            "orientation, so it cannot be checked (the nifti dataset reorients to RAS)"
        )
    plane = card.dataset.get("plane")
    if plane and seen.get("plane") and plane != seen["plane"]:
        notify(
            f"warning: model {name!r} was trained on {plane} slices but dataset {label!r} gives {seen['plane']} "
            f"slices: its scores measure transfer across planes (set axis: {plane} to score it on its own plane)"
        )


def check_input_shape(
    name: str, card: ModelCard, dataset: ImageDataset, label: str, notify: Callable[[str], None] = log.warning
) -> None:
    """The data's samples against the input shape the card records: another channel count or another number of
    spatial dimensions is an error (no network takes those); for a classifier, another image size is a warning
    (it runs, through global pooling, but on a scale it never saw; a network that cannot take the size fails
    the probe that follows, which names the card's size). Dense models (fully convolutional, sliding-window
    inference over volumes of any size) are not warned about size."""
    trained, here = list(card.input_shape), list(dataset.input_shape)
    if not trained or trained == here:
        return
    if len(trained) != len(here) or trained[0] != here[0]:
        raise ValueError(
            f"model {name!r} takes inputs of shape {trained} (channels first) but dataset {label!r} gives {here}; "
            "the channel count and the number of spatial dimensions must match"
        )
    if not get_task(dataset.task).dense:
        notify(
            f"warning: model {name!r} was trained on {trained[1:]} images but dataset {label!r} gives {here[1:]}; "
            f"it is scored at a scale it never saw (resize the data to {trained[1:]} to score it as trained)"
        )


def check_classes(name: str, class_map: dict[str, str], card: ModelCard, dataset: ImageDataset, label: str) -> None:
    """Model and data must have the same classes in the same order (up to case, spaces, '-' and '_'), after the
    spec's ``class_map`` (card name -> data name)."""
    if card.num_classes != dataset.num_classes:
        raise ValueError(
            f"model {name!r} has {card.num_classes} classes but dataset {label!r} has {dataset.num_classes}"
        )
    unknown = sorted(set(class_map) - set(card.class_names))
    if unknown:
        raise ValueError(
            f"model {name!r}: class_map names {unknown}, which are not classes of its card {list(card.class_names)}"
        )
    mapped = [class_map.get(c, c) for c in card.class_names]
    if [normalised(c) for c in mapped] != [normalised(c) for c in dataset.class_names]:
        raise ValueError(
            f"model {name!r} predicts classes {mapped} but dataset {label!r} has {list(dataset.class_names)}; "
            "a score would compare different things. If they are the same classes under other names, map them "
            "in the spec: models: [{name: ..., class_map: {card name: data name}}]"
        )


def probe(
    net: torch.nn.Module,
    dataset: ImageDataset,
    what: str,
    label: str,
    device: str | torch.device = "cpu",
    trained: list[int] | None = None,
) -> None:
    """One forward pass of ``net`` on two samples of ``dataset``: an output the task cannot score (another
    shape, another class count) or any error of the pass is a one-line ValueError naming ``what`` (the model),
    the dataset ``label`` and the input size (and ``trained``, the card's input shape, where it differs)."""
    batch = next(iter(iterate_batches(dataset, 2, 2)))
    shape = list(batch.x.shape[1:])
    if trained is not None and list(trained) != shape:
        what = f"{what} (trained on {list(trained)})"
    try:
        was = net.training
        net.eval()
        with torch.no_grad():
            out = net(batch.x.to(device))
        net.train(was)
        get_task(dataset.task).check(out.cpu(), batch.y)
        if out.shape[1] != dataset.num_classes:
            raise ValueError(f"it returns {out.shape[1]} outputs, the data have {dataset.num_classes} classes")
    except Exception as err:  # any failure of a forward pass: name the model and the size, in one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{what} cannot take the inputs of dataset {label!r} (one sample: {shape}): {first}") from None


def check_fit(
    name: str,
    card: ModelCard,
    dataset: ImageDataset,
    label: str,
    notify: Callable[[str], None] = log.warning,
    class_map: dict[str, str] | None = None,
) -> None:
    """The card's input shape and geometry, then its classes, against the data (:func:`check_geometry`,
    :func:`check_classes`)."""
    check_geometry(name, card, dataset, label, notify)
    check_classes(name, class_map or {}, card, dataset, label)
