"""DICOMweb in and out against a real Orthanc (Debian orthanc + orthanc-dicomweb, started by the fixtures):
study and series URLs read with WADO-RS, the SEG and SR pushed back with STOW-RS and found on the server
with their references, an unknown UID, a server that is down, wrong credentials, a series that is not
an image, a push the server refuses halfway, --resume with --push, a re-push that adds nothing."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from infer_helpers import mni_volume, write_dicom_series
from pacs_helpers import free_port
from scripts.infer import main
from scripts.inference.dicomweb import ENV_VARS, Connection, DicomWebError, DicomWebUrl, parse_url

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def _series(folder: Path) -> tuple[str, str, list[str]]:
    """(StudyInstanceUID, SeriesInstanceUID, SOPInstanceUIDs) of a DICOM series folder."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]
    return str(headers[0].StudyInstanceUID), str(headers[0].SeriesInstanceUID), sorted(str(h.SOPInstanceUID) for h in headers)


@pytest.fixture(scope="module")
def pacs(orthanc, orthanc_token, predictor2d, tmp_path_factory):
    """Two MR brain series (two studies) on the basic-auth server, plus the SR of a local run of the
    first one (a series that is not an image); the second study on the token server too."""
    root = tmp_path_factory.mktemp("pacs")
    studies = {}
    for name, slices in (("a", 8), ("b", 6)):
        write_dicom_series(mni_volume(slices), root / name, spacing=(2.0, 2.0, 3.0))
        studies[name] = _series(root / name)
        orthanc.upload(root / name)
    orthanc_token.upload(root / "b")
    pred = predictor2d.predict(root / "a", output_dir=root / "local", seg_format="dicom-seg", overlay=False)
    sr = pydicom.dcmread(pred.paths["sr"])  # another report than the CLI's (which would have the same UIDs)
    sr.SeriesInstanceUID, sr.SOPInstanceUID = generate_uid(), generate_uid()
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    orthanc.request("/instances", buffer.getvalue())
    return {"root": root, "studies": studies, "sr_series": str(sr.SeriesInstanceUID)}


@pytest.fixture
def no_env(monkeypatch):
    for key in ENV_VARS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def _env(monkeypatch, **values):
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _url(server, study, series=None):
    return f"{server.dicomweb}/studies/{study}" + (f"/series/{series}" if series else "")


def _leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("mtunet-dicomweb-*")}


def _series_on_server(server, study_uid, modality):
    return [s for s in server.qido(f"/studies/{study_uid}/series") if s["00080060"]["Value"][0] == modality]


