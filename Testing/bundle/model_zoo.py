"""The MONAI model-zoo checks of a bundle, run offline on the CPU.

    python Testing/bundle/model_zoo.py [BUNDLE]     # default: monai_bundle; exit code 1 when a check fails

What the Project-MONAI model-zoo CI asks of a bundle, for the parts that need neither a network
connection nor a GPU:

``files``        ``configs/metadata.json``, ``configs/inference.json``, ``LICENSE`` and ``docs/README.md``
                 exist; every ``configs/*.json`` is 4-space pretty-printed JSON (the zoo's pre-commit).
``file_size``    no file that would be committed is over 1 MB (pre-commit ``check-added-large-files
                 --maxkb=1024``): in a git work tree the tracked and the untracked, not ignored files;
                 elsewhere every file but the produced folders (``models``, ``data``, ``eval``, ``runs``).
``version``      ``metadata.json``'s ``version`` is a key of its ``changelog``.
``metadata``     ``monai.bundle.verify_metadata`` against the schema the metadata names, read from the
                 copy kept next to this file (so nothing is downloaded).
``net_in_out``   ``monai.bundle.verify_net_in_out`` on the network's ``pred`` output (the MONAI
                 function reads one tensor), and every output the network returns (``seg``, ``cls``,
                 ``pred``) has the ``num_channels`` and ``dtype`` the metadata declares for it.
``torchscript``  ``monai.bundle.ckpt_export`` of ``models/model.pt`` (random weights when the bundle has
                 not been trained), loaded back with ``torch.jit.load``: its outputs equal the eager
                 network's with the same weights (loaded strictly).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out
from monai.utils import get_equivalent_dtype

HERE = Path(__file__).resolve().parent
SCHEMA = HERE / "meta_schema_20240725.json"  # a copy of the schema metadata.json names (its URL's last part)
MAX_FILE_BYTES = 1024 * 1024
PRODUCED = {"models", "data", "eval", "runs", "__pycache__", ".pytest_cache"}  # never committed (.gitignore)
NET_ID = "network_def"


def committed_files(folder: Path) -> list[Path]:
    """Files under ``folder`` that a commit would hold (see the module docstring)."""
    folder = folder.resolve()
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=folder,
                             capture_output=True, check=True).stdout
        files = [folder / os.fsdecode(p) for p in out.split(b"\0") if p]
        return [f for f in files if f.is_file()]  # a tracked file deleted in the work tree is not there
    except (OSError, subprocess.CalledProcessError):  # no git, or not a work tree
        return [p for p in folder.rglob("*") if p.is_file() and not PRODUCED & set(p.relative_to(folder).parts[:-1])]


def large_files(folder: Path, limit: int = MAX_FILE_BYTES) -> list[str]:
    """``"path (size)"`` of every file of :func:`committed_files` over ``limit`` bytes."""
    return [f"{p.relative_to(folder.resolve())} ({p.stat().st_size / 1024 / 1024:.2f} MB)"
            for p in committed_files(folder) if p.stat().st_size > limit]


def check_files(root: Path) -> str:
    missing = [f for f in ("configs/metadata.json", "configs/inference.json", "LICENSE", "docs/README.md")
               if not (root / f).is_file()]
    assert not missing, f"missing {missing}"
    unpretty = [p.name for p in sorted((root / "configs").glob("*.json"))
                if json.dumps(json.loads(p.read_text(encoding="utf-8")), indent=4, ensure_ascii=False) + "\n"
                != p.read_text(encoding="utf-8")]
    assert not unpretty, f"not 4-space pretty-printed JSON: {unpretty}"
    return "required files present, configs are 4-space JSON"


def check_file_size(root: Path) -> str:
    big = large_files(root)
    assert not big, f"over 1 MB: {big}"
    return f"{len(committed_files(root))} files, none over 1 MB"


def check_version(meta: dict) -> str:
    version, changelog = meta.get("version"), meta.get("changelog") or {}
    assert version in changelog, f"version {version!r} is not a key of the changelog {sorted(changelog)}"
    return f"version {version} is in the changelog"


def check_metadata(root: Path, meta: dict) -> str:
    url = str(meta.get("schema", ""))
    assert url.rsplit("/", 1)[-1] == SCHEMA.name, f"metadata names the schema {url!r}; the checks keep {SCHEMA.name}"
    assert SCHEMA.is_file(), f"{SCHEMA} is missing"  # else verify_metadata would download it
    verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=str(SCHEMA))
    return f"valid against {SCHEMA.name} (monai.bundle.verify_metadata)"


def _parsed(root: Path, item: str):
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser["bundle_root"] = str(root)
    return parser.get_parsed_content(item)


def _example_input(meta: dict, batch: int = 1):
    spec = meta["network_data_format"]["inputs"]["image"]
    g = torch.Generator().manual_seed(0)
    return torch.rand((batch, int(spec["num_channels"]), *(int(s) for s in spec["spatial_shape"])), generator=g)


class PredOutput(torch.nn.Module):
    """The ``pred`` tensor of a network returning a dict: what ``verify_net_in_out`` can read."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)["pred"]


