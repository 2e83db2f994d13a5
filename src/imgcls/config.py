"""The typed configuration tree, presets and dotted overrides.

A config is a tree of dataclasses. Presets are partial YAML trees (``src/imgcls/presets/*.yaml``) merged over the
defaults; overrides are ``dotted.key=value`` strings whose value is parsed as YAML and checked against the field's
type. Unknown keys and ill-typed values raise :class:`ConfigError` naming the key and listing the valid keys or values,
before any work is done. :func:`validate_config` checks ranges; names that live in registries (models, datasets,
...) are checked where the registries are (:func:`imgcls.engine.build.check_config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A bad config key or value. The message names the key and the valid choices."""


# --------------------------------------------------------------------------------------------------------------------
# The tree. Defaults are the "quickstart"-friendly values; presets change what they need.
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    name: str = "digits"  # a registered dataset: see `imgcls data --list`
    root: str | None = None  # where files live (or will be downloaded); default ~/.cache/imgcls/data/<name>
    download: bool = True  # torchvision datasets: download when files are missing (needs internet)
    image_size: int | None = None  # resize to this square size (None: the dataset's native size)
    in_chans: int | None = None  # force 1 or 3 channels (None: the dataset's native channels)
    val_fraction: float = 0.1  # fraction of train held out for validation when the dataset has no val split
    test_fraction: float = 0.2  # fraction held out for test when the dataset has no test split (digits, imagefolder)
    subset: int | None = None  # cap the train split to this many samples (quick experiments)
    split_seed: int | None = None  # seed of the train/val/test split (None: run.seed); fix it to vary only the init
    batch_size: int = 64
    eval_batch_size: int | None = None  # default: 2 x batch_size
    num_workers: int = 0
    # device: uint8 tensor on the device + batch tensor augmentations; auto: device when the data is in memory and
    # every augmentation that is on has a batch form, else torch (the DataLoader)
    loader: Literal["torch", "device", "auto"] = "torch"
    sampler: Literal["random", "balanced"] = "random"
    imbalance: float | None = None  # make a long-tailed train split: rarest class has this fraction of the commonest
    max_bad_fraction: float = 0.01  # stop if more than this fraction of image files cannot be decoded
    max_image_pixels: int = 40_000_000  # image files with more pixels (from the header) are bad files, never decoded
    mean: list[float] | None = None  # normalisation statistics (None: computed from the train split / known values)
    std: list[float] | None = None


@dataclass
class ModelConfig:
    name: str = "simple_cnn"  # a registered model (`imgcls models`) or timm:<name>
    pretrained: bool | str = False  # true: published weights (online); a path: local .safetensors / state dict
    activation: str | None = None  # relu, gelu, silu, swish, leaky_relu, mish (None: the model's default)
    dropout_rate: float | None = None
    drop_path_rate: float | None = None
    stem: str | None = None  # resnets: cifar or imagenet (None: by input size)
    freeze_backbone: bool = False  # train only the classifier head
    freeze_layers: int = 0  # freeze the first N stage groups
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the model's entry point


@dataclass
class OptimizerConfig:
    name: str = "sgd"  # a registered optimizer (imgcls.engine.optim.OPTIMIZERS): sgd, adam, adamw, ...
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 5e-4  # not applied to norms and biases
    backbone_lr_mult: float = 1.0  # lr multiplier for backbone parameters (transfer learning)
    bias_lr_mult: float = 1.0  # lr multiplier for biases and norm parameters (airbench: 64 for BN biases)
    lookahead: bool = False  # wrap the optimizer in Lookahead (Zhang et al. 2019; timm's implementation)
    lookahead_k: int = 6  # fast steps between slow-weight updates
    lookahead_alpha: float = 0.5  # slow weights move this fraction of the way to the fast weights


@dataclass
class SchedulerConfig:
    name: str = "cosine"  # a registered schedule (engine.schedules.SCHEDULES): cosine, linear, onecycle, step, ...
    warmup_epochs: float = 0.0  # linear warmup length, in epochs (fractions allowed)
    warmup_lr: float = 0.0  # lr multiplier at the start of warmup
    eta_min: float = 0.0  # final lr multiplier for cosine and linear
    step_size: int = 30  # step: epochs between decays
    milestones: list[int] = field(default_factory=lambda: [30, 60, 90])  # multistep: epochs
    gamma: float = 0.1  # step / multistep / plateau decay factor
    max_lr_mult: float = 1.0  # onecycle: peak lr = lr * max_lr_mult
    pct_start: float = 0.25  # onecycle: fraction of steps spent rising
    patience: int = 5  # plateau: epochs without improvement before decaying


@dataclass
class LossConfig:
    name: str = "cross_entropy"  # a registered loss (imgcls.engine.losses.LOSSES): cross_entropy, focal, ...
    label_smoothing: float = 0.0
    class_weights: str | None = None  # "balanced" (inverse frequency) or None
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the loss: focal {gamma, alpha}


@dataclass
class EmaConfig:
    enabled: bool = False
    decay: float = 0.999
    warmup: bool = True  # ramp the decay up over the first steps: min(decay, (1 + step) / (10 + step))
    use_for_best: bool = True  # select the best checkpoint by the EMA model's metric when enabled


@dataclass
class EarlyStoppingConfig:
    patience: int | None = None  # epochs without improvement before stopping (None: off)
    min_delta: float = 0.0
    monitor: str = "val_acc"  # val_acc (maximise) or val_loss (minimise)


@dataclass
class DistillConfig:
    teacher: str | None = None  # path to a teacher checkpoint
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the soft (teacher) term; 0 = plain CE


