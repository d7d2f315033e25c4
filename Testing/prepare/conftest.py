"""Fixtures of the prepare tests: the data set replicas of ``prepare_replicas``."""

from prepare_replicas import (  # noqa: F401  (fixtures are found by name in this module)
    brats2020_replica,
    brats2023_replica,
    brisc_replica,
    busi_replica,
    msd_replica,
    nnunet_replica,
)
