"""MultiTaskUNet: tumor segmentation and diagnosis with one click, then review and export.

Thin Slicer layer: the worker process, protocol, results, terminology and review record live in the
Slicer-free ``MultiTaskUNetLib``; MRML helpers in ``MultiTaskUNetMRML``; the model and its one
inference API in the bundle (``monai_bundle``). Nothing is installed or imported from torch/monai
when this module loads: dependencies are checked when the user first presses Segment & Classify.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

import MultiTaskUNetMRML as mrml
from MultiTaskUNetLib.bundles import default_bundle_dir, inspect_bundle
from MultiTaskUNetLib.dependencies import MIN_TORCH, bundle_requirements, install_failure_advice, plan_installation
from MultiTaskUNetLib.job import InferenceJob, JobState
from MultiTaskUNetLib.review import Decision, default_reviewer

DEVICES = {"Auto": "auto", "GPU": "cuda", "CPU": "cpu"}
APPLY_TEXT, CANCEL_TEXT = "Segment && Classify", "Cancel"
BAR_COLOR = "#4a90d9"  # probability bars in the result panel


class MultiTaskUNet(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MultiTaskUNet"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []  # PyTorchUtils (PyTorch extension) is imported only when installing torch
        self.parent.contributors = ["MultiTaskUNet developers"]
        self.parent.helpText = ("Segment the tumor and classify the study with one click (Segment &amp; Classify), "
                                "then accept, edit or reject the result and export it (.seg.nrrd, NIfTI, DICOM SEG). "
                                "Runs the model in a separate process: Slicer stays usable and the run can be cancelled.")
        self.parent.acknowledgementText = "Built on MONAI and 3D Slicer. Not a medical device: results need a radiologist's review."


class MultiTaskUNetWidget(ScriptedLoadableModuleWidget):
    """Panel: inputs and run, result (diagnosis + probabilities), review, export, log."""

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = MultiTaskUNetLogic()
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MultiTaskUNet.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        for selector in (self.ui.inputVolumeSelector, self.ui.segmentationSelector):
            selector.setMRMLScene(slicer.mrmlScene)
        self.job, self.jobVolume = None, None
        self.timer = qt.QTimer()
        self.timer.setInterval(200)  # ms: progress feels live, polling costs nothing
        self.timer.timeout.connect(self.onPoll)
        self.ui.bundlePathLineEdit.currentPath = str(self.logic.defaultBundleDir() or "")
        self.ui.reviewerLineEdit.text = default_reviewer()
        self.ui.exportDirectoryButton.directory = os.path.expanduser("~")
        self.ui.progressBar.hide()
        self.ui.applyButton.clicked.connect(self.onApply)
        self.ui.bundlePathLineEdit.currentPathChanged.connect(self.updateBundleInfo)
        self.ui.segmentationSelector.currentNodeChanged.connect(self.showResult)
        self.ui.acceptButton.clicked.connect(lambda: self.onDecision(Decision.ACCEPTED))
        self.ui.rejectButton.clicked.connect(lambda: self.onDecision(Decision.REJECTED))
        self.ui.editButton.clicked.connect(self.onEdit)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.updateBundleInfo()
        self.showResult(self.ui.segmentationSelector.currentNode())

    def cleanup(self):
        self.timer.stop()
        if self.job is not None:
            self.job.cancel()

    def log(self, text):
        self.ui.logTextEdit.appendPlainText(text)

    def updateBundleInfo(self, *_):
        try:
            self.ui.bundleInfoLabel.text = inspect_bundle(self.ui.bundlePathLineEdit.currentPath).describe()
        except ValueError as e:
            self.ui.bundleInfoLabel.text = str(e)

    def onApply(self):
        if self.job is not None:
            self.job.cancel()
            return self.onPoll()
        volume = self.ui.inputVolumeSelector.currentNode()
        if volume is None:
            return slicer.util.errorDisplay("Select an input volume first.")
        bundle = self.ui.bundlePathLineEdit.currentPath
        with slicer.util.tryWithErrorDisplay("Could not start MultiTaskUNet.", waitCursor=True):
            if not self.logic.ensureDependencies(bundle, askConfirmation=True):
                return None
            self.ui.logTextEdit.clear()
            self.job = self.logic.startJob(volume, bundle, DEVICES[self.ui.deviceComboBox.currentText], onLog=self.log)
            self.jobVolume = volume
            self.ui.applyButton.text = CANCEL_TEXT
            self.ui.progressBar.show()
            self.timer.start()
        return None

    def onPoll(self):
        job = self.job
        if job is None:  # a timer tick queued before the job ended
            return
        state = job.poll()
        self.ui.progressBar.value = job.percent
        self.ui.statusLabel.text = f"{job.stage} - {job.elapsed_s:.0f} s" + (" (retried on CPU)" if job.retried_on_cpu else "")
        if state is JobState.RUNNING:
            return
        self.timer.stop()
        self.job = None
        self.ui.applyButton.text = APPLY_TEXT
        self.ui.progressBar.hide()
        if state is JobState.SUCCEEDED:
            with slicer.util.tryWithErrorDisplay("Could not load the result.", waitCursor=True):
                seg = self.logic.importResult(job, self.jobVolume)
                self.ui.segmentationSelector.setCurrentNode(seg)
                self.ui.statusLabel.text = f"Done in {job.elapsed_s:.0f} s on {mrml.get_result(seg).device}."
        elif state is JobState.FAILED:
            self.ui.logCollapsibleButton.collapsed = False
            slicer.util.errorDisplay(f"MultiTaskUNet failed: {job.error}" + (f"\n\n{job.advice}" if job.advice else ""))
        self.logic.cleanupJob(job)

    def showResult(self, seg):
        self.currentSeg = seg
        enabled = seg is not None and seg.GetAttribute(mrml.REVIEW_ATTRIBUTE) is not None
        for w in (self.ui.acceptButton, self.ui.editButton, self.ui.rejectButton, self.ui.exportButton,
                  self.ui.diagnosisOverrideComboBox, self.ui.commentTextEdit):
            w.enabled = enabled
        if not enabled:
            self.ui.diagnosisLabel.text, self.ui.probabilitiesLabel.text, self.ui.warningsLabel.text = "-", "", ""
            self.ui.reviewStatusLabel.text = "Select a MultiTaskUNet result."
            return
        result, record = mrml.get_result(seg), mrml.get_review(seg)
        self.ui.diagnosisLabel.text = f"<b>{result.summary()}</b>"
        rows = "".join(f"<tr><td>{name}</td><td align='right'>{p:.1%}</td>"
                       f"<td><span style='background:{BAR_COLOR}'>"
                       f"{'&nbsp;' * max(1, round(p * 30))}</span></td></tr>" for name, p in result.ranked())
        self.ui.probabilitiesLabel.text = f"<table>{rows}</table>"
        self.ui.warningsLabel.text = "<br>".join(result.warnings)
        combo = self.ui.diagnosisOverrideComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        combo.addItems(record.classes)
        combo.setCurrentIndex(combo.findText(record.final_diagnosis))
        combo.blockSignals(wasBlocked)
        self.ui.commentTextEdit.plainText = record.comment
        self.showReviewStatus(record)

    def showReviewStatus(self, record):
        text = f"Review: {record.decision.value}"
        if record.reviewer:
            text += f" by {record.reviewer} at {record.reviewed_at}"
        if record.segment_edited:
            text += "; segment edited"
        if record.diagnosis_overridden:
            text += f"; diagnosis changed from {record.original_diagnosis} to {record.final_diagnosis}"
        self.ui.reviewStatusLabel.text = text

    def onDecision(self, decision):
        with slicer.util.tryWithErrorDisplay("Could not save the review.", waitCursor=True):
            record = self.logic.review(self.currentSeg, self.ui.reviewerLineEdit.text, decision,
                                       self.ui.diagnosisOverrideComboBox.currentText, self.ui.commentTextEdit.plainText)
            self.showReviewStatus(record)

    def onEdit(self):
        self.logic.openSegmentEditor(self.currentSeg)

    def onExport(self):
        formats = [f for f, box in (("seg.nrrd", self.ui.exportSegNrrdCheckBox), ("nifti", self.ui.exportNiftiCheckBox),
                                    ("dicom-seg", self.ui.exportDicomSegCheckBox)) if box.checked]
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            paths = self.logic.exportResult(self.currentSeg, self.ui.exportDirectoryButton.directory, formats,
                                            self.ui.reviewerLineEdit.text)
            self.log("Exported: " + ", ".join(str(p) for p in paths.values()))
            self.showReviewStatus(mrml.get_review(self.currentSeg))


class MultiTaskUNetLogic(ScriptedLoadableModuleLogic):
    """Run the model on volumes, import results, record reviews, export. Usable from the Python console:

    >>> logic = slicer.util.getModuleLogic("MultiTaskUNet")
    >>> segs = logic.process([getNode("MRHead")], device="cpu")
    >>> mrml.get_result(segs[0]).summary()
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.moduleDir = os.path.dirname(__file__)
        self.dependenciesChecked = False

    def defaultBundleDir(self):
        return default_bundle_dir(self.moduleDir)

    @staticmethod
    def pythonExecutable():
        """Slicer's ``PythonSlicer`` (runs Slicer's Python with Slicer's libraries, without the GUI)."""
        path = shutil.which("PythonSlicer")
        if not path:
            raise RuntimeError("PythonSlicer was not found next to Slicer; reinstall 3D Slicer.")
        return path

    def ensureDependencies(self, bundleDir=None, askConfirmation=True):
        """Install what the worker needs (asking once). Returns False if the user declined.

        Raises RuntimeError with advice when an installation fails."""
        if self.dependenciesChecked:
            return True
        torchVersion = None
        import importlib.metadata
        try:
            torchVersion = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            pass
        plan = plan_installation(bundle_requirements(bundleDir or self.defaultBundleDir()), torchVersion)
        if plan.needed:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(plan.confirmation_text(), "MultiTaskUNet set-up"):
                return False
            try:
                self._install(plan)
            except Exception as e:
                raise RuntimeError(f"Installing dependencies failed: {e}\n\n{install_failure_advice(str(e))}") from e
        self.dependenciesChecked = True
        return True

    @staticmethod
    def _install(plan):
        if plan.torch:
            try:
                import PyTorchUtils
            except ImportError as e:
                raise RuntimeError("The PyTorch extension is missing: install it from the Extensions Manager") from e
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=f">={MIN_TORCH}") is None:
                raise RuntimeError("PyTorch was not installed")
        if plan.pip:
            slicer.util.pip_install(list(plan.pip))

    def startJob(self, inputVolume, bundleDir=None, device="auto", onLog=None):
        """Write the volume to a temporary NRRD file and start the worker on it (returns at once)."""
        bundleDir = bundleDir or self.defaultBundleDir()
        if not bundleDir:
            raise RuntimeError("No model bundle: choose the folder of a MultiTaskUNet bundle.")
        tempDir = tempfile.mkdtemp(prefix="MultiTaskUNet-")
        inputPath = os.path.join(tempDir, "input.nrrd")
        storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(inputPath)
        storage.UseCompressionOff()  # faster to write and read; the file is deleted afterwards
        ok = storage.WriteData(inputVolume)
        slicer.mrmlScene.RemoveNode(storage)
        if not ok:
            raise RuntimeError(f"Could not write {inputVolume.GetName()} to {inputPath}")
        job = InferenceJob(self.pythonExecutable(), inputPath, os.path.join(tempDir, "out"), bundleDir, device=device,
                           base_env=slicer.util.startupEnvironment(), on_log=onLog or logging.info)
        job.tempDir = tempDir
        job.start()
        return job

    def importResult(self, job, inputVolume):
        """The finished job's result as a segmentation shown in 2D and 3D under the input's study."""
        from MultiTaskUNetLib.results import read_result
        seg = mrml.import_study(slicer.mrmlScene, read_result(job.result_paths[0]), inputVolume)
        mrml.show_in_3d(seg)
        seg.GetDisplayNode().SetVisibility(True)
        slicer.util.setSliceViewerLayers(background=inputVolume)
        return seg

    @staticmethod
    def cleanupJob(job):
        shutil.rmtree(getattr(job, "tempDir", ""), ignore_errors=True)

    def process(self, inputVolumes, bundleDir=None, device="auto", timeout=None):
        """Segment and classify each volume in turn (blocking); returns their segmentation nodes.

        Raises RuntimeError naming the volume when a run fails."""
        self.ensureDependencies(bundleDir, askConfirmation=False)
        segmentations = []
        for volume in inputVolumes:
            job = self.startJob(volume, bundleDir, device)
            try:
                if job.wait(timeout) is not JobState.SUCCEEDED:
                    raise RuntimeError(f"{volume.GetName()}: {job.error or job.state.value}")
                segmentations.append(self.importResult(job, volume))
            finally:
                self.cleanupJob(job)
        return segmentations

    @staticmethod
    def referenceVolume(seg):
        return seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())

    def review(self, seg, reviewer, decision, finalDiagnosis=None, comment=None):
        """Record a decision (``Decision.ACCEPTED`` / ``Decision.REJECTED``) with diagnosis and comment."""
        record = mrml.refresh_edit_state(slicer.mrmlScene, seg, self.referenceVolume(seg), reviewer)
        if finalDiagnosis:
            record.override_diagnosis(finalDiagnosis, reviewer)
        if comment is not None:
            record.set_comment(comment, reviewer)
        (record.accept if decision is Decision.ACCEPTED else record.reject)(reviewer)
        mrml.set_review(seg, record)
        return record

    def openSegmentEditor(self, seg):
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(seg)
        setSource = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode  # Slicer < 5.4
        setSource(self.referenceVolume(seg))

    def exportResult(self, seg, outDir, formats=None, reviewer=""):
        """Write the chosen formats and ``<name>_review.json`` into ``outDir``; returns ``{format: path}``."""
        return mrml.export_study(slicer.mrmlScene, seg, self.referenceVolume(seg), outDir, formats, reviewer)


