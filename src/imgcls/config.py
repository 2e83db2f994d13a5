"""The typed configuration tree, presets and dotted overrides.

A config is a tree of dataclasses. Presets are partial YAML trees (``src/imgcls/presets/*.yaml``) merged over the
defaults; overrides are ``dotted.key=value`` strings whose value is parsed as YAML and checked against the field's
type. Unknown keys and ill-typed values raise :class:`ConfigError` naming the key and listing the valid keys or values,
before any work is done. Numeric fields carry their valid :class:`Range` in their metadata (:func:`ranged`), which
:func:`validate_config` reads, with the rules between fields; names that live in registries (models, datasets, ...)
and what needs the model or the machine (freeze depth, input size, device, weights) are checked where those are
(:func:`imgcls.engine.build.check_config`).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import io
import math
import re
import tokenize
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class UserFacingError(Exception):
    """A failure the user can fix (a bad value, a missing package, a full disk ...), not a bug: the message says what
    went wrong and how to fix it in one line, and the CLI prints it without a traceback (exit status 2)."""


class ConfigError(UserFacingError, ValueError):
    """A bad config key or value. The message names the key and the valid choices."""


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric config field (of each item of a list field): bounds, open or closed.

    Non-finite values (NaN, inf) are never valid. ``str(Range(0, 1, hi_open=True))`` is ``"in [0, 1)"``.
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def __str__(self) -> str:
        def num(x: float) -> str:
            return f"{x:g}" if isinstance(x, float) else str(x)

        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {num(self.lo)}" if self.lo is not None else "any finite number"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {num(self.hi)}"
        return f"in {'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}{')' if self.hi_open else ']'}"


AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, lo_open=True)
PROBABILITY = Range(0, 1)
FRACTION = Range(0, 1, hi_open=True)  # [0, 1): a share that must leave something over
SEED = Range(0, 2**32 - 1)  # what NumPy and scikit-learn accept


def ranged(default: Any, valid: Range) -> Any:
    """A dataclass field with ``default`` and its valid :class:`Range` (for a list: of each item) in its metadata."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"range": valid})
    return field(default=default, metadata={"range": valid})


# --------------------------------------------------------------------------------------------------------------------
# The tree. Defaults are the "quickstart"-friendly values; presets change what they need. Every number carries its
# valid range (``ranged``), every closed set of names is a ``Literal``: both are checked before any work.
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    name: str = "digits"  # a registered dataset: see `imgcls data --list`
    root: str | None = None  # where files live (or will be downloaded); default ~/.cache/imgcls/data/<name>
    download: bool = True  # torchvision datasets: download when files are missing (needs internet)
    image_size: int | None = ranged(None, AT_LEAST_1)  # resize to this square size (None: the dataset's native size)
    in_chans: Literal[1, 3] | None = None  # force 1 or 3 channels (None: the dataset's native channels)
    # fraction of train held out for validation when the dataset has no val split
    val_fraction: float = ranged(0.1, FRACTION)
    # fraction held out for test when the dataset has no test split (digits, imagefolder)
    test_fraction: float = ranged(0.2, FRACTION)
    subset: int | None = ranged(None, AT_LEAST_1)  # cap the train split to this many samples (quick experiments)
    # seed of the train/val/test split (None: run.seed); fix it to vary only the init
    split_seed: int | None = ranged(None, SEED)
    batch_size: int = ranged(64, AT_LEAST_1)  # images per batch (per process under DDP)
    eval_batch_size: int | None = ranged(None, AT_LEAST_1)  # default: 2 x batch_size
    # DataLoader worker processes (data.loader=torch); 0 decodes in the training process
    num_workers: int = ranged(0, NON_NEGATIVE)
    # device: uint8 tensor on the device + batch tensor augmentations; auto: device when the data is in memory and
    # every augmentation that is on has a batch form, else torch (the DataLoader)
    loader: Literal["torch", "device", "auto"] = "torch"
    # random: shuffled each epoch; balanced: class-balanced batches (imbalanced data)
    sampler: Literal["random", "balanced"] = "random"
    # make a long-tailed train split: rarest class has this fraction of the commonest
    imbalance: float | None = ranged(None, Range(0, 1, lo_open=True))
    max_bad_fraction: float = ranged(0.01, PROBABILITY)  # stop if more than this fraction of files cannot be decoded
    # image files with more pixels (from the header) are bad files, never decoded
    max_image_pixels: int = ranged(40_000_000, AT_LEAST_1)
    # normalisation statistics in [0, 1] units (None: computed from the train split / known values)
    mean: list[float] | None = ranged(None, PROBABILITY)
    std: list[float] | None = ranged(
        None, POSITIVE
    )  # per-channel std for normalisation (set with data.mean; null: computed from the train split)
    # several labels per image (sigmoid outputs, a multi-label loss, mAP); null: inferred from the data (a manifest
    # with rows of several labels)
    multilabel: bool | None = None
    # data.name=manifest: the column of image paths (relative to the manifest file) in the CSV / JSON lines file
    path_column: str = "path"
    label_column: str = "label"  # data.name=manifest: the column of labels (several separated by label_delimiter)
    # data.name=manifest: the optional column naming each row's split (train, val, test); absent: split stratified
    split_column: str = "split"
    label_delimiter: str = ";"  # data.name=manifest: what separates several labels in one cell of the label column
    # data.name=manifest: the class names (null: every label of the manifest, sorted); rows with others are bad rows
    classes: list[str] | None = None
    # k-fold cross-validation: split the train pool into this many stratified folds (multi-label aware); null: off
    folds: int | None = ranged(None, Range(2))
    fold: int = ranged(0, NON_NEGATIVE)  # with data.folds: the fold held out for validation (0 .. data.folds - 1)


