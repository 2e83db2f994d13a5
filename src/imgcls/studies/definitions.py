"""The registry of studies: the classic experiments of image classification, as data.

A study is a list of named :class:`Variant` s (each a list of config overrides, plus evaluation settings for test-time
augmentation and ensembles) run over a few seeds on top of a small per-dataset base config, with metadata: what it
shows, which metric decides, which variants to rank, the docs page that explains the concept. The runner
(:mod:`imgcls.studies.runner`) turns a definition into runs, a table, plots and a short reading.

Budgets: the ``digits`` base (bundled, offline) trains ``simple_cnn_tiny`` for 8 epochs on 1,293 images at 16x16 -
about 10 s per run on one CPU core - so every study finishes in a few minutes on 2 cores. The ``cifar10`` base trains
``resnet_tiny`` on a 5,000-image subset for 4 epochs (minutes per run on a CPU; seconds on a GPU); it reads CIFAR-10
from the normal data location, or from ``data.root=PATH`` given on the command line
(``imgcls study NAME --dataset cifar10 data.root=/path/to/cifar10_jpg.tar.gz``).

Overrides may name the best checkpoint of another variant of the same seed with ``{ckpt:VARIANT}`` (distillation's
teacher); the runner trains that variant first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from imgcls.registry import Registry

#: ``{ckpt:NAME}`` in an override: the best checkpoint of variant NAME, same seed
CKPT_REF = re.compile(r"\{ckpt:([^}]+)\}")

_COMMON = ("run.tracker=none", "run.progress=false", "run.report=false")


@dataclass(frozen=True)
class DatasetBase:
    """The base config of every study on one dataset.

    Attributes:
        preset: a preset name (or None for the defaults).
        overrides: dotted overrides on top of it.
        description: one line for the report (model, budget).
    """

    preset: str | None
    overrides: tuple[str, ...]
    description: str


DATASETS: Mapping[str, DatasetBase] = MappingProxyType(
    {
        "digits": DatasetBase(
            preset="quickstart",
            overrides=(
                "model.name=simple_cnn_tiny",
                "training.epochs=8",
                "training.loss.label_smoothing=0.0",
                "data.loader=device",
                *_COMMON,
            ),
            description="digits (1,293 train / 144 val / 360 test images, 16x16 grayscale), simple_cnn_tiny, 8 epochs, "
            "SGD lr 0.05 + cosine, batch 32",
        ),
        "cifar10": DatasetBase(
            preset=None,
            # data.root unset: the normal data location (the cache folder, downloaded when data.download allows);
            # a local copy is an override on the command line, e.g. data.root=/path/to/cifar10_jpg.tar.gz
            overrides=(
                "data.name=cifar10",
                "data.subset=5000",
                "data.val_fraction=0.04",
                "data.batch_size=128",
                "data.loader=device",
                "model.name=resnet_tiny",
                "training.epochs=4",
                "training.optimizer.lr=0.1",
                "training.scheduler.warmup_epochs=1",
                "augmentation.train.random_crop=true",
                "augmentation.train.crop_padding=4",
                "augmentation.train.hflip=0.5",
                *_COMMON,
            ),
            description="CIFAR-10 (5,000-image train subset, 2,000 val, 10,000 test images, 32x32 RGB), resnet_tiny, "
            "4 epochs, SGD lr 0.1 + 1 warmup epoch + cosine, batch 128, crop + flip",
        ),
        "digit_pairs": DatasetBase(
            preset="multilabel",
            # lr 0.3: per-label losses averaged over the 10 labels give small gradients; at the preset's 0.05 the
            # 3k-parameter CNN stays underfit in 6 epochs (test mAP 0.75 with bce, measured)
            overrides=(
                "model.name=simple_cnn_tiny",
                "training.epochs=6",
                "training.optimizer.lr=0.3",
                "data.loader=device",
                *_COMMON,
            ),
            description="digit_pairs (multi-label: 4,000 train / 800 val / 1,000 test images, two 8x8 digits side by "
            "side in 16x16, labels = the set of digits), simple_cnn_tiny, 6 epochs, SGD lr 0.3 + cosine, batch 32",
        ),
    }
)


@dataclass(frozen=True)
class Variant:
    """One arm of a study.

    Attributes:
        name: short label (used in tables, plots and ``{ckpt:NAME}`` references).
        overrides: dotted config overrides on top of the study's base.
        per_dataset: extra overrides for one dataset only (e.g. a horizontal flip that suits CIFAR but not digits).
        tta: test-time augmentation views when evaluating (1 = off).
        ensemble: number of independently initialised models whose probabilities are averaged at test time.
        x: position on a line plot (sweeps), e.g. the learning rate.
    """

    name: str
    overrides: tuple[str, ...] = ()
    per_dataset: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    tta: int = 1
    ensemble: int = 1
    x: float | None = None

    def overrides_for(self, dataset: str) -> tuple[str, ...]:
        """This variant's overrides on ``dataset``."""
        return (*self.overrides, *self.per_dataset.get(dataset, ()))

    def references(self) -> list[str]:
        """Names of the variants whose checkpoints this one uses (``{ckpt:NAME}``)."""
        return [m for o in self.overrides for m in CKPT_REF.findall(o)] + [
            m for extra in self.per_dataset.values() for o in extra for m in CKPT_REF.findall(o)
        ]


