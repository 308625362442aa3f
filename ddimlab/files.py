"""Files on disk: written so that a crash or a full disk never leaves half a file under the real name,
locked where two commands may write the same outputs, and checked by md5."""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path

from .checks import check_int

STALE_AFTER = 60.0   # seconds: an older temporary file of the same target was left by an interrupted write


def os_error(kind: type[OSError], code: int | None, message: str) -> OSError:
    """An OSError saying `message` in words, with the errno `code` kept for callers that test it (`e.errno`): of `kind`,
    or for `kind` OSError of the subclass that errno names (ENOTDIR: NotADirectoryError), as `OSError(code, message)`
    would be. That one reads "[Errno 20] message", and the number reached users as the first thing they read."""
    error = type(kind(code, message))(message)
    error.errno = code
    return error


def error_words(e: BaseException) -> str:
    """What the commands print of an error: str(e), but for an OSError the OS raised (open, stat, np.load of a file it
    may not read) its words and file, "Permission denied: run/ckpt.pt", where str(e) put "[Errno 13] " first and quoted
    the name ('run/ckpt.pt'). An `os_error`, which is worded already, is str(e)."""
    if not isinstance(e, OSError) or e.strerror is None or not str(e).startswith("[Errno "):
        return str(e)
    names = [os.fsdecode(n) if isinstance(n, bytes) else str(n) for n in (e.filename, e.filename2) if n is not None]
    return e.strerror + (f": {' -> '.join(names)}" if names else "")


