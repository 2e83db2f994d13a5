"""Every shell example of README.md and docs/**/*.md, executed as written.

Each ```bash block is split into commands (line continuations joined, comments dropped, ``&&`` and ``;`` split) and
each logical line is one test, named ``file:line``. ``imgcls`` commands run in-process (``imgcls.cli.main``, what the
``imgcls`` script calls) inside one shared workspace folder, so ``runs/quickstart-<stamp>`` is a real run folder that
an earlier command made. Placeholders are filled from the workspace (:data:`RUN_PLACEHOLDERS`,
:data:`FILE_PLACEHOLDERS`; image files such as ``digit.png`` are written on demand); commands get small overrides
appended (:data:`SMALL`), so a 200-epoch recipe runs one epoch on 32 images; and each checks the output its example
promises where that is cheap (:func:`check_promises`), the ``$`` examples the output the docs show.

Examples that cannot run here are checked for parsing only (:data:`PARSE_ONLY`, with the reasons): their arguments go
through the real parsers (imgcls's, torchrun's, the benchmark script's) and every config they name is resolved and
validated, so a typo still fails. Examples on CIFAR-10 run on a tiny subset of ../shared's copy when it is there (the
download they would do otherwise needs the internet), and are config-checked only without it; the same for the
ants-vs-bees photos.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import runpy
import shlex
import shutil
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch.distributed.run import get_args_parser

from imgcls.cli import build_parser, main, split_preset_and_overrides
from imgcls.config import ConfigError, build_config, list_presets, parse_override
from imgcls.data.build import build_splits
from imgcls.models import create_model
from imgcls.studies.definitions import get_study, list_studies

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

#: appended to every ``imgcls`` command of that kind (config overrides, then options): one epoch on 32 images, no
#: report, no tracker; the example's own values stay in front, so they are parsed and validated, and these win
SMALL_TRAIN = [
    "training.epochs=1",
    "data.subset=32",
    "data.num_workers=0",
    "run.report=false",
    "run.progress=false",
    "run.tracker=none",
]
SMALL: dict[str, tuple[list[str], list[str]]] = {
    "train": (SMALL_TRAIN, []),
    "tune": (SMALL_TRAIN, ["--trials", "2"]),
    "study": (SMALL_TRAIN[1:], ["--seeds", "1", "--epochs", "1"]),
    "lr-find": (["data.subset=32"], ["--num-steps", "12"]),
    "augment-preview": ([], ["--n", "4"]),
    "eval": ([], ["--batch-size", "128", "--no-report"]),
    "export": ([], ["--num-images", "16"]),
    "prune": ([], ["--finetune-epochs", "1"]),
    "quantize": ([], ["--calibration-images", "32", "--timing-seconds", "0.05"]),
    "bench": ([], ["--seconds", "0.05"]),
    "embeddings": ([], ["--max-samples", "120"]),
}

#: examples (by the start of their command) that only parse here, and why; a stale entry fails
#: :func:`test_tables_name_real_examples`
PARSE_ONLY: dict[str, str] = {
    "pip install": "installs from PyPI (internet); the extras it names are checked against pyproject.toml",
    "python -m pytest": "is this test suite; .ci/run must call exactly this command",
    "torchrun": "starts several processes (GPUs or nodes); torchrun's and imgcls's arguments are parsed and the "
    "config resolved here, and tests/test_ddp.py::test_torchrun_cli runs `torchrun --nproc_per_node=2 -m imgcls train`",
    "python benchmarks/speedrun.py": "a benchmark of 3 full CIFAR-10 trainings (about half an hour on 2 cores)",
    "imgcls train speedrun": "needs a CUDA GPU (torch.compile, bf16 autocast)",
    "imgcls train cifar10_resnet18 data.root=/data/cifar10": "needs CIFAR-10's python batches (torchvision checks "
    "their md5); ../shared has the JPEG archive, which the example below it runs on",
    "imgcls serve": "a server that runs until stopped; tests/test_serve.py starts it and sends requests",
    "imgcls study all": "every study in full (hours); each study's command runs on its own above",
}

#: extra appended arguments for single examples that would otherwise take minutes here, and why
SLOW_SWITCHES: dict[str, tuple[list[str], str]] = {
    "training.compile=true": (["training.compile=false"], "torch.compile needs minutes of CPU time to compile"),
    "imgcls bench": (
        ["--backends", "eager,onnx-fp32,onnx-int8", "--onnx", "RUN/checkpoints/best.onnx"],
        "the compile backend needs minutes to compile; the run's ONNX export (README's export line) is reused",
    ),
}

#: examples (by the start of their command) that promise an output one of the small options skips: those options are
#: left out
KEEP_OUTPUT: dict[str, list[str]] = {
    "imgcls eval RUN --tta 2 --ensemble": ["--no-report"],  # "metrics.json + self-contained eval/report.html"
    "imgcls eval runs/quickstart-20250101-120000": ["--no-report"],  # docs/evaluation.md: "writes ... report.html"
}

#: leading path parts that stand for a run folder -> which workspace run fills them
RUN_PLACEHOLDERS = {
    "RUN": "quickstart",
    "RUN2": "second",
    "runs/a": "quickstart",
    "runs/b": "second",
    "runs/c": "teacher",
    "other": "second",
    "third": "teacher",
}
#: file and folder names the docs use for data and weights -> the workspace's kind of file
FILE_PLACEHOLDERS = {
    "cifar10_jpg.tar.gz": "cifar_archive",
    "/path/to/cifar10_jpg.tar.gz": "cifar_archive",
    "hymenoptera_data": "hymenoptera",
    "data/pets": "pets",
    "labels.csv": "manifest_csv",
    "tags.jsonl": "manifest_jsonl",
    "/path/weights.safetensors": "weights",
    "weights.safetensors": "weights",
}
STAMP = re.compile(r"^runs/([A-Za-z0-9_]+)-(<stamp>|\d{8}-\d{6})(/.*)?$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# --------------------------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One logical line of a shell block: ``file:line``, its text, and the output the docs show (``$`` blocks)."""

    file: str
    line: int
    text: str
    output: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def commands(self) -> list[list[str]]:
        lexer = shlex.shlex(self.text, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True  # so <placeholders> stay inside their words
        commands: list[list[str]] = [[]]
        for token in lexer:
            if token in ("&&", ";"):
                commands.append([])
            elif token in ("&", "|", "||", ">", ">>", "<", "2>"):
                raise ValueError(f"{self.id}: unsupported shell syntax {token!r} (the test runs plain commands)")
            else:
                commands[-1].append(token)
        return [c for c in commands if c]


def _shell_lines(rel: str, body: list[tuple[int, str]]) -> list[Example]:
    out: list[Example] = []
    start, parts = 0, []
    for lineno, line in body:
        if not parts:
            start = lineno
        stripped = line.rstrip()
        parts.append(stripped[:-1] if stripped.endswith("\\") else stripped)
        if stripped.endswith("\\"):
            continue
        text = " ".join(p.strip() for p in parts)
        parts = []
        example = Example(rel, start, text)
        if example.commands:  # not a comment line
            out.append(example)
    return out


def _prompt_lines(rel: str, body: list[tuple[int, str]]) -> list[Example]:
    """``$ command`` lines of a plain block, each with the output lines under it."""
    out: list[Example] = []
    for i, (lineno, line) in enumerate(body):
        if line.startswith("$ "):
            shown = []
            for _, after in body[i + 1 :]:
                if after.startswith("$ "):
                    break
                shown.append(after)
            out.append(Example(rel, lineno, line[2:], tuple(shown)))
    return out


def extract_examples(path: Path) -> list[Example]:
    """Every shell example of a Markdown file: ```bash (or sh, shell) blocks, and ``$`` lines of plain blocks."""
    rel = path.relative_to(ROOT).as_posix()
    lines = path.read_text().splitlines()
    found: list[Example] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^\s*```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        j = i + 1
        body = []
        while j < len(lines) and lines[j].strip() != "```":
            body.append((j + 1, lines[j]))
            j += 1
        if fence.group(1) in ("bash", "sh", "shell"):
            found += _shell_lines(rel, body)
        elif fence.group(1) in ("", "console") and any(line.startswith("$ ") for _, line in body):
            found += _prompt_lines(rel, body)
        i = j + 1
    return found


EXAMPLES = [e for path in DOC_FILES for e in extract_examples(path)]


def _table_entry(table: dict, argv: list[str]):  # noqa: ANN202
    """The entry whose key starts the command, or is one of its words."""
    text = " ".join(argv)
    for key, value in table.items():
        if text.startswith(key) or key in argv:
            return value
    return None


# --------------------------------------------------------------------------------------------------------------------
# The workspace: run folders, data and files the examples refer to, made on first use
# --------------------------------------------------------------------------------------------------------------------


class Workspace:
    """A folder that the examples run in (``runs/`` inside it), with what their placeholders stand for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs: dict[str, str] = {}
        self.files: dict[str, str] = {}

    # runs -----------------------------------------------------------------------------------------------------------
    def run(self, key: str) -> str:
        """A finished run folder (relative to the workspace) for ``key``: trained tiny on first use."""
        if key not in self.runs:
            newest = sorted(
                (p for p in (self.path / "runs").glob(f"{key}-*") if (p / "summary.json").is_file()),
                key=lambda p: p.stat().st_mtime,
            )
            if newest and key not in ("quickstart", "second"):
                self.runs[key] = newest[-1].relative_to(self.path).as_posix()
            else:
                self.runs[key] = self._train(key)
        return self.runs[key]

    def _train(self, key: str) -> str:
        args = {
            "quickstart": ["quickstart"],
            "second": ["quickstart", "run.seed=1", "run.name=second"],
            "vit": ["quickstart", "model.name=vit_micro", "run.name=vit"],
        }.get(key)
        if args is None:
            args = [key] if key in list_presets() else ["quickstart", f"run.name={key}"]
        with contextlib.redirect_stdout(sys.stderr):
            status = main(["train", *args, *SMALL_TRAIN, *self.data_args(*args)])
        assert status == 0, f"training the workspace run {key!r} failed"
        runs = sorted((self.path / "runs").glob(f"{build_config(args[0], args[1:]).run.name or args[0]}-*"))
        newest = max(runs, key=lambda p: p.stat().st_mtime)
        return newest.relative_to(self.path).as_posix()

    def data_args(self, preset: str | None, *overrides: str) -> list[str]:
        """Data overrides for a config: ``data.root=<the local CIFAR-10 subset>`` where it would download CIFAR-10;
        5% validation and test splits for digits (the evaluations are then most of a tiny run no more)."""
        try:
            cfg = build_config(preset or "quickstart", list(overrides))
        except ConfigError:  # the command itself reports it
            return []
        if cfg.data.name == "cifar10" and cfg.data.root is None:
            return [f"data.root={self.file('cifar_archive')}"]
        if cfg.data.name == "digits":
            return ["data.val_fraction=0.05", "data.test_fraction=0.05"]
        return []

    def onnx(self, run: str) -> str:
        path = self.path / run / "checkpoints" / "best.onnx"
        if not path.is_file():
            with contextlib.redirect_stdout(sys.stderr):
                assert main(["export", run, "--format", "onnx", "--dynamic-batch"]) == 0
        return path.relative_to(self.path).as_posix()

    # files ----------------------------------------------------------------------------------------------------------
    def file(self, kind: str, **kw: str) -> str:
        """The workspace path of a data set, weights file or image (made on first use)."""
        key = f"{kind}:{kw}"
        if key not in self.files:
            self.files[key] = getattr(self, f"_make_{kind}")(**kw)
        return self.files[key]

    def _make_cifar_archive(self) -> str:
        """25 train and 3 test images per class from ../shared's CIFAR-10, as a .tar.gz of {train,test}/<class>/*.jpg
        (25: the CIFAR-10 study base holds out 4% for validation, and a stratified split needs one per class)."""
        want = {"train": 25, "test": 3}
        counts: collections.Counter = collections.Counter()
        dest = self.path / "cifar10_jpg.tar.gz"
        with tarfile.open(SHARED_DATA / "cifar10_jpg.tar.gz", "r:gz") as src, tarfile.open(dest, "w:gz") as out:
            for member in src:  # stream order: random access into a .tar.gz is quadratic
                parts = member.name.split("/")
                split = next((p for p in parts if p in want), None)
                if not member.isfile() or split is None:
                    continue
                cls = parts[parts.index(split) + 1]
                if counts[split, cls] < want[split]:
                    counts[split, cls] += 1
                    out.addfile(member, src.extractfile(member))
        return dest.name

    def _make_hymenoptera(self) -> str:
        """6 train and 3 val photos per class of ../shared's ants vs bees, as hymenoptera_data/{train,val}/<class>/."""
        want = {"train": 6, "val": 3}
        counts: collections.Counter = collections.Counter()
        with tarfile.open(SHARED_DATA / "hymenoptera.tar.gz", "r:gz") as src:
            for member in src:
                parts = Path(member.name).parts
                if not member.isfile() or len(parts) != 4 or parts[1] not in want or not parts[3].endswith(".jpg"):
                    continue
                if counts[parts[1], parts[2]] < want[parts[1]]:
                    counts[parts[1], parts[2]] += 1
                    dest = self.path / member.name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(src.extractfile(member).read())
        return "hymenoptera_data"

    def _make_pets(self) -> str:
        """data/pets/train/{cat,dog}/*.jpg: small synthetic photos of different sizes (a folder without val/test)."""
        rng = np.random.default_rng(0)
        for cls, colour in (("cat", (200, 80, 40)), ("dog", (40, 90, 200))):
            folder = self.path / "data" / "pets" / "train" / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(12):
                pixels = rng.integers(0, 60, (36 + 2 * i, 48, 3)) + np.array(colour)
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.jpg")
        return "data/pets"

    def _manifest_images(self, n: int) -> list[str]:
        """``n`` small synthetic 24x24 photos under images/ (relative paths, as a manifest lists them)."""
        rng = np.random.default_rng(1)
        folder = self.path / "images"
        folder.mkdir(exist_ok=True)
        names = []
        for i in range(n):
            pixels = rng.integers(0, 60, (24, 24, 3)) + np.array([40 + 4 * i, 90, 200 - 4 * i])
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
            names.append(f"images/{i}.png")
        return names

    def _make_manifest_csv(self) -> str:
        """labels.csv: path,label for 40 images of two classes (no split column: split stratified)."""
        rows = [f"{p},{'cat' if i % 2 else 'dog'}" for i, p in enumerate(self._manifest_images(40))]
        (self.path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
        return "labels.csv"

    def _make_manifest_jsonl(self) -> str:
        """tags.jsonl: 40 images, each with one to three of the labels red, round, striped (multi-label)."""
        tags = ["red", "round", "striped"]
        lines = [
            json.dumps({"path": p, "label": [t for k, t in enumerate(tags) if (i % 7 + 1) >> k & 1]})
            for i, p in enumerate(self._manifest_images(40))
        ]
        (self.path / "tags.jsonl").write_text("\n".join(lines) + "\n")
        return "tags.jsonl"

    def _make_weights(self, model: str, in_chans: str, num_classes: str) -> str:
        """A .safetensors state dict of ``model`` (random weights; what matters is that they load)."""
        net = create_model(model, num_classes=int(num_classes), in_chans=int(in_chans))
        dest = self.path / f"{model.replace(':', '_')}.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(dest))
        return dest.name

    def image(self, name: str) -> str:
        """A small photo-like image file (a digit from the bundled set, enlarged) at ``name`` in the workspace."""
        path = self.path / name
        if not path.is_file():
            digit = (load_digits().images[sum(map(ord, name)) % 10] * (255 / 16)).astype(np.uint8)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(digit).convert("RGB").resize((32, 32)).save(path)
        return name


# --------------------------------------------------------------------------------------------------------------------
# Placeholders, small overrides, parse checks
# --------------------------------------------------------------------------------------------------------------------


def _config_args(argv: list[str]) -> tuple[str | None, list[str]]:
    """(preset, overrides) of an imgcls command's ``[PRESET] key=value`` arguments (before its first option)."""
    items = []
    for token in argv[1:]:
        if token.startswith("--"):
            break
        if "=" in token or token in list_presets():
            items.append(token)
    return split_preset_and_overrides(items)


def _fill_token(token: str, ws: Workspace, argv: list[str]) -> str:
    """A token (or the value of a key=value token) with a run or data placeholder replaced by the workspace's."""
    key, sep, value = token.partition("=") if "=" in token and not token.startswith("-") else ("", "", token)
    stamp = STAMP.match(value)
    if stamp:
        value = ws.run(stamp.group(1)) + (stamp.group(3) or "")
    for placeholder, run_key in RUN_PLACEHOLDERS.items():
        if value == placeholder or value.startswith(placeholder + "/"):
            if run_key == "quickstart" and argv[:2] == ["explain", "attention"]:
                run_key = "vit"  # attention maps need a ViT
            tail = value[len(placeholder) :]
            if placeholder in ("other", "third"):  # other/best.pt: another run's checkpoint
                tail = "/checkpoints" + tail
            value = ws.run(run_key) + tail
            if value.endswith(".onnx"):
                value = ws.onnx(ws.run(run_key))
            break
    if FILE_PLACEHOLDERS.get(value, "weights") != "weights":
        value = ws.file(FILE_PLACEHOLDERS[value])
    return f"{key}{sep}{value}"


def _weights_for(argv: list[str], ws: Workspace) -> str:
    """A weights file that fits the model the command trains (its data's channels)."""
    preset, overrides = _config_args(argv)
    cfg = build_config(preset, [o for o in overrides if not o.startswith("model.pretrained=")])
    in_chans = cfg.data.in_chans or build_splits(cfg).in_chans
    return ws.file("weights", model=cfg.model.name, in_chans=str(in_chans), num_classes="1000")


def fill(argv: list[str], ws: Workspace) -> list[str]:
    """An ``imgcls`` command (without the program name) with placeholders filled and input images written."""
    if argv[:2] == ["train", "..."]:  # `imgcls train ...`: the README's shorthand for a preset and its overrides
        argv = ["train", "quickstart", *argv[2:]]
    argv = [t.strip("[]") if t.startswith("[--") or (t.endswith("]") and "=" not in t) else t for t in argv]
    out = [_fill_token(token, ws, argv) for token in argv]
    for i, token in enumerate(out):
        key, _, value = token.rpartition("=")
        if FILE_PLACEHOLDERS.get(value) == "weights":
            out[i] = f"{key}={_weights_for(out, ws)}" if key else _weights_for(out, ws)
        elif value.lower().endswith(IMAGE_SUFFIXES) and not key and "/" not in value and out[i - 1] != "--out":
            ws.image(value)
    return out


def with_small(argv: list[str], ws: Workspace, extra: list[str] = (), keep: list[str] = ()) -> list[str]:
    """The command with :data:`SMALL` overrides and options (less those in ``keep``), ``extra`` and, for a config
    that would download CIFAR-10, ``data.root`` at the local subset."""
    kind = argv[1] if argv[0] == "explain" else argv[0]
    overrides, options = SMALL.get(kind, ([], []))
    options = [o for o in options if o not in keep]
    preset, own = _config_args(argv)
    if argv[0] == "study":
        cifar = "--dataset" in argv and argv[argv.index("--dataset") + 1] == "cifar10"
        overrides = [*overrides, *ws.data_args("cifar10_resnet18" if cifar else "quickstart", *own)]
    elif argv[0] in ("train", "tune", "lr-find", "lr-plot", "augment-preview"):
        overrides = [*overrides, *ws.data_args(preset, *own)]
    extra_overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    extra_options = [e for e in extra if e not in extra_overrides]
    first_option = next((i for i, t in enumerate(argv) if i > 0 and t.startswith("--")), len(argv))
    return [*argv[:first_option], *overrides, *extra_overrides, *argv[first_option:], *extra_options, *options]


def _downloads_cifar(preset: str | None, overrides: list[str]) -> bool:
    try:
        cfg = build_config(preset or "quickstart", overrides)
    except ConfigError:  # the command itself reports it
        return False
    return cfg.data.name == "cifar10" and cfg.data.root is None


def needs_missing_data(argv: list[str]) -> str | None:
    """Why an ``imgcls`` command (without the program name) cannot run without ../shared's data, or None."""
    if SHARED_DATA.is_dir():
        return None
    text = " ".join(argv)
    if any(name in text for name, kind in FILE_PLACEHOLDERS.items() if kind in ("cifar_archive", "hymenoptera")):
        return f"uses ../shared's data (not at {SHARED_DATA})"
    preset, own = _config_args(argv)
    cifar = "--dataset" in argv and argv[argv.index("--dataset") + 1] == "cifar10"
    if argv[0] in ("train", "tune", "lr-find", "lr-plot", "augment-preview"):
        cifar = _downloads_cifar(preset, own)
    runs = [m.group(1) for m in map(STAMP.match, argv) if m and m.group(1) in list_presets()]
    cifar = cifar or any(_downloads_cifar(name, []) for name in runs)  # a run of a CIFAR-10 preset
    return f"downloads CIFAR-10 (no internet, and no local copy at {SHARED_DATA})" if cifar else None


def check_imgcls_parses(argv: list[str]) -> None:
    """The arguments go through imgcls's parser, and the config they name resolves and validates."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"`imgcls {' '.join(argv)}` does not parse (exit {e.code})")
    if argv[0] in ("train", "tune", "lr-find", "lr-plot", "augment-preview"):
        preset, overrides = _config_args(argv)
        # a placeholder weights file does not exist here (validation checks that it does): check everything else
        overrides = [
            "model.pretrained=false"
            if o.startswith("model.pretrained=") and FILE_PLACEHOLDERS.get(o.split("=", 1)[1]) == "weights"
            else o
            for o in overrides
        ]
        assert main(["config", "show", *([preset] if preset else []), *overrides]) == 0
    if argv[0] == "study":
        for name in args.items:
            if "=" not in name and name != "all":
                assert name in list_studies()
                get_study(name)
        overrides = [t for t in args.items if "=" in t]
        assert main(["config", "show", "quickstart", *overrides]) == 0


class _Parsed(Exception):
    """Raised by the patched ``parse_args``: the script's arguments parsed, stop before any work."""


def check_script_parses(script: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``python script args`` up to its ``parse_args()`` call, which must succeed."""
    real = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise _Parsed(real(self, *a, **kw))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    monkeypatch.setattr(sys, "argv", [script, *args])
    with pytest.raises(_Parsed):
        runpy.run_path(str(ROOT / script), run_name="__main__")


def check_pip(argv: list[str]) -> None:
    """``pip install -e .`` / ``-e ".[extra,...]"``: the project installs from here, with extras that exist."""
    assert argv[:2] == ["pip", "install"], argv
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^([\w-]+) = \[", section, re.MULTILINE))
    for target in argv[2:]:
        if target.startswith("-"):
            continue
        match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target)
        assert match, f"pip installs {target!r}, not this project"
        for extra in filter(None, (match.group(1) or "").split(",")):
            assert extra in extras, f"no extra {extra!r} in pyproject.toml (extras: {', '.join(sorted(extras))})"


def check_torchrun(argv: list[str]) -> None:
    """torchrun's own parser takes the launcher options, and what it starts is ``-m imgcls`` with arguments that
    parse and a config that resolves."""
    args = get_args_parser().parse_args(argv[1:])
    assert args.module and args.training_script == "imgcls", "torchrun should start `-m imgcls`"
    check_imgcls_parses(list(args.training_script_args))


def check_parse_only(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks for a command that does not run here (see :data:`PARSE_ONLY`), by program."""
    if argv[0] == "pip":
        check_pip(argv)
    elif argv[:3] == ["python", "-m", "pytest"]:
        ci = (ROOT / ".ci" / "run").read_text()
        assert " ".join(argv) in ci.splitlines()[-1], ".ci/run must run the README's test command"
    elif argv[0] == "torchrun":
        check_torchrun(argv)
    elif argv[0] == "python":
        check_script_parses(argv[1], argv[2:], monkeypatch)
    else:
        assert argv[0] == "imgcls", f"unknown program {argv[0]!r}"
        check_imgcls_parses(argv[1:])


# --------------------------------------------------------------------------------------------------------------------
# Promised outputs
# --------------------------------------------------------------------------------------------------------------------


def _printed_path(out: str, label: str) -> Path:
    match = re.search(rf"^{label} (\S+)", out, re.MULTILINE)
    assert match, f"the output has no '{label} <path>' line:\n{out[-2000:]}"
    path = Path(match.group(1))
    assert path.exists(), f"{label} {path} does not exist"
    return path


def check_promises(argv: list[str], out: str, ws: Workspace) -> None:
    """What the docs say each command gives, where cheap to check; and every --out file exists."""
    for i, token in enumerate(argv[:-1]):
        if token == "--out":
            assert Path(argv[i + 1]).exists(), f"--out {argv[i + 1]} was not written"
    command = argv[0]
    if command == "train":
        run = _printed_path(out, "RUN FOLDER")
        for name in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/best.pt", "checkpoints/last.pt"):
            assert (run / name).is_file(), f"{run} has no {name}"
        assert "TEST ACCURACY" in out
        if "run.resume=auto" in argv:
            assert re.search(r"run.resume=auto: resuming \S+-unfinished", out), out
    elif argv[:2] == ["config", "show"]:
        resolved = yaml.safe_load(out)
        for key, value in (parse_override(t) for t in argv[2:] if "=" in t):
            node = resolved
            for part in key.split("."):
                node = node[part]
            assert node == value, f"config show: {key} is {node!r}, not {value!r}"
    elif argv[:2] == ["config", "presets"]:
        assert [line.split()[0] for line in out.strip().splitlines()] == list_presets()  # a name and a line each
    elif command == "eval":
        folder = Path(argv[1]).parent.parent if argv[1].endswith(".pt") else Path(argv[1])
        assert re.search(r"acc", out, re.IGNORECASE), out
        assert (folder / "eval" / "metrics.json").is_file()
        assert "--no-report" in argv or (folder / "eval" / "report.html").is_file()
    elif command == "predict":
        image = argv[2]
        assert re.search(rf"^{re.escape(image)}: \S+ \d\.\d{{3}}", out, re.MULTILINE), out
    elif command == "models":
        assert "params" in out and "MACs" in out
    elif command == "data":
        assert "samples per class and split" in out and "train" in out
    elif command == "export":
        _printed_path(out, "EXPORTED")
    elif command == "quantize":
        _printed_path(out, "QUANTIZED")
    elif command == "lr-find":
        assert "SUGGESTED LR" in out
        _printed_path(out, "LR FIND PLOT")
    elif command == "lr-plot":
        _printed_path(out, "LR PLOT")
    elif command == "augment-preview":
        _printed_path(out, "wrote")
    elif argv[:2] == ["explain", "embeddings"]:
        _printed_path(out, "embedding plot:")
    elif command == "explain":
        written = re.findall(r"-> (\S+)$", out, re.MULTILINE)
        assert written and all(Path(p).is_file() for p in written), out
    elif command == "study" and "--list" in argv:
        assert "optimizers" in out
    elif command == "study" and "--collect" in argv:
        assert re.search(r"^\|.*\|$", out, re.MULTILINE), "no Markdown table"
    elif command == "study":
        assert list((ws.path / "runs" / "studies").rglob("study.json"))
    elif command == "compare":
        assert "written:" in out


# --------------------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("docs-examples"))


@pytest.fixture
def in_workspace(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.chdir(workspace.path)
    return workspace


def _prepare(argv: list[str], ws: Workspace) -> None:
    """The state an example presumes: ``run.resume=auto`` continues the newest unfinished run, so there is one (a copy
    of a finished run without its summary.json); ``imgcls tune`` starts a new study, so none of that name exists;
    ``compare --all`` and ``study --collect`` find something to work on when their example runs alone."""
    if "run.resume=auto" in argv:
        run = ws.path / ws.run("quickstart")
        unfinished = run.with_name(run.name + "-unfinished")
        shutil.rmtree(unfinished, ignore_errors=True)
        shutil.copytree(run, unfinished)
        (unfinished / "summary.json").unlink()
        (unfinished / "run.lock").unlink(missing_ok=True)
    if argv[0] == "tune":
        preset, _ = _config_args(argv)
        name = argv[argv.index("--study-name") + 1] if "--study-name" in argv else preset or "quickstart"
        shutil.rmtree(ws.path / "runs" / f"tune-{name}", ignore_errors=True)
    if argv[0] == "compare":  # something to compare, when this example runs alone
        for key in ("quickstart", "second"):
            ws.run(key)
    if argv[0] == "study" and "--collect" in argv:  # a study result to collect, when this example runs alone
        folder = Path(argv[argv.index("--collect") + 1])
        if not list(folder.rglob("study.json")):
            with contextlib.redirect_stdout(sys.stderr):
                assert main(["study", "optimizers", *SMALL["study"][0], *SMALL["study"][1]]) == 0


def run_example_command(argv: list[str], example: Example, ws: Workspace, capsys, monkeypatch) -> None:  # noqa: ANN001
    """Run one command of an example (or check that it parses) and check what it promises."""
    reason = _table_entry(PARSE_ONLY, argv)
    if reason is None and argv[0] == "imgcls":
        reason = needs_missing_data(argv[1:])
    if reason is not None:
        check_parse_only(argv if argv[0] != "imgcls" else ["imgcls", *fill_textual(argv[1:])], monkeypatch)
        return
    assert argv[0] == "imgcls", f"{example.id}: add {argv[0]!r} to PARSE_ONLY or teach this test to run it"
    args = fill(argv[1:], ws)
    _prepare(args, ws)
    extra = fill((_table_entry(SLOW_SWITCHES, argv) or ([], ""))[0], ws)
    small = with_small(args, ws, extra, _table_entry(KEEP_OUTPUT, argv) or [])
    capsys.readouterr()
    try:
        status = main(small)
    except SystemExit as e:  # argparse
        status = e.code
    captured = capsys.readouterr()
    if example.output:  # the docs show what it prints
        shown = [line for line in example.output if line.strip()]
        for line in shown:
            assert line.rstrip(".").rstrip() in captured.err + captured.out, (line, captured.err)
        assert status == (2 if shown[0].startswith("error:") else 0)  # bad input: one line and exit 2
        return
    assert status == 0, f"`imgcls {' '.join(small)}` exited {status}:\n{captured.err[-3000:]}"
    check_promises(small, captured.out, ws)


def fill_textual(args: list[str]) -> list[str]:
    """Placeholders made parseable without building anything (parse-only commands)."""
    return ["quickstart" if t == "..." else re.sub(r"<(\w+)>", r"\1", t) for t in args]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_example(example: Example, in_workspace: Workspace, capsys, monkeypatch) -> None:  # noqa: ANN001
    for argv in example.commands:
        run_example_command(argv, example, in_workspace, capsys, monkeypatch)


def test_examples_are_found() -> None:
    """The extraction sees the README's blocks and every docs page with a shell block."""
    files = {e.file for e in EXAMPLES}
    assert "README.md" in files and "docs/evaluation.md" in files and "docs/concepts/ema.md" in files
    assert len(EXAMPLES) > 60
    assert any(e.output for e in EXAMPLES), "the README's `$ imgcls train model.nam=x` example"


def test_tables_name_real_examples() -> None:
    """Every PARSE_ONLY / SLOW_SWITCHES entry still matches an example (a renamed one would silently run)."""
    texts = [" ".join(c) for e in EXAMPLES for c in e.commands]
    for key in [*PARSE_ONLY, *SLOW_SWITCHES, *KEEP_OUTPUT]:
        assert any(t.startswith(key) or key in t.split() for t in texts), f"no example matches {key!r}"


def test_extraction_splits_commands() -> None:
    example = Example("x.md", 1, "pip install -e . && imgcls train quickstart ; imgcls eval runs/q-<stamp>  # note")
    assert example.commands == [
        ["pip", "install", "-e", "."],
        ["imgcls", "train", "quickstart"],
        ["imgcls", "eval", "runs/q-<stamp>"],
    ]
    body = [(3, "# a comment"), (4, "imgcls train ... a=1 \\"), (5, "    b='x y'   # why"), (6, "imgcls models")]
    lines = _shell_lines("x.md", body)
    assert [(e.line, e.commands) for e in lines] == [
        (4, [["imgcls", "train", "...", "a=1", "b=x y"]]),
        (6, [["imgcls", "models"]]),
    ]
    with pytest.raises(ValueError, match="unsupported shell syntax"):
        assert Example("x.md", 1, "imgcls models | head").commands


def test_offline_cifar_example_fails_clearly(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """README's offline CIFAR-10 line (parse-only above) pointed at a folder without the files: one line that says
    where to put them, exit 2, before any work."""
    args = ["train", "cifar10_resnet18", f"data.root={tmp_path}", "data.download=false", f"run.dir={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cifar10: dataset files not found under") and "Downloading is off" in err
    assert "Put the files there" in err and not list(tmp_path.glob("cifar10_resnet18-*"))
