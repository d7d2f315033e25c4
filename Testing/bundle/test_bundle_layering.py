"""The bundle holds no web code and never imports the web shell; images are read through one layer.

The bundle (``monai_bundle/``) is what the Slicer extension installs (``CMakeLists.txt``: configs, docs,
``scripts/**.py``) and what the CLI and the Docker image run; the web demo is ``app.py`` with its
``mtunet_web`` package beside it, which import the bundle, never the other way round. One overlay renderer
(``scripts.inference.overlay``) draws for the CLI and the page, with the terminology table's colours.
Every image is read through one low-level package, ``scripts.imageio`` (suffix tables, the one
``Geometry``, the readers, headers, zips and the channel rule), which imports nothing of the bundle
above it; the inference API's Study reader, prepare and training build on it, and no module imports
one in a circle. ``scripts/`` is layered (``docs/contracts.md``, "Bundle layout"): imageio -> core ->
train | inference (siblings) -> tools and shells; no module imports a layer above its own, and the
top level holds only the packages and the entry-point modules. Read as source (``ast``): nothing is
imported here.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "monai_bundle"
WEB = REPO / "mtunet_web"
#: top-level packages only the web shell may import
WEB_ONLY_IMPORTS = {"mtunet_web", "app", "gradio", "gradio_client"}
#: what the web shell does and the bundle must not: upload checks, per-run folders, page text, examples
WEB_ONLY_NAMES = {"check_upload", "plain_error", "prune_runs", "write_examples", "summary_markdown", "UploadError",
                  "SUPPORTED_SUFFIXES"}


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return names | {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}


#: what the image layer alone defines: one definition each, no copy anywhere else (``_plain_mode`` and
#: ``_first_line`` were the inference reader's copies; ``read_header`` / ``read_raster`` of the datalist and the
#: Study reader are their own wrappers, with their own results)
LAYER_NAMES = {"RASTER_SUFFIXES", "NIFTI_SUFFIXES", "VOLUME_SUFFIXES", "DICOM_SUFFIXES", "ZIP_SUFFIXES",
               "KNOWN_SUFFIXES", "RASTER_FORMATS", "Geometry", "ImageHeader", "InputError", "LUMA", "luminance", "channels_compatible",
               "match_channels", "to_grey", "plain_mode", "_plain_mode", "sitk_to_channels_first", "is_dicom_file",
               "extract_zip", "MAX_ZIP_BYTES", "MAX_ZIP_FILES", "read_nifti_header", "load_image", "read_series",
               "sitk_info", "is_raster", "is_nifti", "_first_line", "itk_message"}
#: modules of the inference API and of prepare that read images on top of the layer: tools' internals, not for others
READING_MODULES = {"scripts.inference.readers", "scripts.inference.dicom", "scripts.inference.archive",
                   "scripts.inference.study", "scripts.prepare.imageio"}
#: each group of ``scripts/`` and its layer; a module imports its own group or a lower layer. ``train`` and
#: ``inference`` share a layer and never import each other; the tools and shells (layer 3) may use one another
LAYERS = {"scripts": 0, "scripts.imageio": 0, "scripts.core": 1, "scripts.train": 2, "scripts.inference": 2,
          "scripts.prepare": 3, "scripts.datasets": 3, "scripts.infer": 3, "scripts.export": 3, "scripts.demo": 3}
TOOLS_LAYER = 3
#: the entry-point modules users run (``python -m scripts.infer``, ``python -m scripts.export``,
#: ``python monai_bundle/scripts/demo.py``): the only modules at ``scripts/``'s top level
ENTRY_POINTS = {"infer.py", "export.py", "demo.py"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(BUNDLE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _bundle_graph() -> dict[str, set[str]]:
    """Bundle module -> the bundle modules it imports (lazy imports included; ``from pkg import mod``
    counts as importing ``pkg.mod``; a module importing its own package is not an edge)."""
    modules = {_module_name(p): p for p in _bundle_sources() if _module_name(p).startswith("scripts")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                edges |= subs or {node.module}
        graph[name] = {m for m in edges if m in modules and m != name and not name.startswith(m + ".")}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def _bundle_sources() -> list[Path]:
    return sorted(p for p in BUNDLE.rglob("*.py") if "__pycache__" not in p.parts and ".venv" not in p.parts)


def test_nothing_in_the_bundle_imports_the_web_shell() -> None:
    sources = _bundle_sources()
    assert len(sources) > 50  # the scripts package and its sub-packages were found
    upward = {str(p.relative_to(REPO)): sorted(m for m in _imports(p) if m.split(".")[0] in WEB_ONLY_IMPORTS)
              for p in sources}
    assert {k: v for k, v in upward.items() if v} == {}


def test_the_bundle_holds_no_web_only_module() -> None:
    assert not list(BUNDLE.rglob("webdemo*.py")) and not list(BUNDLE.rglob("app.py"))
    holding = {str(p.relative_to(REPO)): sorted(WEB_ONLY_NAMES & _defined(p)) for p in _bundle_sources()}
    assert {k: v for k, v in holding.items() if v} == {}
    # and the web shell holds them (it is where they went), drawing nothing of its own
    web = set().union(*(_defined(p) for p in WEB.glob("*.py")))
    assert WEB_ONLY_NAMES <= web
    assert not web & {"render_overlay", "render_uncertainty", "to_rgb", "paint", "outline", "PALETTE"}


def test_the_web_shell_and_the_app_draw_with_the_bundles_overlay() -> None:
    for path in [REPO / "app.py", *WEB.glob("*.py")]:
        assert not _imports(path) & {"scipy", "matplotlib"}, path.name  # no renderer of their own
    assert "scripts.inference" in _imports(REPO / "app.py")  # overlay, through the package


def test_one_overlay_renderer_with_the_terminology_colours() -> None:
    overlay = BUNDLE / "scripts" / "inference" / "overlay.py"
    bundle_imports = {m for m in _imports(overlay) if m.startswith("scripts")}
    assert bundle_imports == {"scripts.inference.terminology"}  # colours from the one table; no import circle
    renderer = {"render_overlay", "render_uncertainty", "to_rgb", "key_slices", "best_slice", "display_arrays",
                "display_map", "slice_view", "_paint", "_display", "PALETTE", "CONTOUR_RGB"}
    copies = {str(p.relative_to(REPO)): sorted(_defined(p) & renderer) for p in _bundle_sources() if p != overlay}
    assert {k: v for k, v in copies.items() if v} == {}
    # the data sets' contact sheets outline their masks with it too
    assert "scripts.inference.overlay" in _imports(BUNDLE / "scripts" / "datasets" / "preview.py")


def test_the_image_layer_imports_nothing_above_it() -> None:
    layer = sorted((BUNDLE / "scripts" / "imageio").glob("*.py"))
    assert {p.stem for p in layer} >= {"__init__", "suffixes", "geometry", "channels", "raster", "volume", "dicom",
                                       "archive", "reader", "monai_reader", "errors"}
    def above(module: str) -> bool:
        return module.split(".")[0] == "scripts" and module.split(".")[:2] != ["scripts", "imageio"]

    upward = {p.name: sorted(m for m in _imports(p) if above(m)) for p in layer}
    assert {k: v for k, v in upward.items() if v} == {}


def test_each_reading_name_is_defined_once_in_the_image_layer() -> None:
    """Suffix tables, Geometry, the channel rule, the readers and the zip limits: other modules import them."""
    layer = BUNDLE / "scripts" / "imageio"
    others = [p for p in _bundle_sources() if layer not in p.parents]
    others += [REPO / "app.py", *WEB.glob("*.py"), *(REPO / "MultiTaskUNet").rglob("*.py")]
    copies = {str(p.relative_to(REPO)): sorted(_defined(p) & LAYER_NAMES) for p in others}
    assert {k: v for k, v in copies.items() if v} == {}
    defined = set().union(*(_defined(p) for p in layer.glob("*.py")))
    assert LAYER_NAMES - {"_plain_mode", "_first_line"} <= defined


def test_the_tools_reading_modules_are_not_imported_from_below() -> None:
    """Training, the datalist and the canonical grid read through the layer, not through prepare or the Study reader."""
    graph = _bundle_graph()
    assert graph["scripts.core.transforms"] >= {"scripts.imageio", "scripts.imageio.monai_reader"}
    for name, edges in graph.items():
        tool = ".".join(name.split(".")[:2])
        wrong = {m for m in edges & READING_MODULES if not m.startswith(tool + ".") and m != tool}
        assert not wrong, f"{name} imports {sorted(wrong)}"


def test_no_import_circles_in_the_bundle() -> None:
    assert _circles(_bundle_graph()) == []  # lazy imports inside functions included


def _group(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_scripts_top_level_holds_only_the_packages_and_the_entry_points() -> None:
    top = BUNDLE / "scripts"
    files = {p.name for p in top.glob("*.py")}
    packages = {p.name for p in top.iterdir() if p.is_dir() and p.name != "__pycache__" and (p / "__init__.py").is_file()}
    assert files == {"__init__.py"} | ENTRY_POINTS
    assert {f"scripts.{n}" for n in packages} | {f"scripts.{Path(f).stem}" for f in ENTRY_POINTS} | {"scripts"} \
        == set(LAYERS)
    # no stray folder of modules without an __init__.py (it would import as a namespace package)
    assert not [p.name for p in top.iterdir() if p.is_dir() and p.name != "__pycache__" and p.name not in packages]


def test_no_module_imports_a_layer_above_its_own() -> None:
    graph = _bundle_graph()
    assert {_group(m) for m in graph} <= set(LAYERS), sorted({_group(m) for m in graph} - set(LAYERS))
    wrong = {}
    for name, edges in graph.items():
        mine = _group(name)
        for target in edges:
            theirs = _group(target)
            if theirs == mine or LAYERS[theirs] < LAYERS[mine] or LAYERS[theirs] == LAYERS[mine] == TOOLS_LAYER:
                continue
            wrong.setdefault(name, []).append(target)
    assert wrong == {}
    # the layering the order stands for: the sibling API and training meet only in the core
    assert graph["scripts.inference.predictor"] & {"scripts.core.model_card", "scripts.core.sliding_window"}
    assert not any(_group(t) == "scripts.inference" for n, e in graph.items() if n.startswith("scripts.train") for t in e)


def test_every_scripts_name_in_the_configs_exists() -> None:
    """A config's ``_target_`` or ``$scripts....`` expression names a module that is there and a name it holds."""
    import re

    modules = {_module_name(p): p for p in _bundle_sources() if _module_name(p).startswith("scripts")}
    named = set()
    for config in (BUNDLE / "configs").glob("*.json"):
        named |= set(re.findall(r"(?<![\w.])scripts(?:\.\w+)+", config.read_text(encoding="utf-8")))
    assert len(named) > 20
    missing = []
    for dotted in sorted(named):
        parts = dotted.split(".")
        prefix = max((i for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules), default=0)
        if prefix == 0:
            missing.append(dotted)
            continue
        rest = parts[prefix:]
        if not rest:
            continue
        tree = ast.parse(modules[".".join(parts[:prefix])].read_text(encoding="utf-8"))
        held = _defined(modules[".".join(parts[:prefix])])
        held |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        held |= {t.target.id for t in tree.body if isinstance(t, ast.AnnAssign) and isinstance(t.target, ast.Name)}
        held |= {e.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Tuple)
                 for e in t.elts if isinstance(e, ast.Name)}
        if rest[0] not in held:
            missing.append(dotted)
    assert missing == []
