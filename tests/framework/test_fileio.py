"""Atomic file and directory writes keep the old content on failure; only the project's temporaries of dead
writers are removed."""
import os
import subprocess
import sys

import pytest

from rosa_lightning.fileio import atomic_write, atomic_write_dir, remove_stale_temps, temp_path


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_failed_file_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = atomic_write(tmp_path / "f.bin", lambda tmp: tmp.write_bytes(b"old"))

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_directory_write_replaces_or_keeps_the_old_directory(tmp_path):
    atomic_write_dir(tmp_path / "model", lambda d: (d / "a").write_text("1"))
    atomic_write_dir(tmp_path / "model", lambda d: (d / "b").write_text("2"))
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["b"]

    def broken(d):
        (d / "c").write_text("3")
        raise RuntimeError("save_pretrained failed")

    with pytest.raises(RuntimeError, match="save_pretrained failed"):
        atomic_write_dir(tmp_path / "model", broken)
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_only_temporaries_of_dead_writers_with_the_wanted_names_are_removed(tmp_path):
    dead = _dead_pid()
    stale_dir = tmp_path / f".model.tmp-{os.uname().nodename}-{dead}"
    stale_dir.mkdir()
    (stale_dir / "config.json").write_text("{}")
    other = tmp_path / f".notes.txt.tmp-{dead}"
    mine = temp_path(tmp_path / "model")  # this process is alive
    for p in (other, mine):
        p.write_text("x")
    assert remove_stale_temps(tmp_path, targets={"model"}) == [stale_dir]
    assert other.exists() and mine.exists()
    assert remove_stale_temps(tmp_path) == [other] and remove_stale_temps(tmp_path / "missing") == []
