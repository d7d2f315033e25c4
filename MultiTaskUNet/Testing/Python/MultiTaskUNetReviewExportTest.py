"""Review and export inside 3D Slicer, on a study loaded from DICOM (run by Slicer's ctest).

Needs no model: a worker-style result (label map + result JSON) is written for a synthetic volume,
so this test checks what only the application can: the Segment Editor-style edit, the review
record surviving a saved and reloaded scene (.mrb), and DICOM SEG export through Slicer's exporter
(core in Slicer 5.12+, QuantitativeReporting on 5.10: without either that part is skipped with a
message): only non-empty segments, no "skip empty segments?" question, SEMIAUTOMATIC after an edit.
The whole flow with the real worker is ``MultiTaskUNetTest`` in ``MultiTaskUNet.py``.
"""

import json
import os
import shutil
import tempfile

import numpy as np
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

import MultiTaskUNetMRML as mrml
from MultiTaskUNet import MultiTaskUNetLogic
from MultiTaskUNetLib.results import read_result
from MultiTaskUNetLib.review import Decision

# what the worker writes for a segment named "tumor" (the bundle's scripts/inference/terminology.py)
TUMOR_TERMINOLOGY = ("Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure"
                     "~SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~^^~^^")


class MultiTaskUNetReviewExportTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()
        self.work = tempfile.mkdtemp(prefix="MultiTaskUNetReviewExport-")

    def tearDown(self):
        shutil.rmtree(self.work, ignore_errors=True)

    def runTest(self):
        self.setUp()
        try:
            self.test_review_and_export_of_a_dicom_study()
        finally:
            self.tearDown()

    def _dicom_study(self):
        """A synthetic volume exported to DICOM, to be loaded back from a DICOM database."""
        import DICOMScalarVolumePlugin
        z, y, x = np.mgrid[:16, :40, :40]
        image = np.where((x - 20) ** 2 + (y - 18) ** 2 + ((z - 8) * 3) ** 2 < 64, 300, 50).astype(np.int16)
        volume = slicer.util.addVolumeFromArray(image, name="synthetic")
        volume.SetSpacing(0.9, 0.9, 3.0)
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "test patient"), "test study")
        sh.SetItemParent(sh.GetItemByDataNode(volume), study)
        exporter = DICOMScalarVolumePlugin.DICOMScalarVolumePluginClass()
        exportables = exporter.examineForExport(sh.GetItemByDataNode(volume))
        dicomDir = os.path.join(self.work, "dicom")
        for exportable in exportables:
            exportable.directory = dicomDir
        exporter.export(exportables)
        slicer.mrmlScene.Clear()
        return dicomDir

    def _worker_style_result(self, volume):
        """Threshold "model": a label map in the input's geometry and a result JSON beside it."""
        label = (slicer.util.arrayFromVolume(volume) > 150).astype(np.uint8)
        labelNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")
        labelNode.CopyOrientation(volume)
        slicer.util.updateVolumeFromArray(labelNode, label)
        out = os.path.join(self.work, "out")
        os.makedirs(out)
        self.assertTrue(slicer.util.saveNode(labelNode, os.path.join(out, "input_seg.nii.gz")))
        slicer.mrmlScene.RemoveNode(labelNode)
        result = {"input": "input.nrrd",
                  "diagnosis": {"label": "meningioma", "index": 1,
                                "probabilities": {"glioma": 0.2, "meningioma": 0.7, "no_tumor": 0.05, "pituitary": 0.05}},
                  "segmentation": {"path": "input_seg.nii.gz", "format": "nifti",
                                   "segments": [{"name": "tumor", "value": 1, "voxels": int(label.sum()), "volume_ml": None,
                                                 "terminology": TUMOR_TERMINOLOGY, "color": "#e62828"}]},
                  "model": {"name": "test", "version": "0", "sha256": ""}, "device": "cpu", "warnings": []}
        path = os.path.join(out, "input_result.json")
        with open(path, "w") as f:
            json.dump(result, f)
        return read_result(path), label

    def test_review_and_export_of_a_dicom_study(self):
        from DICOMLib import DICOMUtils
        logic = MultiTaskUNetLogic()
        dicomDir = self._dicom_study()
        with DICOMUtils.TemporaryDICOMDatabase() as db:
            DICOMUtils.importDicom(dicomDir, db)
            nodeIDs = DICOMUtils.loadPatientByUID(db.patients()[0])
            volume = slicer.mrmlScene.GetNodeByID(nodeIDs[0])
            result, label = self._worker_style_result(volume)
            seg = mrml.import_study(slicer.mrmlScene, result, volume)
            self.assertEqual(logic.referenceVolume(seg), volume)

            # reviewer grows the tumor by one slice in the Segment Editor, then accepts with another diagnosis
            edited = label.copy()
            edited[max(0, np.argwhere(label)[:, 0].min() - 1)] |= label.max(axis=0)
            segmentId = seg.GetSegmentation().GetNthSegmentID(0)
            slicer.util.updateSegmentBinaryLabelmapFromArray(edited, seg, segmentId, volume)
            record = logic.review(seg, "tester", Decision.ACCEPTED, "glioma", "grown by one slice")
            self.assertEqual(record.decision, Decision.EDITED)
            self.assertTrue(record.segment_edited and record.diagnosis_overridden)

            seg.GetSegmentation().AddEmptySegment("", "reviewer note")  # empty: must be skipped without a question
            formats = ["seg.nrrd", "nifti"] + (["dicom-seg"] if mrml.dicom_seg_available() else [])
            paths = logic.exportResult(seg, os.path.join(self.work, "export"), formats, "tester")
            with open(paths["review"]) as f:
                self.assertEqual(json.load(f)["review"]["final_diagnosis"], "glioma")
            if "dicom-seg" not in paths:
                self.delayDisplay("DICOM SEG part skipped: " + mrml.DICOM_SEG_UNAVAILABLE)
            else:
                import pydicom
                ds = pydicom.dcmread(str(paths["dicom-seg"]))
                self.assertEqual(ds.Modality, "SEG")
                self.assertEqual(len(ds.SegmentSequence), 1)  # the empty segment was left out
                self.assertEqual(ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue, "108369006")
                self.assertEqual(ds.SegmentSequence[0].SegmentAlgorithmType, "SEMIAUTOMATIC")  # edited by the reviewer
                self.assertEqual(ds.SegmentSequence[0].SegmentAlgorithmName, "test 0")

        # the review is part of the scene: save as .mrb, clear, load, read it back
        segName = seg.GetName()
        mrb = os.path.join(self.work, "scene.mrb")
        self.assertTrue(slicer.util.saveScene(mrb))
        slicer.mrmlScene.Clear()
        slicer.util.loadScene(mrb)
        seg = slicer.util.getFirstNodeByClassByName("vtkMRMLSegmentationNode", segName)
        back = mrml.get_review(seg)
        self.assertEqual((back.decision, back.final_diagnosis, back.reviewer), (Decision.EDITED, "glioma", "tester"))
        self.delayDisplay("MultiTaskUNet review/export test passed")
