"""Task adapters (classification, segmentation), registered by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medrobust._lazy import lazy_getattr
from medrobust.registry import Registry
from medrobust.tasks.base import Outcome, Task

if TYPE_CHECKING:
    from medrobust.tasks.classification import ClassificationTask
    from medrobust.tasks.ordinal import OrdinalTask
    from medrobust.tasks.segmentation import SegmentationTask

# each task's module is imported when the task is first used
__getattr__ = lazy_getattr(
    __name__,
    {
        "ClassificationTask": "medrobust.tasks.classification",
        "OrdinalTask": "medrobust.tasks.ordinal",
        "SegmentationTask": "medrobust.tasks.segmentation",
    },
)

TASKS: Registry[type[Task]] = Registry("task")
TASKS.register_lazy("classification", "medrobust.tasks.classification:ClassificationTask")
TASKS.register_lazy("segmentation", "medrobust.tasks.segmentation:SegmentationTask")
TASKS.register_lazy("ordinal", "medrobust.tasks.ordinal:OrdinalTask")


def get_task(task: str | Task) -> Task:
    """Return a Task instance from a name or pass an instance through."""
    if isinstance(task, Task):
        return task
    return TASKS.build(task)


__all__ = ["Outcome", "Task", "ClassificationTask", "OrdinalTask", "SegmentationTask", "TASKS", "get_task"]