class MultiTaskUNetTest(ScriptedLoadableModuleTest):
    """Whole flow in Slicer on a synthetic volume with a tiny random-weight bundle (needs torch + monai)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_classify_review_export()

    def test_segment_classify_review_export(self):
        import numpy as np
        from MultiTaskUNetLib import tiny_bundle
        logic = MultiTaskUNetLogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False))
        work = tempfile.mkdtemp(prefix="MultiTaskUNetTest-")
        bundle = tiny_bundle.make_in_subprocess(logic.pythonExecutable(), logic.defaultBundleDir(), os.path.join(work, "bundle"))
        z, y, x = np.mgrid[:24, :48, :48]
        image = np.where((x - 24) ** 2 + (y - 20) ** 2 + ((z - 12) * 2) ** 2 < 100, 200.0, 40.0).astype(np.float32)
        volume = slicer.util.addVolumeFromArray(image + np.random.default_rng(0).normal(0, 5, image.shape).astype(np.float32),
                                                name="synthetic")
        volume.SetSpacing(0.9, 0.9, 3.0)
        [seg] = logic.process([volume], bundle, device="cpu", timeout=600)
        result, record = mrml.get_result(seg), mrml.get_review(seg)
        self.assertIn(result.diagnosis, result.probabilities)
        self.assertAlmostEqual(sum(result.probabilities.values()), 1.0, places=3)
        self.assertEqual(record.decision, Decision.PENDING)
        self.assertEqual(logic.referenceVolume(seg), volume)
        segment = seg.GetSegmentation().GetNthSegment(0)
        self.assertIn("SCT^", segment.GetTerminology())
        other = [c for c in record.classes if c != result.diagnosis][0]
        record = logic.review(seg, "tester", Decision.ACCEPTED, other, "checked")
        self.assertEqual((record.decision, record.final_diagnosis, record.original_diagnosis),
                         (Decision.ACCEPTED, other, result.diagnosis))
        paths = logic.exportResult(seg, os.path.join(work, "export"), ["seg.nrrd", "nifti"], "tester")
        for path in paths.values():
            self.assertTrue(os.path.isfile(path), path)
        shutil.rmtree(work, ignore_errors=True)
        self.delayDisplay("MultiTaskUNet flow passed")
