"""The bundle core: what training and inference share.

The task contract (:mod:`.tasks`), the network (:mod:`.networks`), the data chains and intensity
normalisation (:mod:`.transforms`), the canonical grid (:mod:`.canonical`), the datalist
(:mod:`.datalist`), the dataset fingerprint and experiment plan (:mod:`.fingerprint`, :mod:`.plan`),
the model card and weights loader (:mod:`.model_card`), the sliding-window and flip-TTA inferers
(:mod:`.sliding_window`) and atomic file writes (:mod:`.atomic`).

Imports only :mod:`scripts.imageio` below it; nothing here imports training, the inference API or a
tool (``docs/contracts.md``, "Bundle layout"). Importing the package imports none of its modules.
"""
