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

Before a run starts processes that share these blocks, it checks the machine
(``check_memory_ordering``) and the room in ``/dev/shm`` (``check_free_space``
with ``SharedReplay.nbytes`` and ``ParamStore.nbytes``): the constructors do
neither, since one process on any CPU may use them.

A process killed with SIGKILL unlinks nothing, and neither does a tracker
killed with it (``kill -9`` of a whole process group, the OOM killer):
``remove_dead_segments``, which every run calls before it starts, removes
what such runs left.

Importing this module imports no JAX (replay and actors use blocks alone);
``ParamStore`` flattens its pytrees with ``jax.tree_util``, imported when a
store is made or publishes.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import secrets
import shutil
from multiprocessing import shared_memory
from typing import Any, NamedTuple

import numpy as np

_ALIGN = 64  # bytes; every array starts on a cache line.
_SHM_DIR = "/dev/shm"  # Where Linux keeps POSIX shared-memory segments (a tmpfs).


class SharedMemoryError(ValueError):
  """This machine cannot run processes that share memory as the run needs."""


def check_memory_ordering() -> None:
  """Raises SharedMemoryError unless this CPU is x86-64.

  The seqlocks of ``ParamStore`` and ``SharedReplay`` are correct across
  processes only under x86-64's total store order (see ``ParamStore``); on a
  weakly ordered CPU (ARM) a reader could accept a torn copy. One process
  (``runtime.mode=sync``) is safe anywhere.
  """
  machine = platform.machine()
  if machine not in ("x86_64", "AMD64"):
    raise SharedMemoryError(
        f"multi-process runs need an x86-64 CPU and this one is {machine!r}: the shared-memory "
        "seqlocks rely on x86-64 total store order; runtime.mode=sync works on this CPU")


def check_free_space(nbytes: int, what: str) -> None:
  """Raises SharedMemoryError if /dev/shm has less than ``nbytes`` free.

  A segment larger than the room left is created without error, and the
  first process to touch a page past it dies of SIGBUS; call this before
  creating the blocks of a run. ``what`` names them in the message. Does
  nothing where there is no /dev/shm (not Linux).
  """
  if not os.path.isdir(_SHM_DIR):
    return
  usage = shutil.disk_usage(_SHM_DIR)
  if nbytes > usage.free:
    mib = 2**20
    raise SharedMemoryError(
        f"{what} needs {nbytes / mib:.1f} MiB of shared memory and {_SHM_DIR} has "
        f"{usage.free / mib:.1f} MiB free of {usage.total / mib:.1f} MiB: enlarge it (in Docker, "
        f"docker run --shm-size={-(-(usage.used + nbytes) // mib)}m or more) or lower replay.capacity")


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


def _spec_items(specs: dict[str, tuple[tuple[int, ...], Any]]) -> tuple[tuple[str, ArraySpec], ...]:
  return tuple((k, ArraySpec(tuple(int(d) for d in s), np.dtype(t).str)) for k, (s, t) in specs.items())


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

  @staticmethod
  def nbytes(specs: dict[str, tuple[tuple[int, ...], str]]) -> int:
    """Size in bytes of the segment ``create(specs)`` makes."""
    return _layout(_spec_items(specs))[1]

  @classmethod
  def create(cls, specs: dict[str, tuple[tuple[int, ...], str]]) -> "SharedBlock":
    """Creates a zero-filled block; ``specs`` maps key -> (shape, dtype)."""
    spec_items = _spec_items(specs)
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
    """Unmaps the block in this process. Any numpy view taken from
    ``arrays`` before must not be touched afterwards: numpy views do not pin
    the mapping, so reading one after close is a segfault."""
    self.arrays = {}
    self._shm.close()

  def unlink(self) -> None:
    """Removes the segment from the system (owner only; idempotent)."""
    if not self.owner:
      raise RuntimeError("only the process that created a SharedBlock may unlink it")
    try:
      self._shm.unlink()
    except FileNotFoundError:
      pass


def unlink_orphaned(handle: BlockHandle) -> None:
  """Removes the segment of ``handle`` from a process that attached it, for
  when its owner died without unlinking (idempotent). Exactly one process
  should do this, since each unlink also unregisters the name from the
  shared resource tracker."""
  try:
    segment = shared_memory.SharedMemory(name=handle.name, create=False)
  except FileNotFoundError:
    return
  segment.close()
  try:
    segment.unlink()
  except FileNotFoundError:
    pass


def remove_dead_segments() -> list[str]:
  """Unlinks the segments ``/dev/shm/jaxrl_<pid>_*`` whose process <pid> no
  longer exists: those of runs killed before they could unlink them.
  Returns the names removed. Segments of live processes (of any user) stay.
  Pids are read in this process's pid namespace: containers sharing one
  /dev/shm (``docker run --ipc=host``) must share their pids too."""
  removed = []
  for name in sorted(os.listdir(_SHM_DIR)) if os.path.isdir(_SHM_DIR) else []:
    pid = segment_pid(name)
    if pid is None or _alive(pid):
      continue
    try:
      os.unlink(os.path.join(_SHM_DIR, name))
    except (FileNotFoundError, PermissionError):   # gone meanwhile; not ours to remove
      continue
    removed.append(name)
  return removed


