"""Writing run folders safely: a folder is written complete or not at all, durably, a full disk is named as such,
and a run holds its output folder alone.

- [`removed_on_failure`] around the writing of a temporary folder, then [`replace_dir`] to move it into place
  (the old one is moved aside first, never deleted before the new one is in place); [`fsync_tree`] first makes the
  files durable; [`remove_dir`] deletes by renaming first.
- [`OutputDirLock`] keeps two training runs out of one output folder.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers.utils import logging

logger = logging.get_logger(__name__)

LOCK_FILE = ".lock"


class OutputDirInUseError(RuntimeError):
    """Another process holds the lock of a run's output folder."""


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file and directory under `folder` (and `folder` itself) to disk."""
    folder = Path(folder)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for directory in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(directory)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Flush a directory entry (makes a rename in it durable); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished folder `tmp` to `final`; an existing `final` is first moved aside (never deleted before
    the new one is in place), then removed."""
    tmp, final = Path(tmp), Path(final)
    trash = final.with_name(f".trash-{final.name}")
    if trash.exists():
        shutil.rmtree(trash)
    if final.exists():
        os.replace(final, trash)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)


# Below this much free space, a failed write is taken for a full disk (torch reports one as a RuntimeError).
_LOW_DISK_BYTES = 64 << 20
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)  # a write the storage refused


@contextmanager
def removed_on_failure(folder: str | os.PathLike) -> Iterator[None]:
    """Around the writing of the temporary folder `folder`: if the block fails, the folder is removed (a partial
    checkpoint never lingers), and a failure on a full disk is raised as `OSError(ENOSPC)` naming the folder, since
    `torch.save` reports one as an obscure `RuntimeError`."""
    folder = Path(folder)
    try:
        yield
    except Exception as err:
        try:
            free = shutil.disk_usage(folder.parent).free
        except OSError:
            free = None
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(err, OSError) and err.errno in DISK_ERRNOS:  # name the folder, not a file copied into it
            raise OSError(err.errno, os.strerror(err.errno), str(folder)) from err
        if free is not None and free < _LOW_DISK_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder)) from err
        raise


def remove_dir(path: str | os.PathLike) -> None:
    """Delete a folder by renaming it to a hidden name first, so that an interrupted deletion never leaves a
    half-deleted folder under its original name."""
    path = Path(path)
    trash = path.with_name(f".trash-{path.name}")
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


class OutputDirLock:
    """An exclusive lock on a run's output folder: `fcntl.flock` on ``<folder>/.lock``, which holds the owner's
    process id. The kernel drops the lock when its process ends, however it ends (SIGKILL included), so a stale lock
    never blocks a resume. Where `fcntl` does not exist (Windows) no lock is taken.

    ```python
    with OutputDirLock("runs/x"):  # OutputDirInUseError if another process holds it
        ...
    ```
    """

    def __init__(self, folder: str | os.PathLike, flag: str = "--output_dir"):
        self.folder, self.flag = Path(folder), flag
        self._handle = None  # a file object: the lock also goes when it is garbage-collected

    def acquire(self) -> None:
        """Take the lock; `OutputDirInUseError` (naming the holder's process id) if another process holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            logger.warning(f"no file locking on this platform: nothing keeps two runs out of {self.folder}")
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK_FILE, "a+b")  # noqa: SIM115 - held open for the run
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            owner = os.pread(handle.fileno(), 32, 0).decode("ascii", "replace").strip() or "unknown"
            handle.close()
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise OutputDirInUseError(
                f"{self.flag} {str(self.folder)!r} is in use by another run (process {owner}); wait for it to end, "
                "or choose another folder"
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Drop the lock (closing the file drops it); a no-op when not held."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> OutputDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


__all__ = [
    "DISK_ERRNOS",
    "OutputDirInUseError",
    "OutputDirLock",
    "fsync_dir",
    "fsync_tree",
    "remove_dir",
    "removed_on_failure",
    "replace_dir",
]
