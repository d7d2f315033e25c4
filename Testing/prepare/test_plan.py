"""The experiment plan: each decision on hand-made fingerprints, and real ``prepare plan`` runs.

The decision functions of ``scripts.core.plan`` are pure: they are checked on fingerprints written by
hand. ``python -m scripts.prepare plan`` is then run (in-process, through its ``main``) on tiny
generated 2D and 3D training sets whose lesion sizes, spacings and empty masks are known.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from prepare_replicas import blob, save_nii, save_png, texture

from scripts.core import plan as P
from scripts.core.fingerprint import guess_modality
from scripts.core.fingerprint import select_cases
from scripts.prepare.__main__ import main

# --- decisions on hand-made fingerprints ----------------------------------------------------------


def test_input_size_keeps_the_small_lesions_wide_enough():
    # the built-in synthetic data: 128^2 images, 5th-percentile lesion 11.55 px -> 88.7 px needed -> 96
    assert P.decide_input_size_2d([128, 128], 11.55) == [96, 96]
    # 512^2 images whose small lesions are 18 px wide: 8 * 512 / 18 = 227.6 -> 240
    assert P.decide_input_size_2d([512, 512], 18.0) == [240, 240]
    # tiny lesions on large images: capped at MAX_INPUT_SIZE
    assert P.decide_input_size_2d([512, 512], 4.0) == [P.MAX_INPUT_SIZE] * 2
    # large lesions: the minimum size
    assert P.decide_input_size_2d([512, 512], 200.0) == [P.MIN_INPUT_SIZE] * 2
    # the device's ceiling: 128 on CPU (both sides), the full 256 on a GPU
    assert P.decide_input_size_2d([512, 512], 18.0, P.MAX_INPUT_SIZE_DEVICE["cpu"]) == [96, 96]  # epochs before pixels on CPU
    assert P.decide_input_size_2d([400, 600], 20.0, 128) == [128, 128]  # the long side is capped too
    assert P.decide_input_size_2d([512, 512], 18.0, P.MAX_INPUT_SIZE_DEVICE["cuda"]) == [240, 240]


def test_input_size_never_upsamples_beyond_the_data_but_keeps_the_minimum():
    assert P.decide_input_size_2d([160, 160], 2.0) == [160, 160]  # would need 640: the data's own 160
    assert P.decide_input_size_2d([64, 64], 3.0) == [96, 96]  # small images: the minimum still holds
    assert P.decide_input_size_2d([300, 300], None) == [256, 256]  # no lesion measured: the data's size, capped


def test_input_size_is_square_unless_the_data_is_clearly_not():
    assert P.decide_input_size_2d([500, 560], 20.0) == [208, 208]  # ratio 1.12 <= 1.25: square
    h, w = P.decide_input_size_2d([400, 600], 20.0)  # landscape 1.5: rows are the short side
    assert h == 160 and w == 240 and w % P.SIZE_MULTIPLE == 0
    assert P.decide_input_size_2d([600, 400], 20.0) == [240, 160]  # portrait
    assert P.decide_input_size_2d([256, 1024], 20.0) == [112, 256]  # 8 * 256 / 20 -> 112; long side capped at 256
    with pytest.raises(ValueError, match="two positive sizes"):
        P.decide_input_size_2d([0, 10], 3.0)


def test_target_spacing_is_the_median_or_the_coarse_axis_10th_percentile():
    assert P.decide_target_spacing([0.8, 0.8, 1.0], [0.7, 0.7, 0.9]) == [0.8, 0.8, 1.0]
    # anisotropic (5 / 0.5 = 10 > 3): the coarse axis takes its 10th percentile
    assert P.decide_target_spacing([0.5, 0.5, 5.0], [0.4, 0.4, 3.0]) == [0.5, 0.5, 3.0]
    # ... but never finer than the coarsest in-plane spacing
    assert P.decide_target_spacing([0.5, 0.7, 5.0], [0.4, 0.6, 0.3]) == [0.5, 0.7, 0.7]
    # the coarse axis need not be the last one (sagittal stacks)
    assert P.decide_target_spacing([6.0, 1.0, 1.0], [4.0, 1.0, 1.0]) == [4.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        P.decide_target_spacing([1.0, 0.0, 1.0], [1.0, 1.0, 1.0])


def test_patch_size_from_the_median_shape_within_the_device_budget():
    # the built-in 3D data: 64 x 64 x 32 voxels at its own spacing: the patch is the volume
    assert P.decide_patch_size_3d([64, 64, 32], [3.0, 3.0, 6.0], "cpu") == [64, 64, 32]
    # a BraTS-sized volume: shrunk to the CPU budget, multiples of 16
    patch = P.decide_patch_size_3d([240, 240, 155], [1.0, 1.0, 1.0], "cpu")
    assert np.prod(patch) <= P.PATCH_VOXELS["cpu"] and all(p % 16 == 0 for p in patch)
    assert max(patch) - min(patch) <= 16  # shrunk evenly, the largest side first
    big = P.decide_patch_size_3d([240, 240, 155], [1.0, 1.0, 1.0], "cuda")
    assert np.prod(big) <= P.PATCH_VOXELS["cuda"] and np.prod(big) > np.prod(patch)
    # a thin anisotropic stack: the out-of-plane side is a multiple of 8
    thin = P.decide_patch_size_3d([256, 256, 20], [0.5, 0.5, 5.0], "cpu")
    assert thin[2] == 24 and thin[0] % 16 == 0 and np.prod(thin) <= P.PATCH_VOXELS["cpu"]
    with pytest.raises(ValueError, match="device_type"):
        P.decide_patch_size_3d([64, 64, 32], [1.0, 1.0, 1.0], "tpu")


def test_a_patch_that_holds_too_little_of_the_volume_coarsens_the_spacing():
    """nnU-Net's 3d_lowres rule: the spacing grows until the device's patch holds a quarter of the median volume."""
    head = [180.0, 226.0, 196.0]  # mm: the generated 3D set's box around a head

    def coverage(spacing, device):
        shape = [mm / s for mm, s in zip(head, spacing)]
        return math.prod(P.decide_patch_size_3d(shape, spacing, device)) / math.prod(shape)

    # 1 mm and 0.9 x 0.9 x 3 mm studies (median 0.95 x 0.95 x 2): a CPU patch would hold 3 % of the head
    assert coverage([0.95, 0.95, 2.0], "cpu") < 0.05
    low = P.decide_lowres_spacing([0.95, 0.95, 2.0], head, "cpu")
    assert coverage(low, "cpu") >= P.LOWRES_COVERAGE and coverage([s / P.LOWRES_STEP for s in low], "cpu") < P.LOWRES_COVERAGE
    assert 1.8 < low[0] == low[1] < 2.2 and 3.6 < low[2] < 4.4  # about the 2 mm set's own grid: in-plane first, then all
    assert low[2] / low[0] <= 2.0 + 1e-6
    # isotropic 1 mm: every axis alike
    iso = P.decide_lowres_spacing([1.0, 1.0, 1.0], head, "cpu")
    assert iso[0] == iso[1] == iso[2] > 2.0
    # a GPU's patch already holds enough of it, and so does a CPU patch of a small volume: unchanged
    assert P.decide_lowres_spacing([0.95, 0.95, 2.0], head, "cuda") == [0.95, 0.95, 2.0]
    assert P.decide_lowres_spacing([3.0, 3.0, 6.0], [192.0, 192.0, 192.0], "cpu") == [3.0, 3.0, 6.0]
    with pytest.raises(ValueError, match="three positive"):
        P.decide_lowres_spacing([1.0, 1.0], head, "cpu")
    with pytest.raises(ValueError, match="device_type"):
        P.decide_lowres_spacing([1.0, 1.0, 1.0], head, "tpu")


def test_network_depth_puts_the_bottleneck_at_4_to_7_pixels():
    assert P.decide_network_channels([96, 96], "cpu") == [8, 16, 32, 64, 128]  # bottleneck 6 px
    assert P.decide_network_channels([64, 64, 32], "cpu") == [16, 32, 64, 128]  # 32 / 8 = 4 px; width 16 in 3D on CPU
    # a strided stem: levels counted from the first level's size (32 x 32 x 16): 16 / 4 = 4 px
    assert P.decide_network_channels([64, 64, 32], "cpu", stem_stride=2) == [16, 32, 64]
    assert P.decide_network_channels([256, 256], "cpu") == [8, 16, 32, 64, 128, 256, 512]  # 4 px
    assert P.decide_network_channels([96, 96], "cuda")[0] == P.BASE_WIDTH[(2, "cuda")]
    assert max(P.decide_network_channels([256, 256, 256], "cuda")) == P.MAX_WIDTH[3]
    for size in ([96, 96], [240, 240], [160, 96], [64, 64, 24], [128, 128, 128]):
        levels = P.decide_levels(size)
        assert 4 <= min(size) / 2 ** (levels - 1) < 8, size
    assert P.decide_levels([8, 8, 4]) == P.MIN_LEVELS  # tiny test patches still get two levels


def test_batch_size_for_cpu_cuda_and_small_datasets():
    assert P.decide_batch_size([96, 96], [8, 16, 32, 64, 128], 800, "cpu") == 16  # the demo's batch
    assert P.decide_batch_size([240, 240], [8] * 6, 800, "cpu") == P.MIN_BATCH[2]  # large images: the minimum
    assert P.decide_batch_size([64, 64, 32], [16, 32, 64, 128], 64, "cpu") == 2  # the 3D demo's batch
    assert P.decide_batch_size([96, 96], [8, 16, 32, 64, 128], 40, "cpu") == P.MIN_BATCH[2]  # 5 % of 40 cases
    assert P.decide_batch_size([96, 96], [8, 16, 32, 64, 128], 200, "cpu") == 10  # 5 % of 200
    widths = P.decide_network_channels([256, 256], "cuda")
    on_80 = P.decide_batch_size([256, 256], widths, 10_000, "cuda", 80.0)
    on_8 = P.decide_batch_size([256, 256], widths, 10_000, "cuda", 8.0)
    assert P.MIN_BATCH[2] <= on_8 < on_80 <= P.MAX_BATCH[(2, "cuda")]
    with pytest.raises(ValueError, match="memory"):
        P.decide_batch_size([96, 96], [8, 16], 100, "cuda")


def test_normalization_follows_the_modality():
    fg = {"p00_5": [-100.0], "p99_5": [250.0], "mean": [60.0], "std": [40.0]}
    assert P.decide_normalization("CT", fg) == {"mode": "ct", "lower": [-100.0], "upper": [250.0], "mean": [60.0],
                                                "std": [40.0]}
    whole = {"p00_5": [-1000.0], "p99_5": [1200.0], "mean": [-300.0], "std": [500.0]}
    assert P.decide_normalization("CT", None, whole)["lower"] == [-1000.0]  # no lesion measured: whole images
    for modality in ("MR", "US", "photo", "unknown"):
        assert P.decide_normalization(modality, fg) == {"mode": "percentile"}


def test_augmentation_is_stronger_for_small_datasets():
    assert P.decide_augmentation(50) == "strong"
    assert P.decide_augmentation(199) == "strong"
    assert P.decide_augmentation(800) == "medium"  # the demo's 800 images keep today's knobs
    assert P.decide_augmentation(5000) == "light"


def test_modality_guess_from_names_and_intensities():
    assert guess_modality(["CT"], 1, 0.0, -1024, 2000)[0] == "CT"
    assert guess_modality(["image"], 1, 0.0, -1024, 1500, True)[0] == "CT"  # Hounsfield range
    assert guess_modality(["FLAIR", "T1", "T1c", "T2"], 4, 0.0, 0, 5000)[0] == "MR"
    assert guess_modality(["t1n", "t2f"], 2, 0.0, 0, 800)[0] == "MR"
    assert guess_modality(["US"], 3, 0.0, 0, 255)[0] == "US"
    assert guess_modality(["rgb"], 3, 0.9, 0, 255)[0] == "photo"
    modality, reason = guess_modality(["grey"], 1, 0.0, 0, 255)
    assert modality == "unknown" and "8-bit" in reason


def test_tumor_free_class_is_the_one_with_empty_masks():
    empty = {"normal": {"labelled": 10, "empty": 10, "fraction": 1.0},
             "benign": {"labelled": 10, "empty": 0, "fraction": 0.0}}
    assert P.decide_no_tumor_class(empty, ["normal", "benign"]) == "normal"
    empty["benign"] = {"labelled": 10, "empty": 10, "fraction": 1.0}
    assert P.decide_no_tumor_class(empty, ["normal", "benign"]) is None  # two candidates: undecided
    assert P.decide_no_tumor_class({}, ["a", "b"]) is None


def _fingerprint_2d(**over) -> dict:
    fp = {"spatial_dims": 2, "n_training": 800, "classes": ["glioma", "meningioma", "no_tumor", "pituitary"],
          "image_size": {"median": [128.0, 128.0]}, "lesions": {"width_px": {"p05": 11.55}},
          "modality": "MR", "modality_reason": "channel names ['T1c']",
          "intensity": {"global": {"p00_5": [1.0], "p99_5": [222.0], "mean": [56.0], "std": [64.0]}},
          "empty_mask": {"no_tumor": {"labelled": 24, "empty": 24, "fraction": 1.0},
                         "glioma": {"labelled": 42, "empty": 0, "fraction": 0.0}}}
    fp.update(over)
    return fp


def test_decide_reproduces_the_demo_settings_from_the_synthetic_fingerprint():
    """The rules alone (no pins) give the demo's long-standing settings for its data on a CPU."""
    d = P.decide(_fingerprint_2d(), "cpu")
    assert d["spatial_size"] == [96, 96] and d["network_channels"] == [8, 16, 32, 64, 128]
    assert d["batch_size"] == d["val_batch_size"] == 16
    assert d["normalization"] == {"mode": "percentile"} and d["augmentation"] == "medium"
    assert d["no_tumor_class"] == "no_tumor" and d["target_spacing"] is None and d["orientation"] is None
    assert set(d["why"]) >= {"spatial_size", "network_channels", "batch_size", "normalization", "augmentation",
                             "time_budget_min"}
    # a wall-clock ceiling on CPU only; a GPU plan trains its epochs
    assert d["time_budget_min"] == P.TIME_BUDGET_MIN["cpu"] > 0
    # 800 images in batches of 16: 50 steps an epoch, 144 epochs for the 7200 steps (the demo pins its 30)
    assert d["max_epochs"] == math.ceil(P.TRAIN_STEPS[2] / 50) == 144 and "7200 steps for 2D" in d["why"]["max_epochs"]
    assert P.synthetic_pins({"synthetic": {}, "spatial_dims": 2})["max_epochs"] == 30
    assert P.decide(_fingerprint_2d(), "cuda", memory_gb=80.0)["time_budget_min"] is None


