"""Static checks of the 3D Slicer extension: CMake, listed files, .ui widgets, icons, catalog entry,
and the rules of the module (no Slicer imports in the Lib, nothing installed at import)."""

import ast
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "MultiTaskUNet"
STUB = Path(__file__).parent / "cmake_stub"
EXTENSION_FIELDS = ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS")
# the fields and types of Slicer's catalog entry schema v1.0.1 (Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json)
CATALOG_SCHEMA = {
    "type": "object", "required": ["$schema", "category", "scm_url"], "additionalProperties": False,
    "properties": {
        "$schema": {"type": "string", "pattern": "slicer-extension-catalog-entry-schema-v1\\.0\\.1\\.json#$"},
        "category": {"type": "string"}, "scm_url": {"type": "string"}, "scm_revision": {"type": "string"},
        "scm_type": {"enum": ["git", "local"]}, "build_dependencies": {"type": "array", "items": {"type": "string"}},
        "build_subdirectory": {"type": "string"}, "enabled": {"type": "boolean"}, "tier": {"enum": [1, 3, 5]},
    },
}


def _strip_comments(text: str) -> str:
    """Remove whole-line comments and comments after a closing parenthesis (a '#' in a URL stays)."""
    return re.sub(r"(?m)^\s*#.*$|(?<=\))\s*#.*$", "", text)


def cmake_sets(path: Path) -> dict[str, str]:
    """``set(NAME value...)`` of a CMakeLists.txt, value unquoted (comments removed)."""
    text = _strip_comments(path.read_text(encoding="utf-8"))
    return {m.group(1): m.group(2).strip().strip('"') for m in re.finditer(r"set\((\w+)\s+(.*?)\)\s*\n", text, re.S)}


def cmake_list(path: Path, name: str, module: str = "MultiTaskUNet") -> list[str]:
    text = _strip_comments(path.read_text(encoding="utf-8"))
    body = re.search(rf"set\({name}\s+(.*?)\)", text, re.S).group(1)
    return [item.replace("${MODULE_NAME}", module) for item in body.split()]


def test_top_level_cmake_metadata():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"^project\(MultiTaskUNet\)", text, re.M)  # extension name = project name
    assert re.search(r"^add_subdirectory\(MultiTaskUNet\)", text, re.M)
    sets = cmake_sets(REPO / "CMakeLists.txt")
    for field in EXTENSION_FIELDS:
        assert sets.get(f"EXTENSION_{field}"), f"EXTENSION_{field} missing or empty"
    assert sets["EXTENSION_DEPENDS"] == "PyTorch" and sets["EXTENSION_CATEGORY"] == "Segmentation"
    assert (REPO / "LICENSE").is_file() and "Apache License" in (REPO / "LICENSE").read_text(encoding="utf-8")


