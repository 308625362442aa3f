"""files.atomic_write: all or nothing under the real name."""
import pytest

from ddimlab import files
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

    stale, fresh, other = (tmp_path / ".ckpt.pt.k1abcdef.tmp", tmp_path / ".ckpt.pt.k2abcdef.tmp",
                           tmp_path / ".log.jsonl.k3abcdef.tmp")   # mkstemp: 8 random characters
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


def test_replaced_together_keeps_the_earlier_set_or_the_new_one_never_a_mix(tmp_path):
    """`replaced_together`: a block that fails (here Ctrl-C after one of two files) leaves the earlier files as they were,
    a dangling symbolic link too, and removes what it wrote (`written()` where given); a block that ends leaves only the
    new files. Neither leaves a `.previous-*` folder (which would block the next run)."""
    import os

    from ddimlab.files import replaced_together

    def state():
        return {str(p.relative_to(tmp_path)): os.readlink(p) if p.is_symlink() else "a folder" if p.is_dir() else p.read_text()
                for p in sorted(tmp_path.rglob("*"))}

    md, csv, link = tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "t.png"
    md.write_text("old md")
    csv.write_text("old csv")
    os.symlink("nowhere.png", link)
    before = state()
    with pytest.raises(KeyboardInterrupt):
        with replaced_together(tmp_path, [csv, md, link]):
            atomic_write(csv, lambda f: f.write("new csv"), text=True)
            raise KeyboardInterrupt
    assert state() == before
    with pytest.raises(OSError, match="No space"):          # files known only as they are written: written()
        with replaced_together(tmp_path, [md], written=lambda: sorted(tmp_path.glob("*.extra"))):
            atomic_write(tmp_path / "cell.extra", lambda f: f.write("new"), text=True)
            raise OSError(28, "No space left on device")
    assert state() == before
    with replaced_together(tmp_path, [csv, md, link]):
        atomic_write(csv, lambda f: f.write("new csv"), text=True)
        atomic_write(md, lambda f: f.write("new md"), text=True)
    assert state() == {"t.csv": "new csv", "t.md": "new md"}


def test_a_busy_lock_waits_out_a_look_by_held_but_not_a_holder(tmp_path):
    """`held` takes a shared lock for an instant to look; a `train` starting then (`locked(busy=...)`) waits that
    instant out instead of calling the run busy. A lock held for good is still a BusyError, at once after the waits."""
    import fcntl
    import threading
    import time

    from ddimlab import files

    lock = tmp_path / ".train.lock"
    lock.touch()
    looker = open(lock)
    fcntl.flock(looker, fcntl.LOCK_SH | fcntl.LOCK_NB)           # a look in progress, let go 30 ms later
    threading.Timer(0.03, fcntl.flock, (looker, fcntl.LOCK_UN)).start()
    with files.locked(lock, busy="busy"):
        assert files.held(lock)                                    # (another open file of this process counts)
    looker.close()
    holder = open(lock)
    fcntl.flock(holder, fcntl.LOCK_EX)
    t0 = time.monotonic()
    with pytest.raises(files.BusyError, match="busy"):
        with files.locked(lock, busy="busy"):
            pass
    assert time.monotonic() - t0 < 2
    assert files.held(lock) is True
    holder.close()


def test_held_is_false_for_a_lock_file_that_is_not_there(tmp_path):
    """Mutation audit: `held` of a missing lock file (a run copied without it, a checkpoint file elsewhere) is False,
    not FileNotFoundError, and it creates nothing."""
    from ddimlab import files

    assert files.held(tmp_path / "absent" / ".train.lock") is False and not list(tmp_path.iterdir())


def test_check_can_write_says_a_name_too_long_as_it_says_any_unwritable_folder(tmp_path):
    """A folder name longer than the file system allows was Python's bare 'File name too long' from the look for the
    folders to make (moved before the `try` when the probe learnt to remove them), where `mkdir` had said "cannot
    create files in …; choose another --out"."""
    folder = tmp_path / ("x" * 300)
    with pytest.raises(OSError, match=r"cannot create files in .*; choose another --out"):
        files.check_can_write(folder)
    assert list(tmp_path.iterdir()) == []


