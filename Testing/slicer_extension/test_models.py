"""MultiTaskUNetLib.models: adding a model from a bundle folder, a zip, or a URL with its SHA-256.

The download tests serve files from a local ``http.server`` on 127.0.0.1 only (plain http is
accepted for this computer only); nothing leaves the machine.
"""

import hashlib
import http.server
import json
import os
import stat
import threading
import zipfile
from functools import partial
from pathlib import Path

import pytest

from MultiTaskUNetLib import models
from MultiTaskUNetLib.models import Cancelled, ModelError

CARD = {"name": "Brain MTU", "version": "1.2.0", "classes": ["glioma", "meningioma", "no_tumor", "pituitary"],
        "segments": ["background", "tumor"]}


def make_bundle(root: Path, card=CARD, code=True, weights=b"weights", extra=True) -> Path:
    """A bundle folder: worker code, configs, model card + weights, and things that are not copied."""
    if code:
        (root / "scripts").mkdir(parents=True)
        (root / "scripts" / "infer.py").write_text("# worker\n")
        (root / "scripts" / "__pycache__").mkdir()
        (root / "scripts" / "__pycache__" / "infer.cpython-312.pyc").write_bytes(b"x")
        (root / "configs").mkdir()
        (root / "configs" / "metadata.json").write_text(json.dumps({"monai_version": "1.6.1"}))
    (root / "models").mkdir(parents=True, exist_ok=True)
    if card is not None:
        (root / "models" / "model_card.json").write_text(json.dumps(card))
    if weights is not None:
        (root / "models" / "model.pt").write_bytes(weights)
    if extra:
        (root / "models" / "checkpoint_last.pt").write_bytes(b"resume state")
        (root / "data").mkdir()
        (root / "data" / "image.png").write_bytes(b"png")
    return root


def make_zip(folder: Path, path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, prefix + f.relative_to(folder).as_posix())
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_require_model(tmp_path):
    info = models.require_model(make_bundle(tmp_path / "b"))
    assert (info.name, info.version, info.classes, info.has_weights) == ("Brain MTU", "1.2.0", tuple(CARD["classes"]), True)
    with pytest.raises(ModelError, match=r"no trained model in this bundle \(missing models/model.pt\)"):
        models.require_model(make_bundle(tmp_path / "c", weights=None))
    with pytest.raises(ModelError, match="missing models/model_card.json"):
        models.require_model(make_bundle(tmp_path / "d", card=None))
    with pytest.raises(ModelError, match="not a MultiTaskUNet bundle"):
        models.require_model(tmp_path / "nothing")
    with pytest.raises(ModelError, match="lists no diagnosis classes"):
        models.require_model(make_bundle(tmp_path / "e", card={"name": "x"}))


def test_install_folder_copies_the_model_not_the_data(tmp_path):
    store = tmp_path / "store"
    info = models.install_folder(make_bundle(tmp_path / "src"), store)
    assert info.root == store / "Brain_MTU-1.2.0" and info.has_weights
    files = sorted(p.relative_to(info.root).as_posix() for p in info.root.rglob("*") if p.is_file())
    assert files == ["configs/metadata.json", "models/model.pt", "models/model_card.json", "scripts/infer.py"]
    assert [p.name for p in store.iterdir()] == ["Brain_MTU-1.2.0"]  # no staging folder left behind
    assert [i.root for i in models.list_models(store)] == [info.root]


def test_adding_the_same_model_again_replaces_it(tmp_path):
    store = tmp_path / "store"
    models.install_folder(make_bundle(tmp_path / "v1", weights=b"old"), store)
    info = models.install_folder(make_bundle(tmp_path / "v1b", weights=b"new"), store)
    assert (info.root / "models" / "model.pt").read_bytes() == b"new"
    assert [p.name for p in store.iterdir()] == ["Brain_MTU-1.2.0"]


def test_folder_without_a_model_is_refused_and_leaves_nothing(tmp_path):
    store = tmp_path / "store"
    with pytest.raises(ModelError, match="no trained model in this folder"):
        models.install_folder(make_bundle(tmp_path / "src", weights=None), store)
    with pytest.raises(ModelError, match="not a folder"):
        models.install_folder(tmp_path / "missing", store)
    assert not store.exists() or list(store.iterdir()) == []


