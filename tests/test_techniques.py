"""Training techniques: accumulation, EMA, weight decay groups, NaN guard, early stopping, distillation, tracking,
LR tools, compile / channels_last / deterministic switches. Tiny models on the bundled digits, a few seconds each."""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from imgcls.config import OptimizerConfig, build_config
from imgcls.engine.ema import ModelEma
from imgcls.engine.loop import (
    NonFiniteLossError,
    OptimState,
    TrainOptions,
    assert_finite_state,
    evaluate,
    train_one_epoch,
)
from imgcls.engine.optim import OPTIMIZERS, Lookahead, build_optimizer

CPU = torch.device("cpu")


def tiny_overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "data.name=digits",
        "model.name=simple_cnn_tiny",
        "data.subset=160",
        "data.batch_size=32",
        "training.epochs=2",
        f"run.dir={tmp_path / 'runs'}",
        "run.progress=false",
        "run.tracker=none",
        "run.eval_test=false",
        "run.report=false",
        *extra,
    ]


def run_train(tmp_path: Path, *extra: str, hooks: dict | None = None):  # noqa: ANN201
    from imgcls.engine.train import train

    return train(build_config(None, tiny_overrides(tmp_path, *extra)), hooks=hooks)


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def sgd(model: nn.Module, lr: float = 0.1, momentum: float = 0.0) -> torch.optim.Optimizer:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    return opt


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))  # no BatchNorm


# --------------------------------------------------------------------------------------------------------------------
# Loop-level techniques (no runner)
# --------------------------------------------------------------------------------------------------------------------


def test_gradient_accumulation_4x32_equals_1x128() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(256, 1, 8, 8, generator=g), torch.randint(0, 10, (256,), generator=g)
    small = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]  # 8 batches -> 2 steps of 4 x 32
    big = [(x[i : i + 128], y[i : i + 128]) for i in range(0, 256, 128)]  # 2 batches -> 2 steps of 128
    a, b = mlp(), mlp()
    loss = nn.CrossEntropyLoss()
    sa = train_one_epoch(a, small, OptimState(sgd(a, momentum=0.9)), loss, TrainOptions(accum_steps=4))
    sb = train_one_epoch(b, big, OptimState(sgd(b, momentum=0.9)), loss, TrainOptions(accum_steps=1))
    assert sa.steps == sb.steps == 2
    assert sa.loss == pytest.approx(sb.loss, rel=1e-6)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_accumulation_tail_group_is_scaled_by_its_size() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(96, 1, 8, 8, generator=g), torch.randint(0, 10, (96,), generator=g)
    # 3 batches with accum 2: one full group (2 x 32) then a tail of one batch -> equals batches of 64 and 32
    small = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 96, 32)]
    ref = [(x[:64], y[:64]), (x[64:], y[64:])]
    a, b = mlp(), mlp()
    loss = nn.CrossEntropyLoss()
    assert train_one_epoch(a, small, OptimState(sgd(a)), loss, TrainOptions(accum_steps=2)).steps == 2
    train_one_epoch(b, ref, OptimState(sgd(b)), loss, TrainOptions(accum_steps=1))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_ema_matches_closed_form_for_linear_motion() -> None:
    # loss = sum(W x) with a fixed x gives a constant gradient, so plain SGD moves W linearly: W_n = W_0 + n c.
    # EMA without warmup: e_n = d e_{n-1} + (1 - d) W_n, e_0 = W_0  =>  e_N = W_0 + c (N - d (1 - d^N) / (1 - d)).
    torch.manual_seed(0)
    model = nn.Linear(4, 1, bias=False)
    w0 = model.weight.detach().clone()
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    lr, d, n = 0.01, 0.9, 25
    ema = ModelEma(model, decay=d, warmup=False)
    loader = [(x, torch.zeros(1, dtype=torch.long))] * n
    train_one_epoch(model, loader, OptimState(sgd(model, lr=lr), ema=ema), lambda logits, _: logits.sum())
    c = -lr * x
    torch.testing.assert_close(model.weight.detach(), w0 + n * c, rtol=1e-5, atol=1e-6)
    expected = w0 + c * (n - d * (1 - d**n) / (1 - d))
    torch.testing.assert_close(ema.module.weight, expected, rtol=1e-5, atol=1e-6)
    assert ema.num_updates == n


