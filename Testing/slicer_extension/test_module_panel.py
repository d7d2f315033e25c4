"""The end of a run in the panel (``MultiTaskUNetWidget.onPoll``) under slicer-core: the job's temporary folder
(the input written uncompressed, the worker's output) is removed however the run ends, also when loading
the result fails: ``slicer.util.tryWithErrorDisplay`` shows the error and re-raises, so a clean-up written
after it would be skipped. The widget's Qt controls and timer are stand-ins; ``tryWithErrorDisplay`` is
slicer-core's own (the same function as in Slicer 5.10's and 5.12's ``Base/Python/slicer/util.py``).
"""

import os
import sys
import time
import types
from pathlib import Path

import pytest
import slicer
import slicer.util

import MultiTaskUNetMRML as mrml
from test_module_logic import module  # noqa: F401  (the module imported against the application stand-ins)


def _ui():
    names = ("progressBar", "statusLabel", "applyButton", "logCollapsibleButton", "segmentationSelector", "modelInfoLabel",
             "addModelCollapsibleButton")
    ui = types.SimpleNamespace(**{n: types.SimpleNamespace(value=0, text="", collapsed=True) for n in names})
    ui.progressBar.hide = lambda: None
    ui.segmentationSelector.setCurrentNode = lambda node: None
    return ui


@pytest.fixture
def panel(module, scene, monkeypatch, volume_file):  # noqa: F811
    """(widget, input volume, error dialogs shown): a widget past ``setup``, with a real Logic whose worker is
    this Python (no PythonSlicer here) and whose model check is left out (the fake bundles have no weights)."""
    module.app.setOverrideCursor = module.app.restoreOverrideCursor = lambda *a: None
    module.app.testingEnabled = lambda: False
    monkeypatch.setattr(sys.modules["qt"], "Qt", types.SimpleNamespace(WaitCursor=0), raising=False)
    shown = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: shown.append(text))
    monkeypatch.setattr(slicer.util, "startupEnvironment", lambda: dict(os.environ))
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: None)  # no slice views here
    logic = module.MultiTaskUNetLogic()
    monkeypatch.setattr(logic, "pythonExecutable", lambda: sys.executable)
    monkeypatch.setattr(logic, "requireModel", lambda bundleDir: None)
    widget = module.MultiTaskUNetWidget()
    widget.ui, widget.logic, widget.timer = _ui(), logic, types.SimpleNamespace(stop=lambda: None)
    widget.log = lambda text: None
    return widget, mrml.read_volume(scene, volume_file, "input"), shown


def _start(widget, volume, bundle):
    widget.job, widget.jobVolume = widget.logic.startJob(volume, str(bundle), device="cpu"), volume
    temp = Path(widget.job.tempDir)
    assert (temp / "input.nrrd").is_file()
    return widget.job, temp


def _poll_to_the_end(widget):
    deadline = time.monotonic() + 120
    while widget.job is not None:  # what the panel's QTimer does every 200 ms
        assert time.monotonic() < deadline, "the job did not end"
        widget.onPoll()
        time.sleep(0.05)


def test_result_loaded_and_temporary_folder_removed(panel, fake_bundle, scene):
    widget, volume, shown = panel
    _, temp = _start(widget, volume, fake_bundle("ok"))
    _poll_to_the_end(widget)
    assert not temp.exists() and not shown
    assert widget.ui.statusLabel.text.startswith("Done in ")
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1


def test_temporary_folder_removed_when_loading_the_result_fails(panel, fake_bundle, monkeypatch):
    widget, volume, shown = panel
    job, temp = _start(widget, volume, fake_bundle("ok"))

    def broken(job, volume):
        raise ValueError("the result file is damaged")

    monkeypatch.setattr(widget.logic, "importResult", broken)
    with pytest.raises(ValueError, match="damaged"):  # re-raised by tryWithErrorDisplay after showing it
        _poll_to_the_end(widget)
    assert shown == ["Could not load the result.\n\nthe result file is damaged"]
    assert not temp.exists() and widget.job is None and job.result_paths


def test_temporary_folder_removed_when_the_run_fails(panel, fake_bundle):
    widget, volume, shown = panel
    _, temp = _start(widget, volume, fake_bundle("error"))
    _poll_to_the_end(widget)
    assert len(shown) == 1 and shown[0].startswith("MultiTaskUNet failed: ")
    assert not temp.exists() and not widget.ui.logCollapsibleButton.collapsed


def test_input_removed_during_the_run_nothing_imported_folder_removed(panel, fake_bundle, scene):
    """The scene was closed (or the volume deleted) while the worker ran: no result is imported into a
    volume that is gone."""
    widget, volume, shown = panel
    _, temp = _start(widget, volume, fake_bundle("ok"))
    scene.RemoveNode(volume)
    _poll_to_the_end(widget)
    assert "no longer in the scene" in widget.ui.statusLabel.text and not shown
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0 and not temp.exists()


def test_model_line_names_version_classes_input_and_training_data(panel, tmp_path):
    """What the panel shows for the chosen model, from its card (and the bundle metadata's data source)."""
    import json

    widget, _, _ = panel
    root = tmp_path / "model"
    for folder in ("scripts", "models", "configs"):
        (root / folder).mkdir(parents=True)
    (root / "scripts" / "infer.py").write_text("")
    (root / "models" / "model.pt").write_bytes(b"w")
    (root / "models" / "model_card.json").write_text(json.dumps(
        {"name": "Brain MTU", "version": "1.2.0", "classes": ["glioma", "meningioma"], "channels": ["T1c"]}))
    (root / "configs" / "metadata.json").write_text(json.dumps({"data_source": "BRISC 2025, 6000 slices"}))
    widget.currentModelDir = lambda: str(root)
    widget.onModelChanged()
    assert widget.ui.modelInfoLabel.text == ("Brain MTU 1.2.0 - glioma, meningioma\nInput: T1c\n"
                                             f"Training data: BRISC 2025, 6000 slices\n{root}")
    assert sys.modules["qt"].QSettings().value(sys.modules["MultiTaskUNet"].MODEL_SETTING) == str(root)  # remembered


def _node_classes(scene):
    return sorted(scene.GetNthNode(i).GetClassName() for i in range(scene.GetNumberOfNodes()))


def test_import_accept_reject_export_leave_no_node_behind(panel, fake_bundle, scene, tmp_path):
    """The issue's target, through the Logic calls the panel makes: the import adds the segmentation (and its
    display node) only; accepting, rejecting (each after an edit check) and exporting add nothing at all."""
    from MultiTaskUNetLib.review import Decision

    widget, volume, shown = panel
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)  # Slicer's scene always has it
    before_run = _node_classes(scene)
    _start(widget, volume, fake_bundle("ok"))
    _poll_to_the_end(widget)
    assert not shown
    after_import = _node_classes(scene)
    added = list(after_import)
    for name in before_run:
        added.remove(name)
    assert sorted(added) == ["vtkMRMLSegmentationDisplayNode", "vtkMRMLSegmentationNode"], added
    [seg] = [scene.GetNthNodeByClass(0, "vtkMRMLSegmentationNode")]
    logic = widget.logic
    logic.review(seg, "Dr A", Decision.ACCEPTED, finalDiagnosis="glioma", comment="ok")
    logic.review(seg, "Dr A", Decision.REJECTED)
    for _ in range(2):
        written = logic.exportResult(seg, tmp_path / "export", ["seg.nrrd", "nifti"], reviewer="Dr A")
    assert sorted(written) == ["nifti", "review", "seg.nrrd"]
    assert _node_classes(scene) == after_import
