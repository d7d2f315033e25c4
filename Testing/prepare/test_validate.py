"""validate: one test per failure with its message, all problems listed at once, the count table, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from prepare_replicas import save_nii, save_png, texture
from scripts.prepare.__main__ import main
from scripts.prepare.validate import NO_CLASS, TOTAL, WITH_MASK, format_counts, validate

HEADER = {
    "name": "t",
    "spatial_dims": 2,
    "channels": ["US"],
    "segments": ["background", "lesion"],
    "classes": ["benign", "malignant"],
}


def _png_pair(root: Path, i: int, size=(32, 32)) -> dict:
    save_png(texture(i, size), root / f"img{i}.png")
    save_png((texture(i, size) > 120).astype(np.uint8), root / f"mask{i}.png")
    return {"image": f"img{i}.png", "label": f"mask{i}.png", "class": i % 2}


def _datalist(root: Path, training: list, validation=(), test=(), header=None) -> Path:
    path = root / "datalist.json"
    path.write_text(
        json.dumps(
            (header or HEADER) | {"training": list(training), "validation": list(validation), "test": list(test)}
        )
    )
    return path


def _problems(path: Path) -> list[str]:
    report = validate(path)
    assert not report.ok
    return report.problems


def test_a_good_datalist_passes_with_counts(tmp_path):
    train = [_png_pair(tmp_path, i) for i in range(5)]
    train[4].pop("label")
    val = [_png_pair(tmp_path, 10)]
    val[0].pop("class")
    report = validate(_datalist(tmp_path, train, val))
    assert report.ok, report.problems
    assert report.counts["training"] == {"benign": 3, "malignant": 2, NO_CLASS: 0, WITH_MASK: 4, TOTAL: 5}
    assert report.counts["validation"] == {"benign": 0, "malignant": 0, NO_CLASS: 1, WITH_MASK: 1, TOTAL: 1}
    assert report.counts["test"][TOTAL] == 0
    table = format_counts(report.counts).splitlines()
    assert table[0].split() == ["split", "benign", "malignant", "(no", "class)", "with", "mask", "total"]
    assert table[1].split() == ["training", "3", "2", "0", "4", "5"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "datalist file not found"),
        ("{not json", "not valid JSON"),
        (json.dumps(HEADER | {"channels": "US", "training": []}), "'channels' must be a list"),
    ],
)
def test_unusable_datalist(tmp_path, content, message):
    path = tmp_path / "datalist.json"
    if content is not None:
        path.write_text(content)
    problems = _problems(path)
    assert len(problems) == 1 and message in problems[0]


def test_structure_problems_from_the_loader_and_files_still_checked(tmp_path):
    good = _png_pair(tmp_path, 0)
    out_of_range = _png_pair(tmp_path, 1) | {"class": 5}
    nothing = {"image": "img0.png"}
    missing = {"image": "nothere.png", "class": 0}
    problems = _problems(_datalist(tmp_path, [good, out_of_range, nothing, missing]))
    assert any("class 5 is out of range for 2 classes" in p for p in problems)
    assert any("has neither 'label' nor 'class'" in p for p in problems)
    assert any(p.endswith("nothere.png: file not found (training[3])") for p in problems)


def test_empty_training_split(tmp_path):
    assert any("the 'training' split is empty" in p for p in _problems(_datalist(tmp_path, [])))


def test_unreadable_image(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    problems = _problems(_datalist(tmp_path, [_png_pair(tmp_path, 0), {"image": "broken.png", "class": 0}]))
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / 'broken.png'}: cannot read (training[1]: ")


def test_missing_mask_file(tmp_path):
    sample = _png_pair(tmp_path, 0) | {"label": "gone.png"}
    assert _problems(_datalist(tmp_path, [sample])) == [f"{tmp_path / 'gone.png'}: file not found (training[0])"]


def test_channel_count(tmp_path):
    sample = _png_pair(tmp_path, 0)
    header = HEADER | {"channels": ["T1", "T2"]}
    assert _problems(_datalist(tmp_path, [sample], header=header)) == [
        f"{tmp_path / 'img0.png'}: image has 1 channel(s), the datalist declares 2 ['T1', 'T2'] (training[0])"
    ]


def test_rgb_image_accepted_for_one_channel(tmp_path):
    save_png(np.repeat(texture(0, (32, 32))[..., None], 3, -1), tmp_path / "img0.png")
    save_png(np.zeros((32, 32), np.uint8), tmp_path / "mask0.png")
    assert validate(_datalist(tmp_path, [{"image": "img0.png", "label": "mask0.png", "class": 0}])).ok


def test_spatial_dims(tmp_path):
    save_nii(np.zeros((8, 8, 4), np.float32), tmp_path / "vol.nii.gz")
    assert _problems(_datalist(tmp_path, [{"image": "vol.nii.gz", "class": 0}])) == [
        f"{tmp_path / 'vol.nii.gz'}: image is 3D (8, 8, 4), the datalist declares spatial_dims 2 (training[0])"
    ]


def test_mask_values_outside_segments(tmp_path):
    sample = _png_pair(tmp_path, 0)
    save_png(np.where(texture(0, (32, 32)) > 120, 7, 0).astype(np.uint8), tmp_path / "mask0.png")
    assert _problems(_datalist(tmp_path, [sample])) == [
        f"{tmp_path / 'mask0.png'}: mask values [7] outside 0..1 "
        "of the 2 segments ['background', 'lesion'] (training[0])"
    ]


def test_binary_mask_stored_0_255_is_accepted(tmp_path):
    sample = _png_pair(tmp_path, 0)
    save_png(np.where(texture(0, (32, 32)) > 120, 255, 0).astype(np.uint8), tmp_path / "mask0.png")
    assert validate(_datalist(tmp_path, [sample])).ok


def test_mask_size_differs(tmp_path):
    sample = _png_pair(tmp_path, 0)
    save_png(np.zeros((30, 32), np.uint8), tmp_path / "mask0.png")
    assert _problems(_datalist(tmp_path, [sample])) == [
        f"{tmp_path / 'mask0.png'}: mask size (30, 32) differs from (32, 32) "
        f"of its image {tmp_path / 'img0.png'} (training[0])"
    ]


def test_mask_with_different_channels(tmp_path):
    sample = _png_pair(tmp_path, 0)
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 1
    save_png(rgb, tmp_path / "mask0.png")
    assert _problems(_datalist(tmp_path, [sample])) == [
        f"{tmp_path / 'mask0.png'}: mask has 3 different channels, a mask must have one (training[0])"
    ]


VOL_HEADER = HEADER | {"spatial_dims": 3, "channels": ["T1", "T2"]}


def _volume_case(root: Path, mask_spacing=(1.0, 1.0, 2.0), mask_origin=(0.0, 0.0, 0.0), mask=None) -> dict:
    for c in ("t1", "t2"):
        save_nii(texture(ord(c[1]), (8, 8, 4)).astype(np.float32), root / f"{c}.nii.gz")
    save_nii(
        np.zeros((8, 8, 4), np.uint8) if mask is None else mask,
        root / "seg.nii.gz",
        spacing=mask_spacing,
        origin=mask_origin,
    )
    return {"image": ["t1.nii.gz", "t2.nii.gz"], "label": "seg.nii.gz", "class": 0}


def test_volume_geometry_ok(tmp_path):
    assert validate(_datalist(tmp_path, [_volume_case(tmp_path)], header=VOL_HEADER)).ok


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mask_spacing": (1.0, 1.0, 3.0)}, "mask spacing [1.0, 1.0, 3.0] differs from [1.0, 1.0, 2.0] of its image"),
        ({"mask_origin": (0.0, 0.0, 5.0)}, "mask origin [0.0, 0.0, 5.0] differs from [0.0, 0.0, 0.0] of its image"),
        ({"mask": np.full((8, 8, 4), 0.5, np.float32)}, "mask has non-integer values [0.5]"),
    ],
)
def test_volume_mask_problems(tmp_path, kwargs, message):
    problems = _problems(_datalist(tmp_path, [_volume_case(tmp_path, **kwargs)], header=VOL_HEADER))
    assert len(problems) == 1 and message in problems[0] and problems[0].startswith(str(tmp_path / "seg.nii.gz"))


def test_volume_mask_direction(tmp_path):
    sample = _volume_case(tmp_path)
    flipped = np.diag([-1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), flipped), str(tmp_path / "seg.nii.gz"))
    problems = _problems(_datalist(tmp_path, [sample], header=VOL_HEADER))
    assert len(problems) == 1 and "mask direction" in problems[0]


def test_channel_files_of_different_size(tmp_path):
    sample = _volume_case(tmp_path)
    save_nii(np.zeros((8, 8, 5), np.float32), tmp_path / "t2.nii.gz")
    problems = _problems(_datalist(tmp_path, [sample], header=VOL_HEADER))
    assert (
        f"{tmp_path / 't2.nii.gz'}: channel file size (8, 8, 5) differs from (8, 8, 4) of the first channel file"
        in problems[0]
    )


def test_repeated_names_and_images(tmp_path):
    a, b = _png_pair(tmp_path, 0), _png_pair(tmp_path, 1)
    header = HEADER | {"classes": ["benign", "benign"]}
    problems = _problems(_datalist(tmp_path, [a, b], [dict(a)], header=header))
    assert f"{tmp_path / 'datalist.json'}: 'classes' names repeated: ['benign']" in problems
    assert f"{tmp_path / 'img0.png'}: listed 2 times (training, validation)" in problems


def test_every_problem_is_listed_not_only_the_first(tmp_path, capsys):
    samples = [_png_pair(tmp_path, i) for i in range(6)]
    save_png(np.full((32, 32), 7, np.uint8), tmp_path / "mask1.png")  # values
    save_png(np.zeros((16, 16), np.uint8), tmp_path / "mask2.png")  # size
    (tmp_path / "img3.png").unlink()  # missing
    samples[4]["class"] = 9  # out of range
    path = _datalist(tmp_path, samples[:5], [samples[5]])
    problems = _problems(path)
    assert len(problems) == 4
    assert main(["validate", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("PROBLEM ") == 4
    assert "4 problem(s)" in captured.out and "training" in captured.out


def test_cli_ok(tmp_path, capsys):
    path = _datalist(tmp_path, [_png_pair(tmp_path, i) for i in range(3)])
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith(f"{path}: OK") and "benign" in out
