"""Shared memory: named blocks of numpy arrays, and the parameter store.

``SharedBlock`` is the one place that creates, attaches and unlinks POSIX
shared-memory segments; replay and ``ParamStore`` are built on it. Segments
are named ``jaxrl_<pid>_<random>`` so that a leak is easy to find in
``/dev/shm``.

Ownership: the creating process owns a block and is the only one that
unlinks it. Processes started by the owner with ``spawn`` or ``forkserver``
share its ``multiprocessing.resource_tracker``, which keeps one set of
names: attaching re-registers a name already there, and the owner's
``unlink`` unregisters it. The registration is the safety net for a killed
owner: the tracker unlinks whatever is still registered once the last
process sharing it exits.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from multiprocessing import shared_memory

import numpy as np

_ALIGN = 64  # bytes; every array starts on a cache line.


@dataclasses.dataclass(frozen=True)
class ArraySpec:
  shape: tuple[int, ...]
  dtype: str  # numpy dtype string, e.g. "float32"

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class BlockHandle:
  """Picklable description of a block: its segment name and array layout."""
  name: str
  specs: tuple[tuple[str, ArraySpec], ...]


def _layout(specs) -> tuple[dict[str, int], int]:
  offsets, offset = {}, 0
  for key, spec in specs:
    offsets[key] = offset
    offset += -(-spec.nbytes // _ALIGN) * _ALIGN
  return offsets, max(offset, 1)


class SharedBlock:
  """Several named numpy arrays in one shared-memory segment.

  ``block.arrays[key]`` is a numpy view onto shared memory; writes are seen
  by every process attached to the block.
  """

  def __init__(self, shm: shared_memory.SharedMemory, handle: BlockHandle, owner: bool):
    self._shm = shm
    self.handle = handle
    self.owner = owner
    offsets, _ = _layout(handle.specs)
    self.arrays: dict[str, np.ndarray] = {
        key: np.ndarray(spec.shape, np.dtype(spec.dtype), buffer=shm.buf, offset=offsets[key])
        for key, spec in handle.specs
    }

  @classmethod
  def create(cls, specs: dict[str, tuple[tuple[int, ...], str]]) -> "SharedBlock":
    """Creates a zero-filled block; ``specs`` maps key -> (shape, dtype)."""
    spec_items = tuple((k, ArraySpec(tuple(int(d) for d in s), np.dtype(t).str)) for k, (s, t) in specs.items())
    _, size = _layout(spec_items)
    name = f"jaxrl_{os.getpid()}_{secrets.token_hex(6)}"
    shm = shared_memory.SharedMemory(name=name, create=True, size=size)
    return cls(shm, BlockHandle(name, spec_items), owner=True)

  @classmethod
  def attach(cls, handle: BlockHandle) -> "SharedBlock":
    """Opens an existing block in this process (never unlinks it)."""
    shm = shared_memory.SharedMemory(name=handle.name, create=False)
    return cls(shm, handle, owner=False)

  def close(self) -> None:
    """Releases this process's mapping; the arrays must not be used after."""
    self.arrays = {}
    try:
      self._shm.close()
    except BufferError:  # A view is still referenced; the mapping dies with it.
      pass

  def unlink(self) -> None:
    """Removes the segment from the system (owner only; idempotent)."""
    if not self.owner:
      raise RuntimeError("only the process that created a SharedBlock may unlink it")
    try:
      self._shm.unlink()
    except FileNotFoundError:
      pass
