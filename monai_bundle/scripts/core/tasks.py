"""The two tasks of the network, named once.

Every dictionary of predictions, targets, loss weights, metrics and output files is keyed by
:class:`Task` values (``"seg"`` and ``"cls"``), never by bare strings.
"""

from __future__ import annotations

from enum import Enum


class Task(str, Enum):
    """Head / task names. ``Task.SEG == "seg"`` holds, so the values index plain dicts too."""

    SEG = "seg"
    CLS = "cls"


class Keys(str, Enum):
    """Keys of a sample dictionary after loading (see ``scripts.core.transforms``).

    ``label`` is the segmentation mask ``(1, *spatial)``; ``class`` the diagnosis index. A sample
    without a mask has ``has_seg == 0`` and an all-zero ``label``; one without a diagnosis has
    ``has_cls == 0`` and ``class == -1``. Losses and metrics ignore the missing part.
    """

    IMAGE = "image"
    LABEL = "label"
    CLASS = "class"
    GROUP = "group"
    HAS_SEG = "has_seg"
    HAS_CLS = "has_cls"


#: the value a missing diagnosis takes in a batch (``torch.nn.CrossEntropyLoss(ignore_index=...)`` style)
MISSING_CLASS = -1


#: class names that mean "no lesion here" (BRISC's no_tumor, BUSI's normal), compared case- and separator-blind
TUMOR_FREE_NAMES = ("no_tumor", "no_tumour", "notumor", "normal", "healthy", "no_lesion")


def tumor_free_class(classes: list[str] | tuple[str, ...]) -> int | None:
    """Index of the class that means "no tumor" (see :data:`TUMOR_FREE_NAMES`), or None."""
    for i, c in enumerate(classes):
        if str(c).lower().replace("-", "_").replace(" ", "_") in TUMOR_FREE_NAMES:
            return i
    return None


def tumor_free_index(classes: list[str] | tuple[str, ...], plan: dict | None = None) -> int | None:
    """Index of the tumour-free class: by name (:func:`tumor_free_class`), else the plan's
    ``no_tumor_class`` (the class whose masks are all empty), else None. The model card names the
    same class (``scripts.core.model_card``)."""
    index = tumor_free_class(classes)
    named = (plan or {}).get("no_tumor_class")
    if index is None and named in list(classes):
        index = list(classes).index(named)
    return index
