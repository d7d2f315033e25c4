"""Built-in synthetic multi-task data: MRI-like head slices/volumes with three tumor types.

Nothing is downloaded: ``ensure_dataset(root)`` renders the data on first use, deterministically by
seed, and re-uses it while its parameters stay the same. Each synthetic patient is one random head
(ellipsoid skull with scalp, bone, CSF, folded cortex, ventricles, enhancing sinuses) holding at most
one tumor, rendered in a head frame so that 2D slices of one patient and 3D volumes agree:

* glioma: irregular, heterogeneous, intra-axial in one hemisphere, often a dark necrotic core in a
  bright rim, with darker oedema around it;
* meningioma: round, homogeneous and bright, extra-axial: a dome sitting broad-based on the skull;
* pituitary: small, on the midline, low (the sella region);
* no_tumor: none.

Tumor brightness overlaps scalp fat, sinuses and white matter, and every patient gets its own
contrast, bias field and noise, so a global threshold cannot segment and a model that ignores the
image cannot diagnose. Coordinates: 2D arrays are ``(H, W)``, rows first, anterior at the top; 3D
arrays are ``(X, Y, Z)`` with X = the images' columns, Y = their rows: stored with
:func:`volume_affine` (i -> Left, j -> Posterior, k -> Superior), a viewer's axial display of slice
``k``, which is ``vol[:, :, k].T`` (``docs/contracts.md``, axis conventions), looks like the 2D images.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from scripts.core.atomic import write_json_atomic
from scripts.datasets.synthetic_anatomy import Patient, draw_patient, render

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]
SEGMENTS = ["background", "tumor"]
CHANNELS = ["T1c"]
GLIOMA, MENINGIOMA, NO_TUMOR, PITUITARY = range(4)
#: bump when the rendering changes: cached datasets made by an older generator are rebuilt
GENERATOR_VERSION = 2  # 2: no-tumor patients also give slices near the skull caps
#: the same for 3D data only (2: volumes stored X = columns, Y = rows with :func:`volume_affine`)
VOLUME_VERSION = 2
DATALIST_NAME = "datalist.json"
SLICES_PER_PATIENT = 4
#: share of tumor samples without a mask (classification only), of samples without a diagnosis
#: (segmentation only) and of no-tumor samples whose (empty) mask file is missing, BRISC style
NO_MASK_FRACTION, NO_CLASS_FRACTION, NO_TUMOR_WITHOUT_MASK = 0.10, 0.05, 0.5
_DEFAULTS = {2: {"n_train": 800, "n_val": 160, "n_test": 240, "size": 128},
             3: {"n_train": 64, "n_val": 16, "n_test": 24, "size": 64}}
#: 3D volumes: (size, size, size // 2) voxels of this spacing in mm (thick axial slices)
VOLUME_SPACING = (3.0, 3.0, 6.0)
_SPLITS = ("training", "validation", "test")


def make_slice(rng: np.random.Generator, label: int | None, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One random axial slice of a new synthetic patient.

    Args:
        rng: the random source (the slice is a pure function of its state).
        label: class index into :data:`CLASSES`; ``None`` draws one.
        size: the image is ``(size, size)``.

    Returns:
        ``image`` float32 ``(H, W)`` in 0..1 and ``mask`` uint8 ``(H, W)`` of 0/1 (all zero for no_tumor).

    Raises:
        ValueError: ``label`` is not a class index or ``size`` is below 16.
    """
    label = int(rng.integers(len(CLASSES))) if label is None else _check_label(label)
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    patient = draw_patient(rng, label)
    z = patient.slice_levels(rng, 1)[0]
    return _render_slices(patient, [z], size)[0]