def atomic_write(path, write, *, text: bool = False, fsync: bool = False) -> Path:
    """Call `write(f)` on a temporary file next to `path`, then rename it onto `path` (`os.replace`).

    On any error the temporary file is removed and `path` keeps its old contents (or stays absent), and the folders
    made for it are removed again (a failed download leaves no empty cache folder).
    `text=True` writes UTF-8 whatever the locale (the tables hold η, σ, ±, and a C locale's ASCII cannot).
    `fsync=True` also flushes the data to disk before the rename (checkpoints). After a successful write,
    temporary files of the same target that a killed process left behind (older than STALE_AFTER
    seconds before this write began) are deleted, so interrupted checkpoint writes do not pile up.
    An existing file keeps its mode, and one its owner made read-only is a PermissionError, not replaced (the rename
    needs only the folder's permission); a new file gets the umask's mode. A symbolic link at `path` is replaced by the
    new file, its target left as it was (a run's ckpt.pt linked to another run's must not rewrite that one); one on a
    folder of the way that leads nowhere (to nothing, or round a loop), or a file where a folder should be, is an OSError
    naming it (`make_folder`).
    """
    started = time.time()
    path = Path(path)
    if path.is_dir():                       # else os.replace's "Is a directory", naming the temporary file
        raise os_error(IsADirectoryError, errno.EISDIR, f"{path} is a folder, so no file can be written in its place; "
                                                        f"give a file name")
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):   # nothing there, a link to nothing or round a
            raise                     # loop (replaced at `path`), or a file on the way: make_folder names the last two
        mode = 0o666 & ~current_umask()
    else:
        if not os.access(path, os.W_OK):
            raise os_error(PermissionError, errno.EACCES, f"{path} is read-only, so it was not replaced (make it writable, "
                                                          f"or write elsewhere)")
    with folder_removed_on_error(path.parent):
        make_folder(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w" if text else "wb", **({"newline": "", "encoding": "utf-8"} if text else {})) as f:
                write(f)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(tmp, mode)  # mkstemp makes 0600
            os.replace(tmp, path)
        except BaseException as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if isinstance(e, OSError) and e.errno is not None and e.filename is None:
                e.filename = str(path)             # "[Errno 28] No space left on device" says where
            raise
    remove_stale_temps(path.parent, f".{glob.escape(path.name)}.*.tmp", started)
    return path


TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")     # atomic_write's mkstemp: ".NAME." + 8 random characters + ".tmp"


def remove_stale_temps(folder, pattern: str, now: float | None = None) -> None:
    """Delete the files in `folder` matching the glob `pattern` that were last written over STALE_AFTER seconds before
    `now` (default: the time of the call): temporary files an interrupted `atomic_write` left behind. A write in
    progress is younger than that, so it is never touched. Only `atomic_write`'s temporary names are taken: `pattern`
    must be "." + a glob of the target's name + ".*.tmp" (e.g. ".*.png.*.tmp"), and of the files it matches only plain
    files named as `TEMP_NAME` are deleted; folders, symbolic links and other names are left as they are."""
    if not (isinstance(pattern, str) and pattern.startswith(".") and pattern.endswith(".*.tmp") and len(pattern) > 7):
        raise ValueError(f"remove_stale_temps deletes only the temporary files atomic_write leaves (.NAME.XXXXXXXX.tmp): "
                         f"pattern must be '.' + a glob of the target's name + '.*.tmp', e.g. '.*.png.*.tmp', got {pattern!r}")
    cutoff = (time.time() if now is None else now) - STALE_AFTER
    for stale in glob.glob(os.path.join(glob.escape(str(folder)), pattern)):
        if not TEMP_NAME.fullmatch(os.path.basename(stale)):
            continue
        with contextlib.suppress(FileNotFoundError):
            info = os.lstat(stale)
            if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                os.unlink(stale)


def current_umask() -> int:
    """The process's umask (os.umask reads it only by setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


class BusyError(FileExistsError):
    """Another process holds the lock that `locked(..., busy=message)` would not wait for."""


@contextlib.contextmanager
def locked(path, busy: str | None = None):
    """Hold an exclusive advisory lock on the file `path` (created if absent) for the `with` block, so
    that two processes writing the same outputs take turns (POSIX `fcntl.flock`; elsewhere no lock).
    With `busy` (a message) it waits at most a quarter of a second, the time `held` takes to look: a lock held
    longer is a `BusyError(busy)`."""
    path = Path(path)
    make_folder(path.parent, hint="choose another --out")
    try:
        import fcntl  # POSIX only
    except ImportError:
        yield
        return
    try:
        try:
            f = open(path, "a")
        except PermissionError:                # another user's lock file in a shared folder: reading locks it too
            if not path.is_file():
                raise
            f = open(path)
    except IsADirectoryError:
        raise IsADirectoryError(f"{path} is a folder where ddimlab keeps a lock file; remove or rename it") from None
    except OSError as e:                       # said of the folder: the lock file is only the first thing written there
        raise _cannot_write(path.parent, e) from None
    with f:
        for pause in (0.01, 0.04, 0.2, None) if busy else (None,):
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
                break
            except BlockingIOError:
                if pause is None:
                    raise BusyError(busy) from None
                time.sleep(pause)               # `held` in another process, looking
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def held(path) -> bool:
    """Whether a `locked(path)` block holds the lock file `path` now, in another process (or through another open file
    here): a shared lock is tried without waiting and let go at once. False without the file, or without fcntl."""
    try:
        import fcntl  # POSIX only
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
    except (ImportError, OSError):
        pass
    return False


def _cannot_write(folder: Path, e: OSError, hint: str = "choose another --out") -> OSError:
    return os_error(type(e), e.errno, f"cannot create files in {folder} ({why_not_made(folder, e)}); {hint}")


def refuse_existing(overwrite: bool, *paths, hint: str = "", option: str = "--out") -> None:
    """Refuse to replace earlier outputs without --overwrite: a FileExistsError naming those of `paths` that are there
    (a symbolic link to nothing counts: writing would replace the link), with `hint` after "replace it" (what the files
    are, or what --overwrite keeps) and `option`, the one that names them (`--out`, bench_unet.py's `--json`)."""
    held = [str(p) for p in paths if os.path.lexists(p)]
    if held and not overwrite:
        one = len(held) == 1
        raise FileExistsError(f"{' and '.join(held)} already exist{'s' if one else ''}; pass --overwrite to replace "
                              f"{'it' if one else 'them'}{hint} or choose another {option}")


def check_out_folder(out: Path, what: str = "a run folder") -> None:
    """--out names a folder, or nothing yet: not a file, nor a symbolic link to nothing (mkdir would say "File exists")."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not {what}; choose another --out")
    if out.is_symlink() and not out.exists():
        raise FileNotFoundError(f"--out {unresolved_link(out)}; choose another --out (or make the link's target first)")


def unresolved_link(path) -> str | None:
    """Why `path` names nothing although a symbolic link is there (the path itself, or a folder on its way): "L is a
    symbolic link to T, which does not exist", or, where following it never ends (ELOOP: L -> L, or A -> B -> A),
    "..., which goes round a loop of symbolic links"; None where no such link is on the path."""
    path = Path(path)
    try:
        link = next((p for p in (path, *path.parents) if p.is_symlink() and not p.exists()), None)
    except OSError:                               # e.g. a name too long to look at: no link to name
        return None
    if link is None:
        return None
    try:
        os.stat(link)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{link} is a symbolic link to {os.readlink(link)}, which goes round a loop of symbolic links"
    return f"{link} is a symbolic link to {os.readlink(link)}, which does not exist"


def file_on_the_way(path) -> str | None:
    """"F is a file, not a folder" for the first file F among `path` and the folders on its way (mkdir says only "File
    exists" or "Not a directory", naming neither), else None."""
    try:
        file = next((p for p in (Path(path), *Path(path).parents) if p.exists() and not p.is_dir()), None)
    except OSError:                               # a name too long to look at
        return None
    return None if file is None else f"{file} is a file, not a folder"


def why_not_made(path, e: OSError) -> str:
    """Why the folder `path` (or a file in it) could not be made: a symbolic link on the way that leads nowhere
    (`unresolved_link`), a file where a folder should be (`file_on_the_way`), else the OS's own words for `e`."""
    return unresolved_link(path) or file_on_the_way(path) or e.strerror


def make_folder(folder, hint: str | None = None) -> None:
    """`mkdir -p folder`; where a symbolic link on the way leads nowhere, or a file stands where a folder should, the
    OSError names it (mkdir says only "File exists", "Not a directory" or "Too many levels of symbolic links"). With
    `hint` (what to do instead) every error is worded as "cannot create the folder F (why); hint"."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = why_not_made(folder, e)
        if why == e.strerror and hint is None:        # nothing to name beyond what mkdir says
            raise
        raise os_error(type(e), e.errno, f"cannot create the folder {folder} ({why})" + (f"; {hint}" if hint else "")) \
            from None


def absent_folders(folder) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, innermost first (what `remove_empty` takes away again)."""
    folder = Path(folder)
    return [p for p in (folder, *folder.parents) if not p.exists()]


def check_can_write(folder, hint: str = "choose another --out") -> None:
    """Create and delete a file in `folder`: one that cannot be written is said before the work, not after it (a lock
    file left by an earlier run opens even in a folder made read-only since). The folders made for the probe are removed
    again: a check leaves nothing on disk, whether the work after it fails or not."""
    made = []
    try:
        made = absent_folders(folder)                 # a name too long for the file system fails here already
        Path(folder).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ddimlab-probe-", dir=folder)
    except OSError as e:
        remove_empty(made)
        raise _cannot_write(Path(folder), e, hint) from None
    os.close(fd)
    os.unlink(probe)
    remove_empty(made)


@contextlib.contextmanager
def folder_removed_on_error(folder, *own):
    """On an exception in the block: delete those of the files `own` (e.g. the lock file the block takes) that did not
    exist before it, and the folders the block created, where they are now empty, so that a command that failed before
    writing anything leaves nothing behind, also in a folder that existed (`sample`'s default --out is in the current
    folder)."""
    created = absent_folders(folder)
    new = [Path(p) for p in own if not os.path.lexists(p)]
    try:
        yield
    except BusyError:           # another command holds the folder (and may have made it): nothing here is ours
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            for path in new:
                _unlink_unless_locked(path)
        remove_empty(created)
        raise


def remove_empty(folders) -> None:
    """rmdir each of `folders` (innermost first) that is empty now; one that is not, or that names no folder of its
    own (`new/..` for an --out of `new/../x`), is passed over, not the end of the list."""
    for p in folders:
        with contextlib.suppress(OSError):
            Path(p).rmdir()


def check_nothing_set_aside(out: Path, error=FileExistsError) -> None:
    """Refuse (`error`) while a `set_aside` folder of a killed run (kill -9) is in `out`: a new run must neither hide
    those files nor, with the same pid, delete them."""
    stranded = sorted(Path(out).glob(".previous-*")) if Path(out).is_dir() else []
    if stranded:
        raise error(f"{stranded[0]} holds the files of an earlier run, set aside by a run that was killed; move them back "
                    f"into {out} (or delete that folder) first")


def set_aside(out: Path, paths) -> Path | None:
    """Move `paths` (files inside `out`) into `out/.previous-<pid>`, at the same relative paths, so that a new run
    never lies beside an old one; None if there are none. All or nothing: if one cannot move, the moved ones go back.
    `put_back` undoes it; the caller deletes the folder once the new run has what replaces them."""
    out, paths = Path(out), [Path(p) for p in paths]
    if not paths:
        return None
    if outside := [str(p) for p in paths if not p.is_relative_to(out)]:     # before any move, not halfway
        raise ValueError(f"set_aside moves files inside {out}, and {', '.join(outside)} is not; nothing was moved")
    aside = out / f".previous-{os.getpid()}"
    try:
        for p in paths:
            (aside / p.parent.relative_to(out)).mkdir(parents=True, exist_ok=True)
            os.replace(p, aside / p.relative_to(out))
    except OSError as e:                                   # e.g. a file on another device: the moved ones go back
        put_back(aside, out)
        raise OSError(f"could not set {p} aside ({e.strerror or e}); nothing was moved, {out} holds its files as "
                      f"before") from e
    return aside


def put_back(aside: Path, out: Path) -> None:
    """The files of `set_aside` back in `out`; a file that cannot go back stays in `aside`, never deleted."""
    for p in sorted(aside.rglob("*"), reverse=True):       # files before their folders
        if p.is_file() or p.is_symlink():                  # a link too (is_file: False where its target is missing)
            with contextlib.suppress(OSError):             # the others still go back
                (out / p.relative_to(aside)).parent.mkdir(parents=True, exist_ok=True)
                os.replace(p, out / p.relative_to(aside))
        else:
            with contextlib.suppress(OSError):
                p.rmdir()
    with contextlib.suppress(OSError):
        aside.rmdir()


@contextlib.contextmanager
def replaced_together(folder, paths, written=None):
    """The block writes the files `paths` (inside `folder`, each with `atomic_write`) as one set, e.g. a PNG and the .npz
    that records it: those of an earlier run are set aside first (`set_aside`), and if the block fails (a full disk at
    the second file, Ctrl-C) the files it wrote (`written()`, where they are not known beforehand; else `paths`) are
    removed and the earlier ones put back, so that the folder never holds a new file beside an old one; after the block
    the earlier files are deleted."""
    folder, paths = Path(folder), [Path(p) for p in paths]
    aside = set_aside(folder, [p for p in paths if p.exists() or p.is_symlink()])
    try:
        yield
    except BaseException:
        for p in (paths if written is None else written()):
            with contextlib.suppress(OSError):
                p.unlink(missing_ok=True)
        if aside is not None:
            put_back(aside, folder)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _unlink_unless_locked(path: Path) -> None:
    """Delete `path` unless another process holds a `locked` lock on it (one that started on the same new folder
    after this command took and released its lock): deleting a held lock file would let a third command in."""
    try:
        import fcntl  # POSIX only
    except ImportError:
        path.unlink(missing_ok=True)
        return
    try:
        f = open(path)
    except FileNotFoundError:
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        path.unlink(missing_ok=True)


def stop_signals() -> list[signal.Signals]:
    """The signals that stop a command, each handled as Ctrl-C is: SIGINT, SIGTERM (`kill`, `timeout`, `docker stop`)
    and SIGHUP (the terminal or ssh session closed) where this platform has it and it is not ignored (`nohup`: the user
    asked the command to outlive the terminal)."""
    hangup = getattr(signal, "SIGHUP", None)
    return [signal.SIGINT, signal.SIGTERM] + ([hangup] if hangup and signal.getsignal(hangup) != signal.SIG_IGN else [])


@contextlib.contextmanager
def interrupts_deferred():
    """Hold back Ctrl-C and the other `stop_signals` during the block and deliver them after it, so that writes that
    belong together (a PNG and the .npz that records its hash) are not cut apart. Only the main thread can
    set signal handlers; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = [s for s in stop_signals() if signal.getsignal(s) is not None]
    caught = []
    old = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in signals}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for s in caught:
            signal.raise_signal(s)             # now handled as usual: KeyboardInterrupt, or the end of the process


def md5sum(path, chunk_size: int = 1 << 20) -> str:
    """Hex md5 of a file."""
    return file_hash(path, "md5", chunk_size)


def file_hash(path, algorithm: str = "sha256", chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file's bytes."""
    chunk_size = check_int("chunk_size", chunk_size, note=" (bytes per read)")    # 0 read nothing: the md5 of b""
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()
