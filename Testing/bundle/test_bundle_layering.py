"""The bundle holds no web code and never imports the web shell.

The bundle (``monai_bundle/``) is what the Slicer extension installs (``CMakeLists.txt``: configs, docs,
``scripts/**.py``) and what the CLI and the Docker image run; the web demo is ``app.py`` with its
``mtunet_web`` package beside it, which import the bundle, never the other way round. One overlay renderer
(``scripts.inference.overlay``) draws for the CLI and the page, with the terminology table's colours.
Read as source (``ast``): nothing is imported here.
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
