"""Training glue: what ``configs/train.json`` and ``configs/evaluate.json`` run on top of the core.

The loss (:mod:`.losses`), batch augmentation (:mod:`.batch_augment`), the trainer's handlers and
``prepare_batch`` (:mod:`.training`), the time-budget schedule (:mod:`.schedule`), the weight average
(:mod:`.ema`), temperature scaling (:mod:`.calibration`), the metrics (:mod:`.metrics`), evaluation and its
report (:mod:`.evaluation`, :mod:`.report`) and MLflow tracking (:mod:`.tracking`).

Imports :mod:`scripts.core` and :mod:`scripts.imageio`; never the inference API (its sibling) or a tool.
Importing the package imports none of its modules.
"""