def test_models_only_folder_gets_the_shipped_worker_code(tmp_path):
    code = make_bundle(tmp_path / "shipped", card=None, weights=None, extra=False)  # code and configs, no model
    only_models = make_bundle(tmp_path / "weights", code=False, extra=False)
    with pytest.raises(ModelError, match="holds only models/ and no worker code"):
        models.install_folder(only_models, tmp_path / "store")
    info = models.install_folder(only_models, tmp_path / "store", code_bundle=code)
    assert (info.root / "scripts" / "infer.py").is_file() and (info.root / "configs" / "metadata.json").is_file()
    assert not list(info.root.rglob("__pycache__"))


@pytest.mark.parametrize("prefix", ["", "bundle/"])
def test_install_zip_top_level_or_one_folder(tmp_path, prefix):
    archive = make_zip(make_bundle(tmp_path / "src"), tmp_path / "b.zip", prefix)
    info = models.install_zip(archive, tmp_path / "store", sha256=sha(archive))
    assert info.root == tmp_path / "store" / "Brain_MTU-1.2.0"
    assert (info.root / "models" / "model.pt").read_bytes() == b"weights"
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["Brain_MTU-1.2.0"]


def test_install_zip_checksum_mismatch_installs_nothing(tmp_path):
    archive = make_zip(make_bundle(tmp_path / "src"), tmp_path / "b.zip")
    with pytest.raises(ModelError, match="SHA-256 is .* expected 0{64}: the file is not the one published"):
        models.install_zip(archive, tmp_path / "store", sha256="0" * 64)
    assert not (tmp_path / "store").exists()  # checked before anything is unpacked


@pytest.mark.parametrize("member, match", [("../evil.txt", "outside its folder"), ("/abs/evil.txt", "outside its folder"),
                                           ("C:/evil.txt", "outside its folder")])
def test_unsafe_zip_members_are_refused(tmp_path, member, match):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("models/model.pt", b"w")
        z.writestr(member, b"x")
    with pytest.raises(ModelError, match=match):
        models.install_zip(archive, tmp_path / "store")
    assert not (tmp_path / "evil.txt").exists()
    assert list((tmp_path / "store").iterdir()) == []


def test_zip_links_and_junk_are_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as z:
        info = zipfile.ZipInfo("models/model.pt")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    with pytest.raises(ModelError, match="holds a link"):
        models.install_zip(archive, tmp_path / "store")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a readable zip file"):
        models.install_zip(tmp_path / "junk.zip", tmp_path / "store")
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(ModelError, match="no bundle found"):
        models.install_zip(empty, tmp_path / "store")


def test_zip_size_limits(tmp_path, monkeypatch):
    archive = make_zip(make_bundle(tmp_path / "src"), tmp_path / "b.zip")
    monkeypatch.setattr(models, "MAX_ZIP_MEMBERS", 2)
    with pytest.raises(ModelError, match="more than 2 files"):
        models.install_zip(archive, tmp_path / "store")
    monkeypatch.setattr(models, "MAX_ZIP_MEMBERS", 100)
    monkeypatch.setattr(models, "MAX_UNPACKED_BYTES", 10)
    with pytest.raises(ModelError, match="GiB unpacked"):
        models.install_zip(archive, tmp_path / "store")


def test_list_models_skips_unusable_folders(tmp_path):
    store = tmp_path / "store"
    good = models.install_folder(make_bundle(tmp_path / "src"), store)
    make_bundle(store / "no-weights", weights=None)
    (store / ".staging-x").mkdir()
    (store / "broken").mkdir()
    (store / "broken" / "scripts").mkdir()
    (store / "broken" / "scripts" / "infer.py").write_text("")
    (store / "broken" / "models").mkdir()
    (store / "broken" / "models" / "model_card.json").write_text("{")
    shipped = make_bundle(tmp_path / "shipped", card=dict(CARD, name="Shipped"))
    listed = models.list_models(store, [shipped, good.root, None])
    assert [i.name for i in listed] == ["Brain MTU", "Shipped"]  # once each, broken ones left out
    assert models.list_models(tmp_path / "does-not-exist") == []


@pytest.mark.parametrize("text, value", [("A" * 64, "a" * 64), ("sha256:" + "0f" * 32, "0f" * 32), (" ab" * 32, "ab" * 32)])
def test_normalize_sha256(text, value):
    assert models.normalize_sha256(text) == value


@pytest.mark.parametrize("text", ["", "abc", "g" * 64, "a" * 63])
def test_bad_sha256(text):
    with pytest.raises(ModelError, match="is not a SHA-256 checksum"):
        models.normalize_sha256(text)


@pytest.mark.parametrize("url", ["https://example.org/m.zip", "http://127.0.0.1:8000/m.zip", "http://localhost/m.zip",
                                 "http://[::1]:9/m.zip"])
