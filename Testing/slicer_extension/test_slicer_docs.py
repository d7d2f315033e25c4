"""The Slicer guide (``MultiTaskUNet/docs/slicer.md``) and the README's Slicer paragraph say what the code does.

Checked: the minimum Slicer the module checks at load, that no model is shipped, that the catalog
entry's GitHub owner is called a placeholder, and that every test the guide's "What is tested where"
table names exists.
"""

import re
from pathlib import Path

from MultiTaskUNetLib.dependencies import MIN_SLICER, environment_problem
from test_slicer_releases import MRML_TESTS, NOT_ON_5_12

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GUIDE = REPO / "MultiTaskUNet" / "docs" / "slicer.md"
README = REPO / "README.md"


def _slicer_part_of_readme() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index("## For radiologists: 3D Slicer"):].split("\n## ", 1)[0]


def _table(text: str, heading: str) -> list[list[str]]:
    part = text[text.index(heading):]
    rows = [line for line in part.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[2:]]  # past the header and its rule


def test_docs_state_the_minimum_the_module_checks():
    minimum = "{}.{}".format(*MIN_SLICER)
    older = "{}.{}".format(MIN_SLICER[0], MIN_SLICER[1] - 2)
    assert f"needs 3D Slicer {minimum} or later" in environment_problem((5, MIN_SLICER[1] - 2), (3, 9))
    guide = GUIDE.read_text(encoding="utf-8")
    assert f"**3D Slicer {minimum} or later**" in guide and f'"MultiTaskUNet needs 3D Slicer {minimum} or later"' in guide
    assert f"Needs 3D Slicer {minimum} or later" in _slicer_part_of_readme()
    for text in (guide, _slicer_part_of_readme()):
        named = {m for m in re.findall(r"Slicer (5\.\d+)(?:\+| or later| and later)", text)}
        assert named <= {minimum, "5.12"}, named  # 5.12: what DICOM SEG and SR need, above the minimum
        assert f"Slicer {older} or later" not in text and "5.6 or later" not in text


def test_docs_say_no_model_is_shipped():
    guide, readme = GUIDE.read_text(encoding="utf-8"), _slicer_part_of_readme()
    assert "The extension contains the program, not trained weights" in guide
    assert "No weights are shipped in the extension package" in guide
    assert "the extension contains no trained weights" in readme
    assert "Until a model is there the panel says so, and nothing is downloaded or installed." in guide
    for text in (guide, readme):
        assert not re.search(r"(comes|shipped|installed) with (a|the|its) (trained )?model|model (is )?included", text, re.I)


def test_docs_say_the_catalog_owner_is_a_placeholder():
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    owner = re.search(r'EXTENSION_HOMEPAGE "https://github\.com/([\w.-]+)/SlicerMultiTaskUNet"', cmake).group(1)
    guide = GUIDE.read_text(encoding="utf-8")
    assert f"The GitHub owner `{owner}` in those\nURLs (and in this guide's links) is a placeholder" in guide
    assert "a placeholder GitHub owner" in _slicer_part_of_readme()
    assert "not in Slicer's Extensions Index yet" in guide and "not in Slicer's Extensions Manager yet" in _slicer_part_of_readme()


def test_every_test_the_guide_names_exists():
    rows = _table(GUIDE.read_text(encoding="utf-8"), "### What is tested where")
    assert len(rows) >= 17
    for item, tests, inside_slicer in rows:
        named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", tests)
        assert named, f"{item}: no test named"
        for file, test in named:
            assert re.search(rf"^def {test}\(", (HERE / file).read_text(encoding="utf-8"), re.M), f"{file}::{test}"
        for file, test in re.findall(r"`(test_\w+\.py)::(test_\w+)` \(both", tests):  # runs on slicer-core 5.12 too
            assert file in MRML_TESTS and f"{file}::{test}" not in NOT_ON_5_12, f"{file}::{test}"
        assert inside_slicer, item
