"""What a task's masks are: one binary foreground mask, or a map of class ids. Each task declares
its kind (`Task.mask`), so whoever writes, reads or shows a mask (the click labeller, label-the-rest,
the held-out previews, the studio's forms) asks the kind instead of the task's name.

Labels in memory are one (H, W) uint8 map: 0 background, k the k-th class (binary: 1 foreground).
On disk a dataset folder holds masks/<stem>.png: 0/255 for a binary mask, class ids for a class map
with the names, in id order, in classes.json at the folder's root (what adapt.data reads back).

    BINARY.write(folder, stem, labels, classes)      # masks/<stem>.png (+ classes.json for a class map)
    CLASS_MAP.decode(cv2.imread(path, cv2.IMREAD_UNCHANGED))  -> labels
    kind.overlay(image, labels)                      # the labels drawn over the photo (adapt.render)
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from adapt.files import write_text
from adapt.render import overlay, palette, save_png

BACKGROUND = "background"
CLASSES_FILE = "classes.json"


class MaskKind(ABC):
    """The questions asked of a mask kind; BinaryMask and ClassMap answer them."""

    binary: bool  # one foreground mask (True) or a map of class ids (False)
    needs_class_names: bool  # the user names the classes (the model is asked for them)

    @abstractmethod
    def classes(self, names: list[str]) -> list[str]:
        """The class list labels are saved with, background first (id 0)."""

    @abstractmethod
    def encode(self, labels: np.ndarray) -> np.ndarray:
        """The mask PNG's pixels for a label map."""

    @abstractmethod
    def decode(self, mask: np.ndarray) -> np.ndarray:
        """A mask PNG's pixels back to a uint8 label map."""

    @abstractmethod
    def write_classes(self, folder: Path, classes: list[str]) -> None:
        """classes.json at the dataset folder's root, when the masks need one."""

    def write(self, folder: Path, stem: str, labels: np.ndarray, classes: list[str]) -> Path:
        """masks/<stem>.png in a dataset folder (and the class names it needs); returns the mask's path."""
        path = save_png(self.encode(labels), Path(folder) / "masks" / f"{stem}.png")
        self.write_classes(Path(folder), classes)
        return path

    @abstractmethod
    def overlay(self, image: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
        """The labels drawn over the image (n_classes: the class map's colours; ids past it stay clear)."""


class BinaryMask(MaskKind):
    """One object against the background: 0/255 PNGs, drawn in one colour."""

    binary = True
    needs_class_names = False

    def classes(self, names: list[str]) -> list[str]:
        return [BACKGROUND, "foreground"]

    def encode(self, labels: np.ndarray) -> np.ndarray:
        return (np.asarray(labels) > 0).astype(np.uint8) * 255

    def decode(self, mask: np.ndarray) -> np.ndarray:
        return (np.asarray(mask) > 127).astype(np.uint8)

    def write_classes(self, folder: Path, classes: list[str]) -> None:
        """Nothing: 0 and 255 need no names."""

    def overlay(self, image: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
        return overlay(image, np.asarray(labels) > 0)


class ClassMap(MaskKind):
    """Named classes: PNGs of class ids with classes.json, each class in its own colour."""

    binary = False
    needs_class_names = True

    def classes(self, names: list[str]) -> list[str]:
        """The names with background first, as the open-vocabulary model numbers them."""
        names = list(names)
        return names if BACKGROUND in names else [BACKGROUND] + names

    def encode(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(labels)

    def decode(self, mask: np.ndarray) -> np.ndarray:
        return np.asarray(mask).astype(np.uint8)

    def write_classes(self, folder: Path, classes: list[str]) -> None:
        write_text(Path(folder) / CLASSES_FILE, json.dumps(list(classes)))

    def overlay(self, image: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
        labels = np.asarray(labels).astype(np.int64)
        n = int(labels.max(initial=0)) + 1 if n_classes is None else n_classes
        return overlay(image, labels, palette(n), skip=(0,))


BINARY = BinaryMask()
CLASS_MAP = ClassMap()
