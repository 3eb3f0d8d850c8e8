"""Files that readers see whole: the old one or the new one, never a part."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def replaced_atomically(path: str | os.PathLike) -> Iterator[Path]:
  """Yields a temporary path beside ``path``, moved onto ``path`` on success.

  Readers see the old file or the new one, never a partial one; on error the
  temporary file is removed.
  """
  path = Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