@dataclass(frozen=True)
class StudyDefinition:
    """One study.

    Attributes:
        name: the CLI name (``imgcls study NAME``).
        title: a heading.
        shows: what the study shows, in one or two sentences.
        concept: the docs page, ``docs/concepts/<concept>.md``.
        variants: the arms; the first is the baseline.
        metric: the metric that decides (a column of ``study.csv``: test_acc, ece, train_s, ...).
        also: further metrics for the table and the reading.
        seeds: default number of seeds (each seed also re-draws the train/val/test split).
        base: overrides for every variant (on every dataset).
        per_dataset: overrides for every variant on one dataset (budgets, loaders).
        compare: variants ranked in the reading (default: all); e.g. distillation ranks the students only.
        plot: ``bar`` (categorical variants) or ``line`` (a sweep over ``Variant.x``).
        x_label: the sweep's axis label.
        x_log: log-scale x axis.
        lr_curves: also draw each variant's learning-rate schedule.
        expect: what the literature predicts, for the reading.
        datasets: the keys of :data:`DATASETS` the study runs on; the first is the default.
    """

    name: str
    title: str
    shows: str
    concept: str
    variants: tuple[Variant, ...]
    metric: str = "test_acc"
    also: tuple[str, ...] = ("train_s",)
    seeds: int = 2
    base: tuple[str, ...] = ()
    per_dataset: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    compare: tuple[str, ...] = ()
    plot: Literal["bar", "line"] = "bar"
    x_label: str | None = None
    x_log: bool = False
    lr_curves: bool = False
    expect: str = ""
    datasets: tuple[str, ...] = ("digits", "cifar10")

    def variant(self, name: str) -> Variant:
        """The variant called ``name`` (KeyError listing the names otherwise)."""
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"study '{self.name}' has no variant '{name}'; variants: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]

    @property
    def ranked(self) -> list[str]:
        """The variants the reading ranks."""
        return list(self.compare) or self.names

    def overrides_for(self, variant: Variant, dataset: str) -> list[str]:
        """Study base, study per-dataset, then variant overrides (dataset base not included)."""
        return [*self.base, *self.per_dataset.get(dataset, ()), *variant.overrides_for(dataset)]


#: the registered studies. Registry entries are entry points (callables), so each study is registered as a
#: zero-argument one that returns its definition; read them with :func:`get_study` and :func:`list_studies`.
STUDIES: Registry[Callable[[], StudyDefinition]] = Registry("study")


def register_study(study: StudyDefinition) -> StudyDefinition:
    """Add a study to :data:`STUDIES` (raises on a duplicate name or duplicate variant names)."""
    if len(set(study.names)) != len(study.names):
        raise ValueError(f"study '{study.name}' has duplicate variant names: {study.names}")
    STUDIES.add(study.name, lambda: study)  # KeyError when the name is taken
    return study


def get_study(name: str) -> StudyDefinition:
    """The study called ``name``; KeyError with close matches otherwise."""
    return STUDIES.get(name)()


def list_studies() -> list[str]:
    """Registered study names, in definition order."""
    return STUDIES.ordered()