def check_net_in_out(root: Path, meta: dict) -> str:
    verify_net_in_out(net_id="model_zoo_pred", meta_file=str(root / "configs" / "metadata.json"),
                      config_file=str(root / "configs" / "inference.json"), device="cpu", bundle_root=str(root),
                      model_zoo_pred={"_target_": PredOutput, "network": f"@{NET_ID}"})
    net = _parsed(root, NET_ID).eval()
    with torch.no_grad():
        out = net(_example_input(meta))
    specs = meta["network_data_format"]["outputs"]
    assert isinstance(out, dict) and set(out) == set(specs), f"outputs {sorted(out)} != metadata {sorted(specs)}"
    for name, spec in specs.items():
        t = out[name]
        assert t.shape[1] == spec["num_channels"], f"{name}: {t.shape[1]} channels, metadata {spec['num_channels']}"
        assert t.dtype == get_equivalent_dtype(spec["dtype"], torch.Tensor), f"{name}: {t.dtype}, metadata {spec['dtype']}"
    return "monai.bundle.verify_net_in_out (pred) + " + ", ".join(f"{k}{tuple(v.shape)}" for k, v in out.items())


def check_torchscript(root: Path, meta: dict) -> str:
    weights = root / "models" / "model.pt"
    with tempfile.TemporaryDirectory() as tmp:
        which = "models/model.pt"
        if not weights.is_file():
            which, weights = "random weights (no models/model.pt)", Path(tmp) / "random.pt"
            torch.save(_parsed(root, NET_ID).state_dict(), weights)
        ts = Path(tmp) / "model.ts"
        ckpt_export(net_id=NET_ID, filepath=str(ts), ckpt_file=str(weights), config_file=str(root / "configs" / "inference.json"),
                    meta_file=str(root / "configs" / "metadata.json"), bundle_root=str(root))
        scripted = torch.jit.load(str(ts), map_location="cpu").eval()
        eager = _parsed(root, NET_ID)
        eager.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        x = _example_input(meta, batch=2)
        with torch.no_grad():
            a, b = eager.eval()(x), scripted(x)
    assert set(a) == set(b), f"scripted outputs {sorted(b)} != eager {sorted(a)}"
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a), f"scripted != eager (max |diff| {worst:.3g})"
    return f"ckpt_export of {which}: scripted == eager (max |diff| {worst:.1g})"


def run_checks(root: Path) -> list[tuple[str, bool, str]]:
    """Every check on the bundle at ``root``: ``(name, passed, detail)``."""
    root = root.resolve()
    meta = json.loads((root / "configs" / "metadata.json").read_text(encoding="utf-8"))
    checks: list[tuple[str, Callable[[], str]]] = [
        ("files", lambda: check_files(root)),
        ("file_size", lambda: check_file_size(root)),
        ("version", lambda: check_version(meta)),
        ("metadata", lambda: check_metadata(root, meta)),
        ("net_in_out", lambda: check_net_in_out(root, meta)),
        ("torchscript", lambda: check_torchscript(root, meta)),
    ]
    results = []
    for name, check in checks:
        try:
            results.append((name, True, check()))
        except Exception as e:  # noqa: BLE001 - a failing check is reported, the others still run
            results.append((name, False, f"{type(e).__name__}: {e}"))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?", default=str(HERE.parents[1] / "monai_bundle"))
    root = Path(ap.parse_args(argv).bundle).resolve()
    sys.path.insert(0, str(root))  # the configs import the bundle's own `scripts` package
    results = run_checks(root)
    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'} {name:<12} {detail}")
    failed = [name for name, ok, _ in results if not ok]
    print(f"{root.name}: {len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
