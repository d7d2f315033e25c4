"""``scripts.train.training.LossGradientSync`` on two gloo processes: the learned task weights' gradients are
averaged with the same collective on every rank, also when one rank's batch has no mask.

Per-parameter gradient hooks (the earlier design) fire only on ranks where the task had a target: a
rank without a mask then skipped an all-reduce the other rank made, and training hung or crashed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

BUNDLE = Path(__file__).resolve().parents[2] / "monai_bundle"
WORKER = r'''
import json, sys
import torch
import torch.distributed as dist
from scripts.train.losses import MultiTaskLoss
from scripts.train.training import LossGradientSync

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(rank)
loss = MultiTaskLoss(2, 4, weighting="uncertainty")
sync = LossGradientSync(loss)
record = {}
# step 1: rank 0 has masks, rank 1 none; step 2: no rank has a mask; both have classes
for step, has_seg in ((1, [1.0, 1.0] if rank == 0 else [0.0, 0.0]), (2, [0.0, 0.0])):
    for p in loss.parameters():
        p.grad = None
    preds = {"seg": torch.randn(2, 2, 8, 8, requires_grad=True), "cls": torch.randn(2, 4, requires_grad=True)}
    targets = {"seg": torch.randint(0, 2, (2, 1, 8, 8)), "cls": torch.tensor([0, 3]),
               "has_seg": torch.tensor(has_seg), "has_cls": torch.ones(2)}
    loss(preds, targets).backward()
    local = {k: None if p.grad is None else float(p.grad) for k, p in loss.log_vars.items()}
    sync()
    synced = {k: None if p.grad is None else float(p.grad) for k, p in loss.log_vars.items()}
    record[step] = {"local": local, "synced": synced}
json.dump(record, open(sys.argv[1] + f"/rank{rank}.json", "w"))
dist.destroy_process_group()
'''


def test_loss_weights_gradients_are_averaged_when_one_rank_has_no_mask(tmp_path: Path) -> None:
    (tmp_path / "worker.py").write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "worker.py"), str(tmp_path)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(BUNDLE)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers: nothing left waiting on a collective
        proc.communicate()
        pytest.fail("the two ranks hung: their collectives do not match")
    assert proc.returncode == 0, out[-3000:] + err[-5000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    one0, one1 = r0["1"], r1["1"]
    assert one0["local"]["seg"] is not None and one1["local"]["seg"] is None  # rank 1 had no mask
    assert one0["synced"] == one1["synced"]  # the same weights' gradients on both ranks
    assert one0["synced"]["seg"] == pytest.approx(one0["local"]["seg"] / 2)  # mean over ranks, as DDP averages
    assert one0["synced"]["cls"] == pytest.approx((one0["local"]["cls"] + one1["local"]["cls"]) / 2)
    two0, two1 = r0["2"], r1["2"]
    assert two0["synced"]["seg"] is None and two1["synced"]["seg"] is None  # no rank had one: the optimizer skips it
    assert two0["synced"]["cls"] == two1["synced"]["cls"] is not None
