"""``MultiTaskUNetLogic`` (MultiTaskUNet.py) under slicer-core, with stand-ins for what only the application has.

``qt`` and ``slicer.ScriptedLoadableModule`` are minimal stubs, ``slicer.app`` a namespace with the
version and settings path, and PyTorchUtils / ``slicer.util.pip_install`` / the confirmation dialog
are recorders: these tests check the module's own decisions (version check, no installation before
a model exists, torch first then pip under constraints, model store) - not Slicer's widgets or pip's
behaviour inside Slicer, which only a real Slicer can show.
"""

import importlib
import json
import logging
import sys
import types
import zipfile
from pathlib import Path

import pytest
import slicer
import slicer.util

from MultiTaskUNetLib.dependencies import InstallPlan


class _Settings:
    store: dict = {}

    def value(self, key):
        return self.store.get(key)

    def contains(self, key):
        return key in self.store

    def setValue(self, key, value):
        self.store[key] = value


def _base(name):
    return type(name, (), {"__init__": lambda self, *a, **k: None})


@pytest.fixture
def module(monkeypatch, tmp_path):
    """The MultiTaskUNet module imported against the stubs; ``module.app`` is the fake ``slicer.app``."""
    qt = types.ModuleType("qt")
    qt.QSettings = _Settings
    _Settings.store = {}
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    slm.ScriptedLoadableModule = ScriptedLoadableModule
    for name in ("ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest", "ScriptedLoadableModuleWidget"):
        setattr(slm, name, _base(name))
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    app = types.SimpleNamespace(majorVersion=5, minorVersion=10,
                                slicerUserSettingsFilePath=str(tmp_path / "settings" / "Slicer.ini"))
    monkeypatch.setattr(slicer, "app", app, raising=False)
    sys.modules.pop("MultiTaskUNet", None)
    mod = importlib.import_module("MultiTaskUNet")
    mod.app = app
    yield mod
    sys.modules.pop("MultiTaskUNet", None)


@pytest.fixture
def recorder(monkeypatch):
    """Records confirmations, torch and pip installs (in order); ``answer`` is the user's reply."""
    rec = types.SimpleNamespace(calls=[], answer=True, constraints=None)

    def confirm(text, title=None, **kw):
        rec.calls.append(("confirm", text))
        return rec.answer

    def pip_install(args):
        rec.calls.append(("pip", list(args)))
        rec.constraints = Path(args[1]).read_text()

    class TorchLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                         torchvisionVersionRequirement=None):  # PyTorchUtils' signature (fepegar/SlicerPyTorch)
            rec.calls.append(("torch", askConfirmation, torchVersionRequirement))
            return types.SimpleNamespace(__version__="2.13.0")

    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", confirm, raising=False)
    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=TorchLogic))
    return rec


def _bundle_zip(tmp_path, name="Brain MTU", version="1.0.0"):
    root = tmp_path / "src" / name
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "infer.py").write_text("")
    (root / "models").mkdir()
    (root / "models" / "model.pt").write_bytes(b"w")
    (root / "models" / "model_card.json").write_text(json.dumps({"name": name, "version": version, "classes": ["a", "b"]}))
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in root.rglob("*"):
            if f.is_file():
                z.write(f, f.relative_to(root).as_posix())
    return archive


def test_module_load_tells_old_slicer_users(module, caplog):
    module.app.majorVersion, module.app.minorVersion = 5, 8
    parent = types.SimpleNamespace()
    with caplog.at_level(logging.WARNING):
        module.MultiTaskUNet(parent)
    assert "needs 3D Slicer 5.10 or later; this is Slicer 5.8" in caplog.text
    assert parent.helpText.startswith("<b>MultiTaskUNet needs 3D Slicer 5.10 or later")
    module.app.minorVersion = 10
    parent = types.SimpleNamespace()
    module.MultiTaskUNet(parent)
    assert not parent.helpText.startswith("<b>")


def test_old_slicer_installs_nothing(module, recorder, tmp_path):
    module.app.minorVersion = 8
    logic = module.MultiTaskUNetLogic()
    info = logic.addModel(str(_bundle_zip(tmp_path)))
    with pytest.raises(RuntimeError, match="needs 3D Slicer 5.10 or later"):
        logic.ensureDependencies(str(info.root))
    assert recorder.calls == []