def test_ema_warmup_decay_ramp_and_buffers_copied() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.999, warmup=True)
    ramp = []
    for _ in range(3):
        ramp.append(ema.current_decay())
        ema.update(model)
    assert ramp == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    ema.num_updates = 10_000
    assert ema.current_decay() == 0.999
    model[1].running_mean.fill_(3.0)
    ema.update(model)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)


def test_weight_decay_skips_norms_and_biases() -> None:
    from imgcls.models import create_model

    model = create_model("simple_cnn_tiny", num_classes=10, in_chans=1)
    for name in OPTIMIZERS:
        opt = build_optimizer(model, OptimizerConfig(name=name, lr=0.1, weight_decay=0.5))
        seen = set()
        for group in opt.param_groups:
            assert "initial_lr" in group
            for p in group["params"]:
                seen.add(id(p))
                assert group["weight_decay"] == (0.5 if p.ndim > 1 else 0.0)
        assert seen == {id(p) for p in model.parameters()}
    # functional check: with zero gradients one SGD step shrinks conv/linear weights only
    opt = build_optimizer(model, OptimizerConfig(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.5))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        if p.ndim > 1:
            torch.testing.assert_close(p.detach(), before[n] * (1 - 0.1 * 0.5))
        else:  # BatchNorm weights/biases and the head's bias
            assert torch.equal(p.detach(), before[n]), n


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("lookahead", [False, True])
def test_every_optimizer_steps_downhill_and_schedules(name: str, lookahead: bool) -> None:
    torch.manual_seed(0)
    model = mlp()
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    opt = build_optimizer(model, OptimizerConfig(name=name, lr=0.01, lookahead=lookahead, lookahead_k=2))
    assert isinstance(opt, Lookahead) == lookahead
    assert all(g["initial_lr"] == g["lr"] == 0.01 for g in opt.param_groups)  # what the schedule multiplies
    first = nn.functional.cross_entropy(model(x), y).item()
    for _ in range(20):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert nn.functional.cross_entropy(model(x), y).item() < first
    state = opt.state_dict()  # checkpoints hold it; a fresh optimizer takes it back
    fresh = build_optimizer(model, OptimizerConfig(name=name, lr=0.01, lookahead=lookahead, lookahead_k=2))
    fresh.load_state_dict(state)
    assert len(fresh.state_dict()["state"]) == len(state["state"])


def test_optimizer_settings() -> None:
    model = mlp()
    opt = build_optimizer(model, OptimizerConfig(name="sgd", lr=0.1, momentum=0.8, nesterov=True))
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.8
    opt = build_optimizer(model, OptimizerConfig(name="sgd", momentum=0.0, nesterov=True))
    assert not opt.defaults["nesterov"]  # nesterov needs momentum: quietly off rather than a torch error
    opt = build_optimizer(model, OptimizerConfig(name="adam", betas=[0.8, 0.99]))
    assert type(opt) is torch.optim.Adam and opt.defaults["betas"] == (0.8, 0.99)
    assert type(build_optimizer(model, OptimizerConfig(name="adamw"))) is torch.optim.AdamW