# --------------------------------------------------------------------------------------------------------------------
# The studies
# --------------------------------------------------------------------------------------------------------------------

AUG = "augmentation.train"
_BASIC = {
    "digits": (f"{AUG}.random_crop=true", f"{AUG}.crop_padding=2"),
    "cifar10": (f"{AUG}.random_crop=true", f"{AUG}.crop_padding=4", f"{AUG}.hflip=0.5"),
}

register_study(
    StudyDefinition(
        name="freeze-layers",
        title="Freezing the first layer groups",
        shows="Freezing the first N stage groups of a ResNet (stem + 4 stages) saves backward compute and optimizer "
        "state; trained from scratch, frozen groups stay random feature extractors, so accuracy drops.",
        concept="freezing",
        base=("model.name=resnet_tiny",),
        per_dataset={"digits": ("training.epochs=6",)},
        variants=(
            Variant("freeze 0", ("model.freeze_layers=0",), x=0),
            Variant("freeze 2", ("model.freeze_layers=2",), x=2),
            Variant("freeze 4", ("model.freeze_layers=4",), x=4),
        ),
        also=("train_s", "trainable_params"),
        expect="Time per epoch falls as groups are frozen (no weight gradients for them; the backward pass still runs "
        "through the groups after the first trainable one). From random weights the accuracy cost grows with N; "
        "with pretrained weights (transfer learning) freezing early groups costs little.",
    )
)

register_study(
    StudyDefinition(
        name="augmentation",
        title="Data augmentation",
        shows="What each family of train-time augmentation does at a small budget: none, basic (crop, + flip on "
        "CIFAR), + colour jitter, RandAugment, Cutout.",
        concept="augmentation",
        base=("data.loader=torch",),  # colour jitter and RandAugment are per-sample transforms (torch loader)
        per_dataset={"cifar10": ("data.num_workers=0",)},
        variants=(
            Variant("none", (f"{AUG}.enabled=false",)),
            Variant("basic", per_dataset=_BASIC),
            Variant("+color jitter", (f"{AUG}.color_jitter=0.4",), per_dataset=_BASIC),
            Variant(
                "+randaugment",
                (f"{AUG}.randaugment=true", f"{AUG}.randaugment_num_ops=2", f"{AUG}.randaugment_magnitude=9"),
                per_dataset=_BASIC,
            ),
            Variant(
                "+cutout",
                per_dataset={
                    "digits": (*_BASIC["digits"], f"{AUG}.cutout=4"),
                    "cifar10": (*_BASIC["cifar10"], f"{AUG}.cutout=8"),
                },
            ),
        ),
        expect="Augmentation is a regulariser: it pays off when the model would otherwise overfit (long training, "
        "small data). In a few epochs it mostly slows fitting, so stronger augmentation can lose; crop (+ flip "
        "on natural images) is the safe default.",
    )
)

MIX = "augmentation.mix"
register_study(
    StudyDefinition(
        name="cutmix-alpha",
        title="CutMix strength (alpha)",
        shows="CutMix pastes a box from another image and mixes the labels by area; alpha shapes the "
        "Beta(alpha, alpha) distribution of the box area.",
        concept="cutmix-mixup",
        variants=(
            Variant("off", (f"{MIX}.cutmix_alpha=0.0",), x=0.0),
            Variant("alpha 0.5", (f"{MIX}.cutmix_alpha=0.5",), x=0.5),
            Variant("alpha 1", (f"{MIX}.cutmix_alpha=1.0",), x=1.0),
            Variant("alpha 2", (f"{MIX}.cutmix_alpha=2.0",), x=2.0),
        ),
        plot="line",
        x_label="cutmix alpha (0 = off)",
        expect="alpha=1 (uniform box area) is the usual choice. Like all mixing, CutMix needs epochs to pay off; in "
        "short runs it lowers train accuracy and often test accuracy too.",
    )
)

