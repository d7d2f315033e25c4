"""Leakage check: exact and near duplicates found across splits, reported, and regrouped on request."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from prepare_replicas import grey_rgb, save_png, texture
from scripts.prepare.__main__ import main
from scripts.prepare.brisc import collect_brisc
from scripts.prepare.common import Sample
from scripts.prepare.duplicates import exact_hash, find_clusters, fingerprints, near_pairs, perceptual_hash
from scripts.prepare.pipeline import Options, build


def _bits(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def _jpeg_roundtrip(plane: np.ndarray, quality: int = 70) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(plane).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def test_exact_hash_sees_pixels_not_storage():
    plane = texture(1)
    assert exact_hash(grey_rgb(plane).transpose(2, 0, 1)) == exact_hash(plane[None])
    changed = plane.copy()
    changed[0, 0] ^= 1
    assert exact_hash(changed[None]) != exact_hash(plane[None])


def test_perceptual_hash_near_for_copies_far_for_other_images():
    plane = texture(7, (64, 64))
    h = perceptual_hash(plane)
    brighter = np.clip(plane.astype(int) + 6, 0, 255).astype(np.uint8)
    resized = np.asarray(Image.fromarray(plane).resize((96, 96), Image.Resampling.BILINEAR))
    for copy in (_jpeg_roundtrip(plane), brighter, resized):
        assert _bits(h, perceptual_hash(copy)) <= 4
    others = [_bits(h, perceptual_hash(texture(s, (64, 64)))) for s in range(100, 120)]
    assert min(others) > 8 and 20 < np.mean(others) < 44


def test_perceptual_hash_edge_cases():
    assert perceptual_hash(np.full((16, 16), 3, np.uint8)) is None  # no structure: never a near duplicate
    with pytest.raises(ValueError, match=r"expects a 2D plane, got shape \(2, 4, 4\)"):
        perceptual_hash(np.zeros((2, 4, 4)))


def test_near_pairs_threshold():
    hashes = [0b0, 0b111, 0b1111111, None, 0b0]
    assert near_pairs(hashes, 3) == [(0, 1), (0, 4), (1, 4)]
    assert near_pairs(hashes, 0) == [(0, 4)]
    assert near_pairs([None, 5], 64) == []


def test_clusters_join_exact_and_near_copies_transitively(tmp_path):
    a, b = texture(1, (64, 64)), texture(2, (64, 64))
    paths = [
        save_png(a, tmp_path / "a.png"),
        save_png(grey_rgb(a), tmp_path / "a_rgb.png"),  # exact: same pixels, stored as RGB
        save_png(_jpeg_roundtrip(a), tmp_path / "a_jpeg.png"),  # near
        save_png(b, tmp_path / "b.png"),
    ]
    samples = [Sample(key=p.stem, image=str(p)) for p in paths]
    errors: list[str] = []
    exact, near, bad = fingerprints(samples, errors)
    clusters = find_clusters(exact, near)
    assert not errors and not bad
    assert len(clusters) == 1 and sorted(clusters[0].members) == [0, 1, 2] and clusters[0].kinds == {"exact", "near"}
    assert [sorted(c.members) for c in find_clusters(exact, near, threshold=-1)] == [[0, 1]]


def _plant_busi_duplicates(source):
    """An exact copy of a benign image filed as malignant, and a slightly brighter copy of a normal one."""
    shutil.copy(source / "benign" / "benign (2).png", source / "malignant" / "malignant (9).png")
    shutil.copy(source / "benign" / "benign (2)_mask.png", source / "malignant" / "malignant (9)_mask.png")
    img = np.asarray(Image.open(source / "normal" / "normal (3).png"))
    save_png(np.clip(img.astype(int) + 5, 0, 255).astype(np.uint8), source / "normal" / "normal (9).png")
    shutil.copy(source / "normal" / "normal (3)_mask.png", source / "normal" / "normal (9)_mask.png")


def test_planted_busi_duplicates_are_reported(busi_replica, tmp_path):
    source = busi_replica()
    _plant_busi_duplicates(source)
    out = tmp_path / "out"
    assert main(["busi", str(source), "--out", str(out)]) == 0
    report = json.loads((out / "prepare_report.json").read_text())["duplicates"]
    found = {tuple(sorted(c["members"])): c["kind"] for c in report["details"]}
    assert found == {("benign (2)", "malignant (9)"): "exact", ("normal (3)", "normal (9)"): "near"}
    assert report["clusters"] == 2 and report["images_in_clusters"] == 4
    assert report["clusters_across_splits"] == sum(c["across_splits"] for c in report["details"])


def test_regrouped_duplicates_share_a_split_for_every_seed(busi_replica, tmp_path):
    source = busi_replica(per_class=6)
    _plant_busi_duplicates(source)
    leaked_without = 0
    for seed in range(6):
        for regroup in (False, True):
            out = tmp_path / f"out{seed}{regroup}"
            args = ["busi", str(source), "--out", str(out), "--seed", str(seed)] + (
                ["--regroup-duplicates"] if regroup else []
            )
            assert main(args) == 0
            report = json.loads((out / "prepare_report.json").read_text())
            if regroup:
                assert report["duplicates"]["clusters_across_splits"] == 0
                assert report["groups_merged_for_duplicates"] == 2
            else:
                leaked_without += report["duplicates"]["clusters_across_splits"]
    assert leaked_without > 0  # the check is not vacuous: plain random splits do leak


def test_brisc_train_copy_of_a_test_image_is_a_leak_until_regrouped(brisc_replica, tmp_path):
    source = brisc_replica("split")
    test_img = source / "classification_task/test/glioma/brisc2025_test_00013_gl_ax_t1.jpg"
    shutil.copy(test_img, source / "classification_task/train/glioma/brisc2025_train_00099_gl_ax_t1.jpg")
    col = collect_brisc(source, tmp_path / "a")
    report = build(col, tmp_path / "a", Options())
    leak = [c for c in report["duplicates"]["details"] if c["across_splits"]]
    assert len(leak) == 1 and sorted(leak[0]["members"]) == [
        "brisc2025_test_00013_gl_ax_t1",
        "brisc2025_train_00099_gl_ax_t1",
    ]
    col = collect_brisc(source, tmp_path / "b")
    report = build(col, tmp_path / "b", Options(regroup_duplicates=True))
    assert report["duplicates"]["clusters_across_splits"] == 0
    dl = json.loads((tmp_path / "b" / "datalist.json").read_text())
    assert any("brisc2025_train_00099" in s["image"] for s in dl["test"])  # follows its test twin
    assert any("1 sample(s) without an official split follow the group to test" in w for w in report["warnings"])


def test_volume_duplicates_found(brats2020_replica, tmp_path):
    source = brats2020_replica(n=4)
    for f in (source / "BraTS20_Training_001").iterdir():
        shutil.copy(f, source / "BraTS20_Training_003" / f.name.replace("001", "003"))
    (source / "BraTS20_Training_003" / "W39_1998.09.19_Segm.nii").unlink(missing_ok=True)
    out = tmp_path / "out"
    assert main(["brats", str(source), "--out", str(out)]) == 0
    details = json.loads((out / "prepare_report.json").read_text())["duplicates"]["details"]
    assert [sorted(c["members"]) for c in details] == [["BraTS20_Training_001", "BraTS20_Training_003"]]


def test_unreadable_image_is_a_problem(busi_replica, tmp_path, capsys):
    source = busi_replica()
    (source / "benign" / "benign (3).png").write_bytes(b"\x89PNG truncated")
    assert main(["busi", str(source), "--out", str(tmp_path / "out")]) == 1
    assert "benign (3).png: cannot read" in capsys.readouterr().err
    assert main(["busi", str(source), "--out", str(tmp_path / "out"), "--skip-bad"]) == 0
