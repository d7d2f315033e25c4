"""Slicer-free core of the MultiTaskUNet Slicer module.

Nothing here imports ``slicer``, ``qt``, ``vtk`` or ``ctk``: the worker process handling, the
progress protocol, result reading, segment terminology, the review record and the dependency plan
run (and are tested) under plain Python. ``MultiTaskUNet.py`` and ``MultiTaskUNetMRML`` glue them to
Slicer.
"""
