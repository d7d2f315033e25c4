"""DICOM SEG output through highdicom, with SNOMED CT terminology per segment.

The SEG references the source series instance by instance, so PACS viewers and 3D Slicer place it
on the study. Its UIDs are random, or -- given a ``uid_seed`` (the Predictor passes the weights'
SHA-256) -- derived from the seed and the content (source instances, label map, segments, model):
the same segmentation written again gets the same UIDs, so pushing it to a PACS twice (a re-run, a
worker restarted after its push) stores one object, not two (:func:`content_uid`). Frames follow the source slices in the order the reader sorted them
(:mod:`scripts.inference.dicom`); a slice's rows are the label map's Y (j) axis and its columns X (i).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code as PydicomCode

from scripts.inference.errors import InputError
from scripts.inference.terminology import Code, segment_term

SERIES_NUMBER = 999  # SEG series number: high, so it sorts after the source series in viewers


def content_seed(seed: str | None, parts: Iterable[bytes | str]) -> str | None:
    """A seed for :func:`content_uid` from ``seed`` and the object's content (None: no seed, random UIDs)."""
    if seed is None:
        return None
    digest = hashlib.sha256(seed.encode())
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def content_uid(seed: str | None, role: str) -> hd.UID:
    """A random UID without a seed; with one, ``2.25.<n>`` with ``n`` the first 128 bits of
    SHA-256(seed, role) (``role``: ``"series"``, ``"instance"``, ...): the same content, the same UID.
    (pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the sources: a random UUID.)"""
    if seed is None:
        return hd.UID()
    digest = hashlib.sha256(f"{seed}\0{role}".encode()).digest()
    return hd.UID(f"2.25.{int.from_bytes(digest[:16], 'big')}")


def pydicom_code(code: Code) -> PydicomCode:
    """A terminology :class:`Code` as pydicom's (what highdicom takes); the SEG and the SR use it."""
    return PydicomCode(code.value, code.scheme, code.meaning)


def segment_descriptions(segments: list[str], model_name: str, model_version: str) -> list[hd.seg.SegmentDescription]:
    """One description per non-background segment, numbered by label value."""
    algorithm = hd.AlgorithmIdentificationSequence(name=model_name, version=model_version,
                                                   family=codes.DCM.ArtificialIntelligence)
    out = []
    for value, name in enumerate(segments[1:], start=1):
        term = segment_term(name, value)
        out.append(hd.seg.SegmentDescription(
            segment_number=value, segment_label=name,
            segmented_property_category=pydicom_code(term.category), segmented_property_type=pydicom_code(term.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*term.color),
        ))
    return out


def write_dicom_seg(label: np.ndarray, sources: list[pydicom.Dataset], segments: list[str], model_name: str,
                    model_version: str, path: Path, source: Path, uid_seed: str | None = None) -> Path:
    """Write a BINARY DICOM SEG of ``label`` ``(X, Y, Z)`` over the ``sources`` (Z instances, slice order).

    ``uid_seed``: None for random UIDs; else the UIDs follow from it and the content (module docstring).

    Raises:
        InputError: the label map and the source instances disagree in size (names ``source``).
    """
    frames = np.ascontiguousarray(label.transpose(2, 1, 0))  # (X, Y, Z) -> (Z, rows=Y, cols=X)
    if frames.shape[0] != len(sources) or frames.shape[1:] != (int(sources[0].Rows), int(sources[0].Columns)):
        raise InputError(f"{source}: label map {label.shape} does not match the {len(sources)} source DICOM instances")
    seed = content_seed(uid_seed, [*(str(ds.SOPInstanceUID) for ds in sources), repr(frames.shape), frames.tobytes(),
                                   *segments, model_name, model_version])
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(segments, model_name, model_version),
        series_instance_uid=content_uid(seed, "series"), series_number=SERIES_NUMBER,
        sop_instance_uid=content_uid(seed, "instance"), instance_number=1,
        manufacturer="MultiTaskUNet", manufacturer_model_name=model_name, software_versions=model_version,
        device_serial_number="0", series_description=f"{model_name} segmentation", 
        omit_empty_frames=bool(frames.any()),  # an empty mask keeps its frames: a SEG needs at least one
    )
    seg.save_as(path)
    return path