def test_decide_3d_gives_spacing_orientation_and_patch():
    fp = _fingerprint_2d(spatial_dims=3, n_training=64, image_size={"median": [64.0, 64.0, 32.0]},
                         spacing={"median": [3.0, 3.0, 6.0], "p10": [3.0, 3.0, 6.0]},
                         size_mm={"median": [192.0, 192.0, 192.0]})
    d = P.decide(fp, "cpu")
    assert d["orientation"] == "RAS" and d["target_spacing"] == [3.0, 3.0, 6.0]
    assert d["median_resampled_shape"] == [64.0, 64.0, 32.0]
    assert d["spatial_size"] == [64, 64, 32] and d["stem_stride"] == 2 and d["network_channels"] == [16, 32, 64]
    assert d["batch_size"] == 2 and d["val_batch_size"] == 1
    assert "bottleneck 4 px" in d["why"]["network_channels"] and "strided" in d["why"]["stem_stride"]
    assert "coarsened" not in d["why"]["target_spacing"]
    # a 1 mm head: the CPU plan trains on a coarser grid and says why; the GPU plan keeps the median spacing
    fine = dict(fp, spacing={"median": [0.95, 0.95, 2.0], "p10": [0.9, 0.9, 1.0]},
                size_mm={"median": [180.0, 226.0, 196.0]})
    low, full = P.decide(fine, "cpu"), P.decide(fine, "cuda", memory_gb=80.0)
    assert low["target_spacing"] == P.decide_lowres_spacing([0.95, 0.95, 2.0], [180.0, 226.0, 196.0], "cpu")
    assert "3d_lowres" in low["why"]["target_spacing"] and full["target_spacing"] == [0.95, 0.95, 2.0]
    assert low["median_resampled_shape"] == [round(mm / s, 2) for mm, s in zip([180.0, 226.0, 196.0], low["target_spacing"])]
    cuda = P.decide(fp, "cuda", memory_gb=80.0)  # a GPU plan keeps the full-resolution first level (nnU-Net)
    assert cuda["stem_stride"] == 1 and len(cuda["network_channels"]) == 4
    assert P.decide(_fingerprint_2d(), "cpu")["stem_stride"] == 1  # 2D keeps its full-resolution level
    # widths follow an overridden stem (the config passes --stem_stride to network_channels_for)
    plan = {"spatial_size": [64, 64, 32], "network_channels": [16, 32, 64], "stem_stride": 2, "device": "cpu"}
    assert P.network_channels_for(plan, [64, 64, 32]) == [16, 32, 64]
    assert P.network_channels_for(plan, [64, 64, 32], stem_stride=1) == [16, 32, 64, 128]


