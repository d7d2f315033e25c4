"""Learning from review, end to end: a fine-tune on the corrected studies learns the corrections.

A tiny model is trained on the synthetic set, deployed on a pool of studies, and a simulated
reviewer corrects its worst 20 % (``review_simulation``); ``prepare reviewed --merge`` and
``run training --init_from`` fine-tune it. The control fine-tunes from the same model on the same
studies with every answer accepted uncorrected, for the same epochs. On the studies the reviewer
changed, the corrected fine-tune must give the reviewer's diagnosis more often than the control and
than the model it started from: a fine-tune that ignored the corrections, or an ``init_from`` that
did not load, fails here. It also checks the product's defaults on the way: the accepted, unedited
masks (the model's own output) reach the merged datalist without a label while the reviewer's masks
do, and the fine-tune starts at a tenth of training's learning rate.

What this test does not claim: that the corrected fine-tune also scores higher on held-out patients.
With 64 held-out images and 13 corrections that comparison is within the noise of one tiny run (it
flipped between 1 and 2 threads, and between machines); ``Testing/benchmarks/bench_review.py``
measures it over seeds and larger settings (``--scale 2``: see ``Testing/benchmarks/README.md``).
"""

from __future__ import annotations

import json

import torch

from review_simulation import Setting, simulate
from scripts.core.plan import file_sha256


def test_finetuning_on_corrections_beats_finetuning_on_uncorrected_answers(tmp_path):
    # one thread, as measured: the tiny trainings are not bit-reproducible across thread counts, and
    # with 2 threads on the CI machine the margin between the two fine-tunes flipped
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = simulate(tmp_path, seed=0, s=Setting())
    finally:
        torch.set_num_threads(threads)
    changed = res["on_changed"]
    assert res["changed"] == round(0.2 * res["pool"]) and res["changed"] > 0, res
    # margin: 2 of the 13 changed studies. The runs are not bit-reproducible even on one thread; four
    # repeats gave corrected 0.69-0.92 against uncorrected 0.15-0.31 and initial 0.08-0.23, and the
    # earlier margin of 0.25 failed once in ten runs after fine-tuning moved to a tenth of the rate
    assert changed["corrected"]["accuracy"] >= changed["uncorrected"]["accuracy"] + 0.15, changed
    assert changed["corrected"]["accuracy"] >= changed["initial"]["accuracy"] + 0.15, changed
    card = res["card_corrected"]
    counts = card["training_data"]["provenance"]["training"]
    review = res["review_corrected"]
    assert counts == {"original": 48} | {k: v for k, v in review.items() if v}, counts
    assert review["overridden"] + review["edited"] == round(0.2 * res["pool"])
    assert card["init_from"]["sha256"] == file_sha256(tmp_path / "initial" / "model.pt")
    assert card["training_data"]["datalist"].endswith("merged.json")
    # the product's defaults for fine-tuning on review: an accepted, unedited mask is the model's own
    # output and trains no segmentation (prepare reviewed --accepted-masks skip); the reviewer's masks do
    merged = json.loads((tmp_path / "prepared_corrected" / "merged.json").read_text(encoding="utf-8"))
    reviewed = [e for e in merged["training"] if e["provenance"] != "original"]
    assert all("label" not in e for e in reviewed if e["provenance"] == "accepted"), reviewed
    assert all("label" in e for e in reviewed if e["provenance"] == "edited")
    assert any("label" in e for e in reviewed), "no corrected mask reached the datalist"
    masks = card["training_data"]["with_mask"]["training"]  # the card says which of them trained the masks
    assert masks["accepted"] == 0
    assert masks.get("edited", 0) + masks.get("overridden", 0) == sum("label" in e for e in reviewed)
    # ... and init_from starts at a tenth of training's learning rate (train.json finetune_lr_factor)
    peak = {name: max(e["lr"] for e in json.loads((tmp_path / name / "history.json").read_text(encoding="utf-8")))
            for name in ("initial", "tuned_corrected")}
    assert peak["tuned_corrected"] <= 0.1 * peak["initial"] * 1.001, peak
    start = torch.load(tmp_path / "initial" / "model.pt", weights_only=True)
    tuned = torch.load(tmp_path / "tuned_corrected" / "model.pt", weights_only=True)
    assert start.keys() == tuned.keys() and any(not torch.equal(start[k], tuned[k]) for k in start)
