"""A real Orthanc with its DICOMweb plugin for the DICOMweb tests (Debian ``orthanc`` + ``orthanc-dicomweb``,
installed by ``make system-deps``).

:class:`Orthanc` starts one on 127.0.0.1 on a free port, with a throwaway storage folder, from a
configuration file the project ships (``Testing/inference/orthanc/``), and stops it and removes the
folder on :meth:`Orthanc.stop`. Two configurations: ``orthanc-basic.json`` (HTTP basic auth,
``AuthenticationEnabled`` with ``RegisteredUsers``) and ``orthanc-token.json`` + ``token.lua``
(a bearer token checked by a Lua filter; DICOM SR instances refused on arrival).
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "orthanc"
BASIC_USER, BASIC_PASSWORD = "radiology", "pacs-test-password"  # as in orthanc/orthanc-basic.json
TOKEN = "pacs-test-token"  # as in orthanc/token.lua
PLUGIN_CANDIDATES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")
START_TIMEOUT_S = 30


def orthanc_executable() -> str:
    exe = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)
    assert exe, "Orthanc not found: install Debian's orthanc and orthanc-dicomweb (run `make system-deps`)"
    return exe


def dicomweb_plugin() -> str:
    found = [p for p in PLUGIN_CANDIDATES if Path(p).is_file()]
    assert found, ("Orthanc's DICOMweb plugin not found in " + ", ".join(PLUGIN_CANDIDATES)
                   + ": install Debian's orthanc-dicomweb (run `make system-deps`)")
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: every socket is held until all are bound, so the kernel cannot hand
    the same port out twice (separate :func:`free_port` calls may return one port again)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Orthanc:
    """One Orthanc server; ``auth`` is ``"basic"`` or ``"token"`` (the shipped configuration to use)."""

    def __init__(self, auth: str = "basic") -> None:
        self.auth = auth
        self.folder = Path(tempfile.mkdtemp(prefix="mtunet-orthanc-"))
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def headers(self) -> dict[str, str]:
        if self.auth == "token":
            return {"Authorization": f"Bearer {TOKEN}"}
        return {"Authorization": "Basic " + base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()}

    def env(self) -> dict[str, str]:
        """The environment variables that give the CLI this server's credentials."""
        if self.auth == "token":
            return {"MTUNET_DICOMWEB_TOKEN": TOKEN}
        return {"MTUNET_DICOMWEB_USER": BASIC_USER, "MTUNET_DICOMWEB_PASSWORD": BASIC_PASSWORD}

    def start(self) -> Orthanc:
        exe, plugin = orthanc_executable(), dicomweb_plugin()
        config = self.folder / "config"
        config.mkdir()
        shutil.copy(CONFIG_DIR / f"orthanc-{self.auth}.json", config)
        run = {"HttpPort": self.port, "StorageDirectory": str(self.folder / "db"),
               "IndexDirectory": str(self.folder / "db"), "Plugins": [plugin]}
        if self.auth == "token":
            run["LuaScripts"] = [str(CONFIG_DIR / "token.lua")]
        (config / "run.json").write_text(json.dumps(run), encoding="utf-8")
        log = open(self.folder / "stdout.txt", "wb")
        self.process = subprocess.Popen([exe, f"--logdir={self.folder}", str(config)], stdout=log,
                                        stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                text = (self.folder / "stdout.txt").read_text(encoding="utf-8", errors="replace")
                self.stop()
                raise AssertionError(f"Orthanc exited with {self.process.returncode} at start:\n{text[-3000:]}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"Orthanc did not answer on {self.url} within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- Orthanc's own REST API, for uploading and checking (independent of the code under test)
    def request(self, path: str, data: bytes | None = None, method: str | None = None,
                content_type: str = "application/dicom"):
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=self.headers())
        if data is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=30) as answer:
            body = answer.read()
        return json.loads(body) if body else None

    def get(self, path: str):
        return self.request(path)

    def upload(self, folder: Path) -> list[str]:
        """Store every file under ``folder`` through Orthanc's REST API; return the instance ids."""
        return [self.request("/instances", p.read_bytes())["ID"] for p in sorted(folder.rglob("*")) if p.is_file()]

    def qido(self, path: str) -> list[dict]:
        """A QIDO-RS query (e.g. ``/studies/<uid>/series``) in DICOM JSON."""
        return self.request("/dicom-web" + path) or []

    def instance_file(self, sop_uid: str) -> bytes:
        """The stored file of one SOP instance (looked up with Orthanc's /tools/find)."""
        found = self.request("/tools/find", json.dumps({"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}}).encode(),
                             content_type="application/json")
        assert len(found) == 1, f"instance {sop_uid}: {len(found)} copies on the server"
        req = urllib.request.Request(f"{self.url}/instances/{found[0]}/file", headers=self.headers())
        with urllib.request.urlopen(req, timeout=30) as answer:
            return answer.read()
