"""files.atomic_write: all or nothing under the real name."""
import pytest

from ddimlab.files import atomic_write


def test_write_replaces_and_a_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "sub" / "table.md"
    assert atomic_write(path, lambda f: f.write("old"), text=True) == path
    assert path.read_text() == "old" and oct(path.stat().st_mode & 0o777) == "0o644"

    def half_then_fail(f):
        f.write(b"new, half written")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail, fsync=True)
    assert path.read_text() == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.md"]  # no temporary file left


def test_stale_temporary_files_of_the_same_target_are_removed(tmp_path):
    """Issue #12 case 4: an interrupted checkpoint write used to leave `.ckpt.pt.*.tmp` behind forever."""
    import os
    import time

    stale, fresh, other = (tmp_path / ".ckpt.pt.k1.tmp", tmp_path / ".ckpt.pt.k2.tmp", tmp_path / ".log.jsonl.k3.tmp")
    for p in (stale, fresh, other):
        p.write_bytes(b"half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    atomic_write(tmp_path / "ckpt.pt", lambda f: f.write(b"whole"))
    assert not stale.exists() and fresh.exists() and other.exists()   # only old files of this target


def test_a_failed_write_removes_the_folders_it_made_and_only_those(tmp_path):
    def fail(f):
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space left"):
        atomic_write(tmp_path / "new" / "deeper" / "f.bin", fail)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(OSError):
        atomic_write(tmp_path / "kept" / "f.bin", fail)
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]