def test_no_model_no_question_no_installation(module, recorder, tmp_path):
    logic = module.MultiTaskUNetLogic()
    assert logic.availableModels() == [] or all(i.has_weights for i in logic.availableModels())
    with pytest.raises(RuntimeError, match="No MultiTaskUNet model is installed yet"):
        logic.ensureDependencies(None)
    untrained = tmp_path / "untrained"
    (untrained / "scripts").mkdir(parents=True)
    (untrained / "scripts" / "infer.py").write_text("")
    with pytest.raises(RuntimeError, match="no trained model in this bundle"):
        logic.ensureDependencies(str(untrained))
    with pytest.raises(RuntimeError, match="No MultiTaskUNet model"):
        logic.process([], bundleDir=str(untrained))
    assert recorder.calls == []  # neither asked nor installed anything


def test_models_are_added_to_the_user_folder_and_remembered(module, tmp_path):
    logic = module.MultiTaskUNetLogic()
    assert logic.modelsDirectory() == str(tmp_path / "settings" / "MultiTaskUNet" / "models")
    first = logic.addModel(str(_bundle_zip(tmp_path, "First")))
    second = logic.addModel(str(_bundle_zip(tmp_path, "Second")))
    names = [i.name for i in logic.availableModels()]
    assert names[:2] == ["First", "Second"]
    assert logic.selectedModelDir() == str(first.root)  # nothing chosen yet: the first one
    logic.setSelectedModelDir(second.root)
    assert logic.selectedModelDir() == str(second.root)
    _Settings.store[module.MODELS_DIRECTORY_SETTING] = str(tmp_path / "elsewhere")
    assert logic.modelsDirectory() == str(tmp_path / "elsewhere")


def test_torch_through_pytorchutils_then_pip_with_torch_pinned(module, recorder, tmp_path, monkeypatch):
    import importlib.metadata

    logic = module.MultiTaskUNetLogic()
    info = logic.addModel(str(_bundle_zip(tmp_path)))
    plan = InstallPlan(torch="missing", pip=("monai>=1.6", "pynrrd"))
    monkeypatch.setattr(logic, "missingDependencies", lambda bundle: plan)
    assert logic.ensureDependencies(str(info.root), askConfirmation=True)
    kinds = [c[0] for c in recorder.calls]
    assert kinds == ["confirm", "torch", "pip"]
    assert recorder.calls[1] == ("torch", False, f">={module.MIN_TORCH}")
    pip = recorder.calls[2][1]
    assert pip[0] == "-c" and pip[2:] == ["monai>=1.6", "pynrrd"]
    assert f"torch=={importlib.metadata.version('torch')}\n" in recorder.constraints  # pip cannot replace it
    assert f"numpy=={importlib.metadata.version('numpy')}\n" in recorder.constraints
    assert not Path(pip[1]).exists()  # the constraints file is temporary
    recorder.calls.clear()
    assert logic.ensureDependencies(str(info.root))  # checked once per session
    assert recorder.calls == []


def test_declining_installs_nothing(module, recorder, tmp_path, monkeypatch):
    logic = module.MultiTaskUNetLogic()
    info = logic.addModel(str(_bundle_zip(tmp_path)))
    monkeypatch.setattr(logic, "missingDependencies", lambda bundle: InstallPlan(torch=None, pip=("monai>=1.6",)))
    recorder.answer = False
    assert logic.ensureDependencies(str(info.root)) is False
    assert [c[0] for c in recorder.calls] == ["confirm"]


def test_failed_pip_install_explains(module, recorder, tmp_path, monkeypatch):
    logic = module.MultiTaskUNetLogic()
    info = logic.addModel(str(_bundle_zip(tmp_path)))
    monkeypatch.setattr(logic, "missingDependencies", lambda bundle: InstallPlan(torch=None, pip=("monai>=1.6",)))

    def fail(args):
        raise RuntimeError("ERROR: Cannot install monai because these package versions have conflicting dependencies")

    monkeypatch.setattr(slicer.util, "pip_install", fail)
    with pytest.raises(RuntimeError, match="(?s)Installing dependencies failed.*does not let pip replace those"):
        logic.ensureDependencies(str(info.root), askConfirmation=False)
    assert not logic.dependenciesChecked