def make_volume(seed: int, label: int, shape: tuple[int, int, int] = (128, 128, 48),
                spacing: tuple[float, float, float] = (1.0, 1.0, 3.0)) -> tuple[np.ndarray, np.ndarray]:
    """A 3D synthetic head whose tumor spans several slices.

    Args:
        seed: the volume is a pure function of ``seed``, ``label``, ``shape`` and ``spacing``.
        label: class index into :data:`CLASSES`.
        shape: ``(X, Y, Z)`` voxels; ``vol[:, :, k].T`` is an axial slice like the 2D images (X = columns,
            Y = rows); write it with :func:`volume_affine` so that viewers and 2D models see it so.
        spacing: voxel size in mm along X, Y, Z; the head fills the in-plane field of view.

    Returns:
        ``vol`` float32 ``(X, Y, Z)`` in 0..1 and ``mask`` uint8 ``(X, Y, Z)`` of 0/1.

    Raises:
        ValueError: bad ``label``, a ``shape`` below 16x16x4 or a non-positive spacing.
    """
    _check_label(label)
    if len(shape) != 3 or min(shape[:2]) < 16 or shape[2] < 4:
        raise ValueError(f"shape must be (X, Y, Z) with X, Y >= 16 and Z >= 4, got {tuple(shape)}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive sizes in mm, got {tuple(spacing)}")
    rng = np.random.default_rng([int(seed), int(label), 3])
    patient = draw_patient(rng, label)
    sx, sy, sz = (float(s) for s in spacing)
    mm_per_unit = max(shape[0] * sx, shape[1] * sy) / 2  # the in-plane field of view spans -1..1
    cols = ((np.arange(shape[0]) + 0.5) * sx - shape[0] * sx / 2) / mm_per_unit  # patient right -> left
    rows = ((np.arange(shape[1]) + 0.5) * sy - shape[1] * sy / 2) / mm_per_unit  # anterior -> posterior
    zs = ((np.arange(shape[2]) + 0.5) * sz - shape[2] * sz / 2) / mm_per_unit + patient.tumor_z
    # (X, Y, Z) with X = the 2D images' columns (x) and Y = their rows (y): LPS storage, see volume_affine
    x, y, z = np.meshgrid(*(a.astype(np.float32) for a in (cols, rows, zs)), indexing="ij")
    image, mask = render(patient, x, y, z)
    blur = [patient.blur * mm_per_unit / s for s in (sx, sy, sz)]  # head-frame units to voxels
    return _finish(patient, rng, image, blur), mask


def volume_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """The nibabel (RAS) affine of a :func:`make_volume` array: i -> Left, j -> Posterior, k -> Superior.

    ``diag(-sx, -sy, sz, 1)``: ITK and viewers read it as the LPS identity direction, so the axial
    display (rows A->P, columns R->L) of slice ``k`` is ``vol[:, :, k].T``, the synthetic 2D image.

    Raises:
        ValueError: not three positive sizes in mm.
    """
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive sizes in mm, got {tuple(spacing)}")
    sx, sy, sz = (float(s) for s in spacing)
    return np.diag([-sx, -sy, sz, 1.0])