def _nan_batches(n: int, nan_at: set[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(n):
        x = torch.randn(8, 1, 8, 8, generator=g)
        if i in nan_at:
            x[0, 0, 0, 0] = float("nan")
        out.append((x, torch.randint(0, 10, (8,), generator=g)))
    return out


def test_nonfinite_step_is_skipped() -> None:
    batches = _nan_batches(4, nan_at={2})
    a, b = mlp(), mlp()
    stats = train_one_epoch(a, batches, OptimState(sgd(a)), nn.CrossEntropyLoss(), TrainOptions(max_nonfinite_steps=2))
    # the same run without the bad batch gives the same weights: the NaN step changed nothing
    train_one_epoch(b, [batches[i] for i in (0, 1, 3)], OptimState(sgd(b)), nn.CrossEntropyLoss())
    assert stats.skipped_steps == 1 and stats.steps == 4  # the schedule's clock still advanced
    assert math.isfinite(stats.loss)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_nonfinite_in_accumulation_group_skips_whole_group() -> None:
    batches = _nan_batches(4, nan_at={0})  # the first micro-batch of the first group
    a = mlp()
    before = [p.detach().clone() for p in a.parameters()]
    ema = ModelEma(a, decay=0.5, warmup=False)
    stats = train_one_epoch(
        a, batches[:2], OptimState(sgd(a), ema=ema), nn.CrossEntropyLoss(), TrainOptions(accum_steps=2)
    )
    assert stats.skipped_steps == 1 and ema.num_updates == 0
    for p, q in zip(a.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_nonfinite_raises_after_k_in_a_row() -> None:
    a = mlp()
    before = [p.detach().clone() for p in a.parameters()]
    with pytest.raises(NonFiniteLossError, match="3 non-finite"):
        train_one_epoch(
            a,
            _nan_batches(6, nan_at={1, 2, 3, 4}),
            OptimState(sgd(a)),
            nn.CrossEntropyLoss(),
            TrainOptions(max_nonfinite_steps=3),
        )
    assert all(torch.isfinite(p).all() for p in a.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), before, strict=True))  # batch 0 trained
    # an infinite gradient with a finite loss is caught through the gradient norm
    b = mlp()
    w = b[1].weight

    def finite_loss_infinite_grad(logits: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return logits.sum() * 0 + torch.sqrt(w - w.detach()).sum()  # value 0, d sqrt(x)/dx at 0 = inf

    with pytest.raises(NonFiniteLossError):
        train_one_epoch(
            b,
            _nan_batches(2, nan_at=set()),
            OptimState(sgd(b)),
            finite_loss_infinite_grad,
            TrainOptions(max_nonfinite_steps=2),
        )
    assert all(torch.isfinite(p).all() for p in b.parameters())


def test_assert_finite_state_covers_buffers() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert_finite_state(model)
    model[1].running_var[0] = float("inf")
    with pytest.raises(NonFiniteLossError, match="running_var"):
        assert_finite_state(model)


# --------------------------------------------------------------------------------------------------------------------
# Through the runner
# --------------------------------------------------------------------------------------------------------------------


def test_early_stopping_stops_at_the_right_epoch(tmp_path: Path) -> None:
    # min_delta=1 means val accuracy can never improve after epoch 1: with patience 2 the run stops after epoch 3
    epochs_seen = []
    result = run_train(
        tmp_path,
        "training.epochs=10",
        "training.early_stopping.patience=2",
        "training.early_stopping.min_delta=1.0",
        hooks={"on_epoch_end": lambda e, row: epochs_seen.append(e)},
    )
    assert result.epochs_run == 3 and result.summary["stopped_early"] and result.summary["best_epoch"] == 1
    assert epochs_seen == [0, 1, 2]
    assert len(metrics_rows(result.run_dir)) == 3
    # monitor val_loss: an absurd min_delta likewise stops at epoch patience + 1
    result = run_train(
        tmp_path,
        "training.epochs=10",
        "training.early_stopping.patience=1",
        "training.early_stopping.min_delta=100",
        "training.early_stopping.monitor=val_loss",
    )
    assert result.epochs_run == 2 and result.summary["stopped_early"]


def test_ema_evaluated_and_used_for_best_checkpoint(tmp_path: Path) -> None:
    from imgcls.data.build import build_loaders, build_splits
    from imgcls.engine.build import load_model
    from imgcls.engine.checkpoint import load_checkpoint

    result = run_train(
        tmp_path,
        "training.epochs=3",
        "training.ema.enabled=true",
        "training.ema.decay=0.9",
        "training.optimizer.lr=0.2",
        "data.image_size=16",
    )
    rows = metrics_rows(result.run_dir)
    assert all(r["ema_val_acc"] != "" for r in rows)
    best = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")
    assert best["weights"] == "ema"
    best_row = rows[best["epoch"] - 1]
    assert float(best_row["ema_val_acc"]) == max(float(r["ema_val_acc"]) for r in rows)
    # the checkpointed EMA weights reproduce the EMA metric of that epoch through the same evaluate()
    model, ckpt = load_model(result.run_dir / "checkpoints" / "best.pt")
    cfg = build_config(None, tiny_overrides(tmp_path, "data.image_size=16"))
    splits = build_splits(cfg)
    from imgcls.data.loaders import PreprocessInfo

    loaders = build_loaders(cfg, splits, PreprocessInfo(**ckpt["preprocess"]), device=CPU)
    res = evaluate(model, loaders.val, device=CPU, num_classes=10)
    assert res.acc == pytest.approx(float(best_row["ema_val_acc"]), abs=1e-6)
    assert res.loss == pytest.approx(float(best_row["ema_val_loss"]), rel=1e-4)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("teacher")
    result = run_train(tmp, "model.name=simple_cnn_tiny", "training.epochs=2", "data.image_size=16")
    return result.run_dir / "checkpoints" / "best.pt"


def test_distillation_alpha_zero_equals_plain_training(tmp_path: Path, teacher_ckpt: Path) -> None:
    plain = run_train(tmp_path, "data.image_size=16")
    distilled = run_train(
        tmp_path, "data.image_size=16", f"training.distill.teacher={teacher_ckpt}", "training.distill.alpha=0.0"
    )
    a, b = metrics_rows(plain.run_dir), metrics_rows(distilled.run_dir)
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert ra[key] == rb[key], key


def test_distillation_changes_training(tmp_path: Path, teacher_ckpt: Path) -> None:
    plain = run_train(tmp_path, "data.image_size=16", "training.epochs=1")
    distilled = run_train(
        tmp_path,
        "data.image_size=16",
        "training.epochs=1",
        f"training.distill.teacher={teacher_ckpt}",
        "training.distill.alpha=0.9",
    )
    assert metrics_rows(plain.run_dir)[0]["train_loss"] != metrics_rows(distilled.run_dir)[0]["train_loss"]


def test_deterministic_runs_repeat_exactly(tmp_path: Path) -> None:
    a = run_train(tmp_path, "training.epochs=1", "run.deterministic=true")
    b = run_train(tmp_path, "training.epochs=1", "run.deterministic=true")
    ra, rb = metrics_rows(a.run_dir)[0], metrics_rows(b.run_dir)[0]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert ra[key] == rb[key]


def test_channels_last_trains_like_contiguous(tmp_path: Path) -> None:
    a = run_train(tmp_path, "training.epochs=1")
    b = run_train(tmp_path, "training.epochs=1", "training.channels_last=true")
    ra, rb = metrics_rows(a.run_dir)[0], metrics_rows(b.run_dir)[0]
    assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), rel=1e-3)
    assert float(ra["val_loss"]) == pytest.approx(float(rb["val_loss"]), rel=1e-3)