register_study(
    StudyDefinition(
        name="mixup-vs-cutmix",
        title="MixUp vs CutMix",
        shows="MixUp blends whole images, CutMix pastes patches; both mix labels. Switching between them per batch is "
        "the timm/DeiT recipe.",
        concept="cutmix-mixup",
        variants=(
            Variant("none"),
            Variant("mixup 0.2", (f"{MIX}.mixup_alpha=0.2",)),
            Variant("cutmix 1.0", (f"{MIX}.cutmix_alpha=1.0",)),
            Variant(
                "both (switch 0.5)", (f"{MIX}.mixup_alpha=0.2", f"{MIX}.cutmix_alpha=1.0", f"{MIX}.switch_prob=0.5")
            ),
        ),
        expect="On natural images at long budgets CutMix usually beats MixUp slightly and both beat no mixing; at "
        "a few epochs mixing mostly delays fitting. Mixed labels also tend to lower over-confidence (better ECE).",
        also=("train_s", "ece"),
    )
)

_RA = []
for _ops in (1, 2):
    for _mag in (5, 10, 15):
        _RA.append(
            Variant(
                f"N={_ops} M={_mag}",
                (f"{AUG}.randaugment=true", f"{AUG}.randaugment_num_ops={_ops}", f"{AUG}.randaugment_magnitude={_mag}"),
            )
        )
register_study(
    StudyDefinition(
        name="randaugment",
        title="RandAugment: number of ops x magnitude",
        shows="RandAugment applies N random ops at magnitude M per image; the grid shows how strength trades off "
        "against the budget.",
        concept="randaugment",
        base=("data.loader=torch",),
        variants=(Variant("off"), *_RA),
        seeds=1,
        expect="Small models and short schedules prefer weak settings (N=1-2, M=5-9); strong settings help big models "
        "trained long (the RandAugment paper found the best M grows with model size).",
    )
)

OPT = "training.optimizer"
register_study(
    StudyDefinition(
        name="optimizers",
        title="SGD vs Adam vs AdamW",
        shows="Each optimizer at a learning rate and weight decay that suit it (not one shared lr, which would favour "
        "one of them).",
        concept="optimizers",
        variants=(
            Variant("sgd", (f"{OPT}.name=sgd", f"{OPT}.lr=0.05", f"{OPT}.weight_decay=5e-4")),
            Variant("adam", (f"{OPT}.name=adam", f"{OPT}.lr=0.002", f"{OPT}.weight_decay=0.0")),
            Variant("adamw", (f"{OPT}.name=adamw", f"{OPT}.lr=0.002", f"{OPT}.weight_decay=0.05")),
        ),
        seeds=3,
        expect="Adam-family optimizers fit faster in short runs; well-tuned SGD with momentum matches or beats them on "
        "CNNs given enough epochs. AdamW's decoupled weight decay regularises better than Adam's L2 penalty.",
    )
)

SCHED = "training.scheduler"
register_study(
    StudyDefinition(
        name="schedulers",
        title="Learning-rate schedules",
        shows="Cosine decay, one-cycle (warm up to the peak, then anneal) and step decay against a constant lr, with "
        "their lr curves.",
        concept="lr-schedules",
        base=(f"{SCHED}.warmup_epochs=0",),
        variants=(
            Variant("constant", (f"{SCHED}.name=constant",)),
            Variant("cosine", (f"{SCHED}.name=cosine",)),
            Variant("onecycle", (f"{SCHED}.name=onecycle", f"{SCHED}.max_lr_mult=2.0", f"{SCHED}.pct_start=0.25")),
            Variant("step", (f"{SCHED}.name=step", f"{SCHED}.step_size=3", f"{SCHED}.gamma=0.2")),
        ),
        lr_curves=True,
        expect="Annealing the lr to (near) zero at the end beats a constant lr: the last low-lr epochs settle into a "
        "minimum. Cosine and one-cycle are usually close; step decay is close when its drops are placed well.",
    )
)

register_study(
    StudyDefinition(
        name="lr-sweep",
        title="Learning-rate sweep (SGD)",
        shows="Test accuracy against the peak learning rate: too low under-trains, too high diverges or plateaus.",
        concept="learning-rate",
        variants=tuple(Variant(f"lr {lr:g}", (f"{OPT}.lr={lr}",), x=lr) for lr in (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)),
        seeds=1,
        plot="line",
        x_label="learning rate (SGD, momentum 0.9)",
        x_log=True,
        expect="A broad optimum about one order of magnitude wide; `imgcls lr-find` estimates its upper end from one "
        "short run.",
    )
)

