"""MultiTaskUNetLib.bundles: finding and describing the model bundle."""

import json

import pytest

from MultiTaskUNetLib.bundles import BundleError, default_bundle_dir, inspect_bundle


def _bundle(root, card=None, weights=False, meta=None):
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "infer.py").write_text("")
    if card is not None or weights:
        (root / "models").mkdir()
    if card is not None:
        (root / "models" / "model_card.json").write_text(card if isinstance(card, str) else json.dumps(card))
    if weights:
        (root / "models" / "model.pt").write_bytes(b"")
    if meta is not None:
        (root / "configs").mkdir()
        (root / "configs" / "metadata.json").write_text(meta)
    return root


def test_default_bundle_installed_or_in_source_tree(tmp_path):
    module = tmp_path / "MultiTaskUNet"
    module.mkdir()
    assert default_bundle_dir(module) is None
    _bundle(tmp_path / "monai_bundle")  # source tree: beside the module folder
    assert default_bundle_dir(module) == tmp_path / "monai_bundle"
    _bundle(module / "monai_bundle")  # installed: inside the module folder, preferred
    assert default_bundle_dir(module) == module / "monai_bundle"


def test_repository_layout_finds_the_real_bundle(repo_root):
    assert default_bundle_dir(repo_root / "MultiTaskUNet") == repo_root / "monai_bundle"


def test_trained_bundle(tmp_path):
    card = {"name": "MultiTaskUNet", "version": "0.2.0", "classes": ["benign", "malignant"], "segments": ["background", "lesion"]}
    info = inspect_bundle(_bundle(tmp_path / "b", card=card, weights=True))
    assert (info.name, info.version, info.classes, info.has_weights) == ("MultiTaskUNet", "0.2.0", ("benign", "malignant"), True)
    assert info.describe() == "MultiTaskUNet 0.2.0 - benign, malignant"


def test_untrained_bundle_says_so(tmp_path):
    info = inspect_bundle(_bundle(tmp_path / "b", meta=json.dumps({"name": "Meta name", "version": "9"})))
    assert (info.name, info.version, info.classes, info.has_weights) == ("Meta name", "9", (), False)
    assert "no trained weights" in info.describe()
    info = inspect_bundle(_bundle(tmp_path / "c", meta="{broken"))
    assert info.name == "c"  # a broken metadata file only loses the display name


def test_not_a_bundle_and_broken_card(tmp_path):
    with pytest.raises(BundleError, match="not a MultiTaskUNet bundle"):
        inspect_bundle(tmp_path)
    with pytest.raises(BundleError, match="model_card.json: model card is not valid JSON"):
        inspect_bundle(_bundle(tmp_path / "b", card="{"))


def test_file_names_agree_with_the_bundle():
    """The Lib may not import the bundle (no torch in Slicer's GUI process), so it keeps its own copy
    of the names; they must be the bundle's (``scripts.core.model_card`` defines them once)."""
    from MultiTaskUNetLib.bundles import CARD_FILE, WEIGHTS_FILE
    from scripts.core import model_card

    assert (CARD_FILE.as_posix(), WEIGHTS_FILE.as_posix()) == (model_card.CARD_FILE, model_card.WEIGHTS_FILE)


def test_panel_lines_name_the_input_channels_and_the_training_data(tmp_path):
    """The card's ``training_data`` as the bundle writes it (``scripts.core.model_card.training_data``)."""
    from scripts.core.model_card import training_data

    datalist = tmp_path / "data" / "datalist.json"
    datalist.parent.mkdir()
    datalist.write_text(json.dumps({"training": [{"image": "a"}, {"image": "b", "provenance": "edited"}, {"image": "c"}],
                                    "validation": [{"image": "d"}], "test": [{"image": "e", "provenance": "accepted"}]}))
    card = {"name": "Brain", "version": "2", "classes": ["a", "b"], "channels": ["T1c", "FLAIR"],
            "training_data": training_data(datalist)}
    info = inspect_bundle(_bundle(tmp_path / "b", card=card, weights=True))
    assert info.channels == ("T1c", "FLAIR")
    assert info.details() == ("Input: T1c, FLAIR\nTraining data: datalist.json: training 3, validation 1, test 1 "
                              "(2 reviewed by radiologists)")


def test_training_data_from_the_metadata_or_said_to_be_missing(tmp_path):
    meta = json.dumps({"name": "M", "data_source": "Built-in synthetic data"})
    info = inspect_bundle(_bundle(tmp_path / "b", card={"name": "M", "channels": ["T2"]}, weights=True, meta=meta))
    assert info.details() == "Input: T2\nTraining data: Built-in synthetic data"
    info = inspect_bundle(_bundle(tmp_path / "c", card={"name": "M"}, weights=True))
    assert info.details() == "Input: not stated in the model card\nTraining data: not described in the model card"

