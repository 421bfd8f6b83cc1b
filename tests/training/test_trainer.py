"""Trainer: checkpoints, exact resume, the before_step RNG contract, distillation, evaluation."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys

import pytest
import torch

from updp.accuracy import module_accuracy
from updp.blocks import apply_pruning, pruned_blocks, set_lam
from updp.core.errors import InputError
from updp.data import get_datasets
from updp.models import create_for_data, create_model, spec_record
from updp.training.distill import DistillationLoss, kd_kl
from updp.training.lr_schedule import warmup_cosine
from updp.training.trainer import Trainer, TrainerConfig, TrainingDivergedError, state_hash
from updp.workflows.resolve import load_model

SMALL_DIMS = (16, 32, 48, 64)  # convnext_atto's depths, thinner: the CPU depthwise backward dominates


@pytest.fixture(scope="module")
def digits():
    return get_datasets("digits", 32)


def _model(seed=0):
    torch.manual_seed(seed)
    m, spec = create_model("timm:convnext_atto", num_classes=10, drop_path_rate=0.1, dims=SMALL_DIMS)
    return m, spec


def _pruned_setup():
    """A pruned model with a λ ramp and a teacher: exercises every stateful part of a run."""
    m, spec = _model()
    teacher = copy.deepcopy(m).eval()
    apply_pruning(m, [1], lam=0.0)

    def before_step(model, step, progress):
        set_lam(model, min(1.0, step / 4))
        torch.rand(1)  # draws from the forked, step-seeded RNG: must not disturb the run

    return m, spec, teacher, before_step


def _cfg(tmp_path, name, **kw):
    base = dict(epochs=2, batch_size=32, lr=2e-3, weight_decay=0.05, label_smoothing=0.1, max_steps_per_epoch=3,
                progress=False, kd_alpha=0.5, warmup_epochs=0.5, out=str(tmp_path / name) if tmp_path else None)
    base.update(kw)
    return TrainerConfig(**base)


def test_resume_after_kill_equals_uninterrupted_run(tmp_path, digits):
    m, _, teacher, before = _pruned_setup()
    full = Trainer(m, digits, _cfg(tmp_path, "full.pt"), teacher=teacher, before_step=before).fit()

    m2, _, teacher2, before2 = _pruned_setup()

    def killing(model, step, progress):
        if step == 3:  # the first step of epoch 2: epoch 1 is finished and checkpointed
            raise KeyboardInterrupt
        before2(model, step, progress)

    with pytest.raises(KeyboardInterrupt):
        Trainer(m2, digits, _cfg(tmp_path, "resumed.pt"), teacher=teacher2, before_step=killing).fit()
    assert torch.load(tmp_path / "resumed.pt", weights_only=True)["epoch"] == 1

    m3, _, teacher3, before3 = _pruned_setup()
    with torch.no_grad():  # other weights before the resume: all of them must come from the checkpoint
        for p in m3.parameters():
            p.add_(1.0)
    resumed = Trainer(m3, digits, _cfg(tmp_path, "resumed.pt", resume=True), teacher=teacher3,
                      before_step=before3).fit()
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k, v in a["model"].items():
        assert torch.allclose(v.double(), b["model"][k].double(), rtol=0, atol=1e-6), k
    assert state_hash(m) == state_hash(m3)  # in fact bit-for-bit on CPU
    assert resumed.val_acc == full.val_acc and len(resumed.history) == 2


def test_resume_restores_the_log_from_the_checkpoint(tmp_path, digits, monkeypatch):
    """An epoch's log line is appended after its checkpoint: a kill between the two (or in the middle
    of the line) leaves the log an epoch short, which the resume restores from the checkpoint's
    history, each epoch once; lines of earlier runs in the same file are kept."""
    log = tmp_path / "log.jsonl"
    log.write_text('{"run": "an earlier one"}\n')
    cfg = _cfg(tmp_path, "c.pt", epochs=3, max_steps_per_epoch=1, kd_alpha=0.0, log_jsonl=str(log))
    real = Trainer._report_epoch

    def killed_before_the_second_line(self, record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt
        real(self, record)

    monkeypatch.setattr(Trainer, "_report_epoch", killed_before_the_second_line)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_model()[0], digits, cfg).fit()
    monkeypatch.undo()
    log.write_text(log.read_text() + '{"epoch": 2, "ste')  # and a line cut short
    assert torch.load(tmp_path / "c.pt", weights_only=True)["epoch"] == 2
    res = Trainer(_model()[0], digits, dataclasses.replace(cfg, resume=True)).fit()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines == [{"run": "an earlier one"}, *res.history] and [h["epoch"] for h in res.history] == [1, 2, 3]
    Trainer(_model()[0], digits, dataclasses.replace(cfg, resume=True)).fit()  # finished: nothing changes
    assert [json.loads(x) for x in log.read_text().splitlines()] == lines


def test_checkpoint_contents_are_weights_only_loadable(tmp_path, digits):
    m, spec, teacher, before = _pruned_setup()
    ms = spec_record(spec, (3, 32, 32))
    log = tmp_path / "log.jsonl"
    Trainer(m, digits, _cfg(tmp_path, "c.pt", log_jsonl=str(log)), teacher=teacher, before_step=before,
            checkpoint_extra=lambda: {"model_spec": ms, "note": "x"}).fit()
    ck = torch.load(tmp_path / "c.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "epoch", "step", "rng", "config", "model_spec", "plan",
                "metrics", "note"):
        assert key in ck, key
    assert ck["config"]["kd_alpha"] == 0.5 and ck["model_spec"]["model"] == "timm:convnext_atto"
    assert set(ck["rng"]) == {"torch", "numpy", "python"}
    # Trained channels-last (the model has convolutions), saved and handed back contiguous.
    assert all(v.is_contiguous() for v in ck["model"].values() if isinstance(v, torch.Tensor))
    assert all(p.is_contiguous() for p in m.parameters())
    lam_keys = [k for k in ck["model"] if k.endswith("_extra_state")]
    assert lam_keys and all(float(ck["model"][k]) == 1.0 for k in lam_keys)  # λ lives in the state dict
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert {"lr", "train_loss", "train_acc", "val_loss", "val_acc", "lam", "seconds"} <= set(lines[0])


def test_load_model_refuses_pruned_weights_without_plan(tmp_path, digits):
    m, spec, teacher, before = _pruned_setup()
    ms = spec_record(spec, (3, 32, 32))
    Trainer(m, digits, _cfg(tmp_path, "c.pt", epochs=1, max_steps_per_epoch=1, kd_alpha=0.0),
            checkpoint_extra=lambda: {"model_spec": ms}).fit()
    with pytest.raises(InputError, match="does not match the model architecture"):
        load_model(str(tmp_path / "c.pt"))
    with pytest.raises(InputError, match="holds a timm:convnext_atto"):
        load_model(str(tmp_path / "c.pt"), model="resnet18")


def test_before_step_rng_is_forked_and_step_seeded(tmp_path, digits):
    seen = []

    def rec(model, step, progress):
        seen.append((step, round(progress, 4), float(torch.rand(1))))

    for _ in range(2):
        m, _ = _model()
        Trainer(m, digits, _cfg(tmp_path, "r.pt", out=None, kd_alpha=0.0), before_step=rec).fit()
    first, second = seen[:6], seen[6:]
    assert first == second
    assert [s for s, _, _ in first] == list(range(6))
    assert [p for _, p, _ in first] == [0.0, 0.3333, 0.6667, 1.0, 1.3333, 1.6667]
    assert len({r for _, _, r in first}) == 6


def test_distillation_loss():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    ce = torch.nn.functional.cross_entropy(s, y, label_smoothing=0.1)
    assert torch.allclose(DistillationLoss(0.0, label_smoothing=0.1)(s, y, t), ce)
    assert float(kd_kl(s, s.clone(), 2.0)) == pytest.approx(0.0, abs=1e-6)
    both = DistillationLoss(0.5, 2.0, 0.1)(s, y, t)
    assert torch.allclose(both, 0.5 * ce + 0.5 * kd_kl(s, t, 2.0))


def test_warmup_cosine():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    vals = [warmup_cosine(s, 100, 10) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_module_accuracy_counts_every_sample(digits):
    m, _ = _model()
    r = module_accuracy(m, digits.val, batch_size=100)
    assert r["n"] == len(digits.val) and 0.0 <= r["acc"] <= 1.0 and math.isfinite(r["loss"])
    assert m.training is False or m.training is True  # mode restored (no exception)


def test_config_and_trainer_errors(digits):
    with pytest.raises(InputError):
        _cfg(None, "x", epochs=0, out=None)
    with pytest.raises(InputError, match="kd_alpha"):
        Trainer(_model()[0], digits, _cfg(None, "x", epochs=1, kd_alpha=0.5, out=None))
    m, _ = _model()
    apply_pruning(m, [0], lam=0.3)
    assert [b.lam for _, b in pruned_blocks(m)] == [0.3]


def test_amp_bf16_autocasts_training_forwards_only(tmp_path, digits):
    """`amp='bf16'`: student and teacher forwards in bfloat16; weights, loss and validation in float32."""
    m, _, teacher, before_step = _pruned_setup()
    seen: dict[str, set] = {"student_train": set(), "student_eval": set(), "teacher": set()}

    def record(key_train, key_eval=None):
        def hook(mod, inp, out):
            key = key_train if (mod.training or key_eval is None) else key_eval
            seen[key].add(out.dtype)
        return hook

    m.head.fc.register_forward_hook(record("student_train", "student_eval"))
    teacher.head.fc.register_forward_hook(record("teacher"))
    losses = []
    trainer = Trainer(m, digits, _cfg(tmp_path, "amp.pt", epochs=1, amp="bf16"), teacher=teacher,
                      before_step=before_step)
    criterion = trainer.criterion
    trainer.criterion = lambda logits, y, t: (losses.append((logits.dtype, t.dtype)), criterion(logits, y, t))[1]
    res = trainer.fit()
    assert seen == {"student_train": {torch.bfloat16}, "student_eval": {torch.float32}, "teacher": {torch.bfloat16}}
    assert set(losses) == {(torch.float32, torch.float32)}
    assert math.isfinite(res.val_loss)
    sd = torch.load(tmp_path / "amp.pt", weights_only=True)["model"]
    assert {k: v.dtype for k, v in sd.items()} == {k: v.dtype for k, v in m.state_dict().items()}
    assert sd["head.fc.weight"].dtype == torch.float32
    with pytest.raises(InputError, match="--amp"):
        _cfg(tmp_path, "x", epochs=1, amp="fp8")


@pytest.mark.parametrize("native", [True, False])
def test_amp_bf16_warns_where_bfloat16_is_emulated(tmp_path, digits, monkeypatch, caplog, native):
    """bf16 autocast on a device without native bfloat16 is many times slower: say so, once, at start."""
    import updp.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "native_bfloat16", lambda device: native)
    with caplog.at_level("WARNING", logger="updp.training.trainer"):
        Trainer(_model()[0], digits, _cfg(tmp_path, "x.pt", epochs=1, amp="bf16", kd_alpha=0.0))
        Trainer(_model()[0], digits, _cfg(tmp_path, "y.pt", epochs=1, amp="off", kd_alpha=0.0))
    warned = [r.getMessage() for r in caplog.records if "no native bfloat16" in r.getMessage()]
    assert len(warned) == (0 if native else 1)
    if warned:
        assert "amp 'off'" in warned[0] and "this CPU (" in warned[0]


def test_native_bfloat16_matches_what_torch_reports():
    from updp.training.device import native_bfloat16

    assert native_bfloat16(torch.device("cpu")) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert native_bfloat16(torch.device("meta")) is False


def test_create_for_data_seeds_the_init_without_touching_the_global_rng(digits):
    """Two runs with one seed start from the same weights, whatever the process's RNG state was.

    (Before this, a baseline's init came from the unseeded global RNG, so `updp train --seed 0`
    gave a different model in every process.)
    """
    kw = dict(num_classes=digits.num_classes, input_chw=(3, 32, 32), model_kwargs={"dims": SMALL_DIMS})
    torch.manual_seed(123)
    a, _ = create_for_data("timm:convnext_atto", seed=5, **kw)
    after = torch.rand(1)
    torch.manual_seed(999)
    b, _ = create_for_data("timm:convnext_atto", seed=5, **kw)
    c, _ = create_for_data("timm:convnext_atto", seed=6, **kw)
    assert state_hash(a) == state_hash(b) != state_hash(c)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after)  # the caller's RNG stream is untouched


def test_redirected_progress_is_one_plain_line_per_epoch(tmp_path, digits, capsys):
    """No tqdm carriage-return frames in a log file: off a terminal, progress is a line per epoch."""
    m, _ = _model()

    def echo(line):
        print(line, file=sys.stderr)

    Trainer(m, digits, _cfg(tmp_path, "p.pt", out=None, kd_alpha=0.0, progress=True), echo=echo).fit()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all("val loss" in ln and "acc" in ln for ln in lines)


def test_a_nan_loss_stops_training_and_keeps_the_last_finished_epoch(tmp_path, digits):
    """The before_step hook poisons a weight at the first step of epoch 2: the loss turns NaN, the run
    stops there with an InputError, and the checkpoint still holds epoch 1, byte for byte."""
    m, _ = _model()
    first = next(m.parameters())

    def poison(model, step, progress):
        if step == 3:
            with torch.no_grad():
                first.fill_(float("nan"))

    cfg = _cfg(tmp_path, "c.pt", kd_alpha=0.0)
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at step 3 \(epoch 2\);.*c\.pt keeps epoch 1"):
        Trainer(m, digits, cfg, before_step=poison).fit()
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    assert saved["epoch"] == 1 and all(torch.isfinite(v).all() for v in saved["model"].values()
                                       if v.is_floating_point())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_fit_flushes_denormals_while_it_trains_and_leaves_the_mode_it_found(digits, denormal_flush):
    """The flush is a CPU register of the thread: left on after training, it made numpy read float32
    denormals as zero in whatever ran next in the process (the ONNX passes of `updp run`)."""
    from updp.core.denormals import denormals_flushed

    m, _ = _model()
    seen = []
    Trainer(m, digits, _cfg(None, "unused", epochs=1, max_steps_per_epoch=1, kd_alpha=0.0),
            before_step=lambda *_: seen.append(denormals_flushed())).fit()
    assert seen == [True]
    assert not denormals_flushed()
