"""Tasks: what is predicted and how it is scored. Each task owns its head, loss, predict() and
evaluate(); the trainer and the methods never depend on which task is running.

    TASKS["openvocab"].family       -> "clip"
    make_task("dichotomous", backbone, prompt="box")
    task_options("openvocab", dataset)  -> {"classes": [...], "ignore_index": 255}
    TASKS["dichotomous"].mask.write(folder, stem, labels, classes)   # its masks (adapt.tasks.masks)

A new task is one module with a class that satisfies `Task`, plus one line in TASKS.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import numpy as np
import torch

from adapt.tasks.concept import ConceptTask
from adapt.tasks.dichotomous import DichotomousTask, parse_boxes, parse_points
from adapt.tasks.masks import MaskKind
from adapt.tasks.openvocab import OpenVocabTask

__all__ = [
    "TASKS",
    "MaskKind",
    "Task",
    "attach_task_head",
    "make_task",
    "parse_boxes",
    "parse_points",
    "runs_on",
    "task_for_family",
    "task_options",
]


class Task(Protocol):
    """What the trainer, the evaluator and the predictors ask of a task."""

    name: ClassVar[str]
    title: ClassVar[str]  # what a person choosing a task reads
    family: ClassVar[str]  # the backbone family it runs on: "sam" | "clip"
    needs: ClassVar[str | None]  # a capability of the Backbone class it needs (e.g. "concepts"), if any
    mask: ClassVar[MaskKind]  # binary mask or class map: how its masks are written, read and drawn
    default_options: ClassVar[dict]  # the options a training run gets unless the caller chooses
    exemplars: ClassVar[bool]  # predict_outputs takes example boxes of what it finds (`box=`, rows of xyxy)
    augment_options: dict  # keyword options for adapt.data.augment (e.g. how padding is labelled)

    @classmethod
    def options_from(cls, dataset, **overrides) -> dict:
        """The task's constructor options that a dataset determines (classes, ignore index),
        merged with the caller's choices (e.g. the prompt); None values are left out."""

    @staticmethod
    def attach_head(backbone) -> None:
        """Give the backbone the head this task trains, if it lacks one."""

    def prepare(self, image: np.ndarray, mask: np.ndarray | None = None): ...

    def loss(self, prepared: list, rng: np.random.Generator, device) -> torch.Tensor: ...

    def evaluate(self, samples, device="cpu", dis: bool = True) -> dict: ...

    def predict_outputs(self, image: np.ndarray, **request) -> dict: ...

    def predict_many(self, images: list[np.ndarray], device="cpu") -> list[tuple[dict, dict]]:
        """Auto-labelling a batch: [(outputs, scores)] per image, outputs at each image's size with
        "main" the picture a user checks, scores from adapt.uncertainty ("uncertainty" first)."""


# a family's first task is its default (task_for_family): SAM's is the dichotomous one
TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (DichotomousTask, OpenVocabTask, ConceptTask)}


def _task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose {' or '.join(TASKS)}")
    return TASKS[name]


def make_task(name: str, backbone, **options) -> Task:
    return _task_class(name)(backbone, **options)


def task_options(name: str, dataset, **overrides) -> dict:
    """The options a task is built with for a dataset: one place for every entry point."""
    return _task_class(name).options_from(dataset, **overrides)


def runs_on(task: str, backbone: str) -> bool:
    """Whether `task` runs on the catalog's backbone `backbone`: its family, and the capability the
    task needs of the architecture (the concept task: segmenting text phrases, SAM 3's)."""
    from adapt.backbones import architecture, family_of

    cls = _task_class(task)
    return family_of(backbone) == cls.family and (cls.needs is None or getattr(architecture(backbone), cls.needs))


def task_for_family(family: str) -> str:
    """The task a backbone family serves (the frozen model's task when none is named)."""
    for name, cls in TASKS.items():
        if cls.family == family:
            return name
    raise ValueError(f"no task runs on {family!r} backbones")


def attach_task_head(backbone, task: str | None = None) -> None:
    """Give a backbone the head its task trains, if it lacks one (CLIP: the open-vocabulary head;
    SAM's mask decoder is part of the model already; SAM 3's concept task: its detector's heads).
    `task`: the task's name (default: the backbone family's)."""
    _task_class(task or task_for_family(backbone.family)).attach_head(backbone)