def test_folder_removed_on_error_deletes_only_what_a_failed_block_made(tmp_path):
    """On an exception: the lock file the block created goes (in a folder that existed too, and with the folders it
    made), and one that was there before stays (an earlier command's, which another may open and lock at any moment).
    A block that ends deletes nothing, not even a folder it left empty."""
    from ddimlab.files import folder_removed_on_error

    old, new = tmp_path / "old.lock", tmp_path / "made" / "deeper"
    old.write_text("")
    for folder, own in ((tmp_path, (old, tmp_path / "new.lock")), (new, (new / "new.lock",))):
        with pytest.raises(ValueError):
            with folder_removed_on_error(folder, *own):
                folder.mkdir(parents=True, exist_ok=True)
                for p in own:
                    p.touch()
                raise ValueError("the command failed")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["old.lock"]
    with folder_removed_on_error(new, new / "new.lock"):
        new.mkdir(parents=True)
        (new / "new.lock").touch()
    with folder_removed_on_error(tmp_path / "empty"):
        (tmp_path / "empty").mkdir()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "empty", "made", "made/deeper", "made/deeper/new.lock", "old.lock"]


def test_folder_removed_on_error_keeps_a_lock_file_it_made_that_another_command_holds_now(tmp_path):
    """A command that made a new folder and its lock file, let go of the lock and then failed, keeps that lock file where
    a second command holds it by then: deleting it would let a third one in beside the second."""
    import contextlib

    from ddimlab.files import folder_removed_on_error, locked

    out = tmp_path / "new"
    lock = out / ".lab.lock"
    with contextlib.ExitStack() as second, pytest.raises(ValueError):
        with folder_removed_on_error(out, lock):
            with locked(lock):
                pass
            second.enter_context(locked(lock))
            raise ValueError("the first command failed after letting go of its lock")
    assert [p.name for p in out.iterdir()] == [".lab.lock"]


def test_unresolved_link_names_only_a_link_that_leads_nowhere_and_make_folder_only_then(tmp_path):
    """unresolved_link is None on a path through links that resolve (a folder reached by a link, a link to a file): `train`
    refuses a run folder where it is not None. make_folder names a loop on the way and atomic_write a link to nothing;
    a file on the way is named (mkdir said "Not a directory"); any other failure is mkdir's own error, as it words it."""
    import errno

    from ddimlab.files import make_folder, unresolved_link

    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("")
    (tmp_path / "via").symlink_to("real")
    (tmp_path / "via" / "g").symlink_to("f")
    for ok in ("via", "via/f", "via/g", "via/none", "none/x"):
        assert unresolved_link(tmp_path / ok) is None, ok
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    (tmp_path / "dangling").symlink_to("nowhere")
    loop, nowhere = (f"{tmp_path / 'a'} is a symbolic link to b, which goes round a loop of symbolic links",
                     f"{tmp_path / 'dangling'} is a symbolic link to nowhere, which does not exist")
    assert unresolved_link(tmp_path / "a" / "x") == loop and unresolved_link(tmp_path / "dangling") == nowhere
    with pytest.raises(OSError, match=r"\(.*/a is a symbolic link to b, which goes round a loop of symbolic links\)"):
        make_folder(tmp_path / "a" / "x")
    with pytest.raises(OSError, match=r"\(.*/dangling is a symbolic link to nowhere, which does not exist\)"):
        atomic_write(tmp_path / "dangling" / "f", lambda f: None)
    with pytest.raises(OSError) as said:
        make_folder(tmp_path / "real" / "f" / "x")
    f = tmp_path / "real" / "f"
    assert said.value.errno == errno.ENOTDIR and \
        str(said.value) == f"cannot create the folder {f / 'x'} ({f} is a file, not a folder)"   # no "[Errno 20]"
    too_long = tmp_path / ("x" * 300) / "y"
    with pytest.raises(OSError) as os_says:
        too_long.mkdir(parents=True)
    with pytest.raises(OSError) as ours:
        make_folder(too_long)
    assert os_says.value.errno == errno.ENAMETOOLONG and str(ours.value) == str(os_says.value)


