"""Shared by the fake workers: the real CLI's arguments, outputs and protocol, with a threshold as "model".

A fake is installed as ``scripts/infer.py`` of a temporary bundle, so the Lib runs it exactly as it
runs the real worker (``python -m scripts.infer``, bundle root on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]
#: what the real worker writes for a segment named "tumor" (the bundle's scripts.inference.terminology;
#: Testing/slicer_extension/test_lib_terminology.py checks that the two agree)
TUMOR_TERMINOLOGY = ("Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure"
                     "~SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~^^~^^")
TUMOR_COLOR = "#e62828"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--bundle")
    p.add_argument("--device", default="auto")
    p.add_argument("--format", default="nifti")
    p.add_argument("--checkpoint")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--tta", action="store_true")
    p.add_argument("--uncertainty-map", action="store_true")
    return p.parse_args(argv)


def record_invocation(args: argparse.Namespace) -> None:
    """Append what the fake was started with to ``<out>/invocations.jsonl`` (tests read it)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    entry = {"argv": sys.argv[1:], "device": args.device, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
             "pythonpath": os.environ.get("PYTHONPATH", ""), "cwd": os.getcwd(), "pid": os.getpid()}
    with open(out / "invocations.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")


def stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".seg.nrrd", ".nrrd", ".nii", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def progress(percent: int, stage: str) -> None:
    print(f"PROGRESS {percent} {stage}", flush=True)


def segment_and_classify(input_path: str, out_dir: str, device: str, uncertainty_map: bool = False) -> Path:
    """Threshold the volume (bright = tumor), write the label map and the result JSON; return its path.

    ``uncertainty_map``: also ``<stem>_uncertainty.nii.gz``, float32 ``array / max`` on the input's grid."""
    import numpy as np
    import SimpleITK as sitk

    image = sitk.ReadImage(input_path)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    label = (array > array.mean() + array.std()).astype(np.uint8)
    seg = sitk.GetImageFromArray(label)
    seg.CopyInformation(image)
    out = Path(out_dir)
    seg_path = out / f"{stem(input_path)}_seg.nii.gz"
    sitk.WriteImage(seg, str(seg_path))
    voxels = int(label.sum())
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    probs = {"glioma": 0.1, "meningioma": 0.7, "no_tumor": 0.05, "pituitary": 0.15}
    result = {"input": input_path, "diagnosis": {"label": "meningioma", "index": 1, "probabilities": probs},
              "segmentation": {"path": seg_path.name, "format": "nifti",
                               "segments": [{"name": "tumor", "value": 1, "voxels": voxels, "volume_ml": voxels * voxel_ml,
                                            "terminology": TUMOR_TERMINOLOGY, "color": TUMOR_COLOR}]},
              "model": {"name": "FakeMultiTaskUNet", "version": "0.0.1", "sha256": "0" * 64},
              "device": "cpu" if device == "cpu" else "cuda:0", "timings_s": {"load": 0.0, "infer": 0.0, "write": 0.0},
              "warnings": []}
    if uncertainty_map:
        u_path = out / f"{stem(input_path)}_uncertainty.nii.gz"
        u_image = sitk.GetImageFromArray((array / array.max()).astype(np.float32))
        u_image.CopyInformation(image)
        sitk.WriteImage(u_image, str(u_path))
        result["segmentation"]["uncertainty"] = 0.25
        result["outputs"] = {"uncertainty_map": u_path.name}
    result_path = out / f"{stem(input_path)}_result.json"
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, result_path)
    return result_path


def run_ok(argv: list[str]) -> int:
    args = parse_args(argv)
    record_invocation(args)
    for path in args.inputs:
        progress(5, "loading model")
        print("a free-form log line", flush=True)
        progress(40, "inference")
        result = segment_and_classify(path, args.out, args.device, args.uncertainty_map)
        progress(100, "done")
        print(f"RESULT {result}", flush=True)
    return 0