@dataclass
class ModelConfig:
    name: str = "simple_cnn"  # a registered model (`imgcls models`) or timm:<name>
    pretrained: bool | str = False  # true: published weights (online); a path: local .safetensors / state dict
    activation: str | None = None  # relu, gelu, silu, swish, leaky_relu, mish (None: the model's default)
    dropout_rate: float | None = ranged(
        None, FRACTION
    )  # dropout before the classifier head (null: the model's default)
    drop_path_rate: float | None = ranged(
        None, FRACTION
    )  # stochastic depth rate for models with residual blocks (null: the model's default)
    stem: Literal["cifar", "imagenet"] | None = None  # resnets (None: by input size)
    freeze_backbone: bool = False  # train only the classifier head
    freeze_layers: int = ranged(0, NON_NEGATIVE)  # freeze the first N stage groups (at most the model's count)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the model's entry point


@dataclass
class OptimizerConfig:
    name: str = "sgd"  # a registered optimizer (imgcls.engine.optim.OPTIMIZERS): sgd, adam, adamw, ...
    lr: float = ranged(0.05, POSITIVE)  # peak learning rate (the schedule multiplies it)
    momentum: float = ranged(0.9, FRACTION)  # SGD momentum (also RMSprop's)
    nesterov: bool = True  # Nesterov momentum for SGD
    betas: list[float] = ranged([0.9, 0.999], FRACTION)  # Adam/AdamW (beta1, beta2): two values
    weight_decay: float = ranged(5e-4, NON_NEGATIVE)  # not applied to norms and biases
    backbone_lr_mult: float = ranged(1.0, NON_NEGATIVE)  # lr multiplier for backbone parameters (transfer learning)
    # lr multiplier for biases and norm parameters (airbench: 64 for BN biases)
    bias_lr_mult: float = ranged(1.0, NON_NEGATIVE)
    lookahead: bool = False  # wrap the optimizer in Lookahead (Zhang et al. 2019; timm's implementation)
    lookahead_k: int = ranged(6, AT_LEAST_1)  # fast steps between slow-weight updates
    # slow weights move this fraction of the way to the fast weights
    lookahead_alpha: float = ranged(0.5, Range(0, 1, lo_open=True))


