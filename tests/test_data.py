from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.cli import main
from imgcls.config import build_config
from imgcls.data.build import build_splits
from imgcls.data.datasets import DATASETS, DatasetNotFoundError, load_dataset, make_splits


def _splits(seed: int):
    raw = load_dataset("digits")
    return make_splits(raw, val_fraction=0.1, test_fraction=0.2, seed=seed)


def test_splits_are_deterministic_disjoint_and_stratified():
    a, b, c = _splits(0), _splits(0), _splits(1)
    for name in ("train", "val", "test"):
        assert np.array_equal(getattr(a, name).indices, getattr(b, name).indices)
    assert not np.array_equal(a.test.indices, c.test.indices)
    sets = [set(a.train.indices), set(a.val.indices), set(a.test.indices)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sum(map(len, sets)) == 1797
    # stratified: each class's share of the test split matches its share of the data within 1 sample
    counts = torch.bincount(a.test.targets, minlength=10).numpy()
    expected = np.bincount(load_dataset("digits").train.targets.numpy()) * 0.2
    assert np.all(np.abs(counts - expected) <= 1.0)


def test_normalisation_statistics_come_from_train_split():
    s = _splits(0)
    x = s.train.images().float() / 255
    assert s.mean[0] == pytest.approx(float(x.mean()), abs=0.01)
    assert s.std[0] == pytest.approx(float(x.std()), abs=0.01)


def test_missing_dataset_offline_says_where_to_put_files(tmp_path):
    cfg = build_config(None, ["data.name=cifar10", f"data.root={tmp_path / 'c10'}", "data.download=false"])
    with pytest.raises(DatasetNotFoundError) as e:
        build_splits(cfg)
    assert str(tmp_path / "c10") in str(e.value) and "data.root" in str(e.value)


def test_cli_missing_dataset_exit_code(tmp_path, capsys):
    code = main(
        [
            "train",
            "data.name=mnist",
            f"data.root={tmp_path / 'm'}",
            "data.download=false",
            f"run.dir={tmp_path / 'runs'}",
        ]
    )
    assert code == 2
    assert "dataset files not found" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # failed before any work


def _make_imagefolder(root, classes=("cat", "dog"), n=6, size=12):
    rng = np.random.default_rng(0)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = (rng.random((size, size, 3)) * 60 + ci * 150).astype(np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")


def test_imagefolder_without_splits_is_split_stratified(tmp_path):
    _make_imagefolder(tmp_path / "imgs", n=10)
    cfg = build_config(
        None,
        ["data.name=imagefolder", f"data.root={tmp_path / 'imgs'}", "data.val_fraction=0.2", "data.test_fraction=0.2"],
    )
    s = build_splits(cfg)
    assert s.classes == ["cat", "dog"]
    assert len(s.train) + len(s.val) + len(s.test) == 20
    assert torch.bincount(s.test.targets).tolist() == [2, 2]
    img, label = s.train.get(0)
    assert img.dtype == torch.uint8 and img.shape == (3, 12, 12)


def test_imagefolder_with_train_val_folders(tmp_path):
    _make_imagefolder(tmp_path / "d" / "train", n=4)
    _make_imagefolder(tmp_path / "d" / "val", n=2)
    cfg = build_config(None, ["data.name=imagefolder", f"data.root={tmp_path / 'd'}", "data.test_fraction=0"])
    s = build_splits(cfg)
    assert len(s.train) == 8 and len(s.val) == 4 and s.test is None


def test_cli_data_command(capsys):
    assert main(["data", "digits"]) == 0
    out = capsys.readouterr().out
    assert "10 classes" in out and "total" in out and "1293" in out


def test_split_seed_fixes_the_split_independently_of_the_run_seed():
    a = build_splits(build_config(None, ["run.seed=1", "data.split_seed=7"]))
    b = build_splits(build_config(None, ["run.seed=2", "data.split_seed=7"]))
    c = build_splits(build_config(None, ["run.seed=7"]))
    assert np.array_equal(a.test.indices, b.test.indices) and np.array_equal(a.test.indices, c.test.indices)


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_registered_dataset_loads_or_names_its_missing_files(name, tmp_path):
    """Every registry entry either loads offline (bundled data) or, pointed at an empty folder with downloads off,
    raises DatasetNotFoundError naming that folder — never a traceback from deeper down."""
    empty = tmp_path / name
    empty.mkdir()
    try:
        raw = load_dataset(name, root=str(empty), download=False)
    except DatasetNotFoundError as e:
        assert str(empty) in str(e)
        return
    assert len(raw.train) > 0 and len(raw.classes) >= 2
    targets = raw.train.targets
    if targets.ndim == 2:  # multi-label (digit_pairs): multi-hot rows over the classes, each with a label
        assert targets.shape[1] == len(raw.classes) and set(targets.unique().tolist()) <= {0, 1}
        assert bool((targets.sum(1) >= 1).all())
    else:
        assert set(targets.tolist()) <= set(range(len(raw.classes)))
