"""Resume, in process: a MONAI SupervisedTrainer with the bundle's handlers on a tiny network and fixed batches.

An interrupted run resumed from ``checkpoint_last.pt`` must end exactly where the uninterrupted run
ends; an extended run follows the config's schedule; a checkpoint of another setup is refused.
Each handler stands alone: the checkpoint saves the best model without the history handler, both
tell a validation of this epoch from a stale one, and the task-weight schedule sets the loss's
factors by epoch.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import LrScheduleHandler, ValidationHandler
from torch.optim.lr_scheduler import CosineAnnealingLR

from scripts.core.sliding_window import MultiTaskSimpleInferer
from scripts.train.losses import MultiTaskLoss
from scripts.core.networks import MultiTaskUNet
from scripts.core.tasks import Keys, Task
from scripts.train.training import (CheckpointHandler, HistoryHandler, ResumeError, TaskWeightSchedule, prepare_batch,
                              validated_this_epoch)

LR, ETA_MIN = 0.01, 0.0001
NETWORK = {"spatial_dims": 2, "in_channels": 1, "seg_classes": 2, "num_classes": 4, "encoder": "unet",
           "channels": [4, 8], "dropout": 0.0, "cls_hidden": 0}
CARD = {"name": "MultiTaskUNet", "version": "0.1.0", "network": NETWORK, "channels": ["T1c"],
        "segments": ["background", "tumor"], "classes": ["a", "b", "c", "d"], "spatial_size": [16, 16]}


def _batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        image = torch.rand((2, 1, 16, 16), generator=g)
        batches.append({Keys.IMAGE.value: image, Keys.LABEL.value: (image > 0.6).to(torch.uint8),
                        Keys.CLASS.value: torch.randint(0, 4, (2,), generator=g),
                        Keys.HAS_SEG.value: torch.ones(2), Keys.HAS_CLS.value: torch.ones(2)})
    return batches


def _run(ckpt_dir: Path, max_epochs: int, stop_after: int | None = None, seed: int = 0, card: dict | None = None,
         datalist: Path | None = None, resume: bool = True) -> dict:
    """One training run as train.json wires it; returns its objects and the lr each epoch trained with."""
    torch.manual_seed(seed)  # another seed: other initial weights, which a resume must replace
    net = MultiTaskUNet(**NETWORK)
    loss = MultiTaskLoss(2, 4)
    opt = torch.optim.AdamW(list(net.parameters()) + list(loss.parameters()), lr=LR)
    sched = CosineAnnealingLR(opt, T_max=max_epochs, eta_min=ETA_MIN)
    evaluator = Engine(lambda engine, batch: None)  # never run: no validation score, so no model.pt
    handlers = [LrScheduleHandler(sched, print_lr=False),
                HistoryHandler(str(ckpt_dir / "history.json"), loss, opt, evaluator),
                CheckpointHandler(str(ckpt_dir), net, evaluator, {"network": net, "optimizer": opt, "lr_scheduler": sched,
                                  "loss": loss}, card or CARD, resume=resume, datalist_file=datalist)]
    trainer = SupervisedTrainer(device="cpu", max_epochs=max_epochs, train_data_loader=_batches(), network=net,
                                optimizer=opt, loss_function=loss, inferer=MultiTaskSimpleInferer(),
                                prepare_batch=prepare_batch, decollate=False, train_handlers=handlers)
    lrs: dict[int, float] = {}
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: lrs.__setitem__(e.state.epoch, opt.param_groups[0]["lr"]))
    if stop_after:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after), lambda e: e.terminate())
    trainer.run()
    return {"net": net, "opt": opt, "sched": sched, "trainer": trainer, "lrs": lrs}


def _cosine(epoch_done: int, horizon: int) -> float:
    return ETA_MIN + (LR - ETA_MIN) * (1 + math.cos(math.pi * epoch_done / horizon)) / 2


def _history(ckpt_dir: Path) -> list[dict]:
    return json.loads((ckpt_dir / "history.json").read_text())


def test_interrupted_run_resumed_ends_exactly_like_the_uninterrupted_one(tmp_path):
    whole = _run(tmp_path / "whole", 3)
    first = _run(tmp_path / "parts", 3, stop_after=1)
    assert [r["epoch"] for r in _history(tmp_path / "parts")] == [1]
    epoch1 = _history(tmp_path / "parts")[0]
    second = _run(tmp_path / "parts", 3, seed=1)
    assert sorted(second["lrs"]) == [2, 3], "the resumed run must train only the epochs left"
    torch.testing.assert_close(second["net"].state_dict(), whole["net"].state_dict())
    torch.testing.assert_close(second["opt"].state_dict()["state"], whole["opt"].state_dict()["state"])
    assert second["lrs"] == {e: pytest.approx(whole["lrs"][e], rel=1e-9) for e in (2, 3)}
    assert second["sched"].last_epoch == whole["sched"].last_epoch == 3 and second["trainer"].state.epoch == 3
    history = _history(tmp_path / "parts")
    assert [r["epoch"] for r in history] == [1, 2, 3] and history[0] == epoch1  # epoch 1's record kept as it was
    assert [r["lr"] for r in history] == pytest.approx([r["lr"] for r in _history(tmp_path / "whole")], rel=1e-9)
    assert first["trainer"].state.epoch == 1


def test_extended_run_follows_the_horizon_of_the_config(tmp_path):
    done = _run(tmp_path, 2)
    assert done["lrs"] == {1: pytest.approx(_cosine(0, 2)), 2: pytest.approx(_cosine(1, 2))}
    extended = _run(tmp_path, 4)  # the checkpoint's cosine ends at epoch 2 (T_max 2); the config asks for 4
    assert extended["lrs"] == {3: pytest.approx(_cosine(2, 4)), 4: pytest.approx(_cosine(3, 4))}
    assert extended["sched"].T_max == 4
    assert extended["opt"].param_groups[0]["lr"] == pytest.approx(ETA_MIN)  # annealed to the floor at the new end
    assert [r["epoch"] for r in _history(tmp_path)] == [1, 2, 3, 4]


def _datalist(folder: Path, text: str = '{"training": ["a.png"]}') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "datalist.json").write_text(text)
    return folder / "datalist.json"


def _changed(**changes) -> dict:
    card = json.loads(json.dumps(CARD))
    for key, value in changes.items():
        if key in NETWORK:
            card["network"][key] = value
        else:
            card[key] = value
    return card


@pytest.mark.parametrize(("card", "message"), [
    (_changed(encoder="resnet18"), "network.encoder: 'unet' in the checkpoint, 'resnet18' now"),
    (_changed(spatial_dims=3, spatial_size=[16, 16, 8]),
     r"network.spatial_dims: 2 in the checkpoint, 3 now\n  spatial_size: \[16, 16\] in the checkpoint, \[16, 16, 8\] now"),
    (_changed(spatial_size=[32, 32]), r"spatial_size: \[16, 16\] in the checkpoint, \[32, 32\] now"),
    (_changed(classes=["a", "b", "c", "e"]), "classes: "),
    (None, r"datalist_file: .*data.datalist.json \(sha256 [0-9a-f]{12}\) in the checkpoint, .*data.datalist.json \(sha256"),
])
def test_a_checkpoint_of_another_setup_is_refused_before_anything_is_written(tmp_path, card, message):
    ckpt = tmp_path / "models"
    datalist = _datalist(tmp_path / "data")
    _run(ckpt, 1, datalist=datalist)
    if card is None:
        _datalist(tmp_path / "data", '{"training": ["a.png", "b.png"]}')  # same file, other samples
    before = {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()}
    with pytest.raises(ResumeError, match=message) as refused:
        _run(ckpt, 2, card=card, datalist=datalist)
    assert "--resume false" in str(refused.value) and str(ckpt / "checkpoint_last.pt") in str(refused.value)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()} == before  # card, checkpoint, history untouched
    fresh = _run(ckpt, 1, card=card, datalist=datalist, resume=False)  # the way out the message names
    assert sorted(fresh["lrs"]) == [1] and json.loads((ckpt / "model_card.json").read_text()) == (card or CARD)


def test_the_same_datalist_moved_elsewhere_still_resumes(tmp_path):
    _run(tmp_path / "models", 1, datalist=_datalist(tmp_path / "a"))
    moved = _datalist(tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    assert sorted(_run(tmp_path / "models", 2, datalist=moved)["lrs"]) == [2]


def test_a_checkpoint_without_its_setup_is_refused(tmp_path):
    _run(tmp_path, 1)
    state = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    del state["setup"]
    torch.save(state, tmp_path / "checkpoint_last.pt")
    with pytest.raises(ResumeError, match="does not record what it was trained for"):
        _run(tmp_path, 2)


def test_history_json_never_lists_an_epoch_the_checkpoint_lacks(tmp_path, monkeypatch):
    import scripts.train.training as training

    written, write = [], training.write_json_atomic

    def spy(path, data):  # at each history.json write: which epochs does checkpoint_last.pt hold already?
        if Path(path).name == "history.json":
            trainer = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)["trainer"]
            written.append(([r["epoch"] for r in data], trainer["iteration"] // trainer["epoch_length"],
                            [r["epoch"] for r in trainer["history"]]))
        return write(path, data)

    monkeypatch.setattr(training, "write_json_atomic", spy)
    _run(tmp_path, 3)
    assert written == [([1], 1, [1]), ([1, 2], 2, [1, 2]), ([1, 2, 3], 3, [1, 2, 3])]


def _validated_run(evaluator: SupervisedEvaluator, handlers: list, net: MultiTaskUNet, loss: MultiTaskLoss, opt,
                   max_epochs: int = 3, scores: dict[int, float] | None = None) -> SupervisedTrainer:
    """A run whose evaluator (a MONAI SupervisedEvaluator) validates every 2nd epoch through ValidationHandler.

    The evaluator's ``val_score`` is the trainer epoch it validated (improves every validation); at the
    start of each trainer epoch in ``scores`` its metrics are overwritten with that value (a stale score
    that no validation of this epoch produced).
    """
    trainer = SupervisedTrainer(device="cpu", max_epochs=max_epochs, train_data_loader=_batches(), network=net,
                                optimizer=opt, loss_function=loss, inferer=MultiTaskSimpleInferer(),
                                prepare_batch=prepare_batch, decollate=False,
                                train_handlers=[ValidationHandler(interval=2, validator=evaluator, epoch_level=True),
                                                *handlers])
    for epoch, score in (scores or {}).items():
        trainer.add_event_handler(Events.EPOCH_STARTED(once=epoch), lambda e, v=score: evaluator.state.metrics.update(val_score=v))
    trainer.run()
    return trainer


def _evaluator(net: MultiTaskUNet) -> SupervisedEvaluator:
    evaluator = SupervisedEvaluator(device="cpu", val_data_loader=_batches(), network=net, inferer=MultiTaskSimpleInferer(),
                                    prepare_batch=prepare_batch, decollate=False)
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val_score=float(e.state.epoch)))
    return evaluator


def test_monai_evaluators_report_the_trainer_epoch_they_validated():
    torch.manual_seed(0)
    net = MultiTaskUNet(**NETWORK)
    evaluator, trainer = _evaluator(net), Engine(lambda e, b: None)
    assert not validated_this_epoch(evaluator, trainer)  # neither ran
    seen = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(validated_this_epoch(evaluator, e)))
    trainer.add_event_handler(Events.EPOCH_COMPLETED(every=2), lambda e: evaluator.run(e.state.epoch))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(validated_this_epoch(evaluator, e)))
    trainer.run([0], max_epochs=4)
    assert seen == [False, False, False, True, False, False, False, True]  # (before, after) the validation, epochs 1-4
    assert not validated_this_epoch(None, trainer)


def test_the_checkpoint_saves_the_best_model_without_the_history_handler(tmp_path, monkeypatch):
    import scripts.train.training as training

    saved, save = [], training.save_atomic
    monkeypatch.setattr(training, "save_atomic", lambda obj, path: (saved.append(Path(path).name), save(obj, path)))
    torch.manual_seed(0)
    net = MultiTaskUNet(**NETWORK)
    loss = MultiTaskLoss(2, 4)
    opt = torch.optim.AdamW(net.parameters(), lr=LR)
    evaluator = _evaluator(net)
    ckpt = CheckpointHandler(str(tmp_path), net, evaluator, {"network": net, "optimizer": opt}, CARD)
    # epoch 3 is not validated (interval 2): a higher score left in the evaluator's metrics is not this epoch's
    _validated_run(evaluator, [ckpt], net, loss, opt, max_epochs=3, scores={3: 99.0})
    assert saved == ["checkpoint_last.pt", "model.pt", "checkpoint_last.pt", "checkpoint_last.pt"]  # model.pt at epoch 2 only
    assert (ckpt.best_epoch, ckpt.best_score) == (2, 2.0)
    assert torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)["best"] == {"score": 2.0, "epoch": 2}
    assert not hasattr(evaluator.state, "trainer_epoch")  # nothing stamps the evaluator


def test_the_history_records_validations_of_their_epoch_and_the_terms_of_the_weights_in_effect(tmp_path):
    torch.manual_seed(0)
    net = MultiTaskUNet(**NETWORK)
    loss = MultiTaskLoss(2, 4, task_weights={"seg": 1.0, "cls": 0.5})
    opt = torch.optim.AdamW(net.parameters(), lr=LR)
    evaluator = _evaluator(net)
    history = HistoryHandler(str(tmp_path / "history.json"), loss, opt, evaluator)
    _validated_run(evaluator, [TaskWeightSchedule(loss, warmup_epochs=1), history], net, loss, opt, max_epochs=3,
                   scores={3: 99.0})
    records = _history(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r.get("val_score") for r in records] == [None, 2.0, None]  # epoch 3's stale 99 is not recorded
    assert [r["seg_only"] for r in records] == [True, False, False]
    for r in records:
        assert r["iterations"] == 2 and {"loss", "loss_seg", "loss_cls"} <= set(r)
    warm, joint = records[0], records[1]
    assert warm["loss"] == pytest.approx(warm["loss_seg"], rel=1e-6)  # the diagnosis term is computed, not used
    assert joint["loss"] == pytest.approx(joint["loss_seg"] + 0.5 * joint["loss_cls"], rel=1e-6)


def test_the_task_weight_schedule_sets_the_factors_by_epoch():
    loss = MultiTaskLoss(2, 4)
    schedule = TaskWeightSchedule(loss, warmup_epochs=2)
    assert [schedule.factors(e)["cls"] for e in (1, 2, 3, 10)] == [0.0, 0.0, 1.0, 1.0]
    assert all(schedule.factors(e)["seg"] == 1.0 for e in (1, 3))
    trainer = Engine(lambda e, b: loss.task_factors)
    schedule.attach(trainer)
    in_effect = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: in_effect.__setitem__(e.state.epoch, e.state.output))
    trainer.run([0], max_epochs=4)
    assert in_effect == {1: {"seg": 1.0, "cls": 0.0}, 2: {"seg": 1.0, "cls": 0.0}, 3: {"seg": 1.0, "cls": 1.0},
                         4: {"seg": 1.0, "cls": 1.0}}
    resumed = Engine(lambda e, b: loss.task_factors)  # a resumed run starts at epoch 2: the schedule has no state
    TaskWeightSchedule(loss, warmup_epochs=2).attach(resumed)
    resumed.load_state_dict({"iteration": 1, "epoch_length": 1, "max_epochs": 3})
    resumed.add_event_handler(Events.ITERATION_COMPLETED, lambda e: in_effect.__setitem__(e.state.epoch, e.state.output))
    in_effect.clear()
    resumed.run([0])
    assert in_effect == {2: {"seg": 1.0, "cls": 0.0}, 3: {"seg": 1.0, "cls": 1.0}}
    for bad in (-1, "soon", 1.5, True):
        with pytest.raises(ValueError, match="warmup_epochs must be a whole number >= 0 or 'auto'"):
            TaskWeightSchedule(loss, warmup_epochs=bad)


def _auto_run(schedule: TaskWeightSchedule, hits: dict[int, bool | str], max_epochs: int, resume_at: int = 0) -> dict:
    """Drive ``schedule`` (attached to an engine whose output looks like the trainer's) for ``max_epochs``:
    in epoch ``e`` the segmentation's argmax finds the one image's 16-pixel lesion exactly when ``hits[e]``
    is True, overlaps it by 4 of 12 predicted pixels when it is ``"partial"`` (recall 0.25), else finds nothing.
    Returns the diagnosis factor in effect per epoch."""
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    mask[0, 0, 2:6, 2:6] = 1  # image 0 has a lesion, image 1 none

    def step(engine: Engine, batch) -> dict:
        seg = torch.zeros(2, 2, 8, 8)
        seg[:, 0] = 1.0  # background everywhere...
        hit = hits.get(engine.state.epoch, False)
        if hit == "partial":
            seg[0, 1, 2:6, 5:8] = 2.0
        elif hit:
            seg[0, 1, 2:6, 2:6] = 2.0  # ...but the lesion found
        return {"pred": {Task.SEG.value: seg}, "label": {Task.SEG.value: mask, Keys.HAS_SEG.value: torch.ones(2)},
                "cls_factor": schedule.loss.task_factors["cls"]}

    engine = Engine(step)
    schedule.attach(engine)
    factors = {}
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: factors.__setitem__(e.state.epoch, e.state.output["cls_factor"]))
    if resume_at:
        engine.load_state_dict({"iteration": resume_at, "epoch_length": 1, "max_epochs": max_epochs})
        engine.run([0])
    else:
        engine.run([0], max_epochs=max_epochs)
    return factors


def test_auto_warm_up_lasts_until_the_segmentation_finds_lesions(tmp_path):
    loss = MultiTaskLoss(2, 4)
    # found in epoch 3: epochs 1-3 train the segmentation alone, the diagnosis joins from epoch 4
    assert _auto_run(TaskWeightSchedule(loss, "auto"), {3: True, 4: False}, 6) == {1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0, 5: 1.0, 6: 1.0}
    # found at once: one seg-only epoch
    assert _auto_run(TaskWeightSchedule(loss, "auto"), {1: True}, 3) == {1: 0.0, 2: 1.0, 3: 1.0}
    # never found: at most max_warmup_epochs
    assert _auto_run(TaskWeightSchedule(loss, "auto", max_warmup_epochs=2), {}, 4) == {1: 0.0, 2: 0.0, 3: 1.0, 4: 1.0}
    # a recall below found_recall does not end it (0.25 against 0.5), one above does (0.25 against 0.1)
    assert _auto_run(TaskWeightSchedule(loss, "auto", found_recall=0.5, max_warmup_epochs=3), {1: "partial"}, 4) == {
        1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0}
    assert _auto_run(TaskWeightSchedule(loss, "auto"), {1: "partial"}, 2) == {1: 0.0, 2: 1.0}
    # a resumed run: after an epoch that trained both tasks no new warm-up; after seg-only epochs, it goes on
    history = tmp_path / "history.json"
    history.write_text(json.dumps([{"epoch": 1, "seg_only": True}, {"epoch": 2, "seg_only": False}]))
    assert _auto_run(TaskWeightSchedule(loss, "auto", history=history), {}, 4, resume_at=2) == {3: 1.0, 4: 1.0}
    history.write_text(json.dumps([{"epoch": 1, "seg_only": True}, {"epoch": 2, "seg_only": True}]))
    assert _auto_run(TaskWeightSchedule(loss, "auto", history=history), {}, 7, resume_at=2) == {3: 0.0, 4: 0.0, 5: 0.0, 6: 1.0, 7: 1.0}
    # fine-tuning from a trained model: no warm-up
    assert _auto_run(TaskWeightSchedule(loss, "auto", init_from="models/model.pt"), {}, 2) == {1: 1.0, 2: 1.0}
    with pytest.raises(ValueError, match="found_recall must be in"):
        TaskWeightSchedule(loss, "auto", found_recall=0.0)


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), ("false", False), ("False", False),
                                             ("TRUE", True), ("0", False), (1, True), ("no", False), ("on", True)])
def test_on_off_knobs_read_the_words_a_command_line_sends(value, expected):
    from scripts.core.flags import flag

    assert flag(value, "resume") is expected


@pytest.mark.parametrize("value", ["flase", "", None, 2, [True]])
def test_other_on_off_values_are_refused_by_name(value):
    from scripts.core.flags import flag

    with pytest.raises(ValueError, match="resume must be true or false"):
        flag(value, "resume")


def test_lower_case_false_from_the_command_line_turns_the_knobs_off(tmp_path):
    # `--resume false` reaches the config as the text 'false', which Python reads as true
    from bundle_config_helpers import train_parser
    from monai.transforms import Randomizable

    from scripts.train.training import prepare_batch as plain_prepare_batch

    parser = train_parser({"dataset_dir": str(tmp_path / "syn"), "ckpt_dir": str(tmp_path / "m"),
                           "datalist_file#n_train": 8, "datalist_file#n_val": 4, "datalist_file#n_test": 4,
                           "resume": "false", "calibrate": "false", "augment": "false", "lesion_guidance": "false",
                           "augment_on": "sample", "rot90": "false", "amp": "false", "cpu_bf16": "false"})
    handlers = parser.get_parsed_content("train#handlers")
    checkpoint = next(h for h in handlers if isinstance(h, CheckpointHandler))
    assert checkpoint.resume is False
    assert not next(h for h in handlers if type(h).__name__ == "TemperatureScalingHandler").enabled
    chain = parser.get_parsed_content("train#preprocessing")
    assert not [t for t in chain.transforms if isinstance(t, Randomizable)]
    assert parser.get_parsed_content("batch_augment") is None
    step = parser.get_parsed_content("train_prepare_batch")
    assert getattr(step, "func", step) is plain_prepare_batch  # no lesion guidance
    assert parser.get_parsed_content("augment_knobs")["p_rot90"] == 0.0  # the demo's plan turns; 'false' stops them
    assert parser.get_parsed_content("train#trainer").amp is False
    assert parser.get_parsed_content("train#inferer").cpu_bf16 is False
    assert parser.get_parsed_content("validate#inferer").cpu_bf16 is False
    parser.update({"resume": "maybe"})
    with pytest.raises(Exception) as refused:
        parser.get_parsed_content("train#handlers")
    causes, error = [], refused.value
    while error is not None:  # MONAI wraps the expression's error; the user sees the whole chain
        causes.append(str(error))
        error = error.__cause__
    assert any("resume must be true or false, got 'maybe'" in c for c in causes)