def ensure_dataset(root: str | Path, seed: int = 0, n_train: int | None = None, n_val: int | None = None,
                   n_test: int | None = None, size: int | None = None, spatial_dims: int = 2) -> Path:
    """The built-in dataset's ``datalist.json`` under ``root``, generated now if missing or stale.

    2D: 8-bit PNG slices ``(size, size)`` and 0/1 PNG masks, :data:`SLICES_PER_PATIENT` slices per
    patient. 3D: NIfTI int16 volumes ``(size, size, size // 2)`` of :data:`VOLUME_SPACING` and uint8
    masks, one per patient. ``None`` counts and size take the defaults of ``spatial_dims``
    (2D: 800 / 160 / 240 at 128 px; 3D: 64 / 16 / 24 at 64 px). The parameters are stored under the
    datalist's ``"synthetic"`` key; a datalist with other parameters, or missing files, is rebuilt.
    Files are built in a temporary folder, then renamed; concurrent callers (DDP ranks) wait on a lock.

    Raises:
        ValueError: ``spatial_dims`` not 2 or 3, a negative count, no training sample or a bad size;
            or ``root`` holds a ``datalist.json`` this function did not write (it is never overwritten).
    """
    params = _params(seed, n_train, n_val, n_test, size, spatial_dims)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    datalist_path = root / DATALIST_NAME
    with open(root / ".synthetic.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if _is_current(datalist_path, params):
            return datalist_path
        _refuse_foreign(datalist_path)
        data_dir = f"synthetic_{spatial_dims}d_{_digest(params)}"
        tmp = Path(tempfile.mkdtemp(prefix=".synthetic_tmp_", dir=root))
        try:
            datalist = _generate(tmp, data_dir, params)
            if (root / data_dir).exists():
                shutil.rmtree(root / data_dir)
            tmp.rename(root / data_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        write_json_atomic(datalist_path, datalist)
        _remove_stale(root, keep=data_dir)
    return datalist_path


def _check_label(label: int) -> int:
    if not isinstance(label, (int, np.integer)) or not 0 <= int(label) < len(CLASSES):
        raise ValueError(f"label must be a class index 0..{len(CLASSES) - 1} ({CLASSES}), got {label!r}")
    return int(label)


def _params(seed: int, n_train: int | None, n_val: int | None, n_test: int | None, size: int | None,
            spatial_dims: int) -> dict[str, Any]:
    if spatial_dims not in _DEFAULTS:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    given = {"n_train": n_train, "n_val": n_val, "n_test": n_test, "size": size}
    params = {k: int(_DEFAULTS[spatial_dims][k] if v is None else v) for k, v in given.items()}
    if min(params["n_val"], params["n_test"]) < 0 or params["n_train"] < 1:
        raise ValueError(f"need n_train >= 1 and n_val, n_test >= 0, got {params}")
    if params["size"] < (16 if spatial_dims == 2 else 32):
        raise ValueError(f"size {params['size']} is too small for {spatial_dims}D synthetic data")
    params.update(seed=int(seed), spatial_dims=spatial_dims,
                  version=GENERATOR_VERSION if spatial_dims == 2 else VOLUME_VERSION,
                  slices_per_patient=SLICES_PER_PATIENT if spatial_dims == 2 else 1)
    return params


def _digest(params: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def _is_current(datalist_path: Path, params: dict[str, Any]) -> bool:
    """True when the datalist was made with ``params`` and every file it names exists."""
    try:
        datalist = json.loads(datalist_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(datalist, dict) or datalist.get("synthetic") != params:
        return False
    base = datalist_path.parent
    files = [s[k] for split in _SPLITS for s in datalist.get(split, []) for k in ("image", "label") if k in s]
    return all((base / f).is_file() for f in files)


def _refuse_foreign(datalist_path: Path) -> None:
    """Stop before replacing a datalist that is not ours (a user's own data in the same folder)."""
    if not datalist_path.exists():
        return
    try:
        ours = "synthetic" in json.loads(datalist_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        ours = False
    if not ours:
        raise ValueError(f"{datalist_path}: exists but is not a synthetic datalist (no 'synthetic' key); "
                         "not overwriting it: pass another root or remove the file")


def _remove_stale(root: Path, keep: str) -> None:
    """Delete data folders of earlier parameter sets and temp folders of interrupted runs."""
    for path in list(root.glob("synthetic_[23]d_*")) + list(root.glob(".synthetic_tmp_*")):
        if path.is_dir() and path.name != keep:
            shutil.rmtree(path, ignore_errors=True)


def _generate(tmp: Path, data_dir: str, params: dict[str, Any]) -> dict[str, Any]:
    """Render every split into ``tmp``; returns the datalist (paths relative to the datalist folder)."""
    (tmp / "images").mkdir()
    (tmp / "masks").mkdir()
    per_patient = params["slices_per_patient"]
    counts = [params["n_train"], params["n_val"], params["n_test"]]
    datalist: dict[str, Any] = {
        "name": f"synthetic-{params['spatial_dims']}d", "description": "built-in synthetic brain MRI (T1c)",
        "spatial_dims": params["spatial_dims"], "channels": CHANNELS, "segments": SEGMENTS,
        "classes": CLASSES, "synthetic": params}
    first_patient = 0
    for split_index, (split, n) in enumerate(zip(_SPLITS, counts)):
        split_rng = np.random.default_rng([params["seed"], split_index, 7])
        n_patients = -(-n // per_patient)
        labels = split_rng.permutation(np.arange(n_patients) % len(CLASSES))  # balanced by patient
        samples = []
        for p, label in enumerate(labels):
            patient_id = first_patient + p
            n_slices = min(per_patient, n - p * per_patient)
            samples += _write_patient(tmp, data_dir, params, patient_id, int(label), n_slices)
        _drop_labels(samples, split_rng)
        datalist[split] = [{k: v for k, v in s.items() if not k.startswith("_")} for s in samples]
        first_patient += n_patients
    return datalist


def _write_patient(tmp: Path, data_dir: str, params: dict[str, Any], patient_id: int, label: int,
                   n_slices: int) -> list[dict[str, Any]]:
    """Render one patient's slices (2D) or volume (3D) and write image and mask files."""
    group = f"patient-{patient_id:03d}"
    size, samples = params["size"], []
    if params["spatial_dims"] == 3:
        shape = (size, size, size // 2)
        vol, mask = make_volume(params["seed"] * 100003 + patient_id, label, shape, VOLUME_SPACING)
        affine = volume_affine(VOLUME_SPACING)  # one affine for images and masks: the set agrees with itself
        stem = f"{group}.nii.gz"
        _write_nifti(tmp / "images" / stem, np.round(vol * 1000).astype(np.int16), affine)
        _write_nifti(tmp / "masks" / stem, mask, affine)
        return [{"image": f"{data_dir}/images/{stem}", "label": f"{data_dir}/masks/{stem}",
                 "class": label, "group": group}]
    rng = np.random.default_rng([params["seed"], patient_id, 2])
    patient = draw_patient(rng, label)
    pairs = _render_slices(patient, patient.slice_levels(rng, n_slices), size)
    for s, (image, mask) in enumerate(pairs):
        stem = f"{group}_s{s}.png"
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(tmp / "images" / stem, compress_level=1)
        Image.fromarray(mask).save(tmp / "masks" / stem)
        samples.append({"image": f"{data_dir}/images/{stem}", "label": f"{data_dir}/masks/{stem}",
                        "class": label, "group": group, "_file": tmp / "masks" / stem})
    return samples


def _drop_labels(samples: list[dict[str, Any]], rng: np.random.Generator) -> None:
    """Make labels partial as in real data (exact shares, chosen at random, in place).

    Tumor samples: :data:`NO_MASK_FRACTION` lose the mask. No-tumor samples:
    :data:`NO_TUMOR_WITHOUT_MASK` have no mask file at all. Then :data:`NO_CLASS_FRACTION` of all
    samples lose the diagnosis, chosen among those that still have a mask (every sample keeps a task).
    """
    tumor = [i for i, s in enumerate(samples) if s["class"] != NO_TUMOR]
    normal = [i for i, s in enumerate(samples) if s["class"] == NO_TUMOR]
    no_mask = list(rng.permutation(tumor)[: round(NO_MASK_FRACTION * len(tumor))])
    no_mask += list(rng.permutation(normal)[: round(NO_TUMOR_WITHOUT_MASK * len(normal))])
    for i in no_mask:
        samples[i].pop("label")
        if "_file" in samples[i]:
            samples[i]["_file"].unlink()  # BRISC style: the mask file does not exist at all
    with_mask = [i for i, s in enumerate(samples) if "label" in s]
    for i in rng.permutation(with_mask)[: round(NO_CLASS_FRACTION * len(samples))]:
        samples[i].pop("class")


def _render_slices(patient: Patient, levels: list[float], size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Axial slices of ``patient`` at head-frame heights ``levels``: ``[(image (H, W), mask (H, W))]``."""
    rng = np.random.default_rng(patient.noise_seed)
    centres = ((np.arange(size) + 0.5) / size * 2 - 1).astype(np.float32)
    y, x = np.meshgrid(centres, centres, indexing="ij")  # (H, W); rows run top (anterior) to bottom
    out = []
    for z in levels:
        image, mask = render(patient, x, y, np.full_like(x, z))
        blur = patient.blur * size / 2  # head-frame units to pixels
        out.append((_finish(patient, rng, image, [blur, blur]), mask))
    return out


def _finish(patient: Patient, rng: np.random.Generator, image: np.ndarray, blur: list[float]) -> np.ndarray:
    """Scanner effects: blur, contrast curve and Rician noise; float32 in 0..1."""
    image = gaussian_filter(image, sigma=blur, mode="nearest")
    image = patient.gain * np.clip(image, 0, 1) ** patient.gamma
    noise = rng.standard_normal(size=(2,) + image.shape, dtype=np.float32) * patient.noise
    image = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)  # magnitude MR images have Rician noise
    return np.clip(image, 0, 1).astype(np.float32)


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """NIfTI with a fixed gzip header time, so equal data give equal bytes."""
    path.write_bytes(gzip.compress(nib.Nifti1Image(array, affine).to_bytes(), compresslevel=6, mtime=0))