def test_epochs_come_from_a_step_count():
    """An epoch is ceil(cases / batch) steps: the plan asks for about TRAIN_STEPS[dims] steps, within bounds."""
    assert P.decide_max_epochs(2, 960, 16) == math.ceil(P.TRAIN_STEPS[2] / 60) == 120  # the generated brain set
    assert P.decide_max_epochs(2, 468, 16) == math.ceil(P.TRAIN_STEPS[2] / 30) == 240  # the ultrasound set
    assert P.decide_max_epochs(2, 100000, 32) == P.MAX_EPOCHS[2] == 60  # a huge 2D set: at least MAX_EPOCHS[2]
    assert P.decide_max_epochs(3, 24, 2) == math.ceil(P.TRAIN_STEPS[3] / 12) == 209
    assert P.decide_max_epochs(3, 17, 2) == math.ceil(P.TRAIN_STEPS[3] / 9)  # a last short step counts
    assert P.decide_max_epochs(3, 4, 2) == P.decide_max_epochs(2, 8, 4) == P.MAX_EPOCHS_CAP  # a handful: capped
    assert P.decide_max_epochs(3, 100000, 2) == P.MAX_EPOCHS[3]  # a huge set: at least MAX_EPOCHS[3]
    for bad in ((1, 10, 2), (3, 0, 2), (3, 10, 0)):
        with pytest.raises(ValueError, match="dims 2/3"):
            P.decide_max_epochs(*bad)
    fp = _fingerprint_2d(spatial_dims=3, n_training=24, image_size={"median": [64.0, 64.0, 32.0]},
                         spacing={"median": [3.0, 3.0, 6.0], "p10": [3.0, 3.0, 6.0]},
                         size_mm={"median": [192.0, 192.0, 192.0]})
    d = P.decide(fp, "cpu")
    assert d["batch_size"] == 2 and d["max_epochs"] == 209 and "209 epochs of 12 steps" in d["why"]["max_epochs"]