@pytest.mark.slow
def test_torch_compile_trains(tmp_path: Path) -> None:
    if sys.platform == "win32":
        pytest.skip("torch.compile needs a C++ toolchain")
    t0 = time.perf_counter()
    a = run_train(tmp_path, "training.epochs=1")
    b = run_train(tmp_path, "training.epochs=1", "training.compile=true")
    ra, rb = metrics_rows(a.run_dir)[0], metrics_rows(b.run_dir)[0]
    assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), rel=1e-3)
    assert float(ra["val_acc"]) == pytest.approx(float(rb["val_acc"]), abs=0.02)
    assert time.perf_counter() - t0 < 600


def test_nonfinite_training_stops_without_saving_nonfinite_weights(tmp_path: Path) -> None:
    from imgcls.engine.checkpoint import load_checkpoint

    with pytest.raises(NonFiniteLossError):
        run_train(
            tmp_path,
            "training.optimizer.lr=1e30",
            "training.optimizer.momentum=0.0",
            "training.max_nonfinite_steps=2",
            "training.epochs=3",
        )
    for path in (tmp_path / "runs").rglob("*.pt"):
        ckpt = load_checkpoint(path)
        assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point()), path


# --------------------------------------------------------------------------------------------------------------------
# Tracking
# --------------------------------------------------------------------------------------------------------------------


def test_tensorboard_tracker_writes_events(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from imgcls.engine.tracking import TensorBoardTracker, create_tracker

    tracker = create_tracker("tensorboard", tmp_path, {"training": {"epochs": 2}})
    assert isinstance(tracker, TensorBoardTracker)
    tracker.log({"epoch": 1, "val_acc": 0.5, "val_top5": "", "lr": 0.1}, step=1)
    tracker.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"val_acc", "lr"}
    assert acc.Scalars("val_acc")[0].value == pytest.approx(0.5)


