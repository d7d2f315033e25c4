"""Helpers of the inference tests: tiny bundles, a hand-wired threshold model, DICOM writing.

No trained model is needed. :func:`wire_threshold` sets the weights of a tiny ``MultiTaskUNet``
so that it segments "tumor" exactly where channel 0 of its (normalised) input exceeds a level and
raises the "glioma" logit with the mean brightness of the input: the expected output of every
test can then be computed from the image itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from scripts.core.model_card import DEFAULT_CARD, build_network

PYDICOM_DIRS = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
CT_SERIES = PYDICOM_DIRS / "98892001" / "CT5N"  # real CT: 5 slices of 16x16, 2.5 mm, stored top-down
CT_UNEVEN = PYDICOM_DIRS / "77654033" / "CT2"  # real CT: one slice 202 mm away from the other three
CT_LOCALIZERS = PYDICOM_DIRS / "98892001" / "CT2N"  # real localizers in two orientations
NO_IMAGES = PYDICOM_DIRS / "TINY_ALPHA"  # a DICOM file-set whose instances carry no pixel data
LEVEL, GAIN, CLS_GAIN = 0.5, 40.0, 8.0


def tiny_card(spatial_dims: int = 2, in_channels: int = 1, size: int | None = None) -> dict:
    card = json.loads(json.dumps(DEFAULT_CARD))
    card["network"].update(spatial_dims=spatial_dims, in_channels=in_channels, channels=[4, 8, 16])
    card["channels"] = [f"ch{i}" for i in range(in_channels)]
    card["spatial_size"] = [size or (32 if spatial_dims == 2 else 16)] * spatial_dims
    card["name"], card["version"] = "TinyThreshold", "0.0.1"
    return card


def wire_threshold(network: torch.nn.Module, level: float = LEVEL, gain: float = GAIN, cls_gain: float = CLS_GAIN):
    """Weights: seg "tumor" iff input channel 0 > ``level``; cls "glioma" logit = cls_gain * mean(max-pooled x) - 1.

    All other logits are 0 except "no_tumor" (index 2) with bias 1: dark inputs say no_tumor,
    bright ones glioma. BatchNorms are identities, every other weight is zero.
    """
    with torch.no_grad():
        for p in network.parameters():
            p.zero_()
        for m in network.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)
                m.weight.fill_(1.0)

        def identity(conv: torch.nn.Module, out_c: int, in_c: int) -> None:
            conv.weight[(out_c, in_c) + tuple(s // 2 for s in conv.weight.shape[2:])] = 1.0

        blocks = network.encoder.blocks
        identity(blocks[0][0], 0, 0)
        identity(blocks[0][3], 0, 0)
        for block in blocks[1:]:  # (MaxPool, ConvBlock): pass channel 0 down to the deepest level
            identity(block[1][0], 0, 0)
            identity(block[1][3], 0, 0)
        last = network.decoder.ups[-1].conv
        skip_at = last[0].weight.shape[1] - blocks[0][3].weight.shape[0]  # input = cat(upsampled, skip)
        identity(last[0], 0, skip_at)
        identity(last[3], 0, 0)
        head = network.segmentation_head
        head.weight[(1, 0) + (0,) * (head.weight.ndim - 2)] = gain
        head.bias[1] = -gain * level
        linear = network.classification_head.mlp[-1]
        linear.weight[0, 0] = cls_gain
        linear.bias[0], linear.bias[2] = -1.0, 1.0
    return network


def make_bundle(root: Path, spatial_dims: int = 2, in_channels: int = 1, wired: bool = True) -> Path:
    """A bundle-like folder: ``models/model_card.json`` + ``models/model.pt``."""
    card = tiny_card(spatial_dims, in_channels)
    network = build_network(card)
    if wired:
        wire_threshold(network)
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "models" / "model_card.json").write_text(json.dumps(card))
    torch.save(network.state_dict(), root / "models" / "model.pt")
    return root


def oblique_direction(z_deg: float = 20.0, x_deg: float = 10.0) -> np.ndarray:
    """A rotation (columns = the i, j, k axes in LPS) that is not axis-aligned."""
    a, b = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def mni_volume(slices: int = 16) -> np.ndarray:
    """Nilearn's packaged MNI152 T1 template (2 mm, no download), ``slices`` central axial slices, ``(X, Y, Z)``."""
    from nilearn.datasets import load_mni152_template

    data = np.asarray(load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)
    mid = data.shape[2] // 2
    return np.ascontiguousarray(data[:, :, mid - slices // 2: mid + slices - slices // 2])


def write_dicom_series(volume: np.ndarray, folder: Path, spacing=(2.0, 2.0, 3.0), origin=(-90.0, -120.0, 10.0),
                       direction: np.ndarray | None = None, series_uid: str | None = None,
                       positions: list | None = None, shuffle: bool = True) -> str:
    """Write ``volume`` ``(X, Y, Z)`` as an MR DICOM series with exactly this geometry; return its UID.

    ``direction`` columns are the i, j, k axes in LPS. ``positions`` overrides ImagePositionPatient
    per slice (to build broken stacks). Files are named in shuffled order so readers must sort.
    """
    direction = np.eye(3) if direction is None else np.asarray(direction)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    order = np.random.default_rng(0).permutation(volume.shape[2]) if shuffle else np.arange(volume.shape[2])
    pixels = np.round(volume).astype(np.int16)
    for name_index, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{name_index:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "MR", "Test^Phantom", "P0", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20240101", "120000", "1", "1", ""
        ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 3, int(k) + 1, "test"
        pos = positions[k] if positions is not None else np.asarray(origin) + k * spacing[2] * direction[:, 2]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([direction[:, 0], direction[:, 1]])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # (between rows = j, between columns = i)
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()  # rows = j, columns = i
        ds.save_as(folder / f"IM{name_index:04d}.dcm", enforce_file_format=True)
    return series_uid


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)