class _Volume:
    """A volume node's attributes, as ``reportWriter`` reads them."""

    def __init__(self, **attributes):
        self.attributes = attributes

    def GetAttribute(self, name):
        return self.attributes.get(name)


def test_export_writer_sources_from_slicers_dicom_database(module, monkeypatch, tmp_path):
    """The SR writer gets PythonSlicer, the shipped bundle code and the input's files from the DICOM database
    (``DICOM.instanceUIDs`` -> ``slicer.dicomDatabase.fileForInstance``); a volume not from DICOM gets none."""
    logic = module.MultiTaskUNetLogic()
    files = {"1.2.1": "/db/1.dcm", "1.2.2": "/db/2.dcm"}
    monkeypatch.setattr(slicer, "dicomDatabase", types.SimpleNamespace(fileForInstance=files.get), raising=False)
    monkeypatch.setattr(slicer.util, "startupEnvironment", lambda: {"PATH": "/bin"}, raising=False)
    monkeypatch.setattr(logic, "pythonExecutable", lambda: "/slicer/bin/PythonSlicer")
    writer, note = logic.reportWriter(_Volume(**{"DICOM.instanceUIDs": "1.2.2 1.2.1"}))
    assert note is None
    assert (writer.python, writer.sources, writer.base_env) == ("/slicer/bin/PythonSlicer", ["/db/2.dcm", "/db/1.dcm"],
                                                                {"PATH": "/bin"})
    assert Path(writer.bundle_dir) == logic.codeBundleDir()
    assert logic.reportWriter(_Volume()) == (None, "DICOM SR not written: the input volume was not loaded from DICOM")


def test_export_on_a_slicer_without_highdicom_says_why_no_sr(module, monkeypatch, caplog):
    """Slicer 5.10 ships no highdicom: the export goes on (SEG, review JSON) and the note says why no SR."""
    from MultiTaskUNetLib import structured_report

    logic = module.MultiTaskUNetLogic()
    calls = []
    monkeypatch.setattr(structured_report.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(module.MultiTaskUNetLogic, "referenceVolume", staticmethod(lambda seg: _Volume(**{"DICOM.instanceUIDs": "1.2.1"})))
    monkeypatch.setattr(module.mrml, "export_study", lambda *a, **k: calls.append(k) or {"dicom-seg": "x_seg.dcm"})
    monkeypatch.setattr(slicer, "mrmlScene", None, raising=False)
    with caplog.at_level(logging.WARNING):
        assert logic.exportResult(object(), "/out", ["dicom-seg"], "Dr A") == {"dicom-seg": "x_seg.dcm"}
    assert calls == [{"report_writer": None}]
    assert logic.exportNote == structured_report.NO_HIGHDICOM and structured_report.NO_HIGHDICOM in caplog.text
    logic.exportResult(object(), "/out", ["seg.nrrd"], "Dr A")
    assert logic.exportNote is None  # no DICOM SEG asked: no SR expected


def _one_study_worklist(out, volume_file, bundle, uncertainty_map: bool = False):
    """The fake worker run on ``volume_file`` into ``out``, and a one-row ``worklist.csv`` there naming its
    result (whose ``input`` points at the file, as the CLI's does); returns the CSV's path."""
    import csv
    import sys as _sys

    from MultiTaskUNetLib.job import InferenceJob, JobState

    job = InferenceJob(_sys.executable, volume_file, out, bundle, device="cpu", uncertainty_map=uncertainty_map)
    job.start()
    assert job.wait(timeout=120) is JobState.SUCCEEDED, job.error
    result = job.result_paths[0]
    data = json.loads(result.read_text(encoding="utf-8"))
    data["input"] = str(volume_file)
    result.write_text(json.dumps(data), encoding="utf-8")
    csv_path = out / "worklist.csv"
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "study", "status", "review_priority", "diagnosis", "result"])
        w.writerow([1, "input", "ok", 0.9, "meningioma", result.name])
    return csv_path


