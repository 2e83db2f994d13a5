"""``imgcls tune``: search-space parsing, pruning, and a real 3-trial search on digits that survives a crash."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("optuna")

from imgcls.config import ConfigError, build_config, validate_config  # noqa: E402
from imgcls.tune.search import TuneError, parse_param, parse_params, tune  # noqa: E402

TINY = [
    "data.subset=200",
    "model.name=simple_cnn_tiny",
    "training.epochs=2",
    "data.loader=device",
    "run.progress=false",
    "run.tracker=none",
    "run.report=false",
]


def test_parse_param_kinds():
    p = parse_param("training.optimizer.lr=log:1e-4:1e-1")
    assert (p.kind, p.low, p.high) == ("log", 1e-4, 0.1)
    assert parse_param(p.to_text()) == p
    c = parse_param("training.optimizer.name=choice:sgd,adamw")
    assert c.choices == ("sgd", "adamw") and parse_param(c.to_text()) == c
    i = parse_param("training.epochs=int:2:5")
    assert (i.kind, i.low, i.high, i.step) == ("int", 2, 5, None)
    f = parse_param("training.loss.label_smoothing=float:0:0.2:0.05")
    assert f.step == 0.05 and parse_param(f.to_text()) == f
    assert parse_param("training.ema.enabled=choice:true,false").choices == (True, False)


@pytest.mark.parametrize(
    "text, match",
    [
        ("training.optimizer.lr", "key=kind"),
        ("training.optimizer.lr=gauss:0:1", "unknown kind"),
        ("training.optimizer.lr=log:0:1", "> 0"),
        ("training.optimizer.lr=float:1:0", "above high"),
        ("training.epochs=int:1.5:3", "integers"),
        ("training.optimizer.lrr=log:1e-4:1e-1", "unknown config key"),
        ("training.epochs=choice:a,b", "expected an integer"),
        ("training.optimizer.lr=log:1e-4:x", "not a number"),
    ],
)
def test_parse_param_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_param(text)


def test_duplicate_param():
    with pytest.raises(TuneError, match="twice"):
        parse_params(["training.epochs=int:1:2", "training.epochs=int:2:3"])


def _fake_train(values):
    """A stand-in for train(): reports ``values(cfg)[epoch]`` as val_acc through the hook."""

    def train(cfg, hooks):
        run_dir = Path(cfg.run.dir) / f"{cfg.run.name}-x"
        run_dir.mkdir(parents=True, exist_ok=True)
        for epoch, v in enumerate(values(cfg)):
            hooks["on_epoch_end"](epoch, {"epoch": epoch + 1, "val_acc": v})
        return SimpleNamespace(run_dir=run_dir, test=None)

    return train


def test_median_pruning_and_best_value(tmp_path):
    # trials with lr below 0.01 do badly from the first epoch: once 2 trials finished, they are pruned at epoch 1
    def values(cfg):
        good = cfg.training.optimizer.lr >= 0.01
        return [0.8, 0.9, 0.95] if good else [0.1, 0.2, 0.3]

    result = tune(
        "quickstart",
        [f"run.dir={tmp_path}"],
        params=["training.optimizer.lr=log:1e-4:1e-1"],
        trials=8,
        study_name="p",
        startup_trials=2,
        seed=0,
        train_fn=_fake_train(values),
        quiet=True,
    )
    states = {r["state"] for r in result.trials}
    assert "PRUNED" in states and "COMPLETE" in states
    pruned = [r for r in result.trials if r["state"] == "PRUNED"]
    assert all(r["epochs"] < 3 for r in pruned)
    assert result.best_value == pytest.approx(0.95)
    with pytest.raises(TuneError, match="already exists"):
        tune(
            "quickstart",
            [f"run.dir={tmp_path}"],
            params=["training.optimizer.lr=log:1e-4:1e-1"],
            trials=8,
            study_name="p",
            train_fn=_fake_train(values),
            quiet=True,
        )
    with pytest.raises(TuneError, match="searches"):
        tune(
            None,
            [],
            runs_dir=tmp_path,
            params=["training.optimizer.lr=log:1e-3:1e-1"],
            trials=8,
            study_name="p",
            resume=True,
            train_fn=_fake_train(values),
            quiet=True,
        )


def test_tune_resumes_after_crash(tmp_path):
    """3 real trials on digits; the process 'dies' (SystemExit escapes Optuna, leaving the trial RUNNING) when the
    third trial starts. --resume marks it FAIL, re-runs it with the same parameters and repeats nothing else."""
    from imgcls.engine.train import train

    calls: list[str] = []
    crash = {"at": 3}

    def crashing_train(cfg, hooks):
        calls.append(cfg.run.name)
        if len(calls) == crash["at"]:
            raise SystemExit("simulated crash")
        return train(cfg, hooks=hooks)

    params = ["training.optimizer.lr=log:1e-2:2e-1", "training.optimizer.name=choice:sgd,adamw"]
    kwargs = dict(params=params, trials=3, study_name="crash", runs_dir=tmp_path, prune=False, seed=0, quiet=True)
    with pytest.raises(SystemExit):
        tune("quickstart", TINY, train_fn=crashing_train, **kwargs)
    assert calls == ["trial-0000", "trial-0001", "trial-0002"]

    import optuna

    study = optuna.load_study(study_name="crash", storage=f"sqlite:///{tmp_path / 'tune-crash' / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "RUNNING"]
    crashed_params = study.trials[2].params

    crash["at"] = -1
    result = tune(None, [], resume=True, train_fn=crashing_train, **{**kwargs, "params": []})
    assert result.recovered == {"failed": [2], "requeued": [2]}
    assert calls[3:] == ["trial-0003"]  # only the crashed trial ran again; 0 and 1 were not repeated
    assert [r["state"] for r in result.trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert result.trials[3]["retry_of"] == 2
    study = optuna.load_study(study_name="crash", storage=f"sqlite:///{tmp_path / 'tune-crash' / 'study.db'}")
    assert study.trials[3].params == crashed_params
    assert len(list((tmp_path / "tune-crash" / "trials").glob("trial-0000-*"))) == 1

    # nothing left to do: a second resume runs no trial
    again = tune(None, [], resume=True, train_fn=crashing_train, **{**kwargs, "params": []})
    assert again.ran == 0 and len(calls) == 4

    best = result.best_config_path
    assert best == tmp_path / "tune-crash" / "best.yaml" and best.is_file()
    cfg = build_config(str(best))
    validate_config(cfg)
    assert cfg.training.optimizer.lr == pytest.approx(result.best_params["training.optimizer.lr"])
    assert cfg.model.name == "simple_cnn_tiny" and cfg.run.dir == str(tmp_path)
    assert (tmp_path / "tune-crash" / "trials.csv").read_text().count("\n") == 5


def test_tune_cli_wiring(tmp_path, capsys):
    from imgcls.cli import main

    code = main(
        ["tune", "quickstart", f"run.dir={tmp_path}", "--param", "training.optimizer.lr=log:0:1", "--trials", "1"]
    )
    assert code == 2 and "log bounds" in capsys.readouterr().err


def test_journal_storage_and_its_heartbeat(tmp_path):
    """--storage journal:PATH: Optuna's journal file (a shared file system, no server). Optuna keeps no heartbeat
    there, so a trial records its own, and a RUNNING trial whose heartbeat is older than the grace period is
    orphaned whatever host it names."""
    import time

    import optuna

    from imgcls.tune.search import is_orphaned

    journal = tmp_path / "shared" / "study.log"
    journal.parent.mkdir()
    kwargs = dict(params=["training.optimizer.lr=log:1e-4:1e-1"], study_name="j", storage=f"journal:{journal}")
    result = tune(
        "quickstart", [f"run.dir={tmp_path}"], trials=2, quiet=True, train_fn=_fake_train(lambda c: [0.5]), **kwargs
    )
    assert [r["state"] for r in result.trials] == ["COMPLETE", "COMPLETE"] and journal.is_file()
    assert result.storage == f"journal:{journal}"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name="j", storage=storage).trials
    assert all("heartbeat" in t.user_attrs for t in trials)
    with pytest.raises(TuneError, match="already exists in journal:"):
        tune("quickstart", [f"run.dir={tmp_path}"], trials=2, quiet=True, **kwargs)

    far = SimpleNamespace(user_attrs={"worker": "other-host:1", "heartbeat": time.time() - 400}, datetime_start=None)
    assert is_orphaned(far, grace_s=300)
    far.user_attrs["heartbeat"] = time.time()
    assert not is_orphaned(far, grace_s=300)  # another host's live worker


@pytest.mark.parametrize(
    "storage, match",
    [
        ("postgres//nohost", "is not a database URL"),
        ("nosuchdialect://u@h/db", "cannot open the study database"),
        ("journal:/no/such/folder/study.log", "no folder /no/such/folder"),
    ],
)
def test_bad_storage_is_one_line(storage, match, tmp_path):
    with pytest.raises(TuneError, match=match):
        tune("quickstart", [f"run.dir={tmp_path}"], params=["training.epochs=int:1:2"], storage=storage, quiet=True)
