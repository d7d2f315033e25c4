"""Helpers of the web-demo tests: a tiny random-weight bundle, a DICOM series zip, the app in a subprocess."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch

from scripts.core.atomic import write_json_atomic
from scripts.core.model_card import CARD_FILE, WEIGHTS_FILE, build_network, make_card
from scripts.core.tasks import Task
from scripts.core.transforms import normalize_intensity

REPO = Path(__file__).resolve().parents[2]
#: the tests' browser: Debian's chromium without sandbox or GPU, where no name resolves but 127.0.0.1 (no outbound calls)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
STARTUP_S = 180  # importing torch + monai + gradio on 2 shared cores


def write_tiny_bundle(root: Path, calibrate_on: np.ndarray, tumor_share: float = 0.05) -> Path:
    """A bundle with a 2D, 1-channel, 4-class model of channels (4, 8, 16) and random weights.

    A random model marks no tumor or everything; the tumor logit's bias is shifted so that it marks
    ``tumor_share`` of ``calibrate_on`` ``(H, W)`` (32 px, prepared as the Predictor prepares it),
    which gives the overlay an outline to draw. It is still an untrained model.
    """
    card = make_card({"spatial_dims": 2, "in_channels": 1, "seg_classes": 2, "num_classes": 4, "encoder": "unet",
                      "channels": [4, 8, 16], "dropout": 0.0, "cls_hidden": 0},
                     channels=["T1c"], segments=["background", "tumor"],
                     classes=["glioma", "meningioma", "no_tumor", "pituitary"], spatial_size=[32, 32])
    torch.manual_seed(0)
    net = build_network(card).eval()
    with torch.no_grad():
        x = torch.from_numpy(normalize_intensity(calibrate_on[None].astype(np.float32)))[None]  # (1, 1, H, W)
        seg = net(x)[Task.SEG]  # (1, 2, H, W)
        margin = (seg[0, 1] - seg[0, 0]).flatten()
        net.segmentation_head.bias[1] -= torch.quantile(margin, 1 - tumor_share)
    write_json_atomic(root / CARD_FILE, card)
    torch.save(net.state_dict(), root / WEIGHTS_FILE)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: runs app.py as ``__main__`` with an audit hook that logs every network connection or name lookup
#: that is not to this machine: the demo must make none (no analytics, telemetry, update checks)
LAUNCHER = """
import runpy, socket, sys
LOCAL = {"127.0.0.1", "::1", "localhost", None}
def hook(event, args):
    if event == "socket.connect" and args[0].family in (socket.AF_INET, socket.AF_INET6) and args[1][0] not in LOCAL:
        print("OUTBOUND connect", args[1], file=sys.stderr, flush=True)
    elif event == "socket.getaddrinfo" and (args[0].decode() if isinstance(args[0], bytes) else args[0]) not in LOCAL:
        print("OUTBOUND lookup", args[0], file=sys.stderr, flush=True)
sys.addaudithook(hook)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
OUTBOUND = "OUTBOUND"


class AppServer(NamedTuple):
    url: str
    log: Path  # the app's stdout and stderr
    proc: subprocess.Popen


def start_app(bundle: Path, log: Path, *extra: str) -> AppServer:
    """Run ``app.py`` on a free port from another folder, as a user does, and wait until it answers.

    No host is given (the default, 127.0.0.1, is what is tested) and no offline switch is set: the
    log then shows any outbound attempt as an ``OUTBOUND`` line (see :data:`LAUNCHER`).
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("GRADIO_SERVER_NAME", "HF_HUB_OFFLINE")}
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-c", LAUNCHER, str(REPO / "app.py"), "--bundle", str(bundle), "--port", str(port),
           "--device", "cpu", *extra]
    proc = subprocess.Popen(cmd, cwd=log.parent, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return AppServer(url, log, proc)
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"app.py did not answer on {url} within {STARTUP_S} s:\n{log.read_text()}")


def write_dicom_series_zip(path: Path, volume: np.ndarray, spacing: tuple[float, float, float]) -> Path:
    """Zip a ``(X, Y, Z)`` volume as an MR DICOM series, one file per slice in a ``series/`` folder."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    study, series = generate_uid(), generate_uid()
    pixels = np.round(volume * 1000).astype(np.uint16)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for k in range(volume.shape[2]):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality, ds.PatientID = study, series, "MR", "ANON"
            ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
            ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]  # rows run along Y, columns along X
            ds.PixelSpacing = [spacing[1], spacing[0]]  # (between rows, between columns)
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [0, 0, k * spacing[2]]
            ds.SliceThickness = spacing[2]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()  # (X, Y) -> (rows=Y, cols=X)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            z.writestr(f"series/{k:03d}.dcm", buf.getvalue())
    return path


@contextmanager
def serving(bundle: Path, log: Path, *extra: str) -> Iterator[AppServer]:
    """:func:`start_app` for the ``with`` block; the server is stopped (killed after 20 s) at its end."""
    server = start_app(bundle, log, *extra)
    try:
        yield server
    finally:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