register_study(
    StudyDefinition(
        name="weight-decay",
        title="Weight decay",
        shows="L2-style weight decay (decoupled from norms and biases) from none to strong.",
        concept="weight-decay",
        variants=tuple(
            Variant(f"wd {wd:g}", (f"{OPT}.weight_decay={wd}",), x=wd) for wd in (0.0, 5e-5, 5e-4, 5e-3, 5e-2)
        ),
        seeds=1,
        expect="In short runs weight decay barely matters until it is strong enough to shrink the weights faster than "
        "the data grows them (then accuracy drops); its benefits (regularisation, an effective lr boost with "
        "BatchNorm) show over longer training.",
    )
)

register_study(
    StudyDefinition(
        name="batch-size",
        title="Batch size",
        shows="Batch size at a fixed number of epochs and a fixed lr, plus the linear-scaling rule (lr x 4 for "
        "batch x 4).",
        concept="batch-size",
        variants=(
            Variant("bs 16", ("data.batch_size=16",), x=16),
            Variant("bs 32", ("data.batch_size=32",), x=32),
            Variant("bs 64", ("data.batch_size=64",), x=64),
            Variant("bs 128", ("data.batch_size=128",), x=128),
            Variant("bs 128, lr x4", ("data.batch_size=128", f"{OPT}.lr=0.2"), x=128),
        ),
        seeds=1,
        also=("train_s", "images_per_s"),
        expect="At a fixed epoch budget larger batches mean fewer optimizer steps, so accuracy drops unless the lr "
        "grows with the batch (linear scaling, with warmup); throughput (images/s) rises with the batch until the "
        "hardware is saturated.",
    )
)

register_study(
    StudyDefinition(
        name="amp",
        title="Mixed precision (AMP)",
        shows="Autocast to bf16 (CPU) or fp16 with a grad scaler (CUDA): speed and accuracy with and without.",
        concept="amp",
        variants=(Variant("fp32", ("training.amp=false",)), Variant("amp", ("training.amp=true",))),
        metric="train_s",
        also=("test_acc", "images_per_s"),
        expect="On GPUs with tensor cores AMP is 1.5-3x faster at the same accuracy. On CPUs without bf16 matrix units "
        "autocast adds casts and is often slower; tiny models are dominated by overheads either way.",
    )
)

register_study(
    StudyDefinition(
        name="grad-accumulation",
        title="Gradient accumulation",
        shows="Batch 128 in one step vs 32 x 4 accumulated micro-batches (the same effective batch and lr) vs plain "
        "batch 32.",
        concept="grad-accumulation",
        base=(f"{OPT}.lr=0.1",),
        variants=(
            Variant("bs 128", ("data.batch_size=128", "training.accum_steps=1")),
            Variant("bs 32 x 4", ("data.batch_size=32", "training.accum_steps=4")),
            Variant("bs 32", ("data.batch_size=32", "training.accum_steps=1")),
        ),
        also=("train_s", "images_per_s"),
        expect="Accumulation reproduces the large batch's optimizer trajectory (up to BatchNorm, which sees 32-image "
        "batches) with a quarter of the activation memory; it is not faster. Plain batch 32 takes 4x more "
        "steps, which at a fixed epoch budget often helps.",
    )
)

register_study(
    StudyDefinition(
        name="label-smoothing",
        title="Label smoothing and calibration",
        shows="Label smoothing replaces one-hot targets by (1 - eps) + eps/K; the study reports calibration (ECE) "
        "next to accuracy.",
        concept="label-smoothing",
        variants=tuple(
            Variant(f"eps {e:g}", (f"training.loss.label_smoothing={e}",), x=e) for e in (0.0, 0.05, 0.1, 0.2)
        ),
        metric="ece",
        also=("test_acc", "nll"),
        plot="line",
        x_label="label smoothing eps",
        expect="Smoothing stops the logits from growing without bound, so over-confident models become better "
        "calibrated (lower ECE). A model that is already under-confident (short training, heavy augmentation) "
        "gets worse: smoothing pushes confidence down further.",
    )
)