def test_pins_win_but_the_rule_stays_visible(tmp_path):
    datalist = tmp_path / "datalist.json"
    datalist.write_text("{}")
    fp = _fingerprint_2d(image_size={"median": [512.0, 512.0]}, lesions={"width_px": {"p05": 18.0}})
    plan = P.make_plan(fp, datalist, "cuda", memory_gb=80.0, pins={"spatial_size": [96, 96]})
    assert plan["spatial_size"] == [96, 96] and plan["pinned"] == ["spatial_size"]
    assert "the rule gives [240, 240], pinned" in plan["why"]["spatial_size"]
    assert plan["version"] == P.PLAN_VERSION and plan["datalist_sha256"] == P.file_sha256(datalist)
    assert P.synthetic_pins({"synthetic": {}, "spatial_dims": 2})["spatial_size"] == [96, 96]
    assert P.synthetic_pins({"spatial_dims": 2}) == {}


def test_network_channels_follow_an_overridden_spatial_size():
    plan = {"spatial_size": [240, 240], "network_channels": [8, 16, 32, 64, 128, 256], "device": "cpu"}
    assert P.network_channels_for(plan, [240, 240]) == plan["network_channels"]
    assert P.network_channels_for(plan, [64, 64]) == [8, 16, 32, 64, 128]  # 64 / 16 = 4 px


