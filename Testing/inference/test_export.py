"""TorchScript and ONNX export with the parity check (onnxruntime on the CPU)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from infer_helpers import make_bundle
from scripts import export
from scripts.inference import Predictor
from scripts.core.model_card import build_network
from infer_helpers import tiny_card


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory):
    torch.manual_seed(0)
    return make_bundle(tmp_path_factory.mktemp("random2d"), wired=False)  # random weights: every path carries signal


def test_cli_exports_torchscript_and_onnx_that_match_eager(random_bundle, tmp_path, capsys):
    ts, onnx_path = tmp_path / "m.ts", tmp_path / "m.onnx"
    code = export.main(["--bundle", str(random_bundle), "--torchscript", str(ts), "--onnx", str(onnx_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "parity (max |export - eager|): torchscript.seg" in out
    onnx.checker.check_model(str(onnx_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.ts"]  # one self-contained file each
    network = Predictor.from_bundle(random_bundle, device="cpu").network
    x = torch.rand(5, 1, 32, 32)  # a batch size the export never saw
    with torch.no_grad():
        eager = network(x)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    seg, cls = session.run(["seg", "cls"], {"image": x.numpy()})
    np.testing.assert_allclose(seg, eager["seg"].numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(cls, eager["cls"].numpy(), atol=1e-4, rtol=1e-4)
    scripted = torch.jit.load(str(ts))
    torch.testing.assert_close(scripted(x)["cls"], eager["cls"], atol=1e-5, rtol=1e-5)


def test_3d_torchscript_parity(tmp_path):
    torch.manual_seed(1)
    network = build_network(tiny_card(3)).eval()
    path = export.export_torchscript(network, tmp_path / "m3.ts")
    report = export.check_parity(network, export.example_input(tiny_card(3), batch=2), torchscript=path)
    assert set(report) == {"torchscript.seg", "torchscript.cls"} and max(report.values()) < 1e-4


def test_parity_failure_raises_and_removes_the_exports(random_bundle, tmp_path, monkeypatch):
    predictor = Predictor.from_bundle(random_bundle, device="cpu")
    real_load = torch.jit.load

    def perturbed_load(*args, **kwargs):
        module = real_load(*args, **kwargs)
        return lambda x: {k: v + 0.5 for k, v in module(x).items()}

    monkeypatch.setattr(torch.jit, "load", perturbed_load)
    with pytest.raises(export.ExportError, match=r"torchscript seg differs from eager by up to 0\.5"):
        export.export_model(predictor, tmp_path / "m.ts", None)
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_a_bad_checkpoint(random_bundle, tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    code = export.main(["--bundle", str(random_bundle), "--checkpoint", str(tmp_path / "bad.pt"), "--no-onnx",
                        "--torchscript", str(tmp_path / "m.ts")])
    assert code == 1
    assert capsys.readouterr().err.startswith(f"ERROR {tmp_path / 'bad.pt'}: not a readable PyTorch checkpoint")
    assert not (tmp_path / "m.ts").exists()