register_study(
    StudyDefinition(
        name="early-stopping",
        title="Early stopping",
        shows="Stop when the validation accuracy has not improved for `patience` epochs (the best checkpoint is kept), "
        "against running the full budget.",
        concept="early-stopping",
        base=("training.epochs=20",),
        variants=(
            Variant("full 20 epochs"),
            Variant("patience 5", ("training.early_stopping.patience=5",)),
            Variant("patience 2", ("training.early_stopping.patience=2",)),
        ),
        per_dataset={"cifar10": ("training.epochs=8",)},
        also=("epochs_run", "train_s"),
        expect="Early stopping saves time once validation accuracy plateaus, at little cost in accuracy because the "
        "best checkpoint is kept either way. With a cosine schedule the last epochs (low lr) often still improve, so "
        "a short patience can stop too early.",
    )
)

register_study(
    StudyDefinition(
        name="class-imbalance",
        title="Class imbalance: losses and sampling",
        shows="On a long-tailed train split (rarest class has 10% of the commonest; balanced test split): plain cross "
        "entropy vs class-weighted CE vs focal loss vs class-balanced sampling.",
        concept="class-imbalance",
        base=("data.imbalance=0.1",),
        variants=(
            Variant("CE"),
            Variant("CE + class weights", ("training.loss.class_weights=balanced",)),
            Variant("focal", ("training.loss.name=focal", "training.loss.kwargs.gamma=2.0")),
            Variant("balanced sampler", ("data.sampler=balanced",)),
        ),
        also=("min_class_acc", "f1_macro"),
        expect="Re-weighting and re-sampling trade head-class accuracy for tail-class accuracy: worst-class accuracy "
        "and macro F1 rise, overall accuracy on a balanced test set usually too. Focal loss targets hard examples, "
        "not rare classes, so it helps less with imbalance by itself.",
    )
)

register_study(
    StudyDefinition(
        name="architectures",
        title="Architectures: CNN, ResNet, EfficientNet, ViT, hybrid",
        shows="Tiny versions of each family trained with one recipe (AdamW + warmup + cosine): parameters, time and "
        "accuracy.",
        concept="architectures",
        base=(f"{OPT}.name=adamw", f"{OPT}.lr=0.002", f"{OPT}.weight_decay=0.05", f"{SCHED}.warmup_epochs=1"),
        per_dataset={"digits": ("data.subset=600",), "cifar10": ("data.subset=2000", "training.epochs=3")},
        variants=(
            Variant("simple_cnn", ("model.name=simple_cnn",)),
            Variant("resnet_tiny", ("model.name=resnet_tiny",)),
            Variant("efficientnet_tiny", ("model.name=efficientnet_tiny",)),
            Variant("vit_micro", ("model.name=vit_micro",)),
            Variant("cnn_transformer_small", ("model.name=cnn_transformer_small",)),
        ),
        seeds=1,
        also=("params", "train_s"),
        expect="On little data and few epochs, convolutions' built-in locality wins: CNNs and ResNets learn fastest, "
        "a pure ViT lags (it has to learn locality from data), and the hybrid's conv stem recovers most of the "
        "gap at a higher cost. With more data and augmentation the ranking changes.",
    )
)

register_study(
    StudyDefinition(
        name="distillation",
        title="Knowledge distillation",
        shows="A larger teacher is trained first; the small student is trained alone and with the teacher's softened "
        "probabilities (temperature 4, alpha 0.5).",
        concept="distillation",
        variants=(
            Variant("teacher", ("model.name=simple_cnn",), per_dataset={"cifar10": ("model.name=resnet_tiny",)}),
            Variant("student"),
            Variant(
                "student+KD",
                (
                    "training.distill.teacher={ckpt:teacher}",
                    "training.distill.temperature=4.0",
                    "training.distill.alpha=0.5",
                ),
            ),
        ),
        per_dataset={"cifar10": ("model.name=simple_cnn_tiny",)},
        compare=("student", "student+KD"),
        expect="The teacher's soft targets carry class similarities ('dark knowledge'), so the distilled student "
        "usually beats the student alone, most when the student is small and data is scarce.",
    )
)