@dataclass
class TrainingConfig:
    epochs: int = 10
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    amp: bool = False  # autocast: bf16 on CPU, fp16 (with a grad scaler) or bf16 on CUDA
    amp_dtype: Literal["auto", "bf16", "fp16"] = "auto"
    accum_steps: int = 1  # gradient accumulation: optimizer step every N batches
    clip_grad_norm: float | None = None
    ema: EmaConfig = field(default_factory=EmaConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    unfreeze_epochs: list[int] = field(default_factory=list)  # gradual unfreezing: one more group at each epoch
    max_nonfinite_steps: int = 5  # stop after this many non-finite losses in a row
    compile: bool = False
    channels_last: bool = False


# One switch (named like the entry) plus its knobs per augmentation of imgcls.data.transforms.AUGMENTATIONS.
@dataclass
class TrainAugConfig:
    enabled: bool = True  # false disables every train augmentation (baseline)
    random_crop: bool = False
    crop_padding: int = 4
    hflip: float = 0.0  # probability
    rotation: float = 0.0  # max degrees
    color_jitter: float = 0.0  # brightness/contrast/saturation strength (0 = off)
    randaugment: bool = False
    randaugment_num_ops: int = 2
    randaugment_magnitude: int = 9
    autoaugment: bool = False
    trivialaugment: bool = False
    cutout: int = 0  # square side in pixels (0 = off)
    cutout_count: int = 1
    random_erasing: float = 0.0  # probability
    random_erasing_scale: list[float] = field(default_factory=lambda: [0.02, 0.33])


@dataclass
class MixConfig:
    cutmix_alpha: float = 0.0  # 0 = off
    mixup_alpha: float = 0.0  # 0 = off
    prob: float = 1.0  # probability of mixing a batch
    switch_prob: float = 0.5  # with both on: probability of CutMix rather than MixUp for a batch
    off_last_epochs: int = 0  # no mixing in the last N epochs


@dataclass
class AugmentationConfig:
    train: TrainAugConfig = field(default_factory=TrainAugConfig)
    mix: MixConfig = field(default_factory=MixConfig)


@dataclass
class RunConfig:
    name: str | None = None  # run folder prefix (default: the preset's name)
    dir: str = "runs"
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    resume: str | None = None  # a checkpoint path, a run folder, or "auto" (latest unfinished run with this name)
    deterministic: bool = False
    # experiment tracker, writing inside the run folder; tensorboard falls back to none (one warning) if not installed
    tracker: Literal["none", "tensorboard", "mlflow", "wandb"] = "tensorboard"
    log_interval: int = 50  # steps between progress updates and rows of steps.csv (0: neither)
    # mid-epoch checkpoints (last.pt) for preemptible or time-limited jobs: "500" or "500steps" (optimizer steps) or
    # "10min" / "90s"; a resume continues at the exact sample (null: checkpoints at epoch ends only)
    checkpoint_every: str | None = None
    eval_test: bool = True  # evaluate the best checkpoint on the test split at the end
    test_tta: int = 1  # TTA views for that final evaluation (1: off, 2: + flip, 3-10: + 1-px shifts and mirrors)
    progress: bool = True  # a live bar on a terminal (steps, img/s, ETAs); else a line every progress_interval s
    progress_interval: float = 15.0  # seconds between those plain progress lines (logs, CI, batch jobs)
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
        if value not in choices:
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


def validate_config(cfg: Config) -> None:
    """Check value ranges and cross-field rules. Raises :class:`ConfigError` before any work.

    Names that live in registries (models, datasets, losses, ...) and the model's keyword arguments are checked one
    layer up, where the registries are (:func:`imgcls.engine.build.check_config`, which calls this first).
    """
    positive = {
        "training.epochs": cfg.training.epochs,
        "data.batch_size": cfg.data.batch_size,
        "training.accum_steps": cfg.training.accum_steps,
        "training.optimizer.lookahead_k": cfg.training.optimizer.lookahead_k,
        "data.max_image_pixels": cfg.data.max_image_pixels,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"bad value {value} for '{key}': must be >= 1")
    for key, value in {
        "data.val_fraction": cfg.data.val_fraction,
        "data.test_fraction": cfg.data.test_fraction,
    }.items():
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"bad value {value} for '{key}': must be in [0, 1)")
    probabilities = {
        "data.max_bad_fraction": cfg.data.max_bad_fraction,
        "augmentation.mix.prob": cfg.augmentation.mix.prob,
        "augmentation.mix.switch_prob": cfg.augmentation.mix.switch_prob,
        "augmentation.train.hflip": cfg.augmentation.train.hflip,
        "augmentation.train.random_erasing": cfg.augmentation.train.random_erasing,
        "training.optimizer.lookahead_alpha": cfg.training.optimizer.lookahead_alpha,
    }
    for key, value in probabilities.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"bad value {value} for '{key}': must be in [0, 1]")
    if cfg.training.optimizer.lr <= 0:
        raise ConfigError(f"bad value {cfg.training.optimizer.lr} for 'training.optimizer.lr': must be > 0")
    if cfg.training.loss.class_weights not in (None, "balanced"):
        raise ConfigError(
            f"bad value {cfg.training.loss.class_weights!r} for 'training.loss.class_weights': valid: balanced, null"
        )
    if cfg.training.early_stopping.monitor not in ("val_acc", "val_loss"):
        raise ConfigError(
            f"bad value {cfg.training.early_stopping.monitor!r} for 'training.early_stopping.monitor': "
            "valid: val_acc, val_loss"
        )
    checkpoint_interval(cfg.run.checkpoint_every)  # raises on a bad value
    if not cfg.run.progress_interval > 0:
        raise ConfigError(f"bad value {cfg.run.progress_interval} for 'run.progress_interval': must be > 0 (seconds)")
