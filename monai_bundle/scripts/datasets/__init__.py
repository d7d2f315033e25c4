"""Realistic synthetic data sets in published layouts, for tuning the recipe: ``python -m scripts.datasets``.

* ``brain-mri`` (:mod:`.brain_mri`): 2D brain MRI slices on real anatomy (nilearn's packaged MNI152
  template), glioma / meningioma / pituitary / no tumour, BRISC 2025 layout;
* ``brain-mri-3d`` (:mod:`.brain_mri_3d`): the same patients as 3D volumes, MSD layout, mixed
  orientations and spacings;
* ``ultrasound`` (:mod:`.ultrasound`): breast ultrasound, normal / benign / malignant, BUSI layout.

Each is deterministic by seed, built in a temporary folder and renamed when complete, and read by
``python -m scripts.prepare`` exactly like the real data set it imitates. ``preview`` draws a
contact sheet and ``hardness`` scores the cheap baselines a prepared set must defeat. See
``docs/prepare.md``. :mod:`.synthetic` (with :mod:`.synthetic_anatomy`) is the bundle's built-in set (MRI-like
head slices and volumes, three tumour types), generated on first use by the configs (``scripts.datasets.synthetic.ensure_dataset``).
"""
