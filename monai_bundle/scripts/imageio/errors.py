"""The one error type for bad input, raised by the image layer and the inference API above it."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: a study, an output folder, a model card or a checkpoint that cannot be used.

    The message always starts with the offending file or folder and says what is wrong with it, so
    the CLI can print it as it is (``ERROR <message>``) and a user knows what to fix.
    """
