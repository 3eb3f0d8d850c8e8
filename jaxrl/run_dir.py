"""One run directory, one live run: an exclusive lock on ``<run_dir>/.lock``.

``lock_run_dir`` takes ``flock(LOCK_EX | LOCK_NB)`` on the lock file and
keeps it open; the kernel drops the lock when the file is closed or the
process dies, even by SIGKILL, so a crashed run never leaves a stale lock.
The holder's pid is written into the file, for the error another process
gets. The lock file is never removed while the directory is in use: a
process that opened it just before its removal would lock a file no one
else sees.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from jaxrl.config import ConfigError

LOCK_FILE = ".lock"


class RunDirError(ConfigError):
  """A run directory that is in use by a live run, or cannot be created or
  written; ``str()`` is one line naming it (and the pid holding it)."""


class RunDirLock:
  """The lock on a run directory, held until ``release`` (or the process ends).

  Attributes:
    path: the run directory.
    created: whether ``lock_run_dir`` created it.
  """

  def __init__(self, path: Path, fd: int, created: bool):
    self.path, self.created, self._fd = path, created, fd

  def release(self) -> None:
    """Releases the lock; a directory this lock created that holds nothing
    but the lock file (the run failed before it wrote anything) is removed.
    Later calls do nothing."""
    if self._fd is None:
      return
    try:
      if self.created and os.listdir(self.path) == [LOCK_FILE]:
        (self.path / LOCK_FILE).unlink()
        self.path.rmdir()
    finally:
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> RunDirLock:
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()


def lock_run_dir(path: str | os.PathLike) -> RunDirLock:
  """Creates ``path`` if missing, checks that files can be created in it,
  and locks it for this process's run (a directory it created for a run
  that cannot write in it is removed again).

  Raises:
    RunDirError: another live process holds the lock, or ``path`` cannot
      be created or written (a read-only file system, no permission).
  """
  path = Path(path)
  created = not path.is_dir()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise RunDirError(f"run_dir: cannot create {path} ({e.strerror})") from e
  try:
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)   # no O_TRUNC: the holder's pid stays
  except OSError as e:
    if created:
      path.rmdir()
    raise RunDirError(f"run_dir: cannot write in {path} ({e.strerror})") from e
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
    os.close(fd)
    pid = f" (pid {holder})" if holder.isdigit() else ""
    raise RunDirError(f"run_dir: {path} is in use by another live run{pid}") from None
  lock = RunDirLock(path, fd, created)
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    probe = path / f".write_test.{os.getpid()}"   # the lock file may be writable where new files are not
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT, 0o644))
    probe.unlink()
  except OSError as e:   # a full disk, a directory that takes no new file
    lock.release()
    raise RunDirError(f"run_dir: cannot write in {path} ({e.strerror})") from e
  return lock