@dataclass
class SchedulerConfig:
    name: str = "cosine"  # a registered schedule (engine.schedules.SCHEDULES): cosine, linear, onecycle, step, ...
    warmup_epochs: float = ranged(0.0, NON_NEGATIVE)  # linear warmup length, in epochs (fractions allowed)
    warmup_lr: float = ranged(0.0, PROBABILITY)  # lr multiplier at the start of warmup
    eta_min: float = ranged(0.0, PROBABILITY)  # final lr multiplier for cosine and linear
    step_size: int = ranged(30, AT_LEAST_1)  # step: epochs between decays
    milestones: list[int] = ranged([30, 60, 90], NON_NEGATIVE)  # multistep: epochs
    gamma: float = ranged(0.1, POSITIVE)  # step / multistep / plateau decay factor
    max_lr_mult: float = ranged(1.0, POSITIVE)  # onecycle: peak lr = lr * max_lr_mult
    pct_start: float = ranged(0.25, Range(0, 1, lo_open=True, hi_open=True))  # onecycle: fraction of steps rising
    patience: int = ranged(5, NON_NEGATIVE)  # plateau: epochs without improvement before decaying


@dataclass
class LossConfig:
    name: str = "cross_entropy"  # a registered loss (imgcls.engine.losses.LOSSES): cross_entropy, focal, ...
    label_smoothing: float = ranged(0.0, FRACTION)  # soft targets: 1 - eps on the true class, eps spread over all
    # "balanced": inverse class frequency (multi-label: positive-class weights, negatives / positives) or None
    class_weights: Literal["balanced"] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the loss: focal {gamma, alpha}


@dataclass
class EmaConfig:
    enabled: bool = False  # keep an exponential moving average of the weights, validated alongside
    decay: float = ranged(0.999, FRACTION)  # EMA decay per optimizer step (0.999: about the last 1000 steps)
    warmup: bool = True  # ramp the decay up over the first steps: min(decay, (1 + step) / (10 + step))
    use_for_best: bool = True  # select the best checkpoint by the EMA model's metric when enabled


@dataclass
class EarlyStoppingConfig:
    patience: int | None = ranged(None, AT_LEAST_1)  # epochs without improvement before stopping (None: off)
    min_delta: float = ranged(0.0, NON_NEGATIVE)  # smallest change of the monitored value that counts as an improvement
    # val_acc (maximise; multi-label: subset accuracy), val_map (maximise; multi-label: macro mAP) or val_loss
    monitor: Literal["val_acc", "val_loss", "val_map"] = "val_acc"


@dataclass
class DistillConfig:
    teacher: str | None = None  # path to a teacher checkpoint
    temperature: float = ranged(4.0, POSITIVE)  # softmax temperature of the distillation loss
    alpha: float = ranged(0.5, PROBABILITY)  # weight of the soft (teacher) term; 0 = plain CE


