"""``app.py`` through ``gradio_client``: the ``/run`` endpoint for scripts, a DICOM series zip, errors, the log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app import EXAMPLES
from webdemo_helpers import LAUNCHER, OUTBOUND, write_dicom_series_zip
from scripts.datasets import synthetic
from scripts.inference import Predictor, overlay
from scripts.inference.terminology import segment_term


@pytest.fixture(scope="module")
def client(app_server) -> Client:
    return Client(app_server.url, verbose=False)


@pytest.fixture(scope="module")
def predictor(tiny_bundle: Path) -> Predictor:
    return Predictor.from_bundle(tiny_bundle, device="cpu")


def test_run_endpoint_returns_what_the_predictor_says(client: Client, predictor: Predictor, tiny_bundle: Path) -> None:
    example = tiny_bundle / EXAMPLES / "example_pituitary.png"
    drawn, slider, diagnosis, summary, files, status = client.predict(handle_file(str(example)), 0.4, api_name="/run")
    expected = predictor.predict(example)
    assert status == "Done."
    assert diagnosis["label"] == expected.result["diagnosis"]["label"]
    assert {c["label"]: c["confidence"] for c in diagnosis["confidences"]} == pytest.approx(
        expected.result["diagnosis"]["probabilities"])
    assert slider["visible"] is False  # an image has no slices
    picture = np.asarray(Image.open(drawn).convert("RGB"))
    colors = overlay.result_colors(expected.result["segmentation"]["segments"])
    np.testing.assert_array_equal(picture, overlay.render_overlay(expected.image, expected.label, 0, 0.4, colors=colors))
    assert (picture == segment_term("tumor", 1).color).all(axis=-1).any()  # outlined in the terminology's tumour red
    assert f"area {int(expected.label.sum())} pixels" in summary
    by_name = {Path(f).name: f for f in files}
    assert set(by_name) == {"example_pituitary_seg.png", "example_pituitary_result.json"}  # a PNG mask for a PNG
    np.testing.assert_array_equal(np.asarray(Image.open(by_name["example_pituitary_seg.png"])), expected.label * 255)
    assert json.loads(Path(by_name["example_pituitary_result.json"]).read_text())["diagnosis"] == expected.result["diagnosis"]


def test_dicom_series_zip(client: Client, tmp_path: Path) -> None:
    spacing = (6.0, 6.0, 12.0)
    volume, _ = synthetic.make_volume(1, synthetic.CLASSES.index("meningioma"), (32, 32, 8), spacing)
    upload = write_dicom_series_zip(tmp_path / "study.zip", volume, spacing)
    _, slider, diagnosis, summary, files, status = client.predict(handle_file(str(upload)), 0.4, api_name="/run")
    assert status == "Done." and diagnosis["label"] in synthetic.CLASSES
    assert slider["visible"] is True and slider["maximum"] == 7
    (seg,) = [f for f in files if f.endswith("_seg.nii.gz")]
    image = nib.load(seg)
    assert image.shape == (32, 32, 8) and np.allclose(image.header.get_zooms(), spacing)  # the study's own grid
    voxels = int(np.asarray(image.dataobj).astype(bool).sum())
    assert f"mL ({voxels} voxels)" in summary


def test_bad_upload_is_an_app_error_naming_the_file_only(client: Client, app_server, tmp_path: Path,
                                                         tiny_bundle: Path) -> None:
    bad = tmp_path / "Doe_John_1970.png"  # a name that could identify a patient
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(AppError, match=r"^Doe_John_1970\.png: cannot decode the image"):
        client.predict(handle_file(str(bad)), 0.4, api_name="/run")
    _, _, diagnosis, _, _, status = client.predict(handle_file(str(tiny_bundle / EXAMPLES / "example_no_tumor.png")),
                                                   0.4, api_name="/run")
    assert status == "Done." and diagnosis["label"] in synthetic.CLASSES  # still serving
    text = app_server.log.read_text()
    assert "run refused: InputError" in text and "Doe_John" not in text and "/tmp/" not in text


def test_listens_on_localhost_only_and_calls_nobody(app_server) -> None:
    listening = [c.laddr.ip for c in psutil.Process(app_server.proc.pid).net_connections("inet") if c.status == "LISTEN"]
    assert listening == ["127.0.0.1"]
    assert OUTBOUND not in app_server.log.read_text()  # after every run of this session's tests


def test_the_outbound_watch_sees_a_lookup(tmp_path: Path) -> None:
    script = tmp_path / "lookup.py"
    script.write_text("import socket\ntry:\n    socket.getaddrinfo('example.invalid', 80)\nexcept OSError:\n    pass\n")
    out = subprocess.run([sys.executable, "-c", LAUNCHER, str(script)], capture_output=True, text=True, timeout=60)
    assert f"{OUTBOUND} lookup example.invalid" in out.stderr
