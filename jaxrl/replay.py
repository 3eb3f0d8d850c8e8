"""Experience replay in shared memory: actor processes write transitions
(from ``jaxrl.nstep``), the learner samples batches of them.

Numpy only (no jax): actor processes import this module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxrl.config import check, check_positive, check_positive_int
from jaxrl.shm import BlockHandle, SharedBlock
from jaxrl.transition import Transition


# Fields of a stored transition, as produced by ``jaxrl.nstep.NStepAccumulator.step``
# and consumed by ``ReplayWriter.add``.
FIELDS = ("obs", "action", "reward", "discount", "next_obs", "policy_step")

# Priorities (``jaxrl.priorities``): the writer's of each row (NaN: none given), the
# learner's and the row version it is of, and the largest of either so far.
PRIORITY_FIELDS = ("priority", "learned_priority", "learned_version", "max_priority")


_NOT_WAITING = np.iinfo(np.int64).max  # The tag of a writer waiting for nothing.


def _priority_specs(capacity: int) -> dict[str, tuple[tuple[int, ...], Any]]:
  """The arrays of ``PRIORITY_FIELDS`` for ``capacity`` rows (16 bytes a row)."""
  return {"priority": ((capacity,), np.float32), "learned_priority": ((capacity,), np.float32),
          "learned_version": ((capacity,), np.int64), "max_priority": ((1,), np.float32)}


def _ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The integers of ranges ``[starts[i], stops[i])`` end to end, and each one's i."""
  lengths = stops - starts
  group = np.repeat(np.arange(len(starts)), lengths)
  return np.arange(lengths.sum()) + (starts - np.cumsum(lengths) + lengths)[group], group


def _priorities(transitions: dict[str, np.ndarray], count: int) -> np.ndarray:
  """The ``priority`` of ``transitions`` given to a writer, NaN [count] if none."""
  priority = transitions.get("priority")
  return np.full(count, np.nan, np.float32) if priority is None else priority


def _as_batch(rows: dict[str, np.ndarray], valid: np.ndarray) -> Transition:
  """Stored rows as the learner takes them: observations uint8 (images) as
  stored, else float32; valid as float32; weight float32 ones (uniform)."""
  def obs_batch(obs):
    return obs if obs.dtype == np.uint8 else obs.astype(np.float32, copy=False)
  return Transition(obs=obs_batch(rows["obs"]), action=rows["action"], reward=rows["reward"],
                    discount=rows["discount"], next_obs=obs_batch(rows["next_obs"]),
                    valid=valid.astype(np.float32), weight=np.ones(len(valid), np.float32))


@dataclasses.dataclass(frozen=True)
class ReplayHandle:
  """Picklable description of a replay, for ``SharedReplay.attach``:
  ``layout`` is its class (``SharedReplay`` or a subclass), ``options`` what
  that class needs beyond the block and the rate limiter."""

  block: BlockHandle
  num_writers: int
  min_size: int
  samples_per_insert: float | None
  rate_tolerance: float
  layout: type = None  # type: ignore[assignment]  # SharedReplay, set by create.
  options: tuple = ()