def test_case_selection_is_deterministic_and_stratified():
    classes = [0] * 900 + [1] * 90 + [None] * 10
    picked = select_cases(classes, 100)
    assert picked == select_cases(classes, 100) and picked == sorted(set(picked))
    counts = {c: sum(1 for i in picked if classes[i] == c) for c in (0, 1, None)}
    assert counts == {0: 90, 1: 9, None: 1}
    assert select_cases([0, 1, 2], 200) == [0, 1, 2]


# --- real runs of `prepare plan` --------------------------------------------------------------------

CLASSES_2D = ["benign", "malignant", "normal"]


def _tiny_2d(root: Path, n: int = 24, size: int = 64, width: int = 12) -> Path:
    """``n`` grey PNGs ``size``^2; benign / malignant carry a square lesion ``width`` px wide, normal an empty mask."""
    train = []
    for i in range(n):
        cls = i % 3
        img = texture(100 + i, (size, size))
        mask = np.zeros((size, size), np.uint8)
        if cls != 2:
            y, x = 10 + i % 7, 20 + i % 5
            mask[y:y + width, x:x + width + 4] = 255  # width px tall, width + 4 px wide
            img[mask > 0] = 240
        save_png(img, root / "img" / f"{i:03d}.png")
        save_png(mask, root / "mask" / f"{i:03d}.png")
        train.append({"image": f"img/{i:03d}.png", "label": f"mask/{i:03d}.png", "class": cls, "group": f"p{i}"})
    datalist = {"name": "tiny2d", "spatial_dims": 2, "channels": ["US"], "segments": ["background", "lesion"],
                "classes": CLASSES_2D, "training": train, "validation": train[:3], "test": []}
    path = root / "datalist.json"
    path.write_text(json.dumps(datalist))
    return path


def _tiny_3d(root: Path, ct: bool = False) -> Path:
    """Six NIfTI volumes 24 x 24 x 8, 1 x 1 x {3,4,5} mm; even cases hold a ball lesion of radius 4."""
    train = []
    for i in range(6):
        tex = texture(200 + i, (24, 24, 8)).astype(np.float32)  # 20..220
        vol = np.where(tex > 120, tex * 4.0 - 400.0, -1000.0).astype(np.float32) if ct else tex  # CT: air and tissue in HU
        lab = np.zeros((24, 24, 8), np.uint8)
        if i % 2 == 0:
            lab[blob(lab.shape, (12, 12, 4), 4)] = 1
            vol[lab > 0] = (280.0 + tex[lab > 0] * 40.0 / 220.0) if ct else 250.0  # CT lesions: 280..320 HU
        spacing = (1.0, 1.0, 3.0 + i % 3)
        save_nii(vol, root / f"img{i}.nii.gz", spacing=spacing)
        save_nii(lab, root / f"lab{i}.nii.gz", spacing=spacing)
        train.append({"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz", "class": i % 2})
    datalist = {"name": "tiny3d", "spatial_dims": 3, "channels": ["CT" if ct else "T1"],
                "segments": ["background", "lesion"], "classes": ["tumor", "normal"], "training": train}
    path = root / "datalist.json"
    path.write_text(json.dumps(datalist))
    return path


