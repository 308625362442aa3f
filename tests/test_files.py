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
