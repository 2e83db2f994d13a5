"""Manifest datasets (issue #21): a CSV / JSON lines table of image paths, labels and optional splits; bad rows under
the bad-file policy; stratified splits and k-fold (iterative stratification for multi-label data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.config import ConfigError, build_config
from imgcls.data.build import build_splits, drop_bad_files
from imgcls.data.datasets import RawDataset, TensorSource, digit_pairs, kfold_split, make_splits, manifest
from imgcls.data.images import TooManyBadFilesError

LABELS = ["cat", "dog", "bird"]


def _images(root: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        names.append(f"img/{i}.png")
    return names


def _csv(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] = ("path", "label")) -> Path:
    lines = [",".join(columns)] + [",".join(r.get(c, "") for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_single_label_csv_classes_sorted_and_bad_rows_reported(tmp_path):
    names = _images(tmp_path, 60)
    rows = [{"path": p, "label": LABELS[i % 3]} for i, p in enumerate(names)]
    rows += [{"path": "img/missing.png", "label": "cat"}, {"path": names[0], "label": ""}]
    file = _csv(tmp_path / "labels.csv", rows)
    cfg = build_config(None, ["data.name=manifest", f"data.root={file}", "data.max_bad_fraction=0.1"])
    splits = build_splits(cfg)
    assert splits.classes == ["bird", "cat", "dog"] and not splits.multilabel
    assert sum(len(v) for v in (splits.train, splits.val, splits.test)) == 61  # the empty-label row is dropped
    bad = drop_bad_files(splits, max_bad_fraction=0.1)
    reasons = {b.file: b.reason for b in bad}
    assert reasons["img/missing.png"] == "file not found"
    assert reasons[names[0]].startswith("empty label (labels.csv:")
    assert sum(len(v) for v in (splits.train, splits.val, splits.test)) == 60
    # the cap counts bad rows with the files: 2 of 62 is over 1%
    with pytest.raises(TooManyBadFilesError, match="2 of 62"):
        drop_bad_files(
            build_splits(build_config(None, ["data.name=manifest", f"data.root={file}"])), max_bad_fraction=0.01
        )


def test_multilabel_jsonl_inferred_with_split_column_and_unknown_labels(tmp_path):
    names = _images(tmp_path, 30)
    file = tmp_path / "labels.jsonl"
    lines = []
    for i, p in enumerate(names):
        labels = [LABELS[i % 3]] + ([LABELS[(i + 1) % 3]] if i % 2 else [])
        lines.append(json.dumps({"path": p, "label": labels, "split": ["train", "val", "test"][i % 3]}))
    lines.append(json.dumps({"path": names[0], "label": ["fish"], "split": "train"}))
    lines.append("{not json")
    file.write_text("\n".join(lines) + "\n")
    raw = manifest(str(file), classes=LABELS)
    assert raw.classes == LABELS  # data.classes keeps its order
    assert raw.train.targets.shape == (10, 3) and raw.train.targets.dtype == torch.float32
    assert (raw.train.targets.sum(1) >= 1).all() and (raw.train.targets.sum(1) == 2).any()
    assert len(raw.val) == len(raw.test) == 10
    assert "inferred from labels.jsonl" in raw.info["multilabel"]
    reasons = [b.reason for b in raw.read.bad]
    assert any("unknown label 'fish'" in r for r in reasons) and any("not a JSON object" in r for r in reasons)
    _, label = raw.train.get(1)
    assert torch.equal(label, raw.train.targets[1])


def test_delimited_labels_in_csv_and_refusals(tmp_path):
    names = _images(tmp_path, 12)
    rows = [{"path": p, "label": "cat;dog" if i % 2 else "bird"} for i, p in enumerate(names)]
    file = _csv(tmp_path / "labels.csv", rows)
    assert manifest(str(file)).train.targets.sum().item() == 18  # 6 rows x 2 labels + 6 x 1
    with pytest.raises(ConfigError, match="6 rows of labels.csv have several labels"):
        manifest(str(file), multilabel=False)
    with pytest.raises(ConfigError, match="no column 'file'.*path, label"):
        manifest(str(file), path_column="file")
    with pytest.raises(ConfigError, match="data.sampler=balanced"):
        build_splits(build_config(None, ["data.name=manifest", f"data.root={file}", "data.sampler=balanced"]))


def _fold_counts(targets: np.ndarray, folds: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    idx = np.arange(len(targets))
    vals = [kfold_split(idx, targets, folds=folds, fold=k, seed=seed)[1] for k in range(folds)]
    return vals, idx


@pytest.mark.parametrize("multilabel", [False, True])
def test_kfold_disjoint_covering_and_label_balanced(multilabel):
    """Folds of one seed are disjoint and cover the pool; every label's count in every fold is within 10% (+1 image)
    of its mean count per fold: iterative stratification for multi-hot targets, StratifiedKFold otherwise."""
    raw = digit_pairs()
    targets = raw.train.targets.numpy() if multilabel else raw.train.targets.numpy().argmax(1)
    folds = 5
    vals, idx = _fold_counts(targets, folds, seed=3)
    together = np.concatenate(vals)
    assert len(together) == len(idx) and set(together.tolist()) == set(idx.tolist())  # disjoint and covering
    onehot = targets if multilabel else np.eye(10)[targets]
    mean = onehot.sum(0) / folds
    for v in vals:
        assert np.all(np.abs(onehot[v].sum(0) - mean) <= 0.1 * mean + 1)
    # fold k's train part is the pool without its val part
    train, val = kfold_split(idx, targets, folds=folds, fold=2, seed=3)
    assert set(train.tolist()) == set(idx.tolist()) - set(val.tolist())


def test_kfold_through_the_config_and_refused_with_a_given_val_split():
    cfg = build_config("quickstart", ["data.folds=4", "data.fold=3"])
    s = build_splits(cfg)
    assert len(s.val) + len(s.train) == 1797 - len(s.test)
    assert abs(len(s.val) - (1797 - len(s.test)) / 4) <= 1
    with pytest.raises(ConfigError, match="data.fold"):
        from imgcls.config import validate_config

        validate_config(build_config("quickstart", ["data.folds=4", "data.fold=4"]))
    with pytest.raises(ConfigError, match="defines its own val split"):
        build_splits(build_config("quickstart", ["data.name=digit_pairs", "data.folds=3"]))


def test_multilabel_stratified_split_keeps_label_shares():
    raw = digit_pairs()
    pool = RawDataset(train=TensorSource(raw.train.images, raw.train.targets), classes=raw.classes)
    s = make_splits(pool, val_fraction=0.2, test_fraction=0.2, seed=0)
    full = raw.train.targets.mean(0)
    for view in (s.train, s.val, s.test):
        assert torch.allclose(view.targets.mean(0), full, atol=0.01)