def test_prepare_plan_on_a_tiny_2d_set(tmp_path, capsys):
    datalist = _tiny_2d(tmp_path)
    assert main(["plan", str(datalist), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "plan.json" in out and "spatial_size" in out and "max_epochs        1000" in out and "time_budget_min" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    fp = plan["fingerprint"]
    assert fp["n_training"] == fp["n_analysed"] == 24 and not fp["subsampled"]
    assert fp["image_size"]["median"] == [64.0, 64.0] and fp["spacing"] is None
    assert fp["modality"] == "US"
    lesions = fp["lesions"]
    assert lesions["n_lesions"] == 16 and lesions["width_px"]["median"] == 12.0  # the short side of 12 x 16
    assert lesions["pixels"]["median"] == pytest.approx(12 * 16) and lesions["fraction"]["median"] == pytest.approx(192 / 64**2, abs=1e-4)
    assert fp["empty_mask"]["normal"] == {"labelled": 8, "empty": 8, "fraction": 1.0}
    assert fp["empty_mask"]["benign"]["fraction"] == 0.0
    assert fp["intensity"]["foreground"]["p99_5"] == [240.0]  # the lesions were painted 240
    assert "image_stats" in fp["monai"] and "label_stats" in fp["monai"]  # MONAI's own summaries
    assert plan["spatial_size"] == [96, 96]  # 64 px images: the minimum input size
    assert plan["normalization"] == {"mode": "percentile"} and plan["augmentation"] == "strong"
    assert plan["no_tumor_class"] == "normal" and plan["batch_size"] == P.MIN_BATCH[2]
    assert plan["datalist_sha256"] == P.file_sha256(datalist) and plan["pinned"] == []


def test_prepare_plan_subsamples_to_max_cases(tmp_path):
    datalist = _tiny_2d(tmp_path)
    assert main(["plan", str(datalist), "--device", "cpu", "--max-cases", "6", "--workers", "0"]) == 0
    fp = json.loads((tmp_path / "plan.json").read_text())["fingerprint"]
    assert fp["n_training"] == 24 and fp["n_analysed"] == 6 and fp["subsampled"]
    assert {k: v["labelled"] for k, v in fp["empty_mask"].items()} == {c: 2 for c in CLASSES_2D}  # 2 per class


def test_prepare_plan_on_a_tiny_3d_set(tmp_path):
    datalist = _tiny_3d(tmp_path)
    assert main(["plan", str(datalist), "--device", "cpu"]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    fp = plan["fingerprint"]
    assert fp["spacing"]["median"] == [1.0, 1.0, 4.0] and fp["spacing"]["p10"] == [1.0, 1.0, 3.0]
    assert fp["modality"] == "MR" and fp["orientation"] == "RAS"
    assert plan["orientation"] == "RAS"
    assert plan["target_spacing"] == [1.0, 1.0, 3.0]  # 4 / 1 > 3: the z axis at its 10th percentile
    assert plan["median_resampled_shape"] == [24.0, 24.0, pytest.approx(32 / 3, abs=0.01)]
    assert plan["spatial_size"] == [32, 32, 16]  # 24 -> 32 (multiple of 16), thin z 10.7 -> 16 (multiple of 8)
    assert plan["stem_stride"] == 2 and plan["network_channels"] == [16, 32]  # first level 16 x 16 x 8: 8 / 2 = 4 px
    assert plan["batch_size"] == 2 and plan["val_batch_size"] == 1
    assert fp["lesions"]["width_mm"]["median"] >= 8.0
    assert plan["no_tumor_class"] == "normal"


def test_prepare_plan_measures_volumes_in_ras(tmp_path):
    """A volume stored LPS-first is measured turned to RAS: spacing per RAS axis."""
    vol = texture(5, (20, 10, 6)).astype(np.float32)
    affine = np.diag([-2.0, -1.0, 3.0, 1.0])  # i -> Left (2 mm), j -> Posterior (1 mm), k -> Superior (3 mm)
    affine = affine[:, [1, 0, 2, 3]]  # store j first: axis 0 is A-P (1 mm), axis 1 is L-R (2 mm)
    nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / "img.nii.gz"))
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"name": "lps", "spatial_dims": 3, "channels": ["T1"], "segments": ["bg", "t"],
                                    "classes": ["a", "b"], "training": [{"image": "img.nii.gz", "class": 0}]}))
    plan = P.load_or_create_plan(datalist, device="cpu")
    fp = plan["fingerprint"]
    assert fp["spacing"]["median"] == [2.0, 1.0, 3.0]  # R, A, S
    assert fp["image_size"]["median"] == [10.0, 20.0, 6.0]
    assert fp["n_labelled"] == 0 and fp["lesions"]["n_lesions"] == 0