@dataclass
class TrainingConfig:
    epochs: int = ranged(10, AT_LEAST_1)  # passes over the train split
    # time budget: stop once this many minutes of training steps have run (validation, checkpoints and data loading
    # before the first step not counted; summed across resumes), at the next optimizer step; the cut epoch is then
    # validated, checkpointed and the best checkpoint tested as after the last epoch (null: no limit)
    max_minutes: float | None = ranged(None, POSITIVE)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    amp: bool = False  # autocast: bf16 on CPU, fp16 (with a grad scaler) or bf16 on CUDA
    # autocast dtype: auto picks bf16 on CPU (and GPUs that have it), else fp16 with a GradScaler
    amp_dtype: Literal["auto", "bf16", "fp16"] = "auto"
    accum_steps: int = ranged(1, AT_LEAST_1)  # gradient accumulation: optimizer step every N batches
    clip_grad_norm: float | None = ranged(
        None, POSITIVE
    )  # clip the global gradient norm to this value (null: no clipping)
    ema: EmaConfig = field(default_factory=EmaConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # gradual unfreezing: one more group at each epoch
    unfreeze_epochs: list[int] = ranged([], NON_NEGATIVE)
    max_nonfinite_steps: int = ranged(5, AT_LEAST_1)  # stop after this many non-finite losses in a row
    compile: bool = False  # torch.compile the model (first steps are slower while it compiles)
    # NHWC memory format for the model and inputs (faster convolutions with bf16 on CPU and on GPUs)
    channels_last: bool = False


# One switch (named like the entry) plus its knobs per augmentation of imgcls.data.transforms.AUGMENTATIONS.
@dataclass
class TrainAugConfig:
    enabled: bool = True  # false disables every train augmentation (baseline)
    random_crop: bool = False  # random translate by up to crop_padding pixels (reflect padding), as in CIFAR recipes
    crop_padding: int = ranged(4, NON_NEGATIVE)  # pixels; reflect padding: less than the image side
    hflip: float = ranged(0.0, PROBABILITY)  # probability
    rotation: float = ranged(0.0, Range(0, 180))  # max degrees
    color_jitter: float = ranged(0.0, NON_NEGATIVE)  # brightness/contrast/saturation strength (0 = off)
    randaugment: bool = False  # RandAugment (torchvision v2; data.loader=torch)
    randaugment_num_ops: int = ranged(2, NON_NEGATIVE)  # RandAugment: operations per image
    randaugment_magnitude: int = ranged(9, Range(0, 30))  # torchvision's 31 magnitude bins
    autoaugment: bool = False  # AutoAugment with the ImageNet policy (torchvision v2; data.loader=torch)
    trivialaugment: bool = False  # TrivialAugmentWide (torchvision v2; data.loader=torch)
    cutout: int = ranged(0, NON_NEGATIVE)  # square side in pixels (0 = off)
    cutout_count: int = ranged(1, AT_LEAST_1)  # Cutout: squares per image
    random_erasing: float = ranged(0.0, PROBABILITY)  # probability
    random_erasing_scale: list[float] = ranged([0.02, 0.33], Range(0, 1, lo_open=True))  # [low, high] of the area


@dataclass
class MixConfig:
    cutmix_alpha: float = ranged(0.0, NON_NEGATIVE)  # CutMix: Beta(alpha, alpha) mixing strength (0 = off)
    mixup_alpha: float = ranged(0.0, NON_NEGATIVE)  # MixUp: Beta(alpha, alpha) mixing strength (0 = off)
    prob: float = ranged(1.0, PROBABILITY)  # probability of mixing a batch
    switch_prob: float = ranged(0.5, PROBABILITY)  # with both on: probability of CutMix rather than MixUp for a batch
    off_last_epochs: int = ranged(0, NON_NEGATIVE)  # no mixing in the last N epochs


@dataclass
class AugmentationConfig:
    train: TrainAugConfig = field(default_factory=TrainAugConfig)
    mix: MixConfig = field(default_factory=MixConfig)


@dataclass
class RunConfig:
    name: str | None = None  # run folder prefix (default: the preset's name)
    dir: str = "runs"  # where run folders are created
    seed: int = ranged(0, SEED)  # seed of weights, shuffling and augmentation (splits use data.split_seed)
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    # CPU intra-op threads (train, eval, study, bench, serve); null: the idle cores at start
    threads: int | None = ranged(None, AT_LEAST_1)
    resume: str | None = None  # a checkpoint path, a run folder, or "auto" (latest unfinished run with this name)
    # deterministic algorithms (torch.use_deterministic_algorithms; slower, bit-reproducible on GPU)
    deterministic: bool = False
    # experiment tracker, writing inside the run folder; tensorboard falls back to none (one warning) if not installed
    tracker: Literal["none", "tensorboard", "mlflow", "wandb"] = "tensorboard"
    log_interval: int = ranged(50, NON_NEGATIVE)  # steps between progress updates and rows of steps.csv (0: neither)
    # mid-epoch checkpoints (last.pt) for preemptible or time-limited jobs: "500" or "500steps" (optimizer steps) or
    # "10min" / "90s"; a resume continues at the exact sample (null: checkpoints at epoch ends only)
    checkpoint_every: str | None = None
    eval_test: bool = True  # evaluate the best checkpoint on the test split at the end
    # TTA views for that final evaluation (1: off, 2: + flip, 3-10: + 1-px shifts and mirrors; the upper bound is
    # the engine's, checked with it)
    test_tta: int = ranged(1, AT_LEAST_1)
    # multi-label: tune each class's threshold on the val split (max F1) for predict, serve and the test numbers;
    # false: 0.5 for every class
    tune_thresholds: bool = True
    progress: bool = True  # a live bar on a terminal (steps, img/s, ETAs); else a line every progress_interval s
    progress_interval: float = ranged(15.0, POSITIVE)  # seconds between those plain progress lines (logs, CI, jobs)
    report: bool = True  # end with <run>/eval/report.html + metrics.json on the test split (val if no test split)


_INTERVAL_UNITS = {"": 1.0, "steps": 1.0, "step": 1.0, "s": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


def checkpoint_interval(value: str | int | None) -> tuple[Literal["steps", "seconds"], float] | None:
    """``run.checkpoint_every`` parsed: ("steps", N) for "N" / "Nsteps", ("seconds", S) for "Ns" / "Nmin" / "Nh"."""
    if value is None:
        return None
    text = str(value).strip().lower().replace(" ", "")
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number) :]
    try:
        amount = float(number)
    except ValueError:
        amount = float("nan")
    if unit not in _INTERVAL_UNITS or not amount > 0 or amount == float("inf"):
        raise ConfigError(
            f"bad value {value!r} for 'run.checkpoint_every': use optimizer steps (e.g. 500 or 500steps) or a time "
            "(e.g. 90s, 10min, 1h), or null for epoch ends only"
        )
    if unit in ("", "steps", "step"):
        if amount != int(amount):
            raise ConfigError(f"bad value {value!r} for 'run.checkpoint_every': a whole number of steps")
        return "steps", amount
    return "seconds", amount * _INTERVAL_UNITS[unit]


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str | None = None  # the preset this config was built from (informational)


