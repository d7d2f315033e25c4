"""The one error type of the inference API: :class:`~scripts.imageio.errors.InputError`, the image layer's."""

from __future__ import annotations

from scripts.imageio.errors import InputError

__all__ = ["InputError"]
