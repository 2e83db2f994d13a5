"""Verified checkpoints: a content hash checked on load, one-line errors that say the way on, refused pickles said
plainly, no orphaned temp files, file modes from the umask."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from imgcls.cli import main
from imgcls.config import build_config
from imgcls.engine.checkpoint import CheckpointError, atomic_save, content_hash, load_checkpoint, save_checkpoint
from imgcls.engine.train import train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    from conftest import TINY

    runs = tmp_path_factory.mktemp("ckpt") / "runs"
    return train(build_config("quickstart", [*TINY, "training.epochs=1", f"run.dir={runs}"])).run_dir


def _flip_a_weight_byte(path: Path) -> None:
    """Flip one byte inside the largest tensor record of a torch zip file (the pickle stays intact)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_is_caught_and_best_pt_is_the_way_on(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").mkdir()
    for name in ("best.pt", "last.pt"):
        (run / "checkpoints" / name).write_bytes((finished_run / "checkpoints" / name).read_bytes())
    (run / "config.yaml").write_bytes((finished_run / "config.yaml").read_bytes())
    last = run / "checkpoints" / "last.pt"
    before = torch.load(last, weights_only=True)
    _flip_a_weight_byte(last)
    # torch alone loads the damaged file without complaint: only the hash tells
    after = torch.load(last, weights_only=True)
    assert any(not torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    with pytest.raises(CheckpointError, match="does not match its hash") as e:
        load_checkpoint(last)
    assert f"run.resume={run / 'checkpoints' / 'best.pt'}" in str(e.value)

    # the CLI: one line, exit 2, naming best.pt; resuming from best.pt then works
    from conftest import TINY

    args = ["train", "quickstart", *TINY, "training.epochs=2", f"run.dir={tmp_path / 'runs'}"]
    assert main([*args, f"run.resume={last}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "damaged" in err and "best.pt" in err
    assert main([*args, f"run.resume={run / 'checkpoints' / 'best.pt'}"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert load_checkpoint(last)["epoch"] == 2  # the good run wrote a fresh, verified last.pt


class _Payload:
    def __reduce__(self):  # what a malicious checkpoint does: run code when unpickled
        return (os.system, ("echo pwned",))


def test_a_pickle_with_code_is_refused_and_said_plainly(tmp_path, capsys):
    bad = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "x": _Payload()}, bad)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(bad)
    msg = str(e.value)
    assert "holds Python objects (code: posix.system)" in msg and "nothing from it was loaded" in msg
    assert "weights_only=False" not in msg and "\n" not in msg
    assert main(["eval", str(bad)]) == 2
    assert "holds Python objects" in capsys.readouterr().err


def test_hash_covers_every_entry_and_old_files_still_load(tmp_path):
    ckpt = {"model": {"w": torch.arange(6.0).view(2, 3)}, "config": {"a": 1}, "rng": {"python": (3, (1, 2), None)}}
    path = tmp_path / "c.pt"
    save_checkpoint(ckpt, path)
    loaded = load_checkpoint(path)
    assert loaded["sha256"] == content_hash(ckpt)
    for change in ({"config": {"a": 2}}, {"model": {"w": torch.arange(6.0).view(3, 2)}}, {"epoch": 1}):
        assert content_hash({**ckpt, **change}) != content_hash(ckpt)
    torch.save(ckpt, tmp_path / "old.pt")  # format 1: no hash, loads unverified
    assert "sha256" not in load_checkpoint(tmp_path / "old.pt")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoint_modes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_save({"x": 1}, tmp_path / "a.pt")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_temp_files_of_a_killed_write_are_removed_on_the_next_start(finished_run, tmp_path, capsys):
    from conftest import TINY

    stale = finished_run / "checkpoints" / ".last.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    args = ["train", "quickstart", *TINY, "training.epochs=2", f"run.dir={tmp_path}"]
    assert main([*args, f"run.resume={finished_run / 'checkpoints' / 'last.pt'}"]) == 0
    assert "removed 1 temp file" in capsys.readouterr().out
    assert not list(finished_run.glob("checkpoints/*.tmp"))