# --------------------------------------------------------------------------------------------------------------------
# Typed setting of values
# --------------------------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` checked (and minimally converted, int -> float) against the type ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if not any(value == c and type(value) is type(c) for c in choices):  # so that true is not 1
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"bad value {value!r} for '{key}'.{hint} Valid values: {', '.join(map(str, choices))}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        # Try exact-type members first so that `bool | str` keeps True as a bool and "x" as a str.
        for arg in sorted(args, key=lambda a: 0 if isinstance(a, type) and type(value) is a else 1):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"bad value {value!r} for '{key}': expected {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"bad value {value!r} for '{key}': expected null")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"bad value {value!r} for '{key}': expected a list like [1, 2]")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"bad value {value!r} for '{key}': expected a mapping like {{a: 1}}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"bad value {value!r} for '{key}': expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"bad value {value!r} for '{key}': expected an integer")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"bad value {value!r} for '{key}': expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"bad value {value!r} for '{key}': expected a string")
    if dataclasses.is_dataclass(tp):
        raise ConfigError(f"'{key}' is a section, not a value: set one of its keys, e.g. {key}.<key>=...")
    raise ConfigError(f"unsupported type {tp} for '{key}'")


def _hints(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _unknown_key(key: str, section: Any, path: str) -> ConfigError:
    valid = [f.name for f in dataclasses.fields(section)]
    full_valid = [f"{path}{v}" for v in valid]
    close = difflib.get_close_matches(key, list(dict.fromkeys(full_valid + all_keys())), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    where = f"'{path[:-1]}'" if path else "the top level"
    return ConfigError(f"unknown config key '{key}'.{hint} Valid keys in {where}: {', '.join(valid)}")


#: Keys of configs written by older versions (run folders, checkpoints) -> (the key that holds the value now, when the
#: old key applies). :func:`merge_dict` (so :func:`from_dict` and :func:`load_config`) moves them, after the other keys
#: of their section; a null value is dropped (it meant "the default"); an override naming an old key is refused with the
#: new name. ``training.loss.focal_gamma`` / ``focal_alpha`` were in every saved loss config but only the focal loss
#: read them: they move into ``training.loss.kwargs`` for ``name: focal`` and are dropped for every other loss.
LEGACY_KEYS: dict[str, tuple[str, Callable[[Config], bool]]] = {
    "training.loss.focal_gamma": ("training.loss.kwargs.gamma", lambda cfg: cfg.training.loss.name == "focal"),
    "training.loss.focal_alpha": ("training.loss.kwargs.alpha", lambda cfg: cfg.training.loss.name == "focal"),
}


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Set the dotted ``key`` of ``cfg`` to ``value`` after checking its type. Raises :class:`ConfigError`.

    A key one level below a mapping field sets one entry of it: ``training.loss.kwargs.gamma=3`` (the mapping as a
    whole is ``training.loss.kwargs={gamma: 3}``).
    """
    if key in LEGACY_KEYS:
        raise ConfigError(f"config key '{key}' was renamed: set '{LEGACY_KEYS[key][0]}' instead")
    parts = key.split(".")
    node: Any = cfg
    path = ""
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"unknown config key '{key}': '{path[:-1]}' is a value, not a section")
        names = {f.name for f in dataclasses.fields(node)}
        if part not in names:
            raise _unknown_key(key, node, path)
        tp = _hints(node)[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(tp) and isinstance(value, dict):
                for k, v in value.items():
                    set_value(cfg, f"{key}.{k}", v)
                return
            setattr(node, part, _coerce(value, tp, key))
            return
        if typing.get_origin(tp) is dict:
            field_key = f"{path}{part}"
            if i + 2 != len(parts):
                raise ConfigError(
                    f"unknown config key '{key}': '{field_key}' is a mapping, so set one of its keys "
                    f"({field_key}.<key>=...) or all of it ({field_key}={{<key>: ...}})"
                )
            _, value_tp = typing.get_args(tp) or (str, Any)
            setattr(node, part, {**getattr(node, part), parts[-1]: _coerce(value, value_tp, key)})
            return
        node = getattr(node, part)
        path += part + "."


def merge_dict(cfg: Config, tree: dict[str, Any], prefix: str = "") -> None:
    """Apply a nested mapping (a preset or a saved config) onto ``cfg`` with the same checks as overrides.

    Keys of older versions are moved to their new place (:data:`LEGACY_KEYS`).
    """
    legacy: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if key in LEGACY_KEYS:
            legacy[key] = v
            continue
        node: Any = cfg
        for part in key.split(".")[:-1]:
            node = getattr(node, part)
        is_section = (
            dataclasses.is_dataclass(node)
            and k in {f.name for f in dataclasses.fields(node)}
            and (dataclasses.is_dataclass(getattr(node, k)))
        )
        if is_section and isinstance(v, dict):
            merge_dict(cfg, v, prefix=key + ".")
        else:
            set_value(cfg, key, v)
    for key, v in legacy.items():  # after the rest of the section, which the condition may read (the loss name)
        new_key, applies = LEGACY_KEYS[key]
        if v is not None and applies(cfg):
            set_value(cfg, new_key, v)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value`` and parse the value as YAML (``5`` -> int, ``true`` -> bool, ``[1,2]`` -> list)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value, e.g. training.epochs=5")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError:
        value = raw
    return key, value


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"a.b.c": value}`` (dotted keys, as overrides spell them). Lists stay values."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def all_keys(cfg: Config | None = None) -> list[str]:
    """Every dotted leaf key of the tree."""
    cfg = cfg or Config()
    out: list[str] = []

    def walk(node: Any, path: str) -> None:
        for f in dataclasses.fields(node):
            v = getattr(node, f.name)
            if dataclasses.is_dataclass(v):
                walk(v, f"{path}{f.name}.")
            else:
                out.append(f"{path}{f.name}")

    walk(cfg, "")
    return out


@dataclass(frozen=True)
class KeyInfo:
    """One leaf of the tree, as ``imgcls config keys`` shows it."""

    key: str
    type: str
    default: Any
    help: str
    valid: str = ""  # the Range of a number ("in [0, 1)"), or "" (a Literal's choices are in ``type``)


def _field_comments() -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment on the field's line and the comment lines right above it, read from
    this module's source: the tree documents itself where it is defined."""
    source = Path(__file__).read_text()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out: dict[tuple[str, str], str] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            above, line = [], item.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#") and line in comments:
                above.insert(0, comments[line])
                line -= 1
            beside = comments.get(item.end_lineno or item.lineno, "")
            out[(node.name, item.target.id)] = " ".join([*above, beside]).strip()
    return out


def describe_keys(cfg: Config | None = None) -> list[KeyInfo]:
    """Every dotted leaf key with its type, default (from ``cfg``, default: the built-in defaults), one-line help and
    valid range, in the tree's order."""
    cfg = cfg or Config()
    docs = _field_comments()
    out: list[KeyInfo] = []

    def walk(node: Any, path: str) -> None:
        hints = _hints(node)
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{path}{f.name}.")
                continue
            valid = f.metadata.get("range")
            out.append(
                KeyInfo(
                    key=f"{path}{f.name}",
                    type=_type_name(hints[f.name]),
                    default=value,
                    help=docs.get((type(node).__name__, f.name), ""),
                    valid=str(valid) if valid is not None else "",
                )
            )

    walk(cfg, "")
    return out


def preset_description(name: str) -> str:
    """A preset's one-line description: the first sentence of the comment its YAML file starts with."""
    text = (resources.files("imgcls") / "presets" / f"{name}.yaml").read_text()
    head = []
    for line in text.splitlines():
        if not line.lstrip().startswith("#"):
            break
        head.append(line.lstrip().lstrip("#").strip())
    words = " ".join(head)
    sentence = re.split(r"(?<=[.!?])\s", words, maxsplit=1)[0]
    return sentence if len(sentence) <= 120 else sentence[:119].rstrip() + "…"


# --------------------------------------------------------------------------------------------------------------------
# Presets, load/save
# --------------------------------------------------------------------------------------------------------------------


def list_presets() -> list[str]:
    """Names of the presets shipped with the package."""
    files = resources.files("imgcls") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in files.iterdir() if p.name.endswith(".yaml"))


def load_preset_tree(name: str) -> dict[str, Any]:
    """The raw YAML mapping of a shipped preset, or of a YAML file path."""
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return yaml.safe_load(Path(name).read_text()) or {}
    presets = list_presets()
    if name not in presets:
        close = difflib.get_close_matches(name, presets, n=2)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown preset '{name}'.{hint} Valid presets: {', '.join(presets)} (or a .yaml file path)")
    text = (resources.files("imgcls") / "presets" / f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def build_config(preset: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the preset (which may name a ``base`` preset), then dotted overrides."""
    cfg = Config()
    if preset:
        chain: list[dict[str, Any]] = []
        name: str | None = preset
        while name:
            tree = load_preset_tree(name)
            chain.append(tree)
            name = tree.pop("base", None)
        for tree in reversed(chain):
            merge_dict(cfg, tree)
        cfg.preset = Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset
    for text in overrides:
        key, value = parse_override(text)
        set_value(cfg, key, value)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """A plain nested dict (YAML/JSON-safe)."""
    return dataclasses.asdict(cfg)


def from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a :class:`Config` from :func:`to_dict` output, with the usual checks."""
    cfg = Config()
    merge_dict(cfg, tree)
    return cfg


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(to_yaml(cfg))


def load_config(path: str | Path) -> Config:
    return from_dict(yaml.safe_load(Path(path).read_text()) or {})


def check_ranges(node: Any, prefix: str = "") -> None:
    """Every number of the tree ``node`` is finite and in its field's :class:`Range` (each item of a list; the numbers
    of ``kwargs`` mappings must be finite). Raises :class:`ConfigError` naming the key, the value and the range."""
    for f in dataclasses.fields(node):
        key, value = f"{prefix}{f.name}", getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{key}.")
            continue
        valid: Range | None = f.metadata.get("range")
        items = value.items() if isinstance(value, dict) else enumerate(value if isinstance(value, list) else [value])
        for i, item in items:
            if item is None or isinstance(item, bool) or not isinstance(item, int | float):
                continue
            if isinstance(item, float) and not math.isfinite(item):
                where = f"{key}.{i}" if isinstance(value, dict) else key
                raise ConfigError(f"bad value {value!r} for '{where}': must be a finite number {valid or ''}".rstrip())
            if valid is not None and item not in valid:
                each = f" (each of the {len(value)} values)" if isinstance(value, list) else ""
                raise ConfigError(f"bad value {value!r} for '{key}': must be {valid}{each}")


#: ``run.device`` spellings (availability is checked with torch, in :func:`imgcls.engine.build.check_config`)
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def validate_config(cfg: Config) -> None:
    """Check types that are patterns, value ranges (:func:`check_ranges`) and the rules between fields. Raises
    :class:`ConfigError` before any work.

    Names that live in registries (models, datasets, losses, ...), the model's keyword arguments and what needs the
    model or the machine are checked one layer up (:func:`imgcls.engine.build.check_config`, which calls this first).
    """
    check_ranges(cfg)
    if not DEVICE_PATTERN.fullmatch(cfg.run.device):
        raise ConfigError(f"bad value {cfg.run.device!r} for 'run.device': valid: auto, cpu, cuda, cuda:N, mps")
    checkpoint_interval(cfg.run.checkpoint_every)  # raises on a bad value
    d, tr, aug = cfg.data, cfg.training, cfg.augmentation.train
    if d.val_fraction + d.test_fraction >= 1.0:
        raise ConfigError(
            f"bad values data.val_fraction={d.val_fraction:g} and data.test_fraction={d.test_fraction:g}: together "
            "they must be < 1, so that something is left to train on"
        )
    for key, values in {
        "training.optimizer.betas": tr.optimizer.betas,
        "augmentation.train.random_erasing_scale": aug.random_erasing_scale,
    }.items():
        if len(values) != 2:
            raise ConfigError(f"bad value {values!r} for '{key}': expected two numbers, like [0.9, 0.999]")
    if (d.mean is None) != (d.std is None) or (d.mean is not None and not 1 <= len(d.mean) == len(d.std)):
        raise ConfigError(
            f"bad values data.mean={d.mean} and data.std={d.std}: set both or neither, with one value per channel "
            "(or one for all)"
        )
    if d.folds is not None and d.fold >= d.folds:
        raise ConfigError(f"bad value {d.fold} for 'data.fold': with data.folds={d.folds} use 0..{d.folds - 1}")
    if d.folds is None and d.fold != 0:
        raise ConfigError(f"data.fold={d.fold} needs data.folds=N (k-fold cross-validation with N folds)")
    if not d.label_delimiter:
        raise ConfigError("bad value '' for 'data.label_delimiter': use a character such as ';' or '|'")
    if aug.random_erasing_scale[0] > aug.random_erasing_scale[1]:
        raise ConfigError(
            f"bad value {aug.random_erasing_scale!r} for 'augmentation.train.random_erasing_scale': [low, high] with "
            "low <= high"
        )
    check_image_side(cfg)


def check_image_side(cfg: Config) -> None:
    """Augmentations that need room in the image: checked when ``data.image_size`` is set (else, once the data is
    loaded, for its own size: :func:`imgcls.engine.build.model_size_hint`)."""
    side, aug = cfg.data.image_size, cfg.augmentation.train
    if side is None or not aug.enabled:
        return
    if aug.random_crop and aug.crop_padding >= side:
        raise ConfigError(
            f"data.image_size={side} is too small for augmentation.train.crop_padding={aug.crop_padding}: the random "
            f"crop pads by reflection, which needs a padding below the image side. Set data.image_size >= "
            f"{aug.crop_padding + 1}, augmentation.train.crop_padding <= {side - 1}, or "
            "augmentation.train.random_crop=false"
        )
    if aug.cutout > side:
        raise ConfigError(
            f"bad value {aug.cutout} for 'augmentation.train.cutout': a square larger than the image "
            f"(data.image_size={side}) erases all of it; use 0 (off) to {side}"
        )
