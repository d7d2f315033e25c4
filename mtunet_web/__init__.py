"""The web demo's own code (``app.py``), kept out of the bundle the Slicer extension installs.

Everything here is web-only: the upload checks and per-run folders (:mod:`.uploads`), the text beside
the picture (:mod:`.text`) and the synthetic example files (:mod:`.examples`). The picture itself is
drawn by the bundle's one overlay renderer (:mod:`scripts.inference.overlay`) and every prediction
comes from :class:`scripts.inference.Predictor`; this package imports the bundle, never the other way
round. It needs the bundle root (``monai_bundle``) on ``sys.path``, as ``app.py`` puts it.
"""
