"""The module's MRML code on a second slicer-core release, and the worker with the pydicom of 3D Slicer 5.10.

The venv holds the newest slicer-core (``requirements.txt``). ``make test`` (its ``test-setup``) also
installs, with ``pip --target`` and without dependencies, slicer-core 5.12.4 with the VTK it was built
against into ``.venv/slicer-core-5.12`` (``requirements-slicer-core-5.12.txt``) and pydicom 2.4.4, the
one Slicer 5.10 ships, into ``.venv/pydicom-2.4`` (``requirements-pydicom-2.4.txt``). Each test puts
its folder first on ``PYTHONPATH`` of a subprocess and checks there that it really got that release; a
missing folder is a failure (run ``make test-setup``), never a skip.
"""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import SimpleITK as sitk

from MultiTaskUNetLib import tiny_bundle
from MultiTaskUNetLib.job import InferenceJob, JobState
from MultiTaskUNetLib.results import read_result

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SLICER_CORE_5_12 = Path(sys.prefix) / "slicer-core-5.12"
PYDICOM_2_4 = Path(sys.prefix) / "pydicom-2.4"

#: every test file that touches MRML: the MRML package, the Logic and the panel on a scene (node-leak counts included)
MRML_TESTS = ("test_mrml_segmentation.py", "test_mrml_study.py", "test_mrml_uncertainty.py", "test_module_logic.py",
              "test_module_panel.py")
#: left out there, for time (each takes ~10 s): they test the DICOM SR that a child process writes with the bundle's
#: code and highdicom, which loads no slicer-core; the SR test of an edited, reviewed study still runs
NOT_ON_5_12 = ("test_mrml_study.py::test_pending_unsigned_review_gives_the_models_report",
               "test_mrml_study.py::test_sr_failure_names_the_reason_and_leaves_no_sr")

# Run in the subprocess: import slicer first, prove it is 5.12.4 (the package, its VTK and the libraries
# actually mapped into the process), then run the MRML tests in this same interpreter.
_CHECK_AND_RUN = r"""
import importlib.metadata, sys
from pathlib import Path

folder = Path(sys.argv[1]).resolve()
import slicer, vtk

def inside(path):
    return folder in Path(path).resolve().parents

problems = [f"{m.__name__} imported from {m.__file__}" for m in (slicer, vtk) if not inside(m.__file__)]
dist = importlib.metadata.distribution("slicer-core")
if dist.version != "5.12.4.0" or not inside(dist.locate_file("slicer")):
    problems.append(f"slicer-core {dist.version} at {dist.locate_file('')}")
if vtk.vtkVersion.GetVTKVersion() != "9.6.0":
    problems.append(f"VTK {vtk.vtkVersion.GetVTKVersion()}")
scene = slicer.vtkMRMLScene()  # load the MRML libraries, then look where they came from
libs = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
        if "/libMRMLCore" in line or "/libvtkCommonCore" in line or "/libvtkSegmentationCore" in line}
if len(libs) != 3 or not all(inside(p) for p in libs):
    problems.append(f"libraries mapped: {sorted(libs)}")
if problems:
    sys.exit("not slicer-core 5.12.4 from " + str(folder) + ": " + "; ".join(problems))
print(f"slicer-core {dist.version} VTK {vtk.vtkVersion.GetVTKVersion()} from {folder}", flush=True)

import pytest
sys.exit(pytest.main(sys.argv[2:]))
"""


def _env_with_first(folder: Path) -> dict:
    assert folder.is_dir(), f"{folder} is missing: run `make test-setup` (`make test` does)"
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def test_newest_slicer_core_is_the_venvs():
    """The other test runs against something else than what every other test file uses."""
    import importlib.metadata

    import slicer
    import vtk

    assert Path(sys.prefix) in Path(slicer.__file__).resolve().parents and SLICER_CORE_5_12 not in Path(slicer.__file__).parents
    assert importlib.metadata.version("slicer-core").startswith("5.13.") and vtk.vtkVersion.GetVTKVersion() != "9.6.0"


def test_mrml_tests_pass_on_slicer_core_5_12(tmp_path):
    report = tmp_path / "report.xml"
    args = [*(str(HERE / name) for name in MRML_TESTS), "-q", "-p", "no:cacheprovider", "--timeout", "600",
            f"--junitxml={report}", *(f"--deselect={(HERE / test).relative_to(REPO).as_posix()}" for test in NOT_ON_5_12)]
    proc = subprocess.run([sys.executable, "-c", _CHECK_AND_RUN, str(SLICER_CORE_5_12), *args], cwd=REPO,
                          env=_env_with_first(SLICER_CORE_5_12), capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert out.startswith(f"slicer-core 5.12.4.0 VTK 9.6.0 from {SLICER_CORE_5_12.resolve()}"), out[:2000]
    # every file ran and every test in it passed: none skipped, none deselected
    cases = list(ElementTree.parse(report).getroot().iter("testcase"))
    outcomes = Counter((c.get("classname").split(".")[-1], len(c)) for c in cases)  # child element = not passed
    assert {name for name, _ in outcomes} == {Path(n).stem for n in MRML_TESTS}, outcomes
    assert all(children == 0 for _, children in outcomes), outcomes
    assert not {c.get("name") for c in cases} & {t.split("::")[1] for t in NOT_ON_5_12}


def test_worker_runs_with_the_pydicom_of_slicer_5_10(tmp_path, bundle_root):
    """Inside Slicer the worker runs in Slicer's own Python, next to the pydicom Slicer ships (the module
    pins it; 2.4.4 in Slicer 5.10). It imports its DICOM reader at start and reads the NRRD the module writes."""
    env = _env_with_first(PYDICOM_2_4)
    probe = subprocess.run([sys.executable, "-c", "import pydicom, scripts.infer; print(pydicom.__version__, pydicom.__file__)"],
                           cwd=bundle_root, env=env, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    version, where = probe.stdout.split()
    assert version == "2.4.4" and PYDICOM_2_4.resolve() in Path(where).resolve().parents

    from scripts.datasets.synthetic import make_volume

    bundle = tiny_bundle.make_in_subprocess(sys.executable, bundle_root, tmp_path / "bundle")
    vol, _ = make_volume(seed=5, label=1, shape=(32, 32, 8), spacing=(1.0, 1.0, 3.0))  # (X, Y, Z)
    image = sitk.GetImageFromArray(np.ascontiguousarray(vol.transpose(2, 1, 0)))
    image.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "input.nrrd"))
    logged = []
    job = InferenceJob(sys.executable, tmp_path / "input.nrrd", tmp_path / "out", bundle, device="cpu",
                       base_env=env, on_log=logged.append)
    job.start()
    assert job.wait(timeout=300) is JobState.SUCCEEDED, f"{job.error}\n" + "\n".join(logged[-30:])
    result = read_result(job.result_paths[0])
    assert [s.name for s in result.segments] == ["tumor"] and result.segmentation_path.is_file()
