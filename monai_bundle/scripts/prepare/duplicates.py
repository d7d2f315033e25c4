"""Exact and near-duplicate images: found, clustered, reported across splits, optionally regrouped.

Public data sets ship duplicates (BUSI ~330 repeated images; BRISC 7 exact train/test pairs).
A random split then puts copies of one image on both sides and inflates every metric.

* exact: SHA-256 of the decoded pixel data (shape, dtype and values), so a PNG and a lossless
  re-encode match; grey stored as 3 equal channels hashes like the single grey plane.
* near: a 64-bit DCT perceptual hash (pHash) of the grey image scaled to 32x32: the signs of the
  8x8 lowest frequencies against their median. Copies that differ by re-compression, small
  intensity changes or resizing stay within a few bits; different images differ by ~32.
  Volumes are hashed by their mean projection along the last axis; multi-channel samples by their
  first channel file.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from scipy.fft import dctn

from scripts.prepare.common import SPLITS, Sample
from scripts.prepare.imageio import is_raster, read_image, to_grey

#: default Hamming distance (of 64 bits) at or below which two images are near-duplicates
NEAR_THRESHOLD = 4
_HASH_SIZE, _LOW = 32, 8


@dataclass
class Cluster:
    """Samples (indices into the sample list) that are copies of one another."""

    members: list[int]
    kinds: set[str] = field(default_factory=set)  # "exact" and/or "near"


def exact_hash(array: np.ndarray) -> str:
    """SHA-256 of an image's pixel data, shape and dtype; ``(C, *spatial)`` grey-as-RGB collapses to one channel."""
    if (
        array.ndim == 3
        and array.shape[0] in (3, 4)
        and np.array_equal(array[0], array[1])
        and np.array_equal(array[0], array[2])
    ):
        array = array[:1]
    h = hashlib.sha256(f"{array.shape}|{array.dtype.str}|".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def perceptual_hash(plane: np.ndarray) -> int | None:
    """64-bit pHash of a 2D grey plane ``(H, W)``; None for a constant image (it has no structure).

    Raises:
        ValueError: ``plane`` is not 2D.
    """
    from PIL import Image

    if plane.ndim != 2:
        raise ValueError(f"perceptual_hash expects a 2D plane, got shape {plane.shape}")
    plane = plane.astype(np.float32)
    if float(plane.max()) == float(plane.min()):
        return None
    small = np.asarray(Image.fromarray(plane).resize((_HASH_SIZE, _HASH_SIZE), Image.Resampling.BOX))
    low = dctn(small, norm="ortho")[:_LOW, :_LOW].ravel()
    bits = low > np.median(low[1:])  # DC left out of the median: it only tracks brightness
    return int(np.packbits(bits).view(">u8")[0])


def fingerprint(path: str) -> tuple[str, int | None]:
    """(exact hash, perceptual hash) of an image file; see the module docstring."""
    arr, _ = read_image(path)
    exact = exact_hash(arr)
    if is_raster(path):
        plane, _ = to_grey(arr)
    else:
        plane = arr[0].astype(np.float32)
        plane = plane.mean(axis=-1) if plane.ndim == 3 else plane  # (X, Y, Z) -> (X, Y)
    return exact, perceptual_hash(plane)


def near_pairs(hashes: list[int | None], threshold: int, chunk: int = 512) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, whose hashes differ in at most ``threshold`` bits."""
    idx = np.array([i for i, h in enumerate(hashes) if h is not None], dtype=np.int64)
    if len(idx) < 2:
        return []
    codes = np.array([hashes[i] for i in idx], dtype=np.uint64)
    pairs = []
    for start in range(0, len(codes), chunk):
        block = codes[start : start + chunk, None] ^ codes[None, :]  # (chunk, N)
        dist = np.bitwise_count(block)
        rows, cols = np.nonzero(dist <= threshold)
        keep = cols > rows + start
        pairs += [(int(idx[r + start]), int(idx[c])) for r, c in zip(rows[keep], cols[keep])]
    return pairs


def fingerprints(samples: list[Sample], errors: list[str]) -> tuple[list[str], list[int | None], set[int]]:
    """Hash every sample's first image file.

    Returns:
        (exact hashes, perceptual hashes, indices of unreadable samples); for each unreadable file
        ``"<file>: cannot read (<reason>)"`` is appended to ``errors``.
    """
    exact: list[str] = []
    near: list[int | None] = []
    bad: set[int] = set()
    for i, s in enumerate(samples):
        try:
            e, p = fingerprint(s.first_image)
        except (OSError, ValueError, RuntimeError) as err:
            errors.append(f"{s.first_image}: cannot read ({err})")
            e, p = f"unreadable:{i}", None
            bad.add(i)
        exact.append(e)
        near.append(p)
    return exact, near, bad


def find_clusters(exact: list[str], near: list[int | None], threshold: int = NEAR_THRESHOLD) -> list[Cluster]:
    """Cluster images that are exact or near copies of one another (transitively).

    Args:
        exact / near: per-sample hashes from :func:`fingerprints`.
        threshold: pHash Hamming distance for near-duplicates; negative disables the near check.

    Returns:
        clusters of two or more samples, each with the kinds of match that joined it.
    """
    parent = list(range(len(exact)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    edges: list[tuple[int, int, str]] = []
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(exact):
        by_hash[e].append(i)
    edges += [(m[0], j, "exact") for m in by_hash.values() for j in m[1:]]
    if threshold >= 0:
        edges += [(i, j, "near") for i, j in near_pairs(near, threshold) if exact[i] != exact[j]]
    for i, j, _ in edges:
        parent[find(i)] = find(j)
    clusters: dict[int, Cluster] = {}
    for i in range(len(exact)):
        clusters.setdefault(find(i), Cluster([])).members.append(i)
    for i, _, kind in edges:
        clusters[find(i)].kinds.add(kind)
    return [c for c in clusters.values() if len(c.members) > 1]


def regroup(samples: list[Sample], clusters: list[Cluster]) -> int:
    """Give all samples of each duplicate cluster (and the rest of their groups) one group.

    The splitter then keeps them together; a merged group holding an official ``test`` sample
    goes to ``test`` (see :func:`scripts.prepare.splits.split_samples`).

    Returns:
        the number of groups merged away.
    """
    parent: dict[str, str] = {}

    def find(g: str) -> str:
        parent.setdefault(g, g)
        while parent[g] != g:
            g = parent[g]
        return g

    merged = 0
    for c in clusters:
        roots = sorted({find(samples[i].group) for i in c.members})
        for r in roots[1:]:
            parent[r] = roots[0]
            merged += 1
    for s in samples:
        s.group = find(s.group)
    return merged


def cluster_report(samples: list[Sample], clusters: list[Cluster], split_of: dict[int, str]) -> dict:
    """JSON-ready summary: every cluster with its members' keys and splits, and the leaking ones."""
    rows, leaks = [], 0
    for c in clusters:
        splits = sorted({split_of.get(i, "") for i in c.members}, key=lambda s: SPLITS.index(s) if s in SPLITS else 9)
        leak = len(splits) > 1
        leaks += leak
        rows.append(
            {
                "members": [samples[i].key for i in c.members],
                "splits": [split_of.get(i, "") for i in c.members],
                "kind": "+".join(sorted(c.kinds)),
                "across_splits": leak,
            }
        )
    return {
        "clusters": len(clusters),
        "images_in_clusters": sum(len(c.members) for c in clusters),
        "clusters_across_splits": leaks,
        "details": rows,
    }