def test_worklist_study_opened_reviewed_left_and_resumed(module, scene, tmp_path, fake_bundle, volume_file, monkeypatch):
    """The Logic's worklist round: open the top study (the model's result), edit nothing, reject it, leave
    it (state and segmentation saved, nodes removed); a new session resumes there with the decision.

    ``loadStudyVolume`` reads the file with MultiTaskUNetMRML (slicer-core has no ``slicer.util.loadVolume``,
    whose I/O manager lives in the application)."""
    import MultiTaskUNetMRML as mrml
    from MultiTaskUNetLib.review import Decision

    csv_path = _one_study_worklist(tmp_path / "out", volume_file, fake_bundle("ok"))
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: None, raising=False)
    logic = module.MultiTaskUNetLogic()
    monkeypatch.setattr(logic, "loadStudyVolume", lambda kind, path, series_uid=None: mrml.read_volume(scene, path, "input"))

    wl = logic.openWorklist(csv_path)
    volume, seg = logic.openWorklistStudy(wl)
    assert mrml.get_review(seg).decision is Decision.PENDING and logic.referenceVolume(seg) is volume
    logic.review(seg, "Dr A", Decision.REJECTED, "glioma", "not a tumour")
    logic.saveWorklistStudy(wl, seg, "Dr A")
    logic.removeNodes(volume, seg)
    assert not scene.IsNodePresent(seg) and wl.saved_segmentation("input") is not None

    again = logic.openWorklist(csv_path)
    assert again.current.name == "input" and again.decision("input") == "rejected"
    _, seg2 = logic.openWorklistStudy(again)
    record = mrml.get_review(seg2)
    assert (record.decision, record.final_diagnosis, record.comment) == (Decision.REJECTED, "glioma", "not a tumour")


def test_result_with_an_uncertainty_map_shows_it_as_the_foreground_layer(module, scene, tmp_path, fake_bundle,
                                                                          volume_file, monkeypatch):
    """``importResult``: the map the worker wrote (``uncertainty_map=True`` runs it with TTA) becomes the slice
    views' foreground over the input, half transparent; without a map only the background is set."""
    import sys as _sys

    import MultiTaskUNetMRML as mrml
    from MultiTaskUNetLib.job import InferenceJob, JobState

    layers = []
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: layers.append(kw), raising=False)
    logic, bundle = module.MultiTaskUNetLogic(), fake_bundle("ok")
    for mapped in (True, False):
        job = InferenceJob(_sys.executable, volume_file, tmp_path / f"out{mapped}", bundle, device="cpu",
                           uncertainty_map=mapped)
        job.start()
        assert job.wait(timeout=120) is JobState.SUCCEEDED, job.error
        ref = mrml.read_volume(scene, volume_file, "input")
        assert logic.importResult(job, ref).IsA("vtkMRMLSegmentationNode")
        kw = layers.pop()
        assert kw["background"] is ref
        if mapped:
            assert kw["foregroundOpacity"] == 0.5 and kw["foreground"].GetName() == "input MultiTaskUNet uncertainty"
            assert kw["foreground"].GetDisplayNode().GetApplyThreshold() == 1
        else:
            assert kw == {"background": ref, "fit": False}


def test_worklist_study_with_an_uncertainty_map_shows_it_and_leaves_nothing(module, scene, tmp_path, fake_bundle,
                                                                            volume_file, monkeypatch):
    """A batch run with ``--tta --uncertainty-map``: opening its worklist study shows the map as the foreground,
    linked to the segmentation, so that leaving the study removes it with the other nodes."""
    import MultiTaskUNetMRML as mrml

    csv_path = _one_study_worklist(tmp_path / "out", volume_file, fake_bundle("ok"), uncertainty_map=True)
    layers = []
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: layers.append(kw), raising=False)
    logic = module.MultiTaskUNetLogic()
    monkeypatch.setattr(logic, "loadStudyVolume", lambda kind, path, series_uid=None: mrml.read_volume(scene, path, "input"))

    volume, seg = logic.openWorklistStudy(logic.openWorklist(csv_path))
    shown = mrml.linked_uncertainty_map(seg)
    assert shown is not None and shown.GetName() == "input MultiTaskUNet uncertainty"
    assert layers == [{"background": volume, "foreground": shown, "foregroundOpacity": 0.5, "fit": True}]
    logic.removeNodes(volume, seg, mrml.linked_uncertainty_map(seg))  # what leaving the study does
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