def test_round_trip_reads_urls_and_pushes_seg_and_sr_back(pacs, orthanc, bundle2d, tmp_path, capsys, no_env):
    _env(no_env, **orthanc.env())
    (a_study, a_series, a_sops), (b_study, b_series, _) = pacs["studies"]["a"], pacs["studies"]["b"]
    before = _leftovers()
    code, out, err = _cli(capsys, _url(orthanc, a_study, a_series), _url(orthanc, b_study), "--out", tmp_path / "out",
                          "--bundle", bundle2d, "--device", "cpu", "--push", orthanc.dicomweb)
    assert code == 0, err
    assert _leftovers() == before  # the retrieved files are gone
    assert "2 of 2 studies done" in out
    for uid in (a_series, b_study):  # output names: the UID the URL ends in
        assert sorted(p.name for p in (tmp_path / "out").glob(f"{uid}_*")) == [
            f"{uid}_overlay.png", f"{uid}_result.json", f"{uid}_seg.dcm", f"{uid}_sr.dcm"]

    # the URL's study is read exactly as its local folder: same answer, same label map
    local = pydicom.dcmread(tmp_path / "out" / f"{a_series}_seg.dcm")
    result = json.loads((tmp_path / "out" / f"{a_series}_result.json").read_text(encoding="utf-8"))
    assert result["input"] == _url(orthanc, a_study, a_series)
    assert _cli(capsys, pacs["root"] / "a", "--out", tmp_path / "folder", "--bundle", bundle2d, "--device", "cpu",
                "--format", "dicom-seg", "--no-overlay")[0] == 0
    from_folder = json.loads((tmp_path / "folder" / "a_result.json").read_text(encoding="utf-8"))
    assert result["diagnosis"] == from_folder["diagnosis"]
    assert result["segmentation"]["segments"] == from_folder["segmentation"]["segments"]
    assert (local.pixel_array == pydicom.dcmread(tmp_path / "folder" / "a_seg.dcm").pixel_array).all()

    # on the server: one SEG and one SR in each study, referencing the source series
    seg_uid, sr_uid = result["pushed"]["instances"]
    assert result["pushed"]["url"] == orthanc.dicomweb and seg_uid == local.SOPInstanceUID
    assert len(_series_on_server(orthanc, a_study, "SEG")) == 1 and len(_series_on_server(orthanc, b_study, "SEG")) == 1
    seg = pydicom.dcmread(io.BytesIO(orthanc.instance_file(seg_uid)))
    assert seg.SOPClassUID == SEG_SOP_CLASS and seg.StudyInstanceUID == a_study
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == a_series
    assert sorted(i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == a_sops
    assert (seg.pixel_array == local.pixel_array).all()
    sr = pydicom.dcmread(io.BytesIO(orthanc.instance_file(sr_uid)))
    assert sr.Modality == "SR" and sr.StudyInstanceUID == a_study
    evidence = {item.SeriesInstanceUID: {i.ReferencedSOPInstanceUID for i in item.ReferencedSOPSequence}
                for item in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence}
    assert evidence[a_series] == set(a_sops) and evidence[seg.SeriesInstanceUID] == {seg_uid}

    # --resume with the same --push: nothing is run or pushed again
    code, out, err = _cli(capsys, _url(orthanc, a_study, a_series), _url(orthanc, b_study), "--out", tmp_path / "out",
                          "--bundle", bundle2d, "--device", "cpu", "--push", orthanc.dicomweb, "--resume")
    assert code == 0, err
    assert "2 of 2 studies done (2 kept from an earlier run)" in out
    assert len(_series_on_server(orthanc, a_study, "SEG")) == 1 and len(_series_on_server(orthanc, a_study, "SR")) == 2

    # run and pushed again from scratch (a re-run, a restarted worker): the same answer has the same UIDs,
    # so the server still holds one SEG and one SR of it
    code, out, err = _cli(capsys, _url(orthanc, a_study, a_series), "--out", tmp_path / "again", "--bundle", bundle2d,
                          "--device", "cpu", "--push", orthanc.dicomweb)
    assert code == 0, err
    again = json.loads((tmp_path / "again" / f"{a_series}_result.json").read_text(encoding="utf-8"))
    assert again["pushed"]["instances"] == [seg_uid, sr_uid]
    assert len(_series_on_server(orthanc, a_study, "SEG")) == 1 and len(_series_on_server(orthanc, a_study, "SR")) == 2


def test_study_url_skips_non_image_series_and_series_url_of_an_sr_is_refused(pacs, orthanc, bundle2d, tmp_path,
                                                                             capsys, no_env):
    _env(no_env, **orthanc.env())
    a_study, a_series, _ = pacs["studies"]["a"]
    sr_url = _url(orthanc, a_study, pacs["sr_series"])
    code, out, err = _cli(capsys, sr_url, "--out", tmp_path / "out", "--bundle", bundle2d, "--device", "cpu")
    assert code == 1
    assert err.strip().splitlines()[-1] == (f"ERROR {sr_url}: series {pacs['sr_series']} is a SR series, not an "
                                            "image series; give an image series or its study")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # the study holds the image series, the SR and (after the round trip, if it ran first) a SEG: the image is read
    code, out, err = _cli(capsys, _url(orthanc, a_study), "--out", tmp_path / "out", "--bundle", bundle2d, "--device", "cpu")
    assert code == 0, err
    result = json.loads((tmp_path / "out" / f"{a_study}_result.json").read_text(encoding="utf-8"))
    assert result["input"] == _url(orthanc, a_study)
    assert not any("series found" in w for w in result["warnings"])  # the SR and SEG were not even retrieved


def test_unknown_uids(pacs, orthanc, bundle2d, tmp_path, capsys, no_env):
    _env(no_env, **orthanc.env())
    a_study, _, _ = pacs["studies"]["a"]
    no_study, no_series = _url(orthanc, "1.2.3.4.5"), _url(orthanc, a_study, "1.2.3.4.6")
    code, out, err = _cli(capsys, no_study, no_series, "--out", tmp_path / "out", "--bundle", bundle2d)
    assert code == 1 and "0 of 2 studies done" in out
    assert f"ERROR {no_study}: no study 1.2.3.4.5 on the server" in err
    assert f"ERROR {no_series}: no series 1.2.3.4.6 in study {a_study} on the server; found " in err


def test_server_down(pacs, bundle2d, tmp_path, capsys, no_env):
    _env(no_env, MTUNET_DICOMWEB_RETRIES="1")
    url = f"http://127.0.0.1:{free_port()}/dicom-web/studies/1.2.3"
    code, out, err = _cli(capsys, url, "--out", tmp_path / "out", "--bundle", bundle2d)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"ERROR {url}: QIDO-RS search for the study's series: cannot connect to the server "
                           "(after 2 tries): ") and "refused" in last


