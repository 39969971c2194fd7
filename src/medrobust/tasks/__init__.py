"""Task adapters (classification, segmentation), registered by name."""

from __future__ import annotations

from medrobust.registry import Registry
from medrobust.tasks.base import Outcome, Task
from medrobust.tasks.classification import ClassificationTask
from medrobust.tasks.ordinal import OrdinalTask
from medrobust.tasks.segmentation import SegmentationTask

TASKS: Registry[type[Task]] = Registry("task")
TASKS.register("classification")(ClassificationTask)
TASKS.register("segmentation")(SegmentationTask)
TASKS.register("ordinal")(OrdinalTask)


def get_task(task: str | Task) -> Task:
    """Return a Task instance from a name or pass an instance through."""
    if isinstance(task, Task):
        return task
    return TASKS.build(task)


__all__ = ["Outcome", "Task", "ClassificationTask", "OrdinalTask", "SegmentationTask", "TASKS", "get_task"]