def test_runner_default_tracker_is_tensorboard(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from imgcls.config import Config

    assert Config().run.tracker == "tensorboard"
    result = run_train(tmp_path, "training.epochs=1", "run.tracker=tensorboard")
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_tracker_errors_and_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from imgcls.engine.tracking import NullTracker, TrackerNotInstalledError, create_tracker

    assert isinstance(create_tracker("none", tmp_path, {}), NullTracker)
    with pytest.raises(ValueError, match="unknown tracker"):
        create_tracker("neptune", tmp_path, {})
    for name in ("mlflow", "wandb"):
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
        with pytest.raises(TrackerNotInstalledError, match=f"pip install {name}"):
            create_tracker(name, tmp_path, {})
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with caplog.at_level("WARNING", logger="imgcls"):
        assert isinstance(create_tracker("tensorboard", tmp_path, {}), NullTracker)
    assert "tensorboard" in caplog.text


def test_mlflow_tracker_sqlite_store(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    import mlflow

    from imgcls.engine.tracking import create_tracker

    tracker = create_tracker("mlflow", tmp_path, {"training": {"epochs": 2, "optimizer": {"name": "sgd"}}})
    tracker.log({"epoch": 1, "val_acc": 0.25, "val_top5": ""}, step=1)
    tracker.log({"epoch": 2, "val_acc": 0.75}, step=2)
    tracker.close()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    run = client.get_run(tracker.run_id)
    assert run.data.params["training.optimizer.name"] == "sgd"
    assert [m.value for m in client.get_metric_history(tracker.run_id, "val_acc")] == [0.25, 0.75]


def test_wandb_tracker_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from imgcls.engine.tracking import create_tracker

    tracker = create_tracker("wandb", tmp_path, {"training": {"epochs": 2}})
    tracker.log({"epoch": 1, "val_acc": 0.5}, step=1)
    tracker.close()
    assert list((tmp_path / "wandb").glob("offline-run-*"))


# --------------------------------------------------------------------------------------------------------------------
# LR tools
# --------------------------------------------------------------------------------------------------------------------


def test_lr_plot_and_default_steps_per_epoch(tmp_path: Path) -> None:
    from imgcls.data.build import build_loaders, build_splits
    from imgcls.data.loaders import PreprocessInfo
    from imgcls.engine.lr_tools import default_steps_per_epoch, lr_plot, schedule_lrs

    cfg = build_config(None, tiny_overrides(tmp_path, "training.scheduler.warmup_epochs=1", "training.accum_steps=2"))
    splits = build_splits(cfg)
    loaders = build_loaders(cfg, splits, PreprocessInfo(8, 1, [0.5], [0.5]), device=CPU)
    assert default_steps_per_epoch(cfg) == -(-len(loaders.train) // 2)  # what the runner computes
    lrs = schedule_lrs(cfg, steps_per_epoch=10)
    assert len(lrs) == 20 and lrs[0] == 0.0 and max(lrs) == pytest.approx(cfg.training.optimizer.lr)
    out = lr_plot(cfg, tmp_path / "plots" / "lr.png", steps_per_epoch=10)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lr_range_test_restores_weights_and_suggests(tmp_path: Path) -> None:
    from imgcls.engine.lr_tools import lr_range_test, plot_lr_find, suggest_lr

    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 1, 8, 8, generator=g)
    y = (x.flatten(1)[:, :10].argmax(1)).long()  # learnable labels
    loader = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.123, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lr_range_test(
        model, loader, opt, nn.CrossEntropyLoss(), device=CPU, start_lr=1e-4, end_lr=100.0, num_steps=40
    )
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert opt.param_groups[0]["lr"] == 0.123 and not opt.state  # optimizer state restored (empty momentum)
    assert result.lrs[0] == pytest.approx(1e-4)
    assert all(b > a for a, b in zip(result.lrs, result.lrs[1:], strict=False))  # exponential sweep
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:], strict=False)]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)
    assert result.suggested_lr is not None and 1e-4 <= result.suggested_lr <= 100.0
    assert plot_lr_find(result, tmp_path / "f.png").is_file()
    assert result.extra["stop_beta"] == 0.98 and result.extra["smooth_beta"] == pytest.approx(1 - 20 / 40)
    # steepest descent of a known curve: loss = -tanh(log10(lr)) falls fastest at lr = 1
    lrs = [10 ** (e / 10) for e in range(-30, 31)]
    assert suggest_lr(lrs, [-math.tanh(math.log10(v)) for v in lrs]) == pytest.approx(1.0)


