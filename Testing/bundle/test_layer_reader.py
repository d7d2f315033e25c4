"""Training reads through the image layer (``scripts.imageio.monai_reader.LayerReader``), and gets what MONAI's
own readers gave before: the same arrays (values, dtype, memory layout) and the same RAS affine.

"Before" is the loader the bundle used until the layer existed: ``LoadImaged(reader=PILReader(reverse_indexing=False))``
with MONAI's other readers behind it (``NibabelReader`` for NIfTI, ``NrrdReader`` for NRRD in this environment).
The equivalence is checked on files written here, and through the whole deterministic chain, not assumed.
"""

from __future__ import annotations

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import PILReader, get_track_meta, set_track_meta
from monai.transforms import LoadImaged
from PIL import Image

from scripts.core import transforms
from scripts.imageio.monai_reader import LayerReader
from scripts.core.tasks import Keys

IMAGE, LABEL = Keys.IMAGE.value, Keys.LABEL.value


@pytest.fixture(autouse=True)
def _restore_track_meta():
    before = get_track_meta()
    yield
    set_track_meta(before)


def _old_load(image_only: bool = True) -> list:
    """The bundle's loader before the image layer (the code it replaced)."""
    return [transforms.RememberSourced((IMAGE, LABEL)),
            LoadImaged((IMAGE, LABEL), reader=PILReader(reverse_indexing=False), ensure_channel_first=True,
                       image_only=image_only, allow_missing_keys=True)]


def _oblique_affine() -> np.ndarray:
    angle = np.deg2rad(17.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 1.1, 2.5])
    affine[:3, 3] = [-40.5, 12.25, 7.0]
    return affine


def _files(tmp_path) -> dict[str, object]:
    rng = np.random.default_rng(0)
    out: dict[str, object] = {}
    Image.fromarray(rng.integers(0, 256, (19, 23), dtype=np.uint8)).save(tmp_path / "grey.png")
    out["grey png"] = tmp_path / "grey.png"
    Image.fromarray(rng.integers(0, 256, (19, 23, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    out["rgb png"] = tmp_path / "rgb.png"
    Image.fromarray(rng.integers(0, 256, (21, 17, 3), dtype=np.uint8)).save(tmp_path / "rgb.jpg", quality=85)
    out["rgb jpeg"] = tmp_path / "rgb.jpg"
    Image.fromarray(rng.integers(0, 256, (21, 17), dtype=np.uint8)).save(tmp_path / "grey.jpg")
    out["grey jpeg"] = tmp_path / "grey.jpg"
    Image.fromarray(rng.integers(0, 256, (12, 14, 4), dtype=np.uint8)).save(tmp_path / "rgba.png")
    out["rgba png"] = tmp_path / "rgba.png"
    Image.fromarray(rng.integers(0, 2, (12, 14), dtype=bool)).save(tmp_path / "bits.png")
    out["1-bit png"] = tmp_path / "bits.png"
    Image.fromarray(rng.integers(0, 65535, (12, 14), dtype=np.uint16)).save(tmp_path / "deep.png")
    out["16-bit png"] = tmp_path / "deep.png"

    vol = rng.integers(-1000, 3000, (13, 11, 9)).astype(np.int16)
    img = nib.Nifti1Image(vol, _oblique_affine())
    img.header.set_slope_inter(0.5, -3.0)  # scaled voxels: nibabel's float64 scaling, then float32
    nib.save(img, tmp_path / "oblique.nii.gz")
    out["oblique nifti"] = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(rng.random((10, 9, 8)).astype(np.float32), np.diag([0.7, 0.7, 3.0, 1.0])),
             tmp_path / "float.nii")
    out["float nifti"] = tmp_path / "float.nii"
    nib.save(nib.Nifti1Image(rng.random((10, 9, 8, 3)).astype(np.float32), _oblique_affine()), tmp_path / "four.nii.gz")
    out["4d nifti"] = tmp_path / "four.nii.gz"
    mask = (rng.random((13, 11, 9)) > 0.7).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, _oblique_affine()), tmp_path / "mask.nii.gz")
    out["nifti mask"] = tmp_path / "mask.nii.gz"
    out["channel list"] = [tmp_path / "oblique.nii.gz", tmp_path / "mask.nii.gz"]

    direction = np.array([[0.96126170, -0.27563736, 0.0], [0.27563736, 0.96126170, 0.0], [0.0, 0.0, 1.0]])
    nrrd.write(str(tmp_path / "oblique.nrrd"), rng.integers(0, 500, (12, 10, 7)).astype(np.int16),
               {"space": "left-posterior-superior", "space directions": direction @ np.diag([0.9, 0.9, 3.0]),
                "space origin": np.array([10.0, -20.5, 33.0]), "kinds": ["domain"] * 3})
    out["oblique nrrd"] = tmp_path / "oblique.nrrd"
    itk = sitk.GetImageFromArray(rng.integers(0, 500, (7, 10, 12)).astype(np.uint16))
    itk.SetSpacing((0.5, 0.6, 2.0))
    itk.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(itk, str(tmp_path / "plain.nrrd"))
    out["itk nrrd"] = tmp_path / "plain.nrrd"
    return out