register_study(
    StudyDefinition(
        name="ensemble",
        title="Ensembles",
        shows="Probabilities of 1, 2 and 3 models averaged at test time. Members share the data split and order and "
        "differ in their random initialisation (so that no member has seen another member's test images).",
        concept="ensembles",
        variants=(Variant("1 model", ensemble=1), Variant("2 models", ensemble=2), Variant("3 models", ensemble=3)),
        also=("nll", "ece"),
        expect="Averaging independently trained models lowers the variance of the predictions: accuracy and especially "
        "NLL/calibration improve, at k times the training and inference cost.",
    )
)

register_study(
    StudyDefinition(
        name="tta",
        title="Test-time augmentation",
        shows="The same trained models evaluated with 1, 2 and 4 views (identity, flip, shifted crops) whose "
        "probabilities are averaged.",
        concept="tta",
        variants=(Variant("tta 1", tta=1, x=1), Variant("tta 2", tta=2, x=2), Variant("tta 4", tta=4, x=4)),
        seeds=3,
        also=("nll",),
        expect="TTA gives a small, nearly free accuracy gain when the views are label-preserving for the data. A "
        "horizontal flip is not label-preserving for digits (a mirrored 2 is not a 2), so there it can hurt.",
    )
)

register_study(
    StudyDefinition(
        name="activations",
        title="Activation functions",
        shows="ReLU against its smooth relatives (GELU, SiLU/Swish, Mish) and leaky ReLU in the same CNN.",
        concept="activations",
        variants=tuple(Variant(a, (f"model.activation={a}",)) for a in ("relu", "leaky_relu", "gelu", "silu", "mish")),
        seeds=2,
        expect="Differences are small in small CNNs (usually within seed noise); smooth activations cost a little more "
        "compute and help most in deep networks and transformers.",
    )
)

register_study(
    StudyDefinition(
        name="ema",
        title="Exponential moving average of the weights",
        shows="Evaluating (and checkpointing) an EMA of the weights instead of the raw weights.",
        concept="ema",
        variants=(
            Variant("no EMA", ("training.ema.enabled=false",)),
            Variant("EMA 0.99", ("training.ema.enabled=true", "training.ema.decay=0.99")),
            Variant("EMA 0.999", ("training.ema.enabled=true", "training.ema.decay=0.999")),
            Variant(
                "EMA 0.99, no warmup",
                ("training.ema.enabled=true", "training.ema.decay=0.99", "training.ema.warmup=false"),
            ),
        ),
        expect="The EMA averages out the noise of the last SGD steps, like a free ensemble along the trajectory; it "
        "helps most with a high final lr or noisy training. With a cosine schedule that ends near zero the gain is "
        "small. With the decay warmup, min(decay, (1 + n) / (10 + n)) reaches 0.99 only after ~900 steps, so in "
        "short runs 0.99 and 0.999 are the same average; without warmup a slow EMA starts from the random weights.",
    )
)

register_study(
    StudyDefinition(
        name="multilabel-loss",
        title="Multi-label: BCE vs asymmetric loss, thresholds 0.5 vs tuned per class",
        shows="With one sigmoid per class, the loss shapes the ranking (mAP) and the decision rule the labels: binary "
        "cross-entropy or the asymmetric loss (ASL, which down-weights easy negatives), and a threshold of 0.5 for "
        "every class or per-class thresholds tuned on the validation split for the best F1.",
        concept="multilabel",
        variants=(
            Variant("BCE, 0.5", ("training.loss.name=bce", "run.tune_thresholds=false")),
            Variant("BCE, tuned", ("training.loss.name=bce", "run.tune_thresholds=true")),
            Variant("ASL, 0.5", ("training.loss.name=asl", "run.tune_thresholds=false")),
            Variant("ASL, tuned", ("training.loss.name=asl", "run.tune_thresholds=true")),
        ),
        metric="f1_macro",
        also=("map_macro", "subset_acc", "hamming_loss", "train_s"),
        datasets=("digit_pairs",),
        expect="Thresholds do not change the ranking, so mAP depends on the loss only. BCE's sigmoids estimate each "
        "label's probability, so 0.5 is close to the F1-optimal threshold and tuning gains little. ASL (Ridnik et "
        "al., 2021) shifts and focuses the negatives' probabilities, so its scores are not calibrated: at 0.5 it "
        "under-predicts, and it needs tuned thresholds. ASL pays off with many labels per image and few positives "
        "each (COCO, Open Images), not with two of ten.",
    )
)