def test_prepare_plan_on_ct_chooses_ct_normalization(tmp_path):
    datalist = _tiny_3d(tmp_path, ct=True)
    plan = P.load_or_create_plan(datalist, device="cpu")
    assert plan["fingerprint"]["modality"] == "CT"
    norm = plan["normalization"]
    assert norm["mode"] == "ct"  # clip and z-score with the statistics under the masks (lesions: 280..320 HU)
    assert 280.0 <= norm["lower"][0] < norm["mean"][0] < norm["upper"][0] <= 320.0 and 0 < norm["std"][0] < 20


def test_a_stale_plan_is_recomputed_with_a_warning(tmp_path, monkeypatch):
    from scripts.core import fingerprint as F

    datalist = _tiny_2d(tmp_path, n=12)
    calls = []
    real = F.fingerprint
    monkeypatch.setattr(F, "fingerprint", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = P.load_or_create_plan(datalist, device="cpu")
    again = P.load_or_create_plan(datalist, device="cpu")
    assert len(calls) == 1 and again == first  # current: read back, not measured again
    raw = json.loads(datalist.read_text())
    raw["training"] = raw["training"][:9]
    datalist.write_text(json.dumps(raw))
    with pytest.warns(UserWarning, match="stale plan"):
        fresh = P.load_or_create_plan(datalist, device="cpu")
    assert len(calls) == 2 and fresh["fingerprint"]["n_training"] == 9
    assert fresh["datalist_sha256"] == P.file_sha256(datalist) != first["datalist_sha256"]
    assert json.loads((tmp_path / "plan.json").read_text())["datalist_sha256"] == fresh["datalist_sha256"]
    old = dict(fresh, version=P.PLAN_VERSION - 1)
    (tmp_path / "plan.json").write_text(json.dumps(old))
    with pytest.warns(UserWarning, match="version"):
        P.load_or_create_plan(datalist, device="cpu")
    assert len(calls) == 3


def test_a_plan_for_another_device_is_re_decided_without_measuring(tmp_path, monkeypatch):
    from scripts.core import fingerprint as F

    datalist = _tiny_2d(tmp_path, n=12)
    cpu = P.load_or_create_plan(datalist, device="cpu")
    cpu["device"] = "cuda"  # as if a GPU machine had made it
    (tmp_path / "plan.json").write_text(json.dumps(cpu))
    monkeypatch.setattr(F, "fingerprint", lambda *a, **k: pytest.fail("measured again"))
    again = P.load_or_create_plan(datalist, device="cpu")
    assert again["device"] == "cpu" and again["fingerprint"] == cpu["fingerprint"]


def test_cpu_bf16_only_on_a_cpu_that_computes_it_in_hardware():
    fp = _fingerprint_2d()
    assert P.decide(fp, "cpu", bf16_native=True)["cpu_bf16"] is True
    assert "hardware" in P.decide(fp, "cpu", bf16_native=True)["why"]["cpu_bf16"]
    plain = P.decide(fp, "cpu", bf16_native=False)
    assert plain["cpu_bf16"] is False and "float32" in plain["why"]["cpu_bf16"]
    cuda = P.decide(fp, "cuda", memory_gb=80.0, bf16_native=True)  # CUDA: the engines' amp, not CPU autocast
    assert cuda["cpu_bf16"] is False and "amp" in cuda["why"]["cpu_bf16"]
    # the speed buys width in 2D (16-256 instead of 8-128 at 96^2); nothing else changes
    fast = P.decide(fp, "cpu", bf16_native=True)
    assert plain["network_channels"] == [8, 16, 32, 64, 128] and fast["network_channels"] == [16, 32, 64, 128, 256]
    assert "first width 16 on cpu with hardware bf16" in fast["why"]["network_channels"]
    assert {k: v for k, v in fast.items() if k not in ("cpu_bf16", "network_channels", "why")} == \
        {k: v for k, v in plain.items() if k not in ("cpu_bf16", "network_channels", "why")}
    fp3 = _fingerprint_2d(spatial_dims=3, n_training=64, image_size={"median": [64.0, 64.0, 32.0]},
                          spacing={"median": [3.0, 3.0, 6.0], "p10": [3.0, 3.0, 6.0]}, size_mm={"median": [192.0, 192.0, 192.0]})
    three = P.decide(fp3, "cpu", bf16_native=True)  # 3D stays float32 (bf16 lost on the generated 3D set)
    assert three["cpu_bf16"] is False and "3D: float32" in three["why"]["cpu_bf16"]
    assert three["network_channels"] == P.decide(fp3, "cpu")["network_channels"]
    # an overridden input size follows the same rule
    assert P.network_channels_for({"spatial_size": [96, 96], "network_channels": [16, 32, 64, 128, 256],
                                   "device": "cpu", "cpu_bf16": True}, [128, 128]) == [16, 32, 64, 128, 256, 512]
    # the built-in demo keeps float32 (its published figures)
    assert P.SYNTHETIC_DEMO_PINS[2]["cpu_bf16"] is False and P.SYNTHETIC_DEMO_PINS[3]["cpu_bf16"] is False


def test_a_plan_from_a_cpu_with_other_bf16_support_is_re_decided(tmp_path, monkeypatch):
    """A plan copied between CPUs with and without hardware bf16 follows the CPU it runs on."""
    from scripts.core import fingerprint as F
    from scripts.core import sliding_window as SW

    datalist = _tiny_2d(tmp_path, n=12)
    monkeypatch.setattr(SW, "cpu_bf16_native", lambda: True)
    made = P.load_or_create_plan(datalist, device="cpu")
    assert made["cpu_bf16"] is True and json.loads((tmp_path / "plan.json").read_text())["cpu_bf16"] is True
    monkeypatch.setattr(F, "fingerprint", lambda *a, **k: pytest.fail("measured again"))
    monkeypatch.setattr(SW, "cpu_bf16_native", lambda: False)
    again = P.load_or_create_plan(datalist, device="cpu")
    assert again["cpu_bf16"] is False and again["fingerprint"] == made["fingerprint"]
    assert P.load_or_create_plan(datalist, device="cpu") == again  # now current: read back, not re-decided


def test_a_3d_plan_stays_float32_and_current_on_a_bf16_cpu(tmp_path, monkeypatch):
    from scripts.core import sliding_window as SW

    monkeypatch.setattr(SW, "cpu_bf16_native", lambda: True)
    three = _tiny_3d(tmp_path)
    first = P.load_or_create_plan(three, device="cpu")
    assert first["cpu_bf16"] is False
    monkeypatch.setattr(P, "make_plan", lambda *a, **k: pytest.fail("re-decided"))
    assert P.load_or_create_plan(three, device="cpu") == first


def test_a_pinned_float32_plan_stays_current_on_a_bf16_cpu(tmp_path, monkeypatch):
    """The built-in demo pins cpu_bf16 false: its plan is read back, not re-decided on every load."""
    from scripts.core import sliding_window as SW

    monkeypatch.setattr(SW, "cpu_bf16_native", lambda: True)
    datalist = _tiny_2d(tmp_path, n=12)
    raw = json.loads(datalist.read_text())
    datalist.write_text(json.dumps({**raw, "synthetic": {}}))  # as scripts.datasets.synthetic writes it
    first = P.load_or_create_plan(datalist, device="cpu")
    assert first["cpu_bf16"] is False and "cpu_bf16" in first["pinned"]
    monkeypatch.setattr(P, "make_plan", lambda *a, **k: pytest.fail("re-decided"))
    assert P.load_or_create_plan(datalist, device="cpu") == first


def test_an_unwritable_plan_path_still_gives_a_plan(tmp_path):
    datalist = _tiny_2d(tmp_path, n=6)
    (tmp_path / "taken").mkdir()  # a folder where the plan file should go: it cannot be written
    with pytest.warns(UserWarning, match="cannot write the plan"):
        plan = P.load_or_create_plan(datalist, device="cpu", plan_file=tmp_path / "taken")
    assert plan["spatial_size"] == [96, 96] and (tmp_path / "taken").is_dir()


def test_prepare_plan_errors_name_the_file(tmp_path, capsys):
    datalist = _tiny_2d(tmp_path, n=6)
    (tmp_path / "img" / "003.png").write_bytes(b"not a png")
    assert main(["plan", str(datalist), "--device", "cpu"]) == 1
    assert "003.png" in capsys.readouterr().err
    assert not (tmp_path / "plan.json").exists()


def test_prepare_cli_starts_without_torch(repo_root):
    code = "import sys, scripts.prepare.__main__; assert 'torch' not in sys.modules and 'monai' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], cwd=repo_root / "monai_bundle", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
