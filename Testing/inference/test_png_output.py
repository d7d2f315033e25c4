"""PNG/JPG in, PNG mask out: the label map on the image's own pixel grid (BUSI/BRISC style), NIfTI on request.

The masks are read back with PIL and compared with the Predictor's label and with what the threshold
model must give on the image grid (rows first, as the image is seen; the model works at 32x32, so the
comparison with the threshold allows the resampled border): a non-square image with the lesion off
the diagonal catches a transposed or flipped mask.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from infer_helpers import LEVEL, dice, mni_volume, tiny_card, wire_threshold
from scripts.infer import main
from scripts.inference import InputError, Predictor
from scripts.core.model_card import build_network
from scripts.core.transforms import normalize_intensity


def _image(tmp_path, name: str = "lesion.png", fmt: str | None = None) -> tuple:
    """A non-square 8-bit image (40 rows, 56 columns) with a bright blob off the diagonal."""
    rows, cols = np.mgrid[:40, :56]
    img = (40 + 160 * np.exp(-((rows - 12) ** 2 + (cols - 40) ** 2) / 60.0)).astype(np.uint8)
    img[:, :8] = 0
    Image.fromarray(img).save(tmp_path / name, format=fmt)
    return tmp_path / name, img


def _expected(img: np.ndarray, level: float = LEVEL) -> np.ndarray:
    return (normalize_intensity(img[None].astype(np.float32))[0] > level).astype(np.uint8)


def test_binary_png_mask_is_0_255_on_the_image_grid(predictor2d, tmp_path):
    src, img = _image(tmp_path)
    pred = predictor2d.predict(src, output_dir=tmp_path / "out")
    assert pred.paths["segmentation"] == tmp_path / "out" / "lesion_seg.png"
    mask = Image.open(pred.paths["segmentation"])
    assert mask.mode == "L" and mask.size == (56, 40)  # PIL: (width, height), the image's own
    stored = np.asarray(mask)
    assert set(np.unique(stored)) == {0, 255}
    np.testing.assert_array_equal(stored, pred.label * 255)
    expected = _expected(img)
    assert stored[12, 40] == 255 and stored[39, 0] == 0 and dice(stored > 0, expected) > 0.9
    result = json.loads(pred.paths["result"].read_text())
    assert result["segmentation"]["format"] == "png" and result["segmentation"]["path"] == str(pred.paths["segmentation"])


def test_jpg_input_gets_a_png_mask_too(predictor2d, tmp_path):
    src, _ = _image(tmp_path, "scan.jpg")
    pred = predictor2d.predict(src, output_dir=tmp_path / "out", overlay=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scan_result.json", "scan_seg.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(pred.paths["segmentation"])), pred.label * 255)


def test_multi_segment_mask_holds_the_segment_values(tmp_path):
    card = tiny_card()
    card["segments"] = ["background", "tumor", "edema"]
    card["network"]["seg_classes"] = 3
    network = wire_threshold(build_network(card))
    with torch.no_grad():  # "edema" wherever the normalised input is below 0.2
        head = network.segmentation_head
        head.weight[(2, 0) + (0,) * (head.weight.ndim - 2)] = -40.0
        head.bias[2] = 40.0 * 0.2
    predictor = Predictor(network, card, device="cpu")
    src, img = _image(tmp_path)
    pred = predictor.predict(src, output_dir=tmp_path / "out")
    norm = normalize_intensity(img[None].astype(np.float32))[0]
    expected = np.where(norm > LEVEL, 1, np.where(norm < 0.2, 2, 0)).astype(np.uint8)
    stored = np.asarray(Image.open(pred.paths["segmentation"]))
    assert set(np.unique(stored)) == {0, 1, 2}
    np.testing.assert_array_equal(stored, pred.label)
    assert all(dice(stored == v, expected == v) > 0.9 for v in (1, 2))


def test_nifti_stays_available_for_2d_images(predictor2d, tmp_path):
    src, img = _image(tmp_path)
    pred = predictor2d.predict(src, output_dir=tmp_path / "out", seg_format="nifti")
    assert pred.paths["segmentation"].name == "lesion_seg.nii.gz" and pred.result["segmentation"]["format"] == "nifti"
    on_disk = sitk.GetArrayFromImage(sitk.ReadImage(str(pred.paths["segmentation"])))  # numpy (rows, cols) of a 2D ITK image
    np.testing.assert_array_equal(on_disk, pred.label)


def test_cli_default_is_png_for_images_and_nifti_for_volumes(bundle2d, tmp_path, capsys):
    src, img = _image(tmp_path)
    vol = tmp_path / "brain.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(mni_volume(3).T)), str(vol))
    assert main([str(src), str(vol), "--out", str(tmp_path / "out"), "--bundle", str(bundle2d), "--no-overlay"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "brain_result.json", "brain_seg.nii.gz", "lesion_result.json", "lesion_seg.png", "worklist.csv"]
    stored = np.asarray(Image.open(tmp_path / "out" / "lesion_seg.png"))
    assert stored.shape == img.shape and dice(stored > 0, _expected(img)) > 0.9
    assert main([str(src), "--out", str(tmp_path / "nii"), "--bundle", str(bundle2d), "--format", "nifti"]) == 0
    assert (tmp_path / "nii" / "lesion_seg.nii.gz").is_file() and not (tmp_path / "nii" / "lesion_seg.png").exists()


def test_png_mask_of_a_volume_is_refused(predictor2d, tmp_path):
    vol = tmp_path / "brain.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(mni_volume(3).T)), str(vol))
    with pytest.raises(InputError, match=r"brain\.nii\.gz: a PNG mask needs PNG/JPG input"):
        predictor2d.predict(vol, output_dir=tmp_path / "out", seg_format="png")
    assert not (tmp_path / "out").exists()
