"""MultiTaskUNet: tumor segmentation and diagnosis with one click, then review and export.

Thin Slicer layer: the worker process, protocol, results, terminology, review record, dependency
plan and model store live in the Slicer-free ``MultiTaskUNetLib``; MRML helpers in
``MultiTaskUNetMRML``; the model and its one inference API in the bundle (``monai_bundle``).

Supported: 3D Slicer 5.10 or later (Python 3.12); older Slicers get a clear message at module load.
Nothing is installed or imported from torch/monai when this module loads. Models are added by the
user (bundle folder, bundle zip, or https URL with its SHA-256) into the models folder beside
Slicer's user settings; dependencies are installed on the first Segment & Classify with a usable
model, after one confirmation.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import sys
import tempfile

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

import MultiTaskUNetMRML as mrml
from MultiTaskUNetLib import models as modelstore
from MultiTaskUNetLib import structured_report
from MultiTaskUNetLib import worklist as worklists
from MultiTaskUNetLib.bundles import default_bundle_dir
from MultiTaskUNetLib.dependencies import (MIN_TORCH, bundle_requirements, environment_problem, install_failure_advice,
                                           installed_versions, pip_arguments, pip_constraints, plan_installation)
from MultiTaskUNetLib.job import InferenceJob, JobState
from MultiTaskUNetLib.review import Decision, ReviewRecord, default_reviewer

DEVICES = {"Auto": "auto", "GPU": "cuda", "CPU": "cpu"}
APPLY_TEXT, CANCEL_TEXT = "Segment && Classify", "Cancel"
BAR_COLOR = "#4a90d9"  # probability bars in the result panel
MODEL_SETTING = "MultiTaskUNet/Model"  # folder of the model chosen last
MODELS_DIRECTORY_SETTING = "MultiTaskUNet/ModelsDirectory"  # where added models go (default: beside Slicer.ini)
NO_MODEL_TEXT = ("No MultiTaskUNet model is installed yet. The extension does not include trained weights: add a "
                 "model under 'Add a model' (a bundle folder, a bundle zip, or an https:// address with its SHA-256, "
                 "e.g. from your team). Nothing is downloaded or installed before a model is there.")


def environmentProblem():
    """Why this Slicer cannot run MultiTaskUNet (None when it can)."""
    return environment_problem((slicer.app.majorVersion, slicer.app.minorVersion), tuple(sys.version_info[:2]))


class MultiTaskUNet(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MultiTaskUNet"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []  # PyTorchUtils (PyTorch extension) is imported only when installing torch
        self.parent.contributors = ["MultiTaskUNet developers"]
        self.parent.helpText = ("Segment the tumor and classify the study with one click (Segment &amp; Classify), "
                                "then accept, edit or reject the result and export it (.seg.nrrd, NIfTI, DICOM SEG with a DICOM SR "
                                "carrying the diagnosis and your review). A review worklist steps through the studies "
                                "of a batch run in priority order. "
                                "Runs the model in a separate process: Slicer stays usable and the run can be cancelled. "
                                "Needs a trained model: add one (bundle folder, zip or https address with its SHA-256).")
        self.parent.acknowledgementText = "Built on MONAI and 3D Slicer. Not a medical device: results need a radiologist's review."
        problem = environmentProblem()
        if problem:  # said once at start-up (log) and in the panel
            logging.warning(problem)
            self.parent.helpText = f"<b>{problem}</b><br><br>" + self.parent.helpText


class MultiTaskUNetWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel: inputs and run, result (diagnosis + probabilities), review, export, log."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.job, self.jobVolume = None, None
        self.worklist, self.worklistNodes, self.shortcuts = None, None, []

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = MultiTaskUNetLogic()
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MultiTaskUNet.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        for selector in (self.ui.inputVolumeSelector, self.ui.segmentationSelector):
            selector.setMRMLScene(slicer.mrmlScene)
        self.timer = qt.QTimer()
        self.timer.setInterval(200)  # ms: progress feels live, polling costs nothing
        self.timer.timeout.connect(self.onPoll)
        self.ui.reviewerLineEdit.text = default_reviewer()
        self.ui.exportDirectoryButton.directory = os.path.expanduser("~")
        self.ui.progressBar.hide()
        self.ui.applyButton.clicked.connect(self.onApply)
        self.ui.modelPathLineEdit.nameFilters = ["*.zip"]  # its browse button picks a zip; "Folder..." a folder
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.chooseModelFolderButton.clicked.connect(self.onChooseModelFolder)
        self.ui.addModelPathButton.clicked.connect(self.onAddModelPath)
        self.ui.downloadModelButton.clicked.connect(self.onDownloadModel)
        self.ui.modelsFolderLabel.text = f"Models are kept in {self.logic.modelsDirectory()}"
        self.ui.segmentationSelector.currentNodeChanged.connect(self.showResult)
        self.ui.acceptButton.clicked.connect(lambda: self.onDecision(Decision.ACCEPTED))
        self.ui.rejectButton.clicked.connect(lambda: self.onDecision(Decision.REJECTED))
        self.ui.editButton.clicked.connect(self.onEdit)
        self.ui.exportButton.clicked.connect(self.onExport)
        if not mrml.dicom_seg_available():
            self.ui.exportDicomSegCheckBox.checked = False
            self.ui.exportDicomSegCheckBox.enabled = False
            self.ui.exportDicomSegCheckBox.toolTip = mrml.DICOM_SEG_UNAVAILABLE
        self.setupWorklist()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.refreshModels(self.logic.selectedModelDir())
        problem = environmentProblem()
        if problem:
            self.ui.applyButton.enabled = False
            self.ui.statusLabel.text = problem
        self.showResult(self.ui.segmentationSelector.currentNode())

    def cleanup(self):
        self.removeObservers()
        self.timer.stop()
        self.setShortcuts(False)
        if self.job is not None:  # the module is going away: stop the worker now, then remove its files
            self.job.cancel(wait=True, grace_s=1.0)
            self.logic.cleanupJob(self.job)
            self.job, self.jobVolume = None, None

    def log(self, text):
        self.ui.logTextEdit.appendPlainText(text)

    # -- models ---------------------------------------------------------------------------------

    def currentModelDir(self):
        index = self.ui.modelComboBox.currentIndex
        return self.ui.modelComboBox.itemData(index) if index >= 0 else None

    def refreshModels(self, select=None):
        """Fill the model list from the models folder (each model described by its model card)."""
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for info in self.logic.availableModels():
            combo.addItem(f"{info.name} {info.version}".strip(), str(info.root))
        found = combo.findData(str(select)) if select else -1
        combo.setCurrentIndex(found if found >= 0 else (0 if combo.count else -1))
        combo.blockSignals(wasBlocked)
        self.onModelChanged()

    def onModelChanged(self, *_):
        bundle = self.currentModelDir()
        if not bundle:
            self.ui.modelInfoLabel.text = NO_MODEL_TEXT
            self.ui.addModelCollapsibleButton.collapsed = False
            return
        try:
            info = modelstore.require_model(bundle)
            self.ui.modelInfoLabel.text = f"{info.describe()}\n{info.details()}\n{info.root}"
            self.logic.setSelectedModelDir(info.root)
        except modelstore.ModelError as e:
            self.ui.modelInfoLabel.text = str(e)

    def onChooseModelFolder(self):
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Select a MultiTaskUNet bundle folder")
        if folder:
            self.ui.modelPathLineEdit.currentPath = folder

    def onAddModelPath(self):
        path = self.ui.modelPathLineEdit.currentPath
        if not path:
            return slicer.util.errorDisplay("Choose a bundle folder or a bundle .zip file first.")
        with slicer.util.tryWithErrorDisplay("Could not add the model.", waitCursor=True):
            info = self.logic.addModel(path)
            self.refreshModels(info.root)
            self.log(f"Model added: {info.describe()} ({info.root})")
        return None

    def onDownloadModel(self):
        url, sha256 = self.ui.modelUrlLineEdit.text.strip(), self.ui.modelSha256LineEdit.text.strip()
        if not url or not sha256:
            return slicer.util.errorDisplay("Enter the https:// address of the bundle zip and its SHA-256 checksum "
                                            "(published with the model).")
        dialog = slicer.util.createProgressDialog(labelText=f"Downloading {url}", windowTitle="MultiTaskUNet model")

        def onProgress(done, total):
            dialog.maximum = 100 if total else 0  # 0: busy indicator when the size is unknown
            dialog.value = int(100 * done / total) if total else 0
            dialog.labelText = f"Downloading {url}\n{done / 2 ** 20:.1f} MiB" + (f" of {total / 2 ** 20:.1f} MiB" if total else "")
            slicer.app.processEvents()
            if dialog.wasCanceled:
                raise modelstore.Cancelled()

        try:
            with slicer.util.tryWithErrorDisplay("Could not add the model.", waitCursor=True):
                info = self.logic.addModelFromUrl(url, sha256, onProgress)
                self.refreshModels(info.root)
                self.log(f"Model added: {info.describe()} ({info.root}) from {url}")
        except modelstore.Cancelled:
            self.log("Download cancelled; nothing was installed.")
        finally:
            dialog.close()
        return None

    # -- run ------------------------------------------------------------------------------------

    def onApply(self):
        if self.job is not None:
            self.job.cancel(wait=False)  # returns at once; onPoll finishes the cancel without blocking
            return self.onPoll()
        volume = self.ui.inputVolumeSelector.currentNode()
        if volume is None:
            return slicer.util.errorDisplay("Select an input volume first.")
        bundle = self.currentModelDir()
        if not bundle:
            self.ui.addModelCollapsibleButton.collapsed = False
            return slicer.util.errorDisplay(NO_MODEL_TEXT)
        with slicer.util.tryWithErrorDisplay("Could not start MultiTaskUNet.", waitCursor=True):
            if not self.logic.ensureDependencies(bundle, askConfirmation=True):
                return None
            self.ui.logTextEdit.clear()
            self.job = self.logic.startJob(volume, bundle, DEVICES[self.ui.deviceComboBox.currentText], onLog=self.log,
                                           uncertaintyMap=self.ui.uncertaintyMapCheckBox.checked)
            self.jobVolume = volume
            self.ui.applyButton.text = CANCEL_TEXT
            self.ui.progressBar.show()
            self.timer.start()
        return None

    def onSceneStartClose(self, caller, event):
        """Closing the scene mid-run: stop the worker and forget its input (the result has nowhere to go).
        An open worklist study is saved first (its nodes go with the scene)."""
        try:
            self.leaveWorklistStudy()
        except Exception as e:  # an observer must not raise into the scene's close
            logging.error(f"MultiTaskUNet: the worklist study could not be saved: {e}")
        if self.job is not None:
            self.jobVolume = None
            self.job.cancel(wait=False, reason="The scene was closed: run cancelled.")

    def onPoll(self):
        job = self.job
        if job is None:  # a timer tick queued before the job ended
            return
        state = job.poll()
        self.ui.progressBar.value = job.percent
        self.ui.statusLabel.text = f"{job.stage} - {job.elapsed_s:.0f} s" + (" (retried on CPU)" if job.retried_on_cpu else "")
        if job.active:  # running, or cancelled and its processes still exiting
            return
        self.timer.stop()
        volume, self.job, self.jobVolume = self.jobVolume, None, None
        self.ui.applyButton.text = APPLY_TEXT
        self.ui.progressBar.hide()
        try:
            if state is JobState.SUCCEEDED:
                if volume is None or not slicer.mrmlScene.IsNodePresent(volume):
                    self.ui.statusLabel.text = "The input volume is no longer in the scene: the result was not loaded."
                    self.log(self.ui.statusLabel.text)
                    return
                with slicer.util.tryWithErrorDisplay("Could not load the result.", waitCursor=True):
                    seg = self.logic.importResult(job, volume)
                    self.ui.segmentationSelector.setCurrentNode(seg)
                    self.ui.statusLabel.text = f"Done in {job.elapsed_s:.0f} s on {mrml.get_result(seg).device}."
            elif state is JobState.FAILED:
                self.ui.logCollapsibleButton.collapsed = False
                slicer.util.errorDisplay(f"MultiTaskUNet failed: {job.error}" + (f"\n\n{job.advice}" if job.advice else ""))
            elif state is JobState.CANCELLED:
                self.ui.statusLabel.text = "Cancelled."
        finally:  # also when loading the result raised: the temporary folder never outlives the job
            self.logic.cleanupJob(job)

    # -- result, review, export ---------------------------------------------------------------

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
            if self.worklistNodes is not None and self.worklistNodes[1] is self.currentSeg:
                self.logic.saveWorklistStudy(self.worklist, self.currentSeg, self.ui.reviewerLineEdit.text)
                self.ui.worklistLabel.text = self.worklist.describe()

    def onEdit(self):
        self.logic.openSegmentEditor(self.currentSeg)

    def onExport(self):
        formats = [f for f, box in (("seg.nrrd", self.ui.exportSegNrrdCheckBox), ("nifti", self.ui.exportNiftiCheckBox),
                                    ("dicom-seg", self.ui.exportDicomSegCheckBox)) if box.checked]
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            paths = self.logic.exportResult(self.currentSeg, self.ui.exportDirectoryButton.directory, formats,
                                            self.ui.reviewerLineEdit.text)
            self.log("Exported: " + ", ".join(str(p) for p in paths.values()))
            if "dicom-seg" in paths and self.logic.exportNote:
                self.log(self.logic.exportNote)
            self.showReviewStatus(mrml.get_review(self.currentSeg))

    # -- review worklist ----------------------------------------------------------------------

    def setupWorklist(self):
        """The "Review worklist" section: buttons over the Lib's worklist model, shortcuts named in tooltips."""
        self.ui.worklistPathLineEdit.nameFilters = ["*.csv"]
        keys = worklists.SHORTCUTS
        self.ui.previousStudyButton.toolTip = f"Previous study ({keys['previous']})"
        self.ui.nextStudyButton.toolTip = f"Next study ({keys['next']})"
        self.ui.acceptButton.toolTip += f" ({keys['accept']} while a worklist is open)"
        self.ui.rejectButton.toolTip += f" ({keys['reject']} while a worklist is open)"
        self.ui.openWorklistButton.clicked.connect(self.onOpenWorklist)
        self.ui.previousStudyButton.clicked.connect(lambda: self.onWorklistStep(lambda wl: wl.previous()))
        self.ui.nextStudyButton.clicked.connect(lambda: self.onWorklistStep(lambda wl: wl.next()))
        self.ui.nextPendingStudyButton.clicked.connect(self.onWorklistNextPending)

    def setShortcuts(self, on):
        """Accept / reject / next / previous on the main window while a worklist is open (Slicer's script
        repository idiom: ``qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())``)."""
        for shortcut in self.shortcuts:
            shortcut.setParent(None)
        self.shortcuts = []
        if not on:
            return
        def decide(decision):
            if self.ui.acceptButton.enabled:  # a MultiTaskUNet result is shown
                self.onDecision(decision)

        actions = {"accept": lambda: decide(Decision.ACCEPTED), "reject": lambda: decide(Decision.REJECTED),
                   "next": lambda: self.onWorklistStep(lambda wl: wl.next()),
                   "previous": lambda: self.onWorklistStep(lambda wl: wl.previous())}
        for name, key in worklists.SHORTCUTS.items():
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", actions[name])
            self.shortcuts.append(shortcut)

    def onOpenWorklist(self):
        path = self.ui.worklistPathLineEdit.currentPath
        if not path:
            return slicer.util.errorDisplay("Choose the worklist.csv written by the batch command line first.")
        with slicer.util.tryWithErrorDisplay("Could not open the worklist.", waitCursor=True):
            self.leaveWorklistStudy()
            self.worklist = self.logic.openWorklist(path)
            for button in (self.ui.previousStudyButton, self.ui.nextStudyButton, self.ui.nextPendingStudyButton):
                button.enabled = True
            self.setShortcuts(True)
            self.log(f"Worklist {path}: {len(self.worklist.studies)} studies, review state in "
                     f"{worklists.state_path(self.worklist.csv_path)}" +
                     (f"; {len(self.worklist.failed)} failed in the batch run" if self.worklist.failed else ""))
            self.showWorklistStudy()
        return None

    def leaveWorklistStudy(self):
        """Save the open worklist study (review record and segmentation) and remove its nodes."""
        if self.worklistNodes is None:
            return
        volume, seg = self.worklistNodes
        self.worklistNodes = None
        try:
            if slicer.mrmlScene.IsNodePresent(seg):
                self.logic.saveWorklistStudy(self.worklist, seg, self.ui.reviewerLineEdit.text)
        finally:
            self.logic.removeNodes(volume, seg, mrml.linked_uncertainty_map(seg))

    def showWorklistStudy(self):
        self.ui.worklistLabel.text = self.worklist.describe()
        volume, seg = self.logic.openWorklistStudy(self.worklist)
        self.worklistNodes = (volume, seg)
        self.ui.inputVolumeSelector.setCurrentNode(volume)
        self.ui.segmentationSelector.setCurrentNode(seg)
        self.showResult(seg)

    def onWorklistStep(self, step):
        if self.worklist is None:
            return
        with slicer.util.tryWithErrorDisplay("Could not open the study.", waitCursor=True):
            self.leaveWorklistStudy()
            step(self.worklist)
            self.showWorklistStudy()

    def onWorklistNextPending(self):
        index = self.worklist.next_pending() if self.worklist is not None else None
        if index is None:
            self.ui.worklistLabel.text = self.worklist.describe() + " - every study is decided." if self.worklist else ""
            return
        self.onWorklistStep(lambda wl: wl.go_to(index))