def test_accepted_urls(url):
    assert models.check_url(url) == url


@pytest.mark.parametrize("url, match", [("http://example.org/m.zip", "only https"), ("ftp://example.org/m.zip", "not an https"),
                                        ("file:///tmp/m.zip", "not an https"), ("m.zip", "not an https"),
                                        ("http://10.0.0.1/m.zip", "only https")])
def test_refused_urls(url, match):
    with pytest.raises(ModelError, match=match):
        models.check_url(url)


def test_model_folder_name():
    from MultiTaskUNetLib.bundles import BundleInfo
    make = lambda n, v: BundleInfo(Path("."), n, v, (), (), True)  # noqa: E731
    assert models.model_folder_name(make("My Model", "1.0")) == "My_Model-1.0"
    assert models.model_folder_name(make("../../x", "")) == "x"
    assert models.model_folder_name(make("", "2")) == "model-2"


@pytest.fixture
def server(tmp_path):
    """``(base_url, folder)``: a local http.server on 127.0.0.1 serving ``folder``."""
    folder = tmp_path / "www"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    httpd.shutdown()
    httpd.server_close()


def test_install_url_downloads_checks_and_installs(tmp_path, server):
    base, www = server
    archive = make_zip(make_bundle(tmp_path / "src"), www / "brain.zip", "bundle/")
    seen = []
    info = models.install_url(f"{base}/brain.zip", sha(archive).upper(), tmp_path / "store",
                              progress=lambda done, total: seen.append((done, total)))
    assert info.root == tmp_path / "store" / "Brain_MTU-1.2.0" and info.has_weights
    size = archive.stat().st_size
    assert seen[0] == (0, size) and seen[-1] == (size, size)
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["Brain_MTU-1.2.0"]  # download and staging removed


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, server):
    base, www = server
    make_zip(make_bundle(tmp_path / "src"), www / "brain.zip")
    with pytest.raises(ModelError, match="SHA-256 of the download is .* expected 1{64}"):
        models.install_url(f"{base}/brain.zip", "1" * 64, tmp_path / "store")
    assert list((tmp_path / "store").iterdir()) == []


def test_download_http_error_and_cancel(tmp_path, server):
    base, www = server
    with pytest.raises(ModelError, match=r"missing.zip: download failed \(HTTP Error 404"):
        models.download(f"{base}/missing.zip", tmp_path / "d" / "m.zip", "0" * 64)
    assert list((tmp_path / "d").iterdir()) == []
    (www / "big.bin").write_bytes(os.urandom(3 << 20))

    def cancel_after_first_block(done, total):
        if done > 0:
            raise Cancelled()

    with pytest.raises(Cancelled):
        models.download(f"{base}/big.bin", tmp_path / "d" / "big.bin", "0" * 64, progress=cancel_after_first_block)
    assert list((tmp_path / "d").iterdir()) == []  # the partial file is gone
    with pytest.raises(ModelError, match="more than the 1 MiB limit"):
        models.download(f"{base}/big.bin", tmp_path / "d" / "big.bin", "0" * 64, max_bytes=1 << 20)
    assert list((tmp_path / "d").iterdir()) == []


def test_download_refuses_plain_http_elsewhere_before_connecting(tmp_path):
    with pytest.raises(ModelError, match="only https"):
        models.install_url("http://example.org/m.zip", "0" * 64, tmp_path / "store")


@pytest.fixture
def dropping_server():
    """``(url, body)``: a server on 127.0.0.1 that sends half of ``body`` and closes the connection, once with a
    Content-Length and once chunked (``?chunked``), as a dropped network connection or a killed server does."""
    import socket

    body = os.urandom(3 << 20)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                request = conn.recv(65536)
                if b"?chunked" in request.split(b"\r\n", 1)[0]:
                    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body)
                else:
                    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                conn.sendall(head + body[: len(body) // 2])

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/brain.zip", body
    listener.close()


@pytest.mark.parametrize("query, match", [("", r"download incomplete \(1572864 of 3145728 bytes\)"),
                                          ("?chunked", r"download failed after \d+ bytes \(IncompleteRead")])
def test_interrupted_download_is_a_model_error_and_leaves_nothing(tmp_path, dropping_server, query, match):
    url, body = dropping_server
    with pytest.raises(ModelError, match=match):
        models.install_url(url + query, hashlib.sha256(body).hexdigest(), tmp_path / "store")
    assert list((tmp_path / "store").iterdir()) == []