def _load(chain: list, path) -> tuple[torch.Tensor, dict]:
    d = {IMAGE: [str(p) for p in path] if isinstance(path, list) else str(path)}
    for t in chain:
        d = t(d)
    return d[IMAGE], d.get(f"{IMAGE}_meta_dict", {})


@pytest.mark.parametrize("kind", ["grey png", "rgb png", "rgb jpeg", "grey jpeg", "rgba png", "1-bit png", "16-bit png",
                                  "oblique nifti", "float nifti", "4d nifti", "nifti mask", "channel list",
                                  "oblique nrrd", "itk nrrd"])
def test_the_layer_reader_gives_what_monais_readers_gave(tmp_path, kind):
    path = _files(tmp_path)[kind]
    set_track_meta(False)  # as training runs
    old, old_meta = _load(_old_load(image_only=False), path)
    new, new_meta = _load(transforms.load_transforms(image_only=False), path)
    assert any(isinstance(r, LayerReader) for r in transforms.load_transforms()[1]._loader.readers)
    assert new.dtype == old.dtype == torch.float32
    assert tuple(new.shape) == tuple(old.shape)
    assert torch.equal(new, old)  # bit for bit
    assert new.stride() == old.stride()  # same memory layout: reductions sum in the same order
    if "affine" in old_meta:
        np.testing.assert_allclose(np.asarray(new_meta["affine"]), np.asarray(old_meta["affine"]), rtol=0, atol=1e-9)
    else:  # PIL's reader gives no affine, and neither does the layer for a raster image
        assert "affine" not in new_meta


@pytest.mark.parametrize("kind", ["oblique nifti", "oblique nrrd"])
def test_the_3d_chain_with_a_target_spacing_is_unchanged(tmp_path, kind, monkeypatch):
    """Through CanonicalGridd (the affine resamples the volume): the network's input is the same."""
    files = _files(tmp_path)
    sample = {IMAGE: str(files[kind]), LABEL: str(files["nifti mask"]) if kind == "oblique nifti" else None}
    if sample[LABEL] is None:
        del sample[LABEL]
    set_track_meta(False)
    chain = transforms.deterministic_transforms(3, (8, 8, 8), 1, 2, target_spacing=(1.5, 1.5, 2.0))
    new = chain[0](dict(sample))
    for t in chain[1:]:
        new = t(new)
    monkeypatch.setattr(transforms, "load_transforms", _old_load)
    chain = transforms.deterministic_transforms(3, (8, 8, 8), 1, 2, target_spacing=(1.5, 1.5, 2.0))
    old = dict(sample)
    for t in chain:
        old = t(old)
    assert torch.equal(new[IMAGE], old[IMAGE]) and torch.equal(new[LABEL], old[LABEL])


@pytest.mark.parametrize("kind", ["rgb jpeg", "grey png"])
def test_the_2d_chain_is_unchanged(tmp_path, kind, monkeypatch):
    path = _files(tmp_path)[kind]
    set_track_meta(False)
    new = transforms.val_transforms(2, (16, 16), 1, 2)({IMAGE: str(path)})
    monkeypatch.setattr(transforms, "load_transforms", _old_load)
    old = transforms.val_transforms(2, (16, 16), 1, 2)({IMAGE: str(path)})
    assert torch.equal(new[IMAGE], old[IMAGE])


def test_files_the_layer_does_not_read_fall_back_to_monai(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    reader = LayerReader()
    assert not reader.verify_suffix(str(tmp_path / "a.npy"))
    with pytest.raises(ValueError, match="not a file type the image layer reads"):
        reader.read(str(tmp_path / "a.npy"))
    out = _load(transforms.load_transforms(), tmp_path / "a.npy")[0]  # MONAI's NumpyReader took it
    assert tuple(out.shape) == (1, 2, 3, 4)