def segment_pid(name: str) -> int | None:
  """The pid of the process that created the segment ``name``
  (``jaxrl_<pid>_<hex>``); None for a name not of that form."""
  match = re.fullmatch(r"jaxrl_(\d+)_[0-9a-f]+", name)
  return None if match is None else int(match.group(1))


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # another user's process
    return True
  return True


_NUM_SLOTS = 3  # Triple buffer; see ParamStore.


class ParamSnapshot(NamedTuple):
  """One publish, copied out of shared memory into the reading process.

  Attributes:
    params: numpy tree with the template's structure, shapes and dtypes; fresh
      arrays owned by the reader (no later publish changes them).
    epsilon: exploration rate published with these params.
    step: learner step published with these params.
    version: what ``publish`` returned for these params (>= 1).
  """

  params: Any
  epsilon: float
  step: int
  version: int


@dataclasses.dataclass(frozen=True)
class ParamStoreHandle:
  """Picklable description of a store: its block and the params' tree structure."""

  block: BlockHandle
  treedef: Any  # jax.tree_util.PyTreeDef; pickles with the node types it names.


def _leaf_key(slot: int, index: int) -> str:
  return f"slot{slot}/leaf{index}"


def _shape_dtype(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
  """Shape and dtype of an array, a jax.ShapeDtypeStruct or a scalar."""
  if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
    leaf = np.asarray(leaf)
  return tuple(leaf.shape), np.dtype(leaf.dtype)


class ParamStore:
  """Latest parameters (with epsilon and step) for many readers, in one block.

  One publisher (the owner or any one attached process at a time) writes;
  any number of processes read. Versions count publishes: 0 means nothing
  published yet, then 1, 2, ... ``read()`` before the first publish raises
  ``RuntimeError``; poll ``latest_version()`` (one integer load, no copy)
  to wait for it or to see whether a newer version exists.

  Design: a seqlock over a triple buffer. Publish ``v`` writes slot
  ``v % 3``: its sequence word goes to ``2v - 1`` (odd: being written), then
  params, epsilon and step are copied in, then the word goes to ``2v``
  (even: holds ``v``), and only then is ``latest`` set to ``v``. A reader
  loads ``latest = v``, checks the slot's word is ``2v``, copies the slot
  out, and re-checks the word; if it changed the copy may be torn and the
  reader starts over from the newest ``latest``. Sequence words only grow,
  so a changed slot never looks unchanged. The publisher never waits and
  shares no lock with readers; a successful read is one copy of the params.
  Three slots rather than two: with two, the slot a reader just chose can be
  overwritten by the very next publish (which may start as soon as the
  reader has loaded ``latest``), so a reader copying about as fast as the
  publisher writes would retry often; with three, the publisher must finish
  one whole publish before it touches that slot again, so a read that takes
  less than one publish never retries. The cost is three copies of the
  params in shared memory (12 MB for 1M float32 parameters).

  ``torn_reads`` counts the copies this process's ``read`` found overwritten
  and discarded.

  Memory ordering: this relies on x86-64 TSO. Stores become visible to other
  cores in program order and loads are not reordered with older loads; each
  numpy statement below is an opaque C call, so the interpreter performs
  them in program order, and the 8-byte words are aligned (single loads and
  stores). On a weakly ordered CPU (ARM) a reader in another process could
  see the second sequence load unchanged and still hold a torn copy, and the
  fences that would prevent it are not exposed by Python; so a run with
  several processes first calls ``check_memory_ordering``. Within one
  process the store is correct on any CPU.
  """

  def __init__(self, block: SharedBlock, treedef: Any):
    self._block = block
    self.handle = ParamStoreHandle(block.handle, treedef)
    self._keys = [[_leaf_key(s, i) for i in range(treedef.num_leaves)] for s in range(_NUM_SLOTS)]
    self.torn_reads = 0

  @staticmethod
  def _specs(template: Any) -> tuple[dict[str, tuple[tuple[int, ...], Any]], Any]:
    """The block's specs for trees shaped like ``template``, and its treedef."""
    from jax import tree_util  # pylint: disable=import-outside-toplevel
    leaves, treedef = tree_util.tree_flatten(template)
    specs = {
        "latest": ((1,), "int64"),
        "seq": ((_NUM_SLOTS,), "int64"),
        "epsilon": ((_NUM_SLOTS,), "float64"),
        "step": ((_NUM_SLOTS,), "int64"),
    }
    for slot in range(_NUM_SLOTS):
      for i, leaf in enumerate(leaves):
        specs[_leaf_key(slot, i)] = _shape_dtype(leaf)
    return specs, treedef

  @staticmethod
  def nbytes(template: Any) -> int:
    """Bytes of shared memory ``create(template)`` takes (three copies of the params and a few words)."""
    return SharedBlock.nbytes(ParamStore._specs(template)[0])

  @classmethod
  def create(cls, template: Any) -> ParamStore:
    """Creates a store (this process owns it) for trees shaped like ``template``.

    ``template`` is any pytree of numpy or jax arrays (or jax.ShapeDtypeStruct);
    only its structure, shapes and dtypes are used.
    """
    specs, treedef = cls._specs(template)
    return cls(SharedBlock.create(specs), treedef)

  @classmethod
  def attach(cls, handle: ParamStoreHandle) -> ParamStore:
    """Opens the store described by ``handle`` (from ``store.handle``) in this process."""
    return cls(SharedBlock.attach(handle.block), handle.treedef)

  def latest_version(self) -> int:
    """Version of the newest complete publish; 0 if none. One integer load."""
    return int(self._block.arrays["latest"][0])

  def publish(self, params: Any, epsilon: float, step: int) -> int:
    """Copies ``params`` (numpy or jax tree, template structure) in; returns its version.

    Raises ValueError if the structure, a shape, or a dtype kind differs from
    the template's. Never waits for readers; one publisher at a time.
    """
    from jax import tree_util  # pylint: disable=import-outside-toplevel
    paths_leaves, treedef = tree_util.tree_flatten_with_path(params)
    if treedef != self.handle.treedef:
      raise ValueError(f"params structure {treedef} differs from the template's {self.handle.treedef}")
    leaves = [np.asarray(leaf) for _, leaf in paths_leaves]   # one host copy each; 8x cheaper than device_get
    arrays = self._block.arrays
    for (path, _), src, dst in zip(paths_leaves, leaves, (arrays[k] for k in self._keys[0])):
      if src.shape != dst.shape or not np.can_cast(src.dtype, dst.dtype, "same_kind"):
        raise ValueError(
            f"params{tree_util.keystr(path)} is {src.dtype}{list(src.shape)}, "
            f"the template has {dst.dtype}{list(dst.shape)}"
        )
    epsilon, step = float(epsilon), int(step)
    version = self.latest_version() + 1
    slot = version % _NUM_SLOTS
    seq = arrays["seq"]
    seq[slot] = 2 * version - 1
    for src, key in zip(leaves, self._keys[slot]):
      np.copyto(arrays[key], src, casting="same_kind")
    arrays["epsilon"][slot] = epsilon
    arrays["step"][slot] = step
    seq[slot] = 2 * version
    arrays["latest"][0] = version
    return version

  def read(self) -> ParamSnapshot:
    """Copies out the newest publish; raises RuntimeError if nothing was published."""
    arrays = self._block.arrays
    seq = arrays["seq"]
    while True:
      version = self.latest_version()
      if version == 0:
        raise RuntimeError("ParamStore.read: nothing published yet (latest_version() == 0)")
      slot = version % _NUM_SLOTS
      if seq[slot] != 2 * version:
        continue  # Already being overwritten by a newer publish.
      leaves = [arrays[key].copy() for key in self._keys[slot]]
      epsilon, step = float(arrays["epsilon"][slot]), int(arrays["step"][slot])
      if seq[slot] == 2 * version:
        params = self.handle.treedef.unflatten(leaves)
        return ParamSnapshot(params, epsilon, step, version)
      self.torn_reads += 1

  def close(self) -> None:
    """Releases this process's mapping; snapshots already read stay valid."""
    self._block.close()

  def unlink(self) -> None:
    """Removes the segment (owner only, once every process is done; idempotent)."""
    self._block.unlink()


class SnapshotReader:
  """The newest snapshots of several ParamStores (learner id -> store), each
  copied out only when its store has published since this reader last
  looked: the one way the actors, the Ray backend and the supervisor read
  published params."""

  def __init__(self, stores: dict[str, ParamStore]):
    self.stores = stores
    self._newest: dict[str, ParamSnapshot] = {}

  def ready(self) -> bool:
    """Whether every store has published."""
    return all(store.latest_version() for store in self.stores.values())

  def changed(self) -> dict[str, ParamSnapshot]:
    """Learner id -> the newest snapshot, for the stores that published since the last call."""
    new = {}
    for lid, store in self.stores.items():
      known = self._newest.get(lid)
      if store.latest_version() != (known.version if known else 0):
        new[lid] = self._newest[lid] = store.read()
    return new

  def newest(self) -> dict[str, ParamSnapshot] | None:
    """Learner id -> the newest snapshot of every store; None until each has published."""
    if not self.ready():
      return None
    self.changed()
    return dict(self._newest)