def test_make_folder_with_a_hint_words_every_error_and_check_can_write_names_a_loop(tmp_path):
    """With a hint (`locked` passes "choose another --out"), make_folder words any failure as "cannot create the folder F
    (why); hint", which `locked` had worded in its own copy of the code. check_can_write under a loop of links said only
    "Too many levels of symbolic links"; it now names the link, as make_folder does."""
    import errno

    from ddimlab.files import check_can_write, make_folder

    (tmp_path / "f").write_text("")
    with pytest.raises(OSError) as said:
        make_folder(tmp_path / "f" / "x", hint="choose another --out")
    assert said.value.errno == errno.ENOTDIR
    assert str(said.value) == f"cannot create the folder {tmp_path / 'f' / 'x'} ({tmp_path / 'f'} is a file, not a " \
                              "folder); choose another --out"
    with pytest.raises(OSError, match=r"cannot create the folder .*/f/x \(.*/f is a file, not a folder\); choose another --out"):
        with files.locked(tmp_path / "f" / "x" / ".lab.lock"):
            pass
    (tmp_path / "a").symlink_to("a")
    with pytest.raises(OSError, match=r"cannot create files in .*/a/x \(.*/a is a symbolic link to a, which goes round a loop"):
        check_can_write(tmp_path / "a" / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "f"]


def test_atomic_write_names_a_loop_of_links_on_the_way_and_replaces_one_at_the_path(tmp_path):
    """A folder on the way that is a symbolic link round a loop (a -> a) stopped atomic_write at its first look at the
    path, as "[Errno 40] Too many levels of symbolic links: 'a/x/f'", naming neither a nor the loop; it is now make_folder's
    error, which names both, and leaves the link as it was. A loop at the path itself is replaced by the file, as any link
    there is (a link to nothing too), never written through."""
    import os
    import re

    (tmp_path / "a").symlink_to("a")
    for path in ("a/x/f", "a/f"):
        with pytest.raises(OSError, match=re.escape(f"({tmp_path / 'a'} is a symbolic link to a, which goes round a loop")):
            atomic_write(tmp_path / path, lambda f: f.write(b"1"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"] and os.readlink(tmp_path / "a") == "a"
    for name, target in (("loop", "loop"), ("dangling", "nowhere")):
        (tmp_path / name).symlink_to(target)
        atomic_write(tmp_path / name, lambda f: f.write(b"1"))
        assert not (tmp_path / name).is_symlink() and (tmp_path / name).read_bytes() == b"1"
    assert not (tmp_path / "nowhere").exists()


def test_atomic_write_names_a_file_on_the_way(tmp_path):
    """Careless round 27: `checkpoint.official_ddpm_file(cache_dir=<a file>)` (and any atomic_write through a file) was
    "[Errno 20] Not a directory: '<cache>/checkpoints/model-790000.ckpt'", naming the path, not the file in its way."""
    import re

    from ddimlab import checkpoint

    (tmp_path / "f").write_text("mine")
    for write in (lambda: atomic_write(tmp_path / "f" / "x" / "y.json", lambda f: f.write(b"1")),
                  lambda: checkpoint.official_ddpm_file(cache_dir=tmp_path / "f", url="http://127.0.0.1:9/", progress=False)):
        with pytest.raises(NotADirectoryError, match="cannot create the folder .*" + re.escape(f"({tmp_path / 'f'} is a file")):
            write()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"] and (tmp_path / "f").read_text() == "mine"


def test_error_words_drops_the_errno_python_puts_before_the_oss_words():
    """Round 47: an OSError the OS raised printed as "[Errno 13] Permission denied: 'run/ckpt.pt'" in the commands'
    one-line errors. `error_words` gives the OS's words and the file, the second file of a rename after "->"; an error
    ddimlab worded (`os_error`, an OSError of one message) and any other exception are str(e)."""
    import errno
    import os

    assert files.error_words(PermissionError(errno.EACCES, os.strerror(errno.EACCES), "run/ckpt.pt")) == \
        "Permission denied: run/ckpt.pt"
    assert files.error_words(OSError(errno.EXDEV, os.strerror(errno.EXDEV), "a b", None, "c")) == \
        "Invalid cross-device link: a b -> c"
    assert files.error_words(OSError(errno.EIO, os.strerror(errno.EIO), b"caf\xc3\xa9")) == "Input/output error: café"
    assert files.error_words(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) == "No space left on device"
    worded = files.os_error(PermissionError, errno.EACCES, "run is read-only, so it was not replaced")
    for e in (worded, OSError("could not write x (is the disk full?)"), ValueError("[Errno 1] is a value here")):
        assert files.error_words(e) == str(e)