class SharedReplay:
  """Uniform replay in shared memory: many writer processes, one sampler.

  The capacity is split into ``num_writers`` disjoint ring partitions, one
  per writer (actor), so writers never wait for each other or take a lock.
  Writer w writes its k-th transition (k counts from 0 over the life of the
  replay) into slot ``start_w + k % size_w`` of its partition.

  Torn-slot protection (a seqlock per slot): slot versions are ``2k + 1``
  while the transition with write index k is being written and ``2k + 2``
  once it is complete; a partition's write counter (in shared memory) is
  raised only after its slots are complete. ``sample`` reads the versions,
  copies the rows, re-reads the versions, and marks a row invalid unless its
  version was even, unchanged and not 0 (never written). Versions of a slot never decrease (see
  ``ReplayWriter``), so a change is always seen. This relies on each process
  making its stores, and its loads, visible in program order: true on x86-64
  (TSO) with numpy's plain copies, each a separate C call; weaker memory
  models (ARM) would need fences between the three phases, which Python does
  not expose, so writers in other processes need ``check_memory_ordering``
  (``jaxrl.shm``) to pass. Writers and sampler in one process are safe on any
  CPU.

  Rate limiting (optional, ``samples_per_insert`` > 0): with I inserts, S
  samples, the ratio r and the tolerance T (in inserted transitions), the
  actors' lead ``L = (I - min_size) - S / r`` is how many inserts they are
  ahead of what the learner has sampled. ``can_sample(B)`` requires
  ``I >= min_size`` and ``L - B / r >= -T`` (or ``L >= 0``).
  ``writer.can_insert(n)`` admits a step of n rows when ``L <= T`` and the
  writer is first in a fair line (see ``ReplayWriter.can_insert``), or
  whenever ``L <= 0``. Writers check, then add, so several may be admitted
  at once: with W writers, one sampler, steps of at most n rows and batches
  of at most B, ``-max(T, B / r) <= L <= T + W * n`` (of the admissions in
  force, take the one whose check started last: it read ``L <= T``, and
  missed at most each writer's admitted step). The two checks never block
  together: ``L <= 0`` admits every writer and ``L > 0`` (which implies
  ``I >= min_size``) allows samples, for any T >= 0. Both are non-blocking
  reads of a few integers (and a write of the writer's tag); waiting is the
  caller's job.

  Priorities: each slot holds its writer's priority for the transition
  (NaN if none was given) and the learner's, with the version it is of. A
  ``jaxrl.priorities.PrioritizedSampler`` in the sampling process keeps them
  through ``marks``, ``changed_rows``, ``stored_priorities``,
  ``learn_priorities`` and ``read`` (the same for every layout, rows being
  a layout's own), and ``contents`` saves them.
  """

  # The arrays ``contents`` saves; the writers' places in line are not saved.
  _saved = (*FIELDS, "version", "write_count", "samples", *PRIORITY_FIELDS)
  _version = "version"  # The array of each row's version.

  def __init__(self, block: SharedBlock, handle: ReplayHandle):
    self._block = block
    self.handle = handle
    self._arrays = block.arrays
    self.capacity = self._arrays["action"].shape[0]
    self.num_writers = handle.num_writers
    self.min_size = handle.min_size
    self._bounds = np.arange(self.num_writers + 1) * self.capacity // self.num_writers
    self._sizes = np.diff(self._bounds)  # Slots per partition.

  @staticmethod
  def _specs(obs_shape: tuple[int, ...], obs_dtype: Any, capacity: int,
             num_writers: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    obs_shape = tuple(obs_shape)
    return {
        "obs": ((capacity, *obs_shape), obs_dtype),
        "action": ((capacity,), np.int32),
        "reward": ((capacity,), np.float32),
        "discount": ((capacity,), np.float32),
        "next_obs": ((capacity, *obs_shape), obs_dtype),
        "policy_step": ((capacity,), np.int64),
        "version": ((capacity,), np.int64),
        "write_count": ((num_writers,), np.int64),
        "samples": ((1,), np.int64),
        "waiting": ((num_writers,), np.int64),  # Tag of the step a writer waits to add.
        "served": ((num_writers,), np.int64),  # Tag of the last step a writer added.
        **_priority_specs(capacity),
    }

  @staticmethod
  def nbytes(obs_shape: tuple[int, ...], obs_dtype: Any, capacity: int, num_writers: int = 1) -> int:
    """Bytes of shared memory ``create`` takes with these arguments (about
    ``2 * capacity * obs_bytes``, plus 44 bytes a transition and 24 a writer)."""
    return SharedBlock.nbytes(SharedReplay._specs(obs_shape, obs_dtype, capacity, num_writers))

  @classmethod
  def create(cls, obs_shape: tuple[int, ...], obs_dtype: Any, capacity: int, num_writers: int = 1,
             min_size: int = 1, samples_per_insert: float | None = None,
             rate_tolerance: float = 0.0) -> "SharedReplay":
    """Creates an empty replay (owner).

    Args:
      obs_shape, obs_dtype: one observation's shape and dtype as stored.
      capacity: transitions held in all; partition w holds slots
        ``[w * capacity // num_writers, (w + 1) * capacity // num_writers)``.
      num_writers: writer ids are 0 .. num_writers - 1.
      min_size: transitions inserted before sampling may start; at most the
        smallest partition, so that any one writer can reach it (then
        ``inserts() >= min_size`` iff ``size() >= min_size``).
      samples_per_insert: target ratio of sampled to inserted transitions
        after min_size; None or <= 0 disables rate limiting.
      rate_tolerance: T >= 0, inserted transitions by which actors may run
        ahead of, or fall behind, the ratio (see the class docstring).
    """
    return cls._create(cls._specs(obs_shape, obs_dtype, capacity, num_writers), capacity, num_writers,
                       min_size, samples_per_insert, rate_tolerance)

  @classmethod
  def _create(cls, specs: dict, capacity: int, num_writers: int, min_size: int,
              samples_per_insert: float | None, rate_tolerance: float, options: tuple = ()) -> "SharedReplay":
    """Checks the arguments ``create`` shares with every layout, then makes the block of ``specs``."""
    check_positive_int("num_writers", num_writers)
    check_positive_int("capacity", capacity)
    check(capacity >= num_writers, "capacity", f">= num_writers ({num_writers})", capacity)
    check_positive_int("min_size", min_size)
    check(min_size <= capacity // num_writers, "min_size",
          f"<= capacity // num_writers ({capacity // num_writers})", min_size)
    if samples_per_insert is not None and samples_per_insert <= 0:
      samples_per_insert = None
    if samples_per_insert is not None:
      check_positive("samples_per_insert", samples_per_insert)
      samples_per_insert = float(samples_per_insert)
    check_positive("rate_tolerance", rate_tolerance, allow_zero=True)
    block = SharedBlock.create(specs)
    block.arrays["waiting"][:] = _NOT_WAITING
    block.arrays["max_priority"][0] = 1.0
    handle = ReplayHandle(block.handle, num_writers, min_size, samples_per_insert,
                          float(rate_tolerance), cls, options)
    return cls(block, handle)

  @staticmethod
  def attach(handle: ReplayHandle) -> "SharedReplay":
    """Opens the replay ``handle`` describes, of its layout, in another
    process (never unlinks it)."""
    return handle.layout(SharedBlock.attach(handle.block), handle)

  def close(self) -> None:
    """Releases this process's mapping; the replay and its writers must not be used after."""
    self._arrays = {}
    self._block.close()

  def unlink(self) -> None:
    """Removes the segment from the system (owner only; idempotent)."""
    self._block.unlink()

  def contents(self) -> dict[str, np.ndarray]:
    """A copy of every array of the replay (slots, versions, counters), for a
    checkpoint, taken while writers may be writing.

    Like ``sample``, it reads the versions, copies the rows, and re-reads the
    versions. A slot whose version was odd or changed may be torn (its fields
    from two transitions); it is saved with the largest odd version not above
    the second read, 2k + 1 for the write index k it last saw begun: what a
    writer killed while writing index k leaves, so the slot stays invalid
    after ``restore`` until rewritten. The write counters are copied last, so
    each is above k - partition size for every such k of its partition, as
    long as no add holds more than a partition's rows (which ``ReplayWriter``
    already assumes of a writer killed in ``add``): a restored writer then
    rewrites index k, or a later one, into the slot, and no version decreases.
    A counter may also count slots begun after the second read, saved with
    version 0; a partition has such slots only in its first lap, where the
    slots begun are the first ones, so its counter is cut to their number.
    The learner's priorities are saved as they are (taken where the
    learner samples).
    """
    arrays = self._arrays
    first = arrays["version"].copy()
    contents = {key: arrays[key].copy() for key in (*FIELDS, "priority")}
    version = arrays["version"].copy()
    torn = (version != first) | (first % 2 == 1)
    version[torn] = (version[torn] - 1) | 1  # Largest odd <= the second read: 2k + 2 -> 2k + 1.
    contents["version"] = version
    write_count = arrays["write_count"].copy()
    begun = np.add.reduceat(version > 0, self._bounds[:-1])  # Slots begun, per partition.
    contents["write_count"] = np.where(begun < self._sizes, np.minimum(write_count, begun), write_count)
    contents["samples"] = arrays["samples"].copy()
    contents.update({key: arrays[key].copy() for key in PRIORITY_FIELDS[1:]})
    return contents

  def restore(self, contents: dict[str, np.ndarray]) -> None:
    """Loads ``contents()`` of a replay of the same layout, before any writer
    or sampler starts; contents saved without priorities give every
    transition the default (none given). Raises ValueError if the layout
    differs."""
    if "priority" not in contents:
      contents = {**contents, "priority": np.full_like(self._arrays["priority"], np.nan),
                  **{key: self._arrays[key].copy() for key in PRIORITY_FIELDS[1:]}}
    for key in self._saved:
      saved, array = contents.get(key), self._arrays[key]
      if saved is None or saved.shape != array.shape or saved.dtype != array.dtype:
        found = "missing" if saved is None else f"{saved.dtype}{list(saved.shape)}"
        raise ValueError(f"replay {key} is {found}, this replay's is {array.dtype}{list(array.shape)}")
    for key in self._saved:
      self._arrays[key][...] = contents[key]

  def writer(self, writer_id: int) -> "ReplayWriter":
    """The writer of partition ``writer_id``; at most one may be live per id."""
    return ReplayWriter(self, writer_id)

  def size(self) -> int:
    """Transitions stored (committed slots of all partitions)."""
    return int(np.minimum(self._arrays["write_count"], self._sizes).sum())

  def inserts(self) -> int:
    """Transitions ever inserted, by all writers."""
    return int(self._arrays["write_count"].sum())

  def samples(self) -> int:
    """Transitions ever sampled (counted by ``sample``)."""
    return int(self._arrays["samples"][0])

  def _lead(self) -> float:
    """Inserts the actors are ahead of the learner's samples: (I - min_size) - S / r."""
    return self.inserts() - self.min_size - self.samples() / self.handle.samples_per_insert

  def can_sample(self, batch_size: int) -> bool:
    """Whether the learner may sample ``batch_size`` transitions now."""
    if self.inserts() < self.min_size:
      return False
    if self.handle.samples_per_insert is None:
      return True
    lead = self._lead()
    tolerance, ratio = self.handle.rate_tolerance, self.handle.samples_per_insert
    return lead >= 0 or lead - batch_size / ratio >= -tolerance

  def padding_batch(self, batch_size: int) -> Transition:
    """A Transition of zeros with the shapes and dtypes of ``sample``'s batch,
    all padding (valid 0.0): lets the learner compile before data arrives."""
    rows = {key: np.zeros((batch_size, *self._arrays[key].shape[1:]), self._arrays[key].dtype)
            for key in FIELDS}
    return _as_batch(rows, np.zeros(batch_size))

  def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[Transition, np.ndarray]:
    """Samples ``batch_size`` transitions uniformly (with replacement).

    Returns:
      ``(batch, policy_step)``: a Transition of numpy arrays, obs and
      next_obs [B, *obs_shape] (float32, or uint8 if stored as uint8),
      action int32 [B], reward, discount, valid and weight (ones) float32
      [B]; and policy_step int64 [B]. A row whose slot was being written
      during the copy, or never written (a restored counter ahead of its
      slots), has valid 0.0 and all its fields zeroed, policy_step 0
      included: mask statistics of policy_step (such as policy lag) with
      valid.
    """
    arrays = self._arrays
    committed = np.minimum(arrays["write_count"], self._sizes)  # Read before the versions.
    ends = np.cumsum(committed)
    if ends[-1] == 0:
      raise ValueError("cannot sample from an empty replay")
    u = rng.integers(0, ends[-1], batch_size)
    part = np.searchsorted(ends, u, side="right")
    slots = self._bounds[part] + u - (ends - committed)[part]
    batch, policy_step, _ = self.read(slots, arrays["version"][slots])
    return batch, policy_step

  def read(self, rows: np.ndarray, versions: np.ndarray) -> tuple[Transition, np.ndarray, np.ndarray]:
    """Copies ``rows`` [K] (slots), counted as samples, as ``sample``
    serves them; also returns ``valid`` bool [K]. ``versions`` [K] are the
    rows' versions read before the copy (-1: none): a row is valid if it
    held a complete transition of that version after it (versions never
    decrease, so throughout)."""
    arrays = self._arrays
    fields = {key: arrays[key][rows] for key in FIELDS}
    valid = self._servable(rows, versions)
    arrays["samples"][0] += len(rows)
    if not valid.all():
      for value in fields.values():
        value[~valid] = 0
    return _as_batch(fields, valid), fields["policy_step"], valid

  def _servable(self, rows: np.ndarray, versions: np.ndarray) -> np.ndarray:
    """bool [K]: whether each row holds a complete transition of ``versions`` now."""
    return (versions > 0) & (versions % 2 == 0) & (self._arrays["version"][rows] == versions)

  def marks(self) -> np.ndarray:
    """Counters that ``changed_rows`` compares: the write counts int64 [W]."""
    return self._arrays["write_count"].copy()

  def changed_rows(self, before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows changed between two ``marks``: (rows that lost their transition
    otherwise than by a write, none here; rows written) int64. Of more than
    a partition's worth of writes, the partition's slots, once."""
    first = np.maximum(before, after - self._sizes)
    index, part = _ranges(first, after)
    return np.zeros(0, np.int64), self._bounds[part] + index % self._sizes[part]

  def stored_priorities(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ``rows`` [K]: (priority float32, version int64) of each one's
    transition, the learner's if it has one for the version, else the
    writer's (NaN if none given); (0, -1) where the row holds none."""
    arrays = self._arrays
    version = arrays[self._version][rows]
    priority = np.where(arrays["learned_version"][rows] == version, arrays["learned_priority"][rows],
                        arrays["priority"][rows])
    held = self._servable(rows, version)
    return np.where(held, priority, np.float32(0)), np.where(held, version, -1)

  def learn_priorities(self, rows: np.ndarray, versions: np.ndarray, priorities: np.ndarray) -> np.ndarray:
    """Keeps the learner's ``priorities`` float32 [K] of ``rows`` [K] for
    their content of ``versions`` [K] (sampling process only); NaN stands
    for the largest so far, these included. Returns the priorities kept."""
    arrays = self._arrays
    given = ~np.isnan(priorities)
    if given.any():
      arrays["max_priority"][0] = max(arrays["max_priority"][0], priorities[given].max())
    priorities = np.where(given, priorities, arrays["max_priority"][0])
    arrays["learned_priority"][rows] = priorities
    arrays["learned_version"][rows] = versions
    return priorities


class ReplayWriter:
  """Writes one actor's transitions into its partition of a ``SharedReplay``.

  A writer may die at any point and a new one (same id, any process) carry
  on: it resumes after the last transition whose slot is complete, which is
  at or after the partition's write counter. A slot the dead writer left
  half-written (odd version) is rewritten with the same index, or, if below
  the resume point, stays invalid until the ring comes round to it; either
  way its version never decreases.
  """

  def __init__(self, replay: SharedReplay, writer_id: int):
    check(0 <= writer_id < replay.num_writers, "writer_id",
          f"in [0, {replay.num_writers})", writer_id)
    self._replay = replay
    self.writer_id = writer_id
    self._start = int(replay._bounds[writer_id])
    self._size = int(replay._sizes[writer_id])
    arrays = replay._arrays
    version = arrays["version"][self._start:self._start + self._size]
    completed = version[version % 2 == 0] // 2  # One past the write index of each complete slot.
    resume = max(int(arrays["write_count"][writer_id]), int(completed.max(initial=0)))
    arrays["write_count"][writer_id] = resume
    arrays["waiting"][writer_id] = _NOT_WAITING  # A dead predecessor's place in line.

  def add(self, transitions: dict[str, np.ndarray]) -> None:
    """Appends transitions (a dict with the keys of ``FIELDS``, each [N, ...],
    and optionally ``priority`` float32 [N], their first priorities; without
    it, the largest so far when the learner takes them in).

    Overwrites the partition's oldest transitions once it is full; of more
    than a partition's worth, only the last ones are kept.
    """
    arrays = self._replay._arrays
    count = len(transitions["action"])
    priority = _priorities(transitions, count)
    end = int(arrays["write_count"][self.writer_id]) + count  # One past the last write index.
    index = end - min(count, self._size)  # Write index of the first row kept.
    while index < end:  # One run of adjacent slots, two where the ring wraps.
      slot = self._start + index % self._size
      run = min(end - index, self._start + self._size - slot)
      row = count - end + index
      slots, rows = slice(slot, slot + run), slice(row, row + run)
      version = np.arange(2 * index + 1, 2 * (index + run), 2)  # Odd: being written.
      arrays["version"][slots] = version
      for key in FIELDS:
        arrays[key][slots] = transitions[key][rows]
      arrays["priority"][slots] = priority[rows]
      arrays["version"][slots] = version + 1
      index += run
    arrays["write_count"][self.writer_id] = end
    self._served(count)

  def _served(self, count: int) -> None:
    """Leaves the line (see ``can_insert``) after adding ``count`` transitions."""
    arrays = self._replay._arrays
    waiting, served = arrays["waiting"], arrays["served"]
    tag = waiting[self.writer_id]
    served[self.writer_id] = tag if tag != _NOT_WAITING else served.max() + count
    waiting[self.writer_id] = _NOT_WAITING

  def can_insert(self, n: int) -> bool:
    """Whether the actor may now ``add`` its next step, of ``n`` transitions
    (rate limiting; see ``SharedReplay``). After True, add at most n.

    Writers wait in a line that is fair in rows (self-clocked fair queueing,
    no lock): the first call for a step tags it ``V + n``, V the largest tag
    of a step added so far, and the step is admitted when ``L <= T`` and no
    waiting writer has a smaller tag, or whenever ``L <= 0``. Writers that
    keep waiting thus add about equal rows, whatever their step sizes; one
    back from acting joins at V, with no credit for its time away. The tag
    holds until ``add``; a writer killed while waiting holds its place until
    a writer with its id starts, and meanwhile the others are admitted only
    at ``L <= 0``.
    """
    replay = self._replay
    if replay.handle.samples_per_insert is None:
      return True
    arrays = replay._arrays
    waiting = arrays["waiting"]
    if waiting[self.writer_id] == _NOT_WAITING:
      waiting[self.writer_id] = arrays["served"].max() + n
    lead = replay._lead()
    first = waiting[self.writer_id] <= waiting.min()
    return bool(lead <= 0 or (lead <= replay.handle.rate_tolerance and first))