@pytest.mark.parametrize("server, env, status, hint", [
    ("orthanc", {"MTUNET_DICOMWEB_USER": "radiology", "MTUNET_DICOMWEB_PASSWORD": "wrong"}, "HTTP 401 Unauthorized",
     "the user / password in MTUNET_DICOMWEB_USER / MTUNET_DICOMWEB_PASSWORD were refused"),
    ("orthanc", {}, "HTTP 401 Unauthorized", "the server wants credentials: set MTUNET_DICOMWEB_TOKEN"),
    ("orthanc", {"MTUNET_DICOMWEB_TOKEN": "pacs-test-token"}, "HTTP 401 Unauthorized",
     "the bearer token in MTUNET_DICOMWEB_TOKEN was refused"),  # this server takes basic auth only
    ("orthanc_token", {"MTUNET_DICOMWEB_TOKEN": "not-the-token"}, "HTTP 403 Forbidden",
     "the bearer token in MTUNET_DICOMWEB_TOKEN was refused"),
])
def test_wrong_credentials(pacs, request, server, env, status, hint, bundle2d, tmp_path, capsys, no_env):
    server = request.getfixturevalue(server)
    _env(no_env, **env)
    b_study, _, _ = pacs["studies"]["b"]
    url = _url(server, b_study)
    code, out, err = _cli(capsys, url, "--out", tmp_path / "out", "--bundle", bundle2d)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"ERROR {url}: QIDO-RS search for the study's series: the server answered {status}; {hint}")


def test_push_refused_halfway_fails_the_study(pacs, orthanc_token, bundle2d, tmp_path, capsys, no_env):
    """The token server stores the SEG but refuses the SR: the study is reported failed, naming both."""
    _env(no_env, **orthanc_token.env())
    b_study, b_series, _ = pacs["studies"]["b"]
    url = _url(orthanc_token, b_study, b_series)
    code, out, err = _cli(capsys, url, "--out", tmp_path / "out", "--bundle", bundle2d, "--device", "cpu",
                          "--push", orthanc_token.dicomweb + "/")
    assert code == 1  # the input was read with the bearer token; the push failed
    last = err.strip().splitlines()[-1]
    # Orthanc's DICOMweb plugin answers the STOW-RS request as a success; the check afterwards finds the SR missing
    assert last.startswith(f"ERROR {orthanc_token.dicomweb}: STOW-RS store incomplete: SR ")
    assert " refused (answered as stored, but not found on the server afterwards)" in last
    assert "stored: SEG " in last and last.endswith("The study's push failed")
    result = json.loads((tmp_path / "out" / f"{b_series}_result.json").read_text(encoding="utf-8"))
    assert "pushed" not in result  # nothing records the study as pushed: --resume --push runs it again
    assert _series_on_server(orthanc_token, b_study, "SR") == []