@pytest.mark.parametrize("field", ["EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"])
def test_image_urls_are_raw_files_of_this_repository(field):
    url = cmake_sets(REPO / "CMakeLists.txt")[field]
    m = re.fullmatch(r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/main/(.+\.png)", url)
    assert m, url
    assert (REPO / m.group(1)).is_file(), f"{field} points to {m.group(1)}, which is not in the repository"


def test_module_cmake_lists_every_file_and_only_existing_ones():
    cmake = MODULE / "CMakeLists.txt"
    assert re.search(r"slicerMacroBuildScriptedModule\(", cmake.read_text(encoding="utf-8"))
    scripts = cmake_list(cmake, "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(cmake, "MODULE_PYTHON_RESOURCES")
    for f in scripts + resources:
        assert (MODULE / f).is_file(), f"{f} is listed in {cmake} but does not exist"
    on_disk = {p.relative_to(MODULE).as_posix() for d in ("MultiTaskUNetLib", "MultiTaskUNetMRML") for p in (MODULE / d).glob("*.py")}
    assert on_disk | {"MultiTaskUNet.py"} == set(scripts), "MODULE_PYTHON_SCRIPTS and the module's .py files differ"
    assert {"Resources/Icons/MultiTaskUNet.png", "Resources/UI/MultiTaskUNet.ui"} <= set(resources)
    tests = (MODULE / "Testing" / "Python" / "CMakeLists.txt").read_text(encoding="utf-8")
    for script in re.findall(r"slicer_add_python_unittest\(SCRIPT (\S+)\)", tests):
        assert (MODULE / "Testing" / "Python" / script).is_file()


def test_extension_configures_against_a_stub_slicer(tmp_path):
    """Configure with CMake (stub Slicer package): listed files exist, tests registered, bundle staged and installed."""
    build = tmp_path / "build"
    done = subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={STUB}", "-DBUILD_TESTING=ON"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    cache = (build / "CMakeCache.txt").read_text(encoding="utf-8")
    assert "STUB_MODULE_NAME:INTERNAL=MultiTaskUNet" in cache
    assert "MultiTaskUNet.py;" in cache and "MultiTaskUNetReviewExportTest.py" in cache  # both ctests registered
    staged = build / "lib" / "Slicer-5.10" / "qt-scripted-modules" / "monai_bundle"
    assert (staged / "scripts" / "infer.py").is_file() and (staged / "configs" / "inference.json").is_file()
    done = subprocess.run(["cmake", "--install", str(build), "--prefix", str(tmp_path / "inst")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    installed = tmp_path / "inst" / "lib" / "Slicer-5.10" / "qt-scripted-modules" / "monai_bundle"
    assert (installed / "scripts" / "inference" / "predictor.py").is_file()
    assert not (installed / "data").exists() and not list(installed.rglob("__pycache__"))
    assert not (installed / "models").exists()  # no weights, ever: users add a model in the module
    assert (installed / "configs" / "result.schema.json").is_file() and (installed / "scripts" / "inference" / "result.py").is_file()
    _lib_reads_results_with_the_installed_files(installed.parent, tmp_path)


def _lib_reads_results_with_the_installed_files(modules: Path, tmp_path: Path) -> None:
    """The Lib beside the installed bundle (as Slicer installs them) reads a result through the bundle's
    contract in a Python without torch, numpy, Slicer or the bundle's ``scripts`` package."""
    import shutil

    shutil.copytree(MODULE / "MultiTaskUNetLib", modules / "MultiTaskUNetLib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    tag = ("Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure"
           "~SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~^^~^^")
    study = tmp_path / "study"
    study.mkdir()
    (study / "a_seg.nii.gz").write_bytes(b"read by Slicer, not here")
    result = {"input": "a.nrrd", "diagnosis": {"label": "glioma", "index": 0, "probabilities": {"glioma": 0.75, "no_tumor": 0.25}},
              "segmentation": {"path": "a_seg.nii.gz", "format": "nifti", "segments": [
                  {"name": "tumor", "value": 1, "voxels": 3, "volume_ml": 0.01, "terminology": tag, "color": "#e62828"}]},
              "model": {"name": "M", "version": "1", "sha256": "0" * 64}}
    (study / "a_result.json").write_text(json.dumps(result), encoding="utf-8")
    code = ("import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('slicer', 'qt', 'vtk', 'ctk', 'torch', 'monai', 'numpy', 'scripts'):\n"
            "            raise ImportError('blocked ' + name)\nsys.meta_path.insert(0, Block())\n"
            f"sys.path.insert(0, {str(modules)!r})\n"
            "from MultiTaskUNetLib import results, terminology\n"
            f"r = results.read_result({str(study / 'a_result.json')!r})\n"
            "print(results.contract.__file__)\n"
            "print(terminology.segment_terminologies(r.segments)[1].to_slicer_string() == r.segments[0].terminology)\n"
            "bad = dict(r.raw, device=3)\n"
            "try:\n    results.parse_result(bad, 'b_result.json')\nexcept results.ResultError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-B", "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(modules / "monai_bundle" / "scripts" / "inference" / "result.py"), "True",
                                        "b_result.json: 'device' must be a string, not 3"]


def test_no_weights_are_ever_shipped():
    """The extension factory has no trained model: the package must not pretend to ship one."""
    text = _strip_comments((REPO / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert "models/" not in text and "model.pt" not in text


def _ui_names() -> set[str]:
    root = ET.parse(MODULE / "Resources" / "UI" / "MultiTaskUNet.ui").getroot()
    return {w.get("name") for w in root.iter("widget")}


def test_every_widget_the_code_uses_is_in_the_ui():
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "MultiTaskUNet.py").read_text(encoding="utf-8")))
    assert used, "the widget uses no .ui widgets?"
    missing = used - _ui_names()
    assert not missing, f"widgets used by MultiTaskUNet.py but not in the .ui: {sorted(missing)}"


def test_ui_declares_its_custom_widgets():
    root = ET.parse(MODULE / "Resources" / "UI" / "MultiTaskUNet.ui").getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    qt_builtin = {"QWidget", "QLabel", "QPushButton", "QComboBox", "QLineEdit", "QPlainTextEdit", "QProgressBar", "QCheckBox"}
    for w in root.iter("widget"):
        assert w.get("class") in declared | qt_builtin, f"{w.get('name')}: class {w.get('class')} is not declared"


@pytest.mark.parametrize("icon", ["Resources/MultiTaskUNet.png", "MultiTaskUNet/Resources/Icons/MultiTaskUNet.png"])
def test_icons_are_128_png(icon):
    with Image.open(REPO / icon) as im:
        assert im.format == "PNG" and im.size == (128, 128)
        assert np.asarray(im.convert("L")).std() > 20  # a picture, not a flat placeholder


def test_screenshot_is_a_real_image():
    with Image.open(REPO / "Resources" / "Screenshot01.png") as im:
        assert im.format == "PNG" and im.size[0] >= 800 and im.size[1] >= 300
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert rgb.std() > 20
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)
    assert red.sum() > 50  # the tumor outline / diagnosis bar in the segment color is drawn


#: the GitHub repository every URL of the extension points at (ExtensionsIndex: the name starts with "Slicer")
REPOSITORY = "multitaskunet/SlicerMultiTaskUNet"


def _repo_of(url: str) -> str:
    return re.search(r"github(?:usercontent)?\.com/([\w.-]+/[\w-]+)", url).group(1)


def test_catalog_entry():
    entry = json.loads((REPO / "Resources" / "MultiTaskUNet.json").read_text(encoding="utf-8"))
    jsonschema.validate(entry, CATALOG_SCHEMA)
    assert b"\r" not in (REPO / "Resources" / "MultiTaskUNet.json").read_bytes()  # ExtensionsIndex: LF only
    sets = cmake_sets(REPO / "CMakeLists.txt")
    assert entry["category"] == sets["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == sets["EXTENSION_DEPENDS"].split()
    urls = [entry["scm_url"], sets["EXTENSION_HOMEPAGE"], sets["EXTENSION_ICONURL"], *sets["EXTENSION_SCREENSHOTURLS"].split()]
    assert {_repo_of(u) for u in urls} == {REPOSITORY}, urls


def test_names_follow_the_extensions_index_rules():
    """As Slicer/ExtensionsIndex scripts/check_description_files.py checks them: the repository name starts
    with "Slicer" (check_git_repository_name), the extension name (project, .json file) does not
    (check_extension_name) and equals the project name (check_cmakelists_content)."""
    entry = json.loads((REPO / "Resources" / "MultiTaskUNet.json").read_text(encoding="utf-8"))
    repo_name = entry["scm_url"].rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    assert any(repo_name.startswith(p) for p in ("Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_"))
    project = re.search(r"project\s*\(\s*([^\s)]+)", (REPO / "CMakeLists.txt").read_text(encoding="utf-8")).group(1)
    assert project == "MultiTaskUNet" == (REPO / "Resources" / "MultiTaskUNet.json").stem
    assert not project.lower().startswith("slicer")
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")  # the index's own patterns find both image settings
    assert re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', cmake, re.I | re.M)
    assert re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake, re.I | re.M)


def test_docs_point_at_the_same_repository():
    for doc in (REPO / "README.md", MODULE / "docs" / "slicer.md"):
        found = set(re.findall(r"github\.com/([\w.-]+/[\w-]+)", doc.read_text(encoding="utf-8")))
        assert found <= {REPOSITORY}, (doc.name, found)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_lib_is_free_of_slicer_qt_vtk_ctk():
    for path in (MODULE / "MultiTaskUNetLib").glob("*.py"):
        assert not _imports(path) & {"slicer", "qt", "vtk", "ctk", "MultiTaskUNetMRML"}, path.name
    blocker = ("import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('slicer', 'qt', 'vtk', 'ctk', 'torch', 'monai', 'scripts'):\n"
               "            raise ImportError('blocked ' + name)\nsys.meta_path.insert(0, Block())\n"
               f"sys.path.insert(0, {str(MODULE)!r})\nimport importlib, pkgutil, MultiTaskUNetLib\n"
               "for m in pkgutil.iter_modules(MultiTaskUNetLib.__path__):\n"
               "    importlib.import_module('MultiTaskUNetLib.' + m.name)\nprint('ok')\n")
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr  # importable without Slicer, torch, MONAI or the bundle's package


def _module_level_calls(tree: ast.Module) -> list[str]:
    calls = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            for sub in node.body if isinstance(node, ast.ClassDef) else []:
                if not isinstance(sub, ast.FunctionDef):
                    calls += [ast.unparse(c.func) for c in ast.walk(sub) if isinstance(c, ast.Call)]
            continue
        calls += [ast.unparse(c.func) for c in ast.walk(node) if isinstance(c, ast.Call)]
    return calls


def test_module_installs_nothing_at_import():
    tree = ast.parse((MODULE / "MultiTaskUNet.py").read_text(encoding="utf-8"))
    top_imports = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names} | \
        {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not top_imports & {"torch", "monai", "PyTorchUtils", "scripts"}
    calls = _module_level_calls(tree)
    assert not [c for c in calls if re.search(r"pip_install|installTorch|ensureDependencies", c)], calls
    source = (MODULE / "MultiTaskUNet.py").read_text(encoding="utf-8")
    assert "slicer.util.pip_install" in source and "installTorch" in source  # ... but it does install on first use


def test_module_structure():
    tree = ast.parse((MODULE / "MultiTaskUNet.py").read_text(encoding="utf-8"))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    bases = {name: {ast.unparse(b) for b in c.bases} for name, c in classes.items()}
    assert bases["MultiTaskUNet"] == {"ScriptedLoadableModule"}
    assert "ScriptedLoadableModuleWidget" in bases["MultiTaskUNetWidget"]
    assert bases["MultiTaskUNetLogic"] == {"ScriptedLoadableModuleLogic"}
    assert bases["MultiTaskUNetTest"] == {"ScriptedLoadableModuleTest"}
    process = next(f for f in classes["MultiTaskUNetLogic"].body if isinstance(f, ast.FunctionDef) and f.name == "process")
    assert ast.get_docstring(process)
    test = next(f for f in classes["MultiTaskUNetTest"].body if isinstance(f, ast.FunctionDef) and f.name == "runTest")
    assert test.body
    extra = ast.parse((MODULE / "Testing" / "Python" / "MultiTaskUNetReviewExportTest.py").read_text(encoding="utf-8"))
    assert any(isinstance(n, ast.ClassDef) and "ScriptedLoadableModuleTest" in {ast.unparse(b) for b in n.bases}
               for n in extra.body)


@pytest.mark.parametrize("path", sorted(p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*.py")))
def test_python_39_syntax_and_lazy_annotations(path):
    """Slicer 5.8 ships Python 3.9: no newer syntax; annotations stay strings (``X | None`` is 3.10+ at runtime)."""
    source = (MODULE / path).read_text(encoding="utf-8")
    tree = ast.parse(source, feature_version=(3, 9))
    annotated = any(isinstance(n, (ast.AnnAssign, ast.arg)) and getattr(n, "annotation", None) is not None
                    for n in ast.walk(tree)) or any(isinstance(n, ast.FunctionDef) and n.returns for n in ast.walk(tree))
    if annotated:
        assert "from __future__ import annotations" in source, path


def _ui_widget(name: str):
    root = ET.parse(MODULE / "Resources" / "UI" / "MultiTaskUNet.ui").getroot()
    return next(w for w in root.iter("widget") if w.get("name") == name)


def _ui_property(widget, name: str):
    prop = next((p for p in widget.findall("property") if p.get("name") == name), None)
    if prop is None:
        return None
    if prop.find("stringlist") is not None:
        return [e.text for e in prop.find("stringlist")]
    return next(iter(prop)).text


def test_input_selector_lists_scalar_volumes_but_not_labelmaps():
    """``vtkMRMLLabelMapVolumeNode`` is a subclass of ``vtkMRMLScalarVolumeNode``: child types are hidden,
    as Slicer's scripted-module template does (Utilities/Templates/Modules/Scripted/Resources/UI)."""
    selector = _ui_widget("inputVolumeSelector")
    assert _ui_property(selector, "nodeTypes") == ["vtkMRMLScalarVolumeNode"]
    assert _ui_property(selector, "showChildNodeTypes") == "false"


def _module_tree():
    return ast.parse((MODULE / "MultiTaskUNet.py").read_text(encoding="utf-8"))


def _method(tree, cls: str, name: str) -> ast.FunctionDef:
    klass = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    return next(f for f in klass.body if isinstance(f, ast.FunctionDef) and f.name == name)


def _calls(node) -> list[str]:
    return [ast.unparse(c) for c in ast.walk(node) if isinstance(c, ast.Call)]


def test_terminology_goes_through_the_portable_tag():
    """``vtkSegment.SetTerminology``/``GetTerminology`` exist from Slicer 5.10 only; the module uses the tag."""
    for path in MODULE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\.(Set|Get)Terminology\(", text), path


def test_panel_cancel_does_not_block_and_the_job_is_always_cleaned_up():
    tree = _module_tree()
    assert "self.job.cancel(wait=False)" in _calls(_method(tree, "MultiTaskUNetWidget", "onApply"))
    poll = _method(tree, "MultiTaskUNetWidget", "onPoll")
    tries = [n for n in ast.walk(poll) if isinstance(n, ast.Try)]
    assert any("self.logic.cleanupJob(job)" in _calls(ast.Module(body=t.finalbody, type_ignores=[])) for t in tries)
    assert "job.active" in ast.unparse(poll)  # keeps polling while the cancelled processes exit


def test_scene_close_cancels_the_run():
    tree = _module_tree()
    setup = ast.unparse(_method(tree, "MultiTaskUNetWidget", "setup"))
    assert "self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)" in setup
    close = ast.unparse(_method(tree, "MultiTaskUNetWidget", "onSceneStartClose"))
    assert "self.jobVolume = None" in close and "cancel(wait=False" in close
    assert "self.removeObservers()" in ast.unparse(_method(tree, "MultiTaskUNetWidget", "cleanup"))


def test_nothing_is_installed_before_there_is_a_model():
    tree = _module_tree()
    ensure = ast.unparse(_method(tree, "MultiTaskUNetLogic", "ensureDependencies"))
    assert ensure.index("self.requireModel(bundleDir)") < ensure.index("self.missingDependencies(bundleDir)") < \
        ensure.index("self._install(plan)")
    assert ensure.index("environmentProblem()") < ensure.index("self.requireModel(bundleDir)")
    apply = ast.unparse(_method(tree, "MultiTaskUNetWidget", "onApply"))
    assert apply.index("if not bundle:") < apply.index("ensureDependencies")


def test_torch_first_through_pytorchutils_then_pip_under_constraints():
    install = ast.unparse(_method(_module_tree(), "MultiTaskUNetLogic", "_install"))
    assert "installTorch(askConfirmation=False, torchVersionRequirement=f'>={MIN_TORCH}')" in install
    assert "slicer.util.pip_install(pip_arguments(plan.pip, path))" in install
    assert install.index("installTorch") < install.index("pip_constraints(installed_versions())") < install.index("pip_install")


def test_self_test_never_installs_packages():
    tree = _module_tree()
    klass = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MultiTaskUNetTest")
    calls = " ".join(_calls(klass))
    assert not re.search(r"ensureDependencies|pip_install|installTorch|_install\(", calls), calls
    inference = ast.unparse(_method(tree, "MultiTaskUNetTest", "test_segment_classify_review_export"))
    assert inference.index("missingDependencies") < inference.index("Skipped the inference test") < inference.index("process(")
    assert "slicer.util.pip_install" not in (MODULE / "Testing" / "Python" / "MultiTaskUNetReviewExportTest.py").read_text(encoding="utf-8")


def test_module_load_checks_the_slicer_version():
    tree = _module_tree()
    init = ast.unparse(_method(tree, "MultiTaskUNet", "__init__"))
    assert "environmentProblem()" in init and "logging.warning(problem)" in init
    setup = ast.unparse(_method(tree, "MultiTaskUNetWidget", "setup"))
    assert "self.ui.applyButton.enabled = False" in setup


# slicer.util functions checked to exist with these names in 3D Slicer v5.10.0 and v5.12.3
# (Base/Python/slicer/util.py; pip_install in 5.12 forwards to slicer.packaging.pip_install, which
# accepts the same list of pip arguments). Beyond slicer.util, the worklist and the SR use DICOMLib.DICOMUtils
# importDicom / loadSeriesByUID and slicer.dicomDatabase.seriesForFile / fileForInstance, checked in the same
# tags (Modules/Scripted/DICOMLib/DICOMUtils.py; DICOMSegmentationPlugin.getDICOMFileList in 5.12.3)
VERIFIED_SLICER_UTIL = {
    "addVolumeFromArray", "arrayFromVolume", "childWidgetVariables", "confirmOkCancelDisplay", "createProgressDialog",
    "errorDisplay", "getFirstNodeByClassByName", "getModuleLogic", "loadScene", "loadUI", "loadVolume", "mainWindow",
    "pip_install", "saveNode",
    "saveScene", "selectModule", "setSliceViewerLayers", "settingsValue", "startupEnvironment", "tryWithErrorDisplay",
    "updateSegmentBinaryLabelmapFromArray", "updateVolumeFromArray", "VTKObservationMixin",
}


def test_only_verified_slicer_util_functions_are_used():
    used = set()
    for path in [MODULE / "MultiTaskUNet.py", *sorted((MODULE / "MultiTaskUNetMRML").glob("*.py")),
                 *sorted((MODULE / "Testing" / "Python").glob("*.py"))]:
        used |= set(re.findall(r"slicer\.util\.(\w+)", path.read_text(encoding="utf-8")))
        used |= {a.name for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(n, ast.ImportFrom)
                 and n.module == "slicer.util" for a in n.names}
    assert used <= VERIFIED_SLICER_UTIL, used - VERIFIED_SLICER_UTIL