def test_lr_find_figure_shows_raw_and_smoothed_loss_and_the_suggestion() -> None:
    """A person reading the plot sees every step's raw loss (not clipped away by limits fitted to the smoothed
    curve), the bold smoothed loss it is judged by, the suggested lr on it, and where the sweep stopped."""
    from imgcls.engine.lr_tools import LrFindResult, lr_find_figure

    lrs = [10 ** (e / 10) for e in range(-40, 11)]
    raw = [2.3 - 1.5 / (1 + math.exp(-3 * math.log10(v) - 3)) + 0.1 * math.sin(7 * i) for i, v in enumerate(lrs)]
    raw[-1] = 50.0  # a divergence spike
    smoothed = [2.3 - 1.0 / (1 + math.exp(-3 * math.log10(v) - 2)) for v in lrs]
    result = LrFindResult(lrs, raw, smoothed, 0.1, diverged=True, extra={"smooth_beta": 0.98})
    fig = lr_find_figure(result, title="t")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    raw_line = next(line for label, line in lines.items() if label.startswith("loss per step (raw)"))
    assert list(raw_line.get_ydata()) == raw and raw_line.get_alpha() < 0.5  # light, every step
    assert lines["smoothed (EMA, beta 0.98)"].get_linewidth() > 2 * raw_line.get_linewidth()  # bold
    assert ax.get_ylim()[0] < min(raw) < max(raw[:-1]) < ax.get_ylim()[1]  # the raw loss is in view...
    assert "1 above the axis" in raw_line.get_label()  # ...but for the spike, which is counted
    marker = lines["suggested lr 0.1 (steepest descent)"]
    assert list(marker.get_xdata()) == [0.1] and marker.get_ydata()[0] == pytest.approx(
        smoothed[30]
    )  # lr 0.1 is step 30
    assert any(label.startswith("stopped at lr 10: diverged") for label in lines)
    assert ax.get_xscale() == "log" and ax.get_legend() is not None


def test_lr_find_on_digits(tmp_path: Path) -> None:
    from imgcls.engine.lr_tools import lr_find

    cfg = build_config(None, tiny_overrides(tmp_path))
    result = lr_find(cfg, tmp_path / "find.png", num_steps=12, start_lr=1e-4, end_lr=1.0)
    assert len(result.lrs) <= 12 and result.plot is not None and result.plot.is_file()


def test_cli_registration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from imgcls.cli.lr import add_cli

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    out = tmp_path / "sched.png"
    args = parser.parse_args(
        [
            "lr-plot",
            "training.scheduler.name=onecycle",
            "training.epochs=3",
            "--out",
            str(out),
            "--steps-per-epoch",
            "7",
        ]
    )
    assert args.func(args) == 0 and out.is_file()
    assert "LR PLOT" in capsys.readouterr().out
    args = parser.parse_args(["lr-find", "--num-steps", "5"])
    assert args.out == "lr_find.png" and args.start_lr == 1e-7 and args.end_lr == 10.0


def test_lr_suggestion_is_judged_without_the_ema_lag() -> None:
    """A loss that falls fastest at lr 1e-2 and bottoms out at 1e-1: the online EMA (beta 0.98, 100 steps) lags by
    about four decades and would put the steepest descent past the minimum; the zero-lag curve does not."""
    from imgcls.engine.lr_tools import suggest_lr, zero_lag_smooth

    lrs = [1e-7 * (1e8) ** (i / 99) for i in range(100)]
    x = [math.log10(v) for v in lrs]
    loss = [2.3 - math.tanh(2 * (v + 2)) * 0.6 - 0.6 + (0.8 * max(0.0, v + 1) ** 2) for v in x]
    judged = zero_lag_smooth(loss, 0.8)
    online, avg = [], 0.0  # the sweep's own stopping EMA, beta 0.98: four decades behind
    for i, v in enumerate(loss):
        avg = 0.98 * avg + 0.02 * v
        online.append(avg / (1 - 0.98 ** (i + 1)))
    descent = [i for i, v in enumerate(x) if v < -1]
    lag = max(abs(online[i] - loss[i]) for i in descent)
    assert max(abs(judged[i] - loss[i]) for i in descent) < 0.3 * lag  # it follows the curve where it is judged
    assert not 10**-2.5 <= suggest_lr(lrs, online) <= 10**-1.5  # what the lagging curve would have said
    suggested = suggest_lr(lrs, judged)
    assert 10**-2.5 <= suggested <= 10**-1.5


def test_save_figure_without_a_suffix_returns_the_file_written(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from imgcls.plotting import save_figure

    path = save_figure(plt.figure(), tmp_path / "plot")
    assert path == tmp_path / "plot.png" and path.is_file()