def test_push_needs_dicom_seg_and_a_dicomweb_root(pacs, orthanc, bundle2d, tmp_path, capsys, no_env):
    a_study, _, _ = pacs["studies"]["a"]
    code, _, err = _cli(capsys, pacs["root"] / "a", "--out", tmp_path, "--bundle", bundle2d, "--format", "nifti",
                        "--push", orthanc.dicomweb)
    assert code == 1 and "it needs the dicom-seg format, not nifti" in err
    code, _, err = _cli(capsys, pacs["root"] / "a", "--out", tmp_path, "--bundle", bundle2d,
                        "--push", _url(orthanc, a_study))
    assert code == 1 and "not a DICOMweb root to push to" in err


@pytest.mark.parametrize("url", ["http://host/dicom-web/series/1.2", "http://host/dicom-web/studies/1.2/x",
                                 "http://host/dicom-web/studies/abc", "ftp://host/dicom-web/studies/1.2",
                                 "http:///dicom-web/studies/1.2", "http://host/dicom-web/studies/1.2?x=1"])
def test_bad_urls_are_refused_naming_them(url, bundle2d, tmp_path, capsys):
    with pytest.raises(DicomWebError, match="not a DICOMweb study or series URL"):
        parse_url(url)
    if url.startswith("http://"):
        code, _, err = _cli(capsys, url, "--out", tmp_path, "--bundle", bundle2d)
        assert code == 1 and f"ERROR {url}: not a DICOMweb study or series URL" in err


def test_urls_name_their_outputs_and_parse():
    ref = parse_url("https://pacs:8042/a/dicom-web/studies/1.2.3/series/4.5/")
    assert (ref.root, ref.study_uid, ref.series_uid) == ("https://pacs:8042/a/dicom-web", "1.2.3", "4.5")
    assert DicomWebUrl("http://pacs/dicom-web/studies/1.2.3").name == "1.2.3"
    assert DicomWebUrl("http://pacs/dicom-web/studies/1.2.3/series/4.5").parent.name == "1.2.3"


@pytest.mark.parametrize("env, match", [
    ({"MTUNET_DICOMWEB_TOKEN": "t", "MTUNET_DICOMWEB_USER": "u", "MTUNET_DICOMWEB_PASSWORD": "p"}, "not both"),
    ({"MTUNET_DICOMWEB_USER": "u"}, "only MTUNET_DICOMWEB_USER is set"),
    ({"MTUNET_DICOMWEB_TIMEOUT": "soon"}, "must be numbers"),
    ({"MTUNET_DICOMWEB_RETRIES": "-1"}, ">= 0"),
])
def test_connection_settings_from_the_environment_only(env, match):
    with pytest.raises(DicomWebError, match=match):
        Connection.from_env(env)
    conn = Connection.from_env({"MTUNET_DICOMWEB_USER": "u", "MTUNET_DICOMWEB_PASSWORD": "p", "MTUNET_DICOMWEB_TIMEOUT": "5"})
    assert (conn.user, conn.password, conn.timeout, conn.retries) == ("u", "p", 5.0, 3)


def test_content_uids_are_random_without_a_seed_and_follow_the_content_with_one():
    from scripts.inference.dicom_seg import content_seed, content_uid

    assert content_uid(None, "instance") != content_uid(None, "instance")
    seed = content_seed("weights", [b"label", "1.2.3"])
    assert content_uid(seed, "instance") == content_uid(content_seed("weights", [b"label", "1.2.3"]), "instance")
    assert len({content_uid(seed, "instance"), content_uid(seed, "series"),
                content_uid(content_seed("weights", [b"label2", "1.2.3"]), "instance")}) == 3
    assert content_uid(seed, "instance").startswith("2.25.") and len(content_uid(seed, "instance")) <= 64
    assert content_seed(None, [b"x"]) is None

