"""Real data sets in: adapters that write the bundle's datalist, splits, a leakage check, validate.

``python -m scripts.prepare <format> SOURCE --out DIR [options]`` with ``<format>`` one of
``busi``, ``brisc``, ``msd``, ``nnunet``, ``brats``, ``csv``; ``python -m scripts.prepare validate
DATALIST`` checks a datalist and every file in it. Modules:

* ``busi``, ``brisc``, ``msd`` (MSD and nnU-Net v2), ``brats``, ``plain_csv``: one adapter per layout,
  each returning a :class:`~scripts.prepare.common.Collection` of samples;
* ``duplicates``: exact (pixel SHA-256) and near (pHash) duplicates, clusters, regrouping;
* ``splits``: official splits kept, else seeded group-respecting stratified splits, k-fold;
* ``pipeline``: collection -> duplicates -> splits -> ``datalist.json`` + ``prepare_report.json``;
* ``validate``: every file read and checked against the datalist; all problems listed.

Paths in the written datalist are relative to its folder (``--absolute-paths`` for absolute ones);
derived files (merged or remapped masks, grey copies) are written under ``--out`` only.
"""

from scripts.prepare.common import Collection, PrepareError, Sample
from scripts.prepare.pipeline import Options, build

__all__ = ["Collection", "Options", "PrepareError", "Sample", "build"]
