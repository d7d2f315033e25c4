"""Make the extension's icon and screenshot (how the images in this folder were produced).

    .venv/bin/python Resources/make_images.py icon                 # Resources/MultiTaskUNet.png + module icon
    .venv/bin/python Resources/make_images.py screenshot BUNDLE    # Resources/Screenshot01.png

The screenshot is real output: a synthetic study from ``scripts.datasets.synthetic.make_volume`` is written
to NRRD, the bundle's worker runs on it through the module's own ``MultiTaskUNetLib.job`` (exactly
the path Slicer takes), and the label map and result JSON it wrote are drawn with matplotlib: three
orthogonal slices with the segment outline, and the panel's diagnosis with all class probabilities.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "MultiTaskUNet"), str(REPO / "monai_bundle")]
ICON_PATHS = (REPO / "Resources" / "MultiTaskUNet.png", REPO / "MultiTaskUNet" / "Resources" / "Icons" / "MultiTaskUNet.png")
SCREENSHOT = REPO / "Resources" / "Screenshot01.png"

from scripts.inference.terminology import segment_term  # noqa: E402

#: the segment colour the worker's result gives "tumor" and the module shows: the bundle's terminology table's
TUMOR_RGB = tuple(c / 255 for c in segment_term("tumor", 1).color)


def make_icon(paths: tuple[Path, ...] = ICON_PATHS, size: int = 128) -> None:
    """A 128x128 icon: an MR-like head slice with a red tumor outline and three diagnosis bars."""
    yy, xx = np.mgrid[:size, :size] / size
    head = ((xx - 0.40) / 0.33) ** 2 + ((yy - 0.52) / 0.42) ** 2
    ventricles = ((np.abs(xx - 0.40) - 0.06) / 0.04) ** 2 + ((yy - 0.58) / 0.12) ** 2 < 1
    brain = np.where(head < 0.8, 0.45 + 0.15 * (1 - head), np.where(head < 1, 0.9, 0.0))  # grey matter, bright scalp
    brain = np.where(ventricles, 0.12, brain)
    tumor = ((xx - 0.47) / 0.11) ** 2 + ((yy - 0.40) / 0.09) ** 2 < 1
    fig = plt.figure(figsize=(1, 1), dpi=size)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(np.where(tumor, 0.85, brain), cmap="gray", vmin=0, vmax=1, extent=(0, 1, 1, 0))
    ax.contour(xx, yy, tumor.astype(float), levels=[0.5], colors=[TUMOR_RGB], linewidths=2.2)
    for i, (h, c) in enumerate(((0.55, TUMOR_RGB), (0.18, "#4a90d9"), (0.10, "#4a90d9"))):
        ax.add_patch(plt.Rectangle((0.80 + i * 0.065, 0.92 - h), 0.05, h, color=c))
    ax.set_xlim(0, 1)
    ax.set_ylim(1, 0)
    ax.axis("off")
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=size, facecolor="#1d2430")
    plt.close(fig)


def run_worker(bundle: Path, work: Path, seed: int = 7, label: int = 1):
    """Write a synthetic study and segment it with the real worker; returns (volume (X,Y,Z), result, label)."""
    import SimpleITK as sitk
    from scripts.datasets.synthetic import make_volume

    from MultiTaskUNetLib.job import InferenceJob, JobState
    from MultiTaskUNetLib.results import read_result

    vol, _ = make_volume(seed=seed, label=label, shape=(128, 128, 40), spacing=(1.0, 1.0, 3.0))
    image = sitk.GetImageFromArray(np.ascontiguousarray(vol.transpose(2, 1, 0)))  # SimpleITK wants (Z, Y, X)
    image.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(image, str(work / "study.nrrd"))
    job = InferenceJob(sys.executable, work / "study.nrrd", work / "out", bundle, device="auto")
    job.start()
    if job.wait(timeout=1200) is not JobState.SUCCEEDED:
        raise RuntimeError(f"worker failed: {job.error}")
    result = read_result(job.result_paths[0])
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(result.segmentation_path))).transpose(2, 1, 0)  # back to (X, Y, Z)
    return vol, result, seg, job.elapsed_s


def _slice_panel(ax, image: np.ndarray, mask: np.ndarray, title: str, aspect: float) -> None:
    ax.imshow(image, cmap="gray", aspect=aspect)
    overlay = np.zeros(mask.shape + (4,))
    overlay[mask > 0] = (*TUMOR_RGB, 0.35)
    ax.imshow(overlay, aspect=aspect)
    if mask.any():
        ax.contour(mask > 0, levels=[0.5], colors=[TUMOR_RGB], linewidths=1.2)
    ax.set_title(title, color="w", fontsize=9)
    ax.axis("off")


def _focus(seg: np.ndarray) -> tuple[int, int, int]:
    """Voxel ``(x, y, z)`` to slice through: the center of the largest connected segment, whose
    axial slice is the one where that segment is widest."""
    from scipy import ndimage

    if not seg.any():
        return tuple(int(s) // 2 for s in seg.shape)
    labels, n = ndimage.label(seg > 0)
    largest = labels == (1 + int(np.argmax(ndimage.sum(seg > 0, labels, range(1, n + 1)))))
    x, y, _ = np.argwhere(largest).mean(0).round().astype(int)
    return int(x), int(y), int(largest.sum(axis=(0, 1)).argmax())


def make_screenshot(bundle: Path, path: Path = SCREENSHOT) -> dict:
    """Render the worker's output for one synthetic study; returns a summary of what was drawn."""
    with tempfile.TemporaryDirectory(prefix="mtunet-shot-") as tmp:
        vol, result, seg, seconds = run_worker(bundle, Path(tmp))
    x, y, z = _focus(seg)
    fig = plt.figure(figsize=(10, 4.2), dpi=110, facecolor="#1d2430")
    from scripts.inference.orientation import display_view

    def shown(array: np.ndarray, axis: int, index: int) -> np.ndarray:
        # the study is written with the LPS identity direction: a viewer's picture of the slice
        return display_view(np.eye(3), axis).to_slices(array[None])[0, index]

    panels = [(shown(vol, 2, z), shown(seg, 2, z), f"axial {z}", 1.0),
              (shown(vol, 1, y), shown(seg, 1, y), f"coronal {y}", 3.0),
              (shown(vol, 0, x), shown(seg, 0, x), f"sagittal {x}", 3.0)]
    for i, (img, msk, title, aspect) in enumerate(panels):
        _slice_panel(fig.add_axes((0.01 + i * 0.215, 0.06, 0.2, 0.82)), img, msk, title, aspect)
    ax = fig.add_axes((0.77, 0.12, 0.21, 0.6), facecolor="#1d2430")
    names, probs = zip(*result.ranked())
    ax.barh(range(len(names))[::-1], probs, color=[TUMOR_RGB if n == result.diagnosis else "#4a90d9" for n in names])
    ax.set_yticks(range(len(names))[::-1], [f"{n} {p:.0%}" for n, p in zip(names, probs)], color="w", fontsize=9)
    ax.set_xlim(0, 1)
    ax.tick_params(colors="w", labelsize=8)
    for side in ax.spines.values():
        side.set_color("#556")
    tumor_ml = sum(s.volume_ml or 0.0 for s in result.segments)
    fig.text(0.70, 0.9, f"Diagnosis: {result.summary()}", color="w", fontsize=12, weight="bold")
    fig.text(0.70, 0.8, f"tumor {tumor_ml:.1f} mL | {result.device} | {seconds:.0f} s | review: pending",
             color="#ccd", fontsize=8)
    fig.text(0.01, 0.95, "MultiTaskUNet: Segment & Classify on a synthetic study (real worker output)",
             color="w", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, facecolor=fig.get_facecolor())
    plt.close(fig)
    return {"diagnosis": result.diagnosis, "probabilities": result.probabilities, "tumor_ml": tumor_ml,
            "model_version": result.model_version, "device": result.device}


if __name__ == "__main__":
    if sys.argv[1:2] == ["icon"]:
        make_icon()
    elif sys.argv[1:2] == ["screenshot"] and len(sys.argv) == 3:
        print(json.dumps(make_screenshot(Path(sys.argv[2])), indent=2))
    else:
        sys.exit(__doc__)
