"""The one inference API: a study in, segmentation + diagnosis out, in the study's own geometry.

``Predictor.from_bundle(bundle_root)`` loads the model once, with the settings of the bundle's
``configs/inference.json`` (:mod:`.settings`; keyword arguments override them);
``predict(path, output_dir=...)`` reads a PNG/JPG, NIfTI, NRRD, DICOM file, DICOM series folder or zip of one (:mod:`.readers`, :mod:`.dicom`),
prepares it exactly as training does (:func:`scripts.core.transforms.match_channels`, then
:func:`scripts.core.transforms.normalize` with the model card's ``normalization`` -- the plan's choice,
per-image percentiles for cards without one -- over the whole image/volume: a 2D model on a
volume sees its slices normalised together, so that slices outside the anatomy stay dark instead
of having their noise stretched to full contrast), runs the network
(:mod:`.engine`: 2D slice-wise or 3D sliding window, the diagnosis rule, device and memory) and
writes the label map, the result JSON (checked against ``configs/result.schema.json`` first: :mod:`.result`;
each segment with its terminology and colour, :mod:`.terminology`) and an overlay PNG atomically (:mod:`.writers`). The label map
is a PNG mask on the image's pixel grid for PNG/JPG input and NIfTI otherwise (``seg_format="auto"``),
or the format asked for. With flip TTA the result's ``segmentation.uncertainty`` says how much the image
and its mirror disagree (:mod:`.uncertainty`; null without TTA), and ``uncertainty_map=True`` writes the
voxel map beside the label map.

Refused input (an :class:`InputError` naming the file, nothing written): unreadable / truncated
files, DICOM folders without a usable series or with slices that are not one evenly spaced stack,
a 4D file whose volumes do not match the model's channels, a channel count that cannot be
reconciled, a blank (constant) or non-finite image, a 2D image for a 3D model, an unwritable
output folder, DICOM SEG for non-DICOM input, a PNG mask for non-raster input, a checkpoint that does
not fit the network; and what :func:`.readers.read_study` refuses (too small, no voxel size, an unsafe zip).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scripts.core.canonical import affine_from_itk, card_settings, foreground_box
from scripts.inference import engine
from scripts.inference.errors import InputError
from scripts.inference.orientation import DisplayView, display_view
from scripts.inference.readers import Study, read_study
from scripts.inference.result import validate_result
from scripts.inference.settings import InferenceSettings, config_file, load_settings
from scripts.inference.terminology import hex_color, segment_term, slicer_terminology_tag
from scripts.inference.uncertainty import FlipUncertainty
from scripts.inference.worklist import annotate
from scripts.inference.writers import (OutputSet, check_output_dir, write_json, write_nifti, write_overlay,
                                      write_png_mask, write_seg_nrrd, write_uncertainty_map)
from scripts.core.sliding_window import FlipTTA, MultiTaskSlidingWindowInferer, channels_last, cpu_bf16_native
from scripts.core.model_card import CARD_FILE, WEIGHTS_FILE, build_network, load_model_card, load_weights, state_sha256
from scripts.core.transforms import check_normalization, match_channels, normalize

#: output format -> suffix of the segmentation file after the study name
SEG_SUFFIXES = {"png": "_seg.png", "nifti": "_seg.nii.gz", "seg.nrrd": "_seg.seg.nrrd", "dicom-seg": "_seg.dcm"}
#: what ``seg_format="auto"`` (the default) becomes: a PNG mask for raster input, NIfTI for the rest
AUTO_FORMAT = "auto"
#: suffix of the uncertainty map (``uncertainty_map=True``): a PNG for raster input, NIfTI for the rest
UNCERTAINTY_SUFFIXES = {True: "_uncertainty.png", False: "_uncertainty.nii.gz"}
ProgressFn = Callable[[int, str], None]


@dataclass
class Prediction:
    """What :meth:`Predictor.predict` returns (see ``docs/contracts.md``)."""

    result: dict[str, Any]
    image: np.ndarray  # (C, *spatial) float32, the input as read
    label: np.ndarray  # (*spatial) uint8 in input geometry
    paths: dict[str, Path] = field(default_factory=dict)
    #: display orientation of a volume's slices (None for PNG/JPG); a 2D grid is seen as ``(X, Y, 1)``
    view: DisplayView | None = None
    #: voxel-wise flip-TTA disagreement ``(*spatial)`` float32 0..1 (only with ``uncertainty_map=True``)
    uncertainty: np.ndarray | None = None


class Predictor:
    """Segmentation + diagnosis of whole studies with one loaded model.

    Args:
        network: the network the card describes (weights loaded from ``weights`` when given).
        card: the model card (``scripts.core.model_card``).
        weights: state_dict file; None keeps the network's current weights.
        settings: how to run it (:class:`.settings.InferenceSettings`: device, slices per batch of a
            2D model, batch, overlap and blending of a 3D model's windows of the card's ``spatial_size``,
            AMP, flip TTA :class:`scripts.core.sliding_window.FlipTTA`); None reads this bundle's ``configs/inference.json``.
        overrides: settings that win over ``settings``, e.g. ``device="cpu"``, ``tta=True`` (None keeps).

    Raises:
        InputError: the weights file is missing, unreadable or does not fit the network.
        ValueError: an unknown or bad setting; CUDA asked for but not available.
    """

    def __init__(self, network: torch.nn.Module, card: dict[str, Any], weights: str | os.PathLike | None = None,
                 settings: InferenceSettings | None = None, **overrides: Any) -> None:
        self.card = card
        self.settings = (settings if settings is not None else load_settings()).with_overrides(**overrides)
        try:
            self.sha256 = load_weights(network, weights) if weights is not None else state_sha256(network)
        except ValueError as e:
            raise InputError(str(e)) from e
        self.device = engine.resolve_device(self.settings.device)
        self.network = network.to(self.device).eval()
        if self.settings.tta:  # after loading: the wrapper's state dict has other keys
            self.network = FlipTTA(self.network, int(card["network"]["spatial_dims"])).eval()
        self.spatial_dims = int(card["network"]["spatial_dims"])
        try:  # the training normalisation (cards without one: per-image percentiles)
            self.normalization = check_normalization(card.get("normalization"))
        except ValueError as e:
            raise InputError(f"model card: {e}") from e
        try:  # 3D: the canonical grid training resampled to (cards without one: the stored grid)
            self.grid_settings = card_settings(card)
        except ValueError as e:
            raise InputError(f"model card: {e}") from e
        # a model trained under CPU bf16 autocast runs so on a CPU that computes bf16 in hardware, as its
        # validation and temperature fit did (engine docstring, *Device*); ``amp: false`` keeps float32
        self.cpu_bf16 = bool(card.get("cpu_bf16")) and self.settings.amp and cpu_bf16_native()
        channels_last(self.network, self.cpu_bf16)  # a 2D network on the CPU only
        s = self.settings
        self.inferer = MultiTaskSlidingWindowInferer(card["spatial_size"], sw_batch_size=s.sw_batch_size,
                                                     overlap=s.overlap, mode=s.window_mode)

    @classmethod
    def from_bundle(cls, bundle_root: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
                    card: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
                    **overrides: Any) -> Predictor:
        """The bundle's trained model (``models/model_card.json`` + ``models/model.pt``, or the given
        files) with the settings of its ``configs/inference.json`` (or ``config``; a folder without one
        uses this code's), keyword ``overrides`` winning (``device="cpu"``, ``tta=True``; None keeps).

        Raises:
            InputError: the card, the weights or the settings file cannot be used (names the file).
            ValueError: an unknown setting among ``overrides``.
        """
        root = Path(bundle_root)
        try:
            settings = load_settings(config if config is not None else config_file(root))
        except ValueError as e:
            raise InputError(str(e)) from e
        try:
            model_card = load_model_card(root, card)
        except ValueError as e:
            raise InputError(str(e)) from e
        try:
            network = build_network(model_card)
        except (TypeError, ValueError) as e:
            raise InputError(f"{card or root / CARD_FILE}: cannot build the network it describes: {e}") from e
        return cls(network, model_card, checkpoint or root / WEIGHTS_FILE, settings=settings, **overrides)

    def predict(self, path: str | os.PathLike, output_dir: str | os.PathLike | None = None, seg_format: str = AUTO_FORMAT,
                series_uid: str | None = None, axis: int | None = None, overlay: bool = True,
                progress: ProgressFn | None = None, name: str | None = None,
                uncertainty_map: bool = False) -> Prediction:
        """Segment and diagnose one study; write its files to ``output_dir`` (None: write nothing).

        Args:
            path: image file, DICOM series folder or zip of a DICOM series.
            seg_format: ``"auto"`` (PNG for PNG/JPG input, else NIfTI) ``| "png" | "nifti" | "seg.nrrd" |
                "dicom-seg"`` (PNG needs PNG/JPG input, DICOM SEG DICOM input).
            series_uid: series to read from a DICOM folder holding several.
            axis: slice axis (0..2) for a 2D model on a volume; default the acquisition axis.
            overlay: also write ``<name>_overlay.png``.
            progress: called with (percent 0..100, stage).
            name: output file stem (default: the input's name).
            uncertainty_map: keep the voxel-wise flip-TTA disagreement (:mod:`.uncertainty`) and write it
                as ``<name>_uncertainty.png`` (raster input) or ``<name>_uncertainty.nii.gz``; needs TTA.

        Returns:
            :class:`Prediction` with ``label`` ``(*spatial)`` uint8 in the input's geometry.

        Raises:
            InputError: bad input, see the module docstring.
            ValueError: ``uncertainty_map`` without flip TTA (nothing to measure it from).
        """
        if uncertainty_map and not self.settings.tta:
            raise ValueError("an uncertainty map needs flip TTA (tta=True, the CLI's --tta): "
                             "the map is the disagreement of the image and its mirror")
        report = progress or (lambda percent, stage: None)
        if seg_format != AUTO_FORMAT and seg_format not in SEG_SUFFIXES:
            raise InputError(f"{path}: unknown segmentation format {seg_format!r}; "
                             f"use one of {[AUTO_FORMAT] + sorted(SEG_SUFFIXES)}")
        if output_dir is not None:
            check_output_dir(output_dir)
        t0 = time.perf_counter()
        report(0, "read")
        study = read_study(path, series_uid)
        try:
            return self._predict(study, path, seg_format, axis, overlay, report, output_dir, name, uncertainty_map, t0)
        finally:  # the files of a zip or a DICOMweb study: removed now, whether the study succeeded or not
            if study.workdir is not None:
                study.workdir.cleanup()

    def _predict(self, study: Study, path, seg_format: str, axis: int | None, overlay: bool, report: ProgressFn,
                 output_dir, name: str | None, uncertainty_map: bool, t0: float) -> Prediction:
        if seg_format == "dicom-seg" and (study.dicom is None or study.multiframe):
            raise InputError(f"{path}: DICOM SEG output needs a DICOM series or single-frame DICOM input; "
                             "use nifti or seg.nrrd")
        if seg_format == AUTO_FORMAT:
            seg_format = "png" if study.raster else "nifti"
        elif seg_format == "png" and not study.raster:
            raise InputError(f"{path}: a PNG mask needs PNG/JPG input; use nifti, seg.nrrd or dicom-seg for volumes")
        image = self._prepare(study)
        t1 = time.perf_counter()
        report(10, "infer")
        label, logits, view, device, warnings, flip = self._infer(study, image, axis, report, uncertainty_map)
        t2 = time.perf_counter()
        result = self._result(study, label, logits, device, warnings)
        result["segmentation"]["uncertainty"] = None if flip is None else flip.score  # null: no TTA, not "certain"
        result = annotate(result, self.card.get("no_tumor_class"))
        u_map = None if flip is None else flip.map
        result["timings_s"] = {"load": round(t1 - t0, 3), "infer": round(t2 - t1, 3), "write": 0.0}
        paths: dict[str, Path] = {}
        if output_dir is not None:
            report(90, "write")
            paths = self._write(study, label, result, Path(output_dir), seg_format, view, overlay, name, u_map)
        report(100, "done")
        return Prediction(result, study.image, label, paths, view, u_map)

    def _prepare(self, study: Study) -> np.ndarray:
        """Channels matched and intensities normalised: ``(C_model, *spatial)`` float32."""
        image, source, c_model = study.image, study.path, int(self.card["network"]["in_channels"])
        if self.spatial_dims == 3 and (study.raster or len(study.spatial_shape) != 3):
            raise InputError(f"{source}: a 2D image cannot go to a 3D model; give a volume")
        if study.four_d and image.shape[0] != c_model:
            raise InputError(f"{source}: 4D input with {image.shape[0]} volumes, but the model takes {c_model} "
                             "channel(s); give one 3D volume (or a 4D file with one volume per channel)")
        low, high = float(image.min()), float(image.max())  # a NaN anywhere makes both NaN
        if not (np.isfinite(low) and np.isfinite(high)):
            raise InputError(f"{source}: the image contains NaN or infinite values")
        if low == high:
            raise InputError(f"{source}: the image is blank (every voxel is {low:g}); nothing to segment")
        try:
            image = match_channels(image, c_model, source=str(source))
        except ValueError as e:
            raise InputError(str(e)) from e
        return normalize(image, self.normalization)

    def _infer(self, study: Study, image: np.ndarray, axis: int | None, report: ProgressFn, keep_map: bool = False):
        """Label map, study logits, display view (None for raster images), device used, warnings, and the
        flip-TTA uncertainty (:class:`.uncertainty.FlipUncertainty`; None without TTA).

        A 2D model sees a volume's slices in display orientation (:mod:`.orientation`); a 2D
        non-raster grid (a 2D NIfTI/NRRD) is a one-slice volume ``(C, X, Y, 1)`` for this. A 3D model
        sees the volume as training gave it: cropped to its foreground and resampled onto the canonical
        grid of its card (:func:`.engine.segment_canonical`), or -- cards without a target spacing --
        in file index order; the view is still returned for display.
        """
        def on_progress(fraction: float) -> None:
            report(10 + int(78 * fraction), "infer")

        view = None
        if not study.raster:
            flat = image if image.ndim == 4 else image[..., None]  # (C, X, Y) -> (C, X, Y, 1)
            try:
                axis_used = engine.slice_axis(study.geometry.spacing, flat.shape[1:], axis if image.ndim == 4 else None)
                view = display_view(study.geometry.direction, axis_used)
            except ValueError as e:
                raise InputError(f"{study.path}: {e}") from e

        grid = self.grid_settings
        if grid is not None:
            geometry = study.geometry
            affine = affine_from_itk(geometry.spacing, geometry.origin, geometry.direction)
            box = foreground_box(study.image) if grid["crop_foreground"] else None

        def run(device: torch.device):
            self.network.to(device)
            two_d_grid = self.spatial_dims == 2 and view is not None and image.ndim == 3
            shape = flat.shape[1:] if two_d_grid else image.shape[1:]  # the map is kept as (X, Y, 1) there
            flip = FlipUncertainty(shape, keep_map) if self.settings.tta else None
            if self.spatial_dims == 3 and grid is not None:
                return (*engine.segment_canonical(self.network, image, affine, box, grid["target_spacing"],
                                                  grid["orientation"], self.inferer, device, self.settings.amp,
                                                  on_progress, flip, self.cpu_bf16), flip)
            if self.spatial_dims == 3:
                return (*engine.segment_volume(self.network, image, self.inferer, device, self.settings.amp,
                                               on_progress, flip, self.cpu_bf16), flip)
            size, batch, amp = self.card["spatial_size"], self.settings.slice_batch_size, self.settings.amp
            if two_d_grid:
                label, logits = engine.segment_slices(self.network, flat, view, size, device, batch, amp, on_progress, flip,
                                                      self.cpu_bf16)
                if flip is not None and flip.map is not None:
                    flip.map = flip.map[..., 0]  # the label's grid, as below
                return label[..., 0], logits, flip  # (X, Y, 1) -> (X, Y)
            return (*engine.segment_slices(self.network, image, view, size, device, batch, amp, on_progress, flip,
                                           self.cpu_bf16), flip)

        (label, logits, flip), device, warnings = engine.with_cpu_fallback(run, self.device)
        return label, logits, view, device, warnings, flip

    def _result(self, study: Study, label: np.ndarray, logits: torch.Tensor, device: torch.device,
                warnings: list[str]) -> dict[str, Any]:
        """The study's result JSON, ``<stem>_result.json`` (paths and timings filled in later; the contract is
        ``configs/result.schema.json``, :mod:`.result`)."""
        segments = []
        for value, name in enumerate(self.card["segments"][1:], start=1):
            # one comparison per segment: np.bincount would first widen the uint8 volume to int64
            voxels = int(np.count_nonzero(label == value))
            volume = None if study.raster or label.ndim == 2 else round(voxels * study.geometry.voxel_ml, 4)
            term = segment_term(name, value)  # the codes and colour of the overlay, the .seg.nrrd and the DICOM SEG
            segments.append({"name": name, "value": value, "voxels": voxels, "volume_ml": volume,
                             "terminology": slicer_terminology_tag(term), "color": hex_color(term.color)})
        diag = engine.diagnosis(logits, self.card["classes"], self.card.get("temperature"))
        tumor = sum(s["voxels"] for s in segments)
        out: dict[str, Any] = {
            "input": str(study.path), "diagnosis": diag,
            "segmentation": {"path": None, "format": None, "segments": segments},
            "model": {"name": self.card.get("name", "MultiTaskUNet"), "version": self.card.get("version", "0"),
                      "sha256": self.sha256},
            "device": str(device), "tta": self.settings.tta, "timings_s": {},
            "warnings": study.warnings + warnings + engine.consistency_warnings(diag, tumor, self.card.get("no_tumor_class")),
        }
        if study.dicom:  # the series read (a folder may hold several): a viewer loads this one, not its own guess
            first = study.dicom[0]
            out["source"] = {"study_instance_uid": str(first.get("StudyInstanceUID", "")) or None,
                             "series_instance_uid": str(first.get("SeriesInstanceUID", "")) or None}
        return out

    def _write(self, study: Study, label: np.ndarray, result: dict[str, Any], folder: Path, seg_format: str,
               view: DisplayView | None, overlay: bool, name: str | None,
               u_map: np.ndarray | None = None) -> dict[str, Path]:
        start = time.perf_counter()
        stem = name or study.name
        names = {"segmentation": stem + SEG_SUFFIXES[seg_format], "result": f"{stem}_result.json"}
        if overlay:
            names["overlay"] = f"{stem}_overlay.png"
        if seg_format == "dicom-seg":  # the diagnosis as a DICOM SR (TID 1500) beside the SEG
            names["sr"] = f"{stem}_sr.dcm"
        if u_map is not None:
            names["uncertainty_map"] = stem + UNCERTAINTY_SUFFIXES[study.raster]
        result["outputs"] = {key: str(folder / names[key]) for key in ("sr", "overlay", "uncertainty_map") if key in names}
        result["segmentation"]["path"] = str(folder / names["segmentation"])
        result["segmentation"]["format"] = seg_format
        with OutputSet(folder) as out:
            seg_tmp = out.temp(names["segmentation"])
            if seg_format == "png":
                write_png_mask(label, self.card["segments"], seg_tmp)
            elif seg_format == "nifti":
                write_nifti(label, study.geometry, study.raster, seg_tmp)
            elif seg_format == "seg.nrrd":
                write_seg_nrrd(label, study.geometry, study.raster, self.card["segments"], seg_tmp)
            else:
                from scripts.inference.dicom_seg import write_dicom_seg
                from scripts.inference.dicom_sr import write_dicom_sr

                # UIDs from the weights and the content: the same answer written twice is one object in a PACS
                write_dicom_seg(label, study.dicom, self.card["segments"], result["model"]["name"],
                                result["model"]["version"], seg_tmp, study.path, uid_seed=self.sha256)
                write_dicom_sr(result, seg_tmp, study.dicom, out.temp(names["sr"]), uid_seed=self.sha256)
            if overlay:
                write_overlay(study.image, label, view, self.card["segments"], out.temp(names["overlay"]))
            if u_map is not None:
                write_uncertainty_map(u_map, study.geometry, study.raster, out.temp(names["uncertainty_map"]))
            result["timings_s"]["write"] = round(time.perf_counter() - start, 3)  # the JSON itself is negligible
            validate_result(result, folder / names["result"])  # configs/result.schema.json: what every reader reads
            write_json(result, out.temp(names["result"]))
            out.commit()
        return {key: folder / file for key, file in names.items()}