class MultiTaskUNetLogic(ScriptedLoadableModuleLogic):
    """Models, dependencies, runs on volumes, import, review, export. Usable from the Python console:

    >>> logic = slicer.util.getModuleLogic("MultiTaskUNet")
    >>> logic.addModel("/path/to/bundle.zip")  # once; or addModelFromUrl(url, sha256)
    >>> segs = logic.process([getNode("MRHead")], device="cpu")
    >>> mrml.get_result(segs[0]).summary()
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.moduleDir = os.path.dirname(__file__)
        self.dependenciesChecked = False
        self.exportNote = None  # why the last export wrote no DICOM SR (see exportResult)

    # -- models ---------------------------------------------------------------------------------

    def codeBundleDir(self):
        """The bundle code shipped with the extension (worker code, configs; no trained weights)."""
        return default_bundle_dir(self.moduleDir)

    @staticmethod
    def modelsDirectory():
        """Where added models are kept: ``MultiTaskUNet/models`` beside Slicer's user settings file
        (or the folder in the ``MultiTaskUNet/ModelsDirectory`` setting)."""
        custom = slicer.util.settingsValue(MODELS_DIRECTORY_SETTING, "")
        if custom:
            return custom
        return os.path.join(os.path.dirname(slicer.app.slicerUserSettingsFilePath), "MultiTaskUNet", "models")

    def availableModels(self):
        """Usable models (``BundleInfo``, from their model cards): added ones, then the shipped bundle if it
        holds trained weights (a developer build)."""
        return modelstore.list_models(self.modelsDirectory(), [self.codeBundleDir()] if self.codeBundleDir() else [])

    def selectedModelDir(self):
        """The model chosen last if still usable, else the first available one, else None."""
        chosen = slicer.util.settingsValue(MODEL_SETTING, "")
        models = self.availableModels()
        for info in models:
            if chosen and os.path.normcase(os.path.realpath(info.root)) == os.path.normcase(os.path.realpath(chosen)):
                return str(info.root)
        return str(models[0].root) if models else None

    @staticmethod
    def setSelectedModelDir(path):
        qt.QSettings().setValue(MODEL_SETTING, str(path))

    def addModel(self, path, sha256=None):
        """Add a model from a bundle folder or a bundle ``.zip`` (checked against ``sha256`` when given).

        Raises:
            ModelError: not a usable bundle (the message says why).
        """
        if os.path.isdir(path):
            return modelstore.install_folder(path, self.modelsDirectory(), self.codeBundleDir())
        return modelstore.install_zip(path, self.modelsDirectory(), sha256, self.codeBundleDir())

    def addModelFromUrl(self, url, sha256, progress=None):
        """Download a bundle zip from an https URL, check its SHA-256, add it. ``progress(done, total)``
        may raise ``Cancelled``.

        Raises:
            ModelError: bad URL or checksum, download failure, or not a usable bundle.
        """
        return modelstore.install_url(url, sha256, self.modelsDirectory(), progress, self.codeBundleDir())

    @staticmethod
    def requireModel(bundleDir):
        """The model's ``BundleInfo``; RuntimeError with what to do when there is no usable model."""
        if not bundleDir:
            raise RuntimeError(NO_MODEL_TEXT)
        try:
            return modelstore.require_model(bundleDir)
        except modelstore.ModelError as e:
            raise RuntimeError(f"{e}\n\n{NO_MODEL_TEXT}") from e

    # -- dependencies ---------------------------------------------------------------------------

    @staticmethod
    def pythonExecutable():
        """Slicer's ``PythonSlicer`` (runs Slicer's Python with Slicer's libraries, without the GUI)."""
        path = shutil.which("PythonSlicer")
        if not path:
            raise RuntimeError("PythonSlicer was not found next to Slicer; reinstall 3D Slicer.")
        return path

    @staticmethod
    def missingDependencies(bundleDir):
        """``InstallPlan`` of what the worker still needs for this bundle (nothing is installed)."""
        import importlib.metadata
        try:
            torchVersion = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            torchVersion = None
        return plan_installation(bundle_requirements(bundleDir), torchVersion)

    def ensureDependencies(self, bundleDir, askConfirmation=True):
        """Install what the worker needs (asking once). Returns False if the user declined.

        Checks first that this Slicer is supported and that ``bundleDir`` holds a usable model:
        nothing is installed before the user has a model to run.

        Raises:
            RuntimeError: unsupported Slicer, no usable model, or a failed installation (with advice).
        """
        problem = environmentProblem()
        if problem:
            raise RuntimeError(problem)
        self.requireModel(bundleDir)
        if self.dependenciesChecked:
            return True
        plan = self.missingDependencies(bundleDir)
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
        """torch through PyTorchUtils (CUDA build matching the driver) first, then the rest with pip under a
        constraints file pinning torch and what Slicer ships, so pip cannot replace them."""
        if plan.torch:
            try:
                import PyTorchUtils
            except ImportError as e:
                raise RuntimeError("The PyTorch extension is missing: install it from the Extensions Manager") from e
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=f">={MIN_TORCH}") is None:
                raise RuntimeError("PyTorch was not installed")
        if plan.pip:
            importlib.invalidate_caches()  # see the torch PyTorchUtils has just installed
            constraints = pip_constraints(installed_versions())
            with tempfile.TemporaryDirectory(prefix="MultiTaskUNet-pip-") as folder:
                path = os.path.join(folder, "constraints.txt")
                with open(path, "w", encoding="utf-8") as f:
                    f.write(constraints)
                slicer.util.pip_install(pip_arguments(plan.pip, path))

    # -- runs -----------------------------------------------------------------------------------

    def startJob(self, inputVolume, bundleDir, device="auto", onLog=None, uncertaintyMap=False):
        """Write the volume to a temporary NRRD file and start the worker on it (returns at once).
        ``uncertaintyMap``: run with flip TTA and have the worker write the voxel-wise uncertainty map."""
        self.requireModel(bundleDir)
        tempDir = tempfile.mkdtemp(prefix="MultiTaskUNet-")
        try:
            inputPath = os.path.join(tempDir, "input.nrrd")
            storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
            storage.SetFileName(inputPath)
            storage.UseCompressionOff()  # faster to write and read; the file is deleted afterwards
            ok = storage.WriteData(inputVolume)
            slicer.mrmlScene.RemoveNode(storage)
            if not ok:
                raise RuntimeError(f"Could not write {inputVolume.GetName()} to {inputPath}")
            job = InferenceJob(self.pythonExecutable(), inputPath, os.path.join(tempDir, "out"), bundleDir, device=device,
                               base_env=slicer.util.startupEnvironment(), on_log=onLog or logging.info,
                               uncertainty_map=uncertaintyMap)
        except Exception:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        job.tempDir = tempDir
        job.start()
        return job

    def importResult(self, job, inputVolume):
        """The finished job's result as a segmentation shown in 2D and 3D under the input's study; its
        uncertainty map, when the worker wrote one, as the slice views' foreground layer."""
        from MultiTaskUNetLib.results import read_result
        result = read_result(job.result_paths[0])
        seg = mrml.import_study(slicer.mrmlScene, result, inputVolume)
        mrml.show_in_3d(seg)
        seg.GetDisplayNode().SetVisibility(True)
        self.showLayers(result, inputVolume, seg)
        return seg

    @staticmethod
    def showLayers(result, volume, seg, fit=False):
        """The slice views: ``volume`` as background and, when the result names one, its uncertainty map
        as a half-transparent foreground, linked to ``seg`` (``mrml.linked_uncertainty_map``)."""
        if result.uncertainty_map_path is None:
            slicer.util.setSliceViewerLayers(background=volume, fit=fit)
            return
        uncertainty = mrml.import_uncertainty_map(slicer.mrmlScene, result.uncertainty_map_path, volume,
                                                  f"{volume.GetName()} MultiTaskUNet uncertainty")
        mrml.link_uncertainty_map(seg, uncertainty)
        slicer.util.setSliceViewerLayers(background=volume, foreground=uncertainty, foregroundOpacity=0.5, fit=fit)

    @staticmethod
    def cleanupJob(job):
        shutil.rmtree(getattr(job, "tempDir", ""), ignore_errors=True)

    def process(self, inputVolumes, bundleDir=None, device="auto", timeout=None, uncertaintyMap=False):
        """Segment and classify each volume in turn (blocking); returns their segmentation nodes.

        ``uncertaintyMap``: also run flip TTA and show each study's uncertainty map as a foreground layer.

        ``bundleDir``: the model (default: the one selected in the panel, else the first added).
        Raises RuntimeError naming the volume when a run fails, or saying how to add a model.
        """
        bundleDir = bundleDir or self.selectedModelDir()
        self.ensureDependencies(bundleDir, askConfirmation=False)
        segmentations = []
        for volume in inputVolumes:
            job = self.startJob(volume, bundleDir, device, uncertaintyMap=uncertaintyMap)
            try:
                if job.wait(timeout) is not JobState.SUCCEEDED:
                    raise RuntimeError(f"{volume.GetName()}: {job.error or job.state.value}")
                segmentations.append(self.importResult(job, volume))
            finally:
                self.cleanupJob(job)
        return segmentations

    # -- review and export ----------------------------------------------------------------------

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
        editor.setSourceVolumeNode(self.referenceVolume(seg))

    def reportWriter(self, reference):
        """``(writer, None)`` for the DICOM SR of ``reference``'s study, or ``(None, reason)`` where this Slicer
        cannot write one (5.10: no highdicom) or the volume is not from DICOM (the SEG export refuses it then).

        The source instances' files come from Slicer's DICOM database through the volume's
        ``DICOM.instanceUIDs`` attribute, as Slicer's DICOM SEG exporter finds them.
        """
        uids = reference.GetAttribute(mrml.DICOM_INSTANCE_UIDS_ATTRIBUTE) if reference is not None else None
        if not uids:
            return None, "DICOM SR not written: the input volume was not loaded from DICOM"
        reason = structured_report.unavailable_reason(self.codeBundleDir())
        if reason:
            return None, reason
        sources = structured_report.source_files(uids, slicer.dicomDatabase.fileForInstance)
        return structured_report.ReportWriter(self.pythonExecutable(), str(self.codeBundleDir()), sources,
                                              slicer.util.startupEnvironment()), None

    def exportResult(self, seg, outDir, formats=None, reviewer=""):
        """Write the chosen formats and ``<name>_review.json`` into ``outDir``; with DICOM SEG also the DICOM SR
        (``<name>_sr.dcm``: diagnosis, tumour volume and the review decision). Returns ``{format: path}``;
        ``self.exportNote`` says why an SR was not written (None when it was or was not asked for)."""
        reference = self.referenceVolume(seg)
        writer, self.exportNote = None, None
        if formats is None or "dicom-seg" in formats:
            writer, self.exportNote = self.reportWriter(reference)
        paths = mrml.export_study(slicer.mrmlScene, seg, reference, outDir, formats, reviewer, report_writer=writer)
        if self.exportNote:
            logging.warning(self.exportNote)
        return paths

    # -- review worklist ------------------------------------------------------------------------

    @staticmethod
    def openWorklist(csvPath):
        """The worklist at ``csvPath`` with its saved review state (``Worklist``), at the study open last."""
        return worklists.Worklist.open(csvPath)

    @staticmethod
    def loadStudyVolume(kind, path, seriesUID=None):
        """Load a worklist study's volume: a file with ``slicer.util.loadVolume``; a DICOM folder imported into
        Slicer's DICOM database and the series the CLI read (``seriesUID``; without it the largest) loaded
        (so DICOM SEG and SR export work)."""
        if kind == "file":
            return slicer.util.loadVolume(str(path))
        from DICOMLib import DICOMUtils
        if not DICOMUtils.importDicom(str(path)):
            raise RuntimeError(f"{path}: the DICOM files could not be imported into Slicer's DICOM database")
        files = [os.path.join(root, name) for root, _, names in os.walk(path) for name in names]
        uid = worklists.series_to_load({f: slicer.dicomDatabase.seriesForFile(f) for f in files}, seriesUID)
        nodes = [slicer.mrmlScene.GetNodeByID(i) for i in DICOMUtils.loadSeriesByUID([uid])]
        volumes = [n for n in nodes if n is not None and n.IsA("vtkMRMLScalarVolumeNode") and not n.IsA("vtkMRMLLabelMapVolumeNode")]
        if not volumes:
            raise RuntimeError(f"{path}: series {uid} did not load as a volume")
        return volumes[0]

    def openWorklistStudy(self, worklist):
        """Load the worklist's open study: its volume, and its result as the reviewer left it (the saved
        segmentation and review record) or, on a first visit, as the model wrote it; its uncertainty map, when
        the batch wrote one (``--tta --uncertainty-map``), as the foreground layer. Returns (volume, seg)."""
        from MultiTaskUNetLib.results import read_result
        study = worklist.current
        result = read_result(study.result_path)
        volume = self.loadStudyVolume(*worklists.study_input(result, worklist.csv_path.parent),
                                      worklists.result_series_uid(result))
        saved, review = worklist.saved_segmentation(study.name), worklist.review(study.name)
        name = f"{study.name} MultiTaskUNet"
        try:
            if saved is not None and review is not None:
                record = ReviewRecord.from_dict(review["record"])
                seg = mrml.restore_study(slicer.mrmlScene, result, volume, record, saved, name)
            else:
                seg = mrml.import_study(slicer.mrmlScene, result, volume, name)
        except Exception:
            self.removeNodes(volume)  # a study that cannot be shown leaves nothing behind
            raise
        mrml.show_in_3d(seg)
        seg.GetDisplayNode().SetVisibility(True)
        try:
            self.showLayers(result, volume, seg, fit=True)
        except Exception:
            self.removeNodes(volume, seg)
            raise
        return volume, seg

    def saveWorklistStudy(self, worklist, seg, reviewer=""):
        """Save the open study's review record and segmentation into the worklist's state; returns the record."""
        record = mrml.refresh_edit_state(slicer.mrmlScene, seg, self.referenceVolume(seg), reviewer)
        path = mrml.write_segmentation(slicer.mrmlScene, seg, worklist.segmentation_path(worklist.current.name))
        worklist.record(worklist.current.name, record.to_dict(), path)
        return record

    @staticmethod
    def removeNodes(*nodes):
        for node in nodes:
            if node is not None and slicer.mrmlScene.IsNodePresent(node):
                slicer.mrmlScene.RemoveNode(node)


