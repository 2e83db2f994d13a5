"""One bad-file policy for image folders, .tar.gz archives, channel statistics and previews (issue #14, "Trust").

The same small tree (2 classes x 12 good 8x8 PNGs, a good 16-bit PNG, and four bad files: a truncated PNG, a text
file named .png, a real 8000x8000 1-bit PNG of 10 kB that decodes to 64 megapixels, and a PNG whose header claims
100000x100000) is read as a folder and as a .tar.gz of it: both must name the same bad files for the same reasons
and apply ``data.max_bad_fraction`` with the same one-line error.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from imgcls.cli import main
from imgcls.config import ConfigError, build_config, validate_config
from imgcls.data.build import build_splits, drop_bad_files
from imgcls.data.datasets import imagefolder, make_splits
from imgcls.data.images import BadImageError, TooManyBadFilesError, read_image

BAD = {
    "train/ants/bomb.png": "too large",
    "train/bees/huge_header.png": "decompression bomb",
    "train/bees/notes.png": "not an image",
    "train/bees/truncated.png": "",  # Pillow's own words for the truncation
}
N_FILES = 2 * 12 + 1 + len(BAD)
#: the 16-bit PNG's values: the rounding edges (128 | 129, 385 | 386, 65406 | 65407), 257 * k, 65535, and a spread
SIXTEEN = np.array([0, 1, 128, 129, 257, 385, 386, 32767, 32896, 65406, 65407, 65534, 65535, 513, 514, 1000], np.uint16)
SIXTEEN = np.concatenate([SIXTEEN, (np.arange(48, dtype=np.uint32) * 1361 + 7).astype(np.uint16)]).reshape(8, 8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, bit_depth: int, colour_type: int, raw: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(raw, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def bilevel_bomb(side: int = 8000) -> bytes:
    """A valid all-black 1-bit PNG of side x side pixels: 10 kB on disk, side**2 bytes and more once decoded."""
    return _png(side, side, 1, 0, (b"\x00" + bytes((side + 7) // 8)) * side)


def make_bad_tree(root: Path, *, gray: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for c in ("ants", "bees"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(12):
            arr = (rng.random((8, 8) if gray else (8, 8, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(root / "train" / c / f"{i:02d}.png")
    Image.fromarray(SIXTEEN).save(root / "train/ants/sixteen.png")  # a good file: mode I;16
    good = (root / "train/bees/00.png").read_bytes()
    (root / "train/bees/truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train/bees/notes.png").write_bytes(b"these are my notes, not a picture\n")
    (root / "train/ants/bomb.png").write_bytes(bilevel_bomb())
    # a header claiming 10 gigapixels, over Pillow's own limit, so Image.open itself refuses it
    (root / "train/bees/huge_header.png").write_bytes(_png(100_000, 100_000, 8, 2, b"\x00" * 16))
    return root


def make_archive(root: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=p.relative_to(root).as_posix())
    return out


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bad_tree")
    folder = make_bad_tree(base / "tree")
    return {"folder": folder, "archive": make_archive(folder, base / "tree.tar.gz")}


def _bad_files(root: Path, max_bad_fraction: float = 0.5) -> list[tuple[str, str]]:
    splits = make_splits(imagefolder(str(root)), val_fraction=0.0, test_fraction=0.0, seed=0)
    return [(b.file, b.reason) for b in drop_bad_files(splits, max_bad_fraction=max_bad_fraction)]


# --------------------------------------------------------------------------------------------------------------------
# Folder and archive: the same list, the same cap
# --------------------------------------------------------------------------------------------------------------------


def test_folder_and_archive_name_the_same_bad_files(trees: dict[str, Path]) -> None:
    from_folder = _bad_files(trees["folder"])
    from_archive = _bad_files(trees["archive"])
    assert [f for f, _ in from_folder] == sorted(BAD)
    assert from_archive == from_folder  # same names (relative to the dataset root) and same reasons
    for file, reason in from_folder:
        assert BAD[file] in reason and "\n" not in reason
    assert _bad_files(trees["archive"]) == from_folder  # the second read comes from the decoded cache: still listed


def test_folder_and_archive_stop_with_the_same_one_line_error(trees: dict[str, Path]) -> None:
    messages = {}
    for kind, root in trees.items():
        with pytest.raises(TooManyBadFilesError) as err:
            _bad_files(root, max_bad_fraction=0.1)
        messages[kind] = str(err.value).replace(str(root), "ROOT")
    assert messages["folder"] == messages["archive"]
    msg = messages["folder"]
    assert "\n" not in msg
    assert msg.startswith(f"4 of {N_FILES} image files (13.8%) in ROOT cannot be decoded")
    assert "train/ants/bomb.png (too large" in msg and "and 1 more" in msg and "raise data.max_bad_fraction" in msg


def test_archive_images_decode_like_folder_images(trees: dict[str, Path]) -> None:
    """The good files of both are the same pixels (the 16-bit one scaled the same way)."""
    views = {}
    for kind, root in trees.items():
        splits = make_splits(imagefolder(str(root)), val_fraction=0.0, test_fraction=0.0, seed=0)
        drop_bad_files(splits, max_bad_fraction=0.5)
        views[kind] = splits.train
    assert len(views["folder"]) == len(views["archive"]) == N_FILES - len(BAD)
    folder = torch.stack([views["folder"].get(i)[0] for i in range(len(views["folder"]))])
    archive = views["archive"].images()
    assert torch.equal(folder, archive)
    assert torch.equal(views["folder"].targets, views["archive"].targets)


@pytest.mark.parametrize("kind", ["folder", "archive"])
def test_train_and_eval_list_bad_files_with_reasons_or_stop(
    kind: str, trees: dict[str, Path], tmp_path: Path, capsys
) -> None:
    common = [
        "data.name=imagefolder",
        f"data.root={trees[kind]}",
        "data.image_size=8",
        "data.batch_size=8",
        "data.loader=torch",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
        "model.name=simple_cnn_tiny",
        "training.epochs=1",
        "run.progress=false",
        "run.tracker=none",
        "run.report=false",
    ]
    assert main(["train", *common, "data.max_bad_fraction=0.1", f"run.dir={tmp_path / 'stopped'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: 4 of {N_FILES} image files") and "\n" not in err
    assert main(["train", *common, "data.max_bad_fraction=0.2", f"run.dir={tmp_path / 'runs'}"]) == 0
    summary_path = next((tmp_path / "runs").rglob("summary.json"))
    summary = json.loads(summary_path.read_text())
    assert [b["file"] for b in summary["bad_files"]] == sorted(BAD)
    assert all(BAD[b["file"]] in b["reason"] for b in summary["bad_files"])
    # evaluation rebuilds the same split and drops the same files instead of failing on the first bad one
    assert main(["eval", str(summary_path.parent), "--split", "test", "--no-report"]) == 0


# --------------------------------------------------------------------------------------------------------------------
# Bombs
# --------------------------------------------------------------------------------------------------------------------


def test_bomb_is_rejected_from_the_header_without_decoding(trees: dict[str, Path], monkeypatch) -> None:
    decoded = []
    real_load = ImageFile.ImageFile.load

    def spy(self):  # noqa: ANN001, ANN202
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    bomb = trees["folder"] / "train/ants/bomb.png"
    start = time.perf_counter()
    with pytest.raises(BadImageError, match=r"8000x8000 = 64.0 megapixels, over data.max_image_pixels=40000000"):
        read_image(bomb)
    with pytest.raises(BadImageError, match="decompression bomb"):
        read_image(trees["folder"] / "train/bees/huge_header.png")
    assert time.perf_counter() - start < 0.5
    assert decoded == []  # no pixel was decoded
    read_image(trees["folder"] / "train/ants/00.png")
    assert decoded and set(decoded) == {(8, 8)}  # the spy sees decodes


def test_max_image_pixels_is_a_config_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.max_image_pixels"):
        validate_config(build_config(None, ["data.max_image_pixels=0"]))
    root = tmp_path / "t"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for c in "ab":
        for i in range(3):
            Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(root / c / f"{i}.png")
    cfg = build_config(
        None,
        [
            "data.name=imagefolder",
            f"data.root={root}",
            "data.max_image_pixels=63",
            "data.test_fraction=0",
            "data.val_fraction=0",
        ],
    )
    splits = build_splits(cfg)
    bad = drop_bad_files(splits, max_bad_fraction=1.0)
    assert len(bad) == 6 and all("over data.max_image_pixels=63" in b.reason for b in bad)


def test_grayscale_folder_with_a_bomb_computes_channel_stats(tmp_path: Path) -> None:
    root = make_bad_tree(tmp_path / "gray", gray=True)
    start = time.perf_counter()
    splits = make_splits(imagefolder(str(root), in_chans=1), val_fraction=0.0, test_fraction=0.0, seed=0)
    assert time.perf_counter() - start < 2.0
    good = [p for p in sorted((root / "train").rglob("*.png")) if p.relative_to(root).as_posix() not in BAD]
    pixels = np.stack([read_image(p, in_chans=1) for p in good]).astype(np.float64) / 255.0
    assert splits.mean == pytest.approx([pixels.mean()], abs=1e-9)
    assert splits.std == pytest.approx([pixels.std()], abs=1e-9)


# --------------------------------------------------------------------------------------------------------------------
# Modes
# --------------------------------------------------------------------------------------------------------------------


def _encoded(im: Image.Image, fmt: str = "PNG") -> io.BytesIO:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    buf.seek(0)
    return buf


def test_sixteen_bit_images_scale_to_8_bits_exactly(trees: dict[str, Path]) -> None:
    expected = ((SIXTEEN.astype(np.int64) + 128) // 257).astype(np.uint8)  # round(v / 257)
    assert expected.ravel()[:13].tolist() == [0, 0, 0, 1, 1, 1, 2, 127, 128, 254, 255, 255, 255]  # not v >> 8
    png = read_image(trees["folder"] / "train/ants/sixteen.png", in_chans=1)
    assert Image.open(trees["folder"] / "train/ants/sixteen.png").mode == "I;16"
    assert np.array_equal(png[:, :, 0], expected)
    rgb = read_image(trees["folder"] / "train/ants/sixteen.png")
    assert all(np.array_equal(rgb[:, :, c], expected) for c in range(3))
    big_endian = Image.frombytes("I;16B", (8, 8), SIXTEEN.astype(">u2").tobytes())
    assert np.array_equal(read_image(_encoded(big_endian, "TIFF"), in_chans=1)[:, :, 0], expected)
    pgm = read_image(_encoded(Image.fromarray(SIXTEEN), "PPM"), in_chans=1)  # 16-bit PGM: Pillow's mode I
    assert np.array_equal(pgm[:, :, 0], expected)
    as_int32 = Image.fromarray((SIXTEEN * np.where(np.eye(8), -1, 1)).astype(np.int32))  # negatives clip to 0
    assert np.array_equal(read_image(_encoded(as_int32, "TIFF"), in_chans=1)[:, :, 0], np.where(np.eye(8), 0, expected))
    x = np.arange(256, dtype=np.uint16).reshape(16, 16)
    assert np.array_equal(read_image(_encoded(Image.fromarray(x * 257)), in_chans=1)[:, :, 0], x)  # 8->16->8 exact


def test_other_modes_convert_to_the_expected_channels() -> None:
    rgba = Image.fromarray(np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128]]], np.uint8), mode="RGBA")
    assert read_image(_encoded(rgba)).tolist() == [[[255, 255, 255], [0, 0, 255], [127, 127, 127]]]  # over white
    la = Image.fromarray(np.array([[[0, 0], [50, 255]]], np.uint8), mode="LA")
    assert read_image(_encoded(la), in_chans=1)[:, :, 0].tolist() == [[255, 50]]
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    assert read_image(_encoded(p)).tolist() == [[[255, 255, 255], [10, 200, 30]]]
    cmyk = Image.fromarray(np.array([[[0, 0, 0, 0], [255, 0, 0, 0]]], np.uint8), mode="CMYK")
    assert read_image(_encoded(cmyk, "TIFF")).tolist() == [[[255, 255, 255], [0, 255, 255]]]
    bilevel = Image.fromarray(np.array([[0, 1]], bool)).convert("1")
    assert read_image(_encoded(bilevel), in_chans=1)[:, :, 0].tolist() == [[0, 255]]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), mode="F")
    assert read_image(_encoded(unit, "TIFF"), in_chans=1)[:, :, 0].tolist() == [[0, 128, 255]]
    wide = Image.fromarray(np.array([[-5.0, 100.4, 300.0]], np.float32), mode="F")
    assert read_image(_encoded(wide, "TIFF"), in_chans=1)[:, :, 0].tolist() == [[0, 100, 255]]
    assert read_image(_encoded(Image.new("RGB", (3, 2), (30, 60, 90))), in_chans=1).shape == (2, 3, 1)
    lab = _encoded(Image.new("LAB", (2, 2), (100, 128, 128)), "TIFF")  # Pillow converts LAB to RGB only
    assert read_image(lab, in_chans=1)[0, 0, 0] == read_image(lab)[0, 0, 0]


def test_undecodable_data_of_any_kind_is_a_bad_image_not_a_crash() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    good = _encoded(Image.fromarray(noise)).getvalue()
    corrupt = good[:100] + bytes(b ^ 0x5A for b in good[100:300]) + good[300:]
    jpeg = _encoded(Image.fromarray(noise), "JPEG").getvalue()
    for data in (b"", b"GIF89a", good[:40], good[:-40], corrupt, jpeg[: len(jpeg) // 2], b"BM" + b"\x00" * 60):
        with pytest.raises(BadImageError) as err:
            read_image(io.BytesIO(data), name="x.png")
        assert str(err.value).startswith("cannot decode image x.png: ") and "\n" not in err.value.reason