def _workerStyleResult(volume, outDir):
    """A threshold "model" run for self-tests: label map in the input's geometry + result JSON beside it."""
    import json

    import numpy as np
    from MultiTaskUNetLib.results import read_result
    label = (slicer.util.arrayFromVolume(volume) > 120).astype(np.uint8)
    labelNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")
    labelNode.CopyOrientation(volume)
    slicer.util.updateVolumeFromArray(labelNode, label)
    os.makedirs(outDir, exist_ok=True)
    ok = slicer.util.saveNode(labelNode, os.path.join(outDir, "input_seg.nii.gz"))
    slicer.mrmlScene.RemoveNode(labelNode)
    if not ok:
        raise RuntimeError("could not write the test label map")
    # what the worker writes for a segment named "tumor" (the bundle's scripts/inference/terminology.py)
    tumorTerminology = ("Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure"
                        "~SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~^^~^^")
    result = {"input": "input.nrrd",
              "diagnosis": {"label": "meningioma", "index": 1,
                            "probabilities": {"glioma": 0.2, "meningioma": 0.7, "no_tumor": 0.05, "pituitary": 0.05}},
              "segmentation": {"path": "input_seg.nii.gz", "format": "nifti",
                               "segments": [{"name": "tumor", "value": 1, "voxels": int(label.sum()), "volume_ml": None,
                                             "terminology": tumorTerminology, "color": "#e62828"}]},
              "model": {"name": "test", "version": "0", "sha256": ""}, "device": "cpu", "warnings": []}
    path = os.path.join(outDir, "input_result.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return read_result(path), label


class MultiTaskUNetTest(ScriptedLoadableModuleTest):
    """Import/review/export on a synthetic volume (always), and the whole flow with a tiny random-weight
    bundle when torch and MONAI are already installed. The self-test never installs packages: on a
    machine without them (e.g. the extension build machines) the inference part is skipped with a message."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_import_review_export_without_a_model()
        self.setUp()
        self.test_segment_classify_review_export()

    @staticmethod
    def _syntheticVolume():
        import numpy as np
        z, y, x = np.mgrid[:24, :48, :48]
        image = np.where((x - 24) ** 2 + (y - 20) ** 2 + ((z - 12) * 2) ** 2 < 100, 200.0, 40.0).astype(np.float32)
        volume = slicer.util.addVolumeFromArray(image + np.random.default_rng(0).normal(0, 5, image.shape).astype(np.float32),
                                                name="synthetic")
        volume.SetSpacing(0.9, 0.9, 3.0)
        return volume

    def test_import_review_export_without_a_model(self):
        logic = MultiTaskUNetLogic()
        work = tempfile.mkdtemp(prefix="MultiTaskUNetTest-")
        try:
            volume = self._syntheticVolume()
            result, _ = _workerStyleResult(volume, os.path.join(work, "out"))
            seg = mrml.import_study(slicer.mrmlScene, result, volume)
            segment = seg.GetSegmentation().GetNthSegment(0)
            self.assertIn("SCT^108369006^Neoplasm", mrml.segment_terminology(segment))
            self.assertEqual(mrml.segment_tag(segment, mrml.ALGORITHM_TYPE_TAG), "AUTOMATIC")
            nodes = slicer.mrmlScene.GetNumberOfNodes()
            for _ in range(3):
                mrml.label_map_array(slicer.mrmlScene, seg, volume)
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)  # no color table (or other node) left behind
            record = logic.review(seg, "tester", Decision.ACCEPTED, "glioma", "checked")
            self.assertEqual((record.decision, record.final_diagnosis), (Decision.ACCEPTED, "glioma"))
            paths = logic.exportResult(seg, os.path.join(work, "export"), ["seg.nrrd", "nifti"], "tester")
            for path in paths.values():
                self.assertTrue(os.path.isfile(path), path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self.delayDisplay("MultiTaskUNet import/review/export passed")

    def test_segment_classify_review_export(self):
        from MultiTaskUNetLib import tiny_bundle
        logic = MultiTaskUNetLogic()
        code = logic.codeBundleDir()
        problem = environmentProblem()
        plan = None if problem or code is None else logic.missingDependencies(code)
        if problem or code is None or plan.needed:
            reason = problem or ("no bundle code next to the module" if code is None else
                                 "PyTorch/MONAI are not installed (" + (plan.torch or ", ".join(plan.pip)) + ")")
            self.delayDisplay(f"Skipped the inference test: {reason}. The self-test installs nothing; "
                              "run Segment & Classify once to install them, then run the test again.")
            return
        work = tempfile.mkdtemp(prefix="MultiTaskUNetTest-")
        try:
            bundle = tiny_bundle.make_in_subprocess(logic.pythonExecutable(), code, os.path.join(work, "bundle"))
            volume = self._syntheticVolume()
            [seg] = logic.process([volume], str(bundle), device="cpu", timeout=600)
            result, record = mrml.get_result(seg), mrml.get_review(seg)
            self.assertIn(result.diagnosis, result.probabilities)
            self.assertAlmostEqual(sum(result.probabilities.values()), 1.0, places=3)
            self.assertEqual(record.decision, Decision.PENDING)
            self.assertEqual(logic.referenceVolume(seg), volume)
            segment = seg.GetSegmentation().GetNthSegment(0)
            self.assertIn("SCT^", mrml.segment_terminology(segment))
            other = [c for c in record.classes if c != result.diagnosis][0]
            record = logic.review(seg, "tester", Decision.ACCEPTED, other, "checked")
            self.assertEqual((record.decision, record.final_diagnosis, record.original_diagnosis),
                             (Decision.ACCEPTED, other, result.diagnosis))
            paths = logic.exportResult(seg, os.path.join(work, "export"), ["seg.nrrd", "nifti"], "tester")
            for path in paths.values():
                self.assertTrue(os.path.isfile(path), path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self.delayDisplay("MultiTaskUNet flow passed")
