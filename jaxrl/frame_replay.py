"""Replay for stacked frames (Atari): each frame stored once, stacks rebuilt at sample time.

An observation [H, W, S] that stacks the S newest frames of a game (oldest
first) shares S - 1 frames with the observation before it, and a
transition's ``next_obs`` is a later observation of the same stream. Storing
``obs`` and ``next_obs`` whole costs 2 S frames a transition (56 KB at
84x84x4); ``FrameStackReplay`` stores one frame a transition (7,056 B) and
rebuilds both stacks, bit for bit, when it samples.

Two halves: ``FrameStream`` (in the actor) turns each slot's observations
into frames and references to them; ``FrameStackWriter.add`` writes both
into shared memory, where ``FrameStackReplay.sample`` reads them.

Numpy only (no jax): actor processes import this module.
"""

from __future__ import annotations

import numpy as np

from jaxrl.config import check, check_positive_int
from jaxrl.replay import (PRIORITY_FIELDS, ReplayWriter, SharedReplay, _NOT_WAITING, _as_batch, _priorities,
                          _priority_specs, _ranges)
from jaxrl.transition import Transition

# A transition's fields stored in the cell of its obs's newest frame.
_TRANSITION_FIELDS = ("action", "reward", "discount", "policy_step")

_DRAWS = 16  # Rounds of drawing cells, at most, before a sample pads what it did not find.


class FrameStream:
  """An actor's side of a ``FrameStackReplay``: the frames of E slots'
  observations, each frame once, and references to their stacks.

  Slot e's observations form a stream of frames at positions 0, 1, ...
  ``push`` appends each slot's next observation: its newest frame alone
  when the observation continues the one before (its S - 1 oldest frames
  are the S - 1 newest of the previous observation), or else all S frames
  (a reset, whatever the padding the environment gave). Either way the
  observation is the S frames ending at its newest one, so a stack is named
  by one reference: ``position * E + e``.

  References are a stream's own (they start at 0 with the stream); the
  writer of this actor maps them onto its part of the replay.
  """

  def __init__(self, num_slots: int):
    check_positive_int("num_slots", num_slots)
    self.num_slots = num_slots
    self._position = np.full(num_slots, -1, np.int64)  # Of each slot's newest frame.
    self._previous: np.ndarray | None = None
    self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

  def push(self, obs: np.ndarray) -> np.ndarray:
    """Appends each slot's observation ``obs`` [E, H, W, S]; returns their
    references int64 [E]."""
    stack = obs.shape[-1]
    if self._previous is None:
      continues = np.zeros(self.num_slots, bool)
    else:
      continues = (obs[..., :-1] == self._previous[..., 1:]).reshape(self.num_slots, -1).all(axis=1)
    slots = np.arange(self.num_slots)
    restart = (~continues).nonzero()[0]
    count = np.where(continues, 1, stack)
    if len(restart) == 0:
      frames, frame_slots = obs[..., -1], slots
      positions = self._position + 1
    else:  # Newest frames of the slots that continue, then every frame of the others.
      frame_slots = np.concatenate([continues.nonzero()[0], np.repeat(restart, stack)])
      frames = np.concatenate([obs[continues, :, :, -1], np.moveaxis(obs[restart], -1, 1).reshape(-1, *obs.shape[1:3])])
      first = self._position[frame_slots] + 1
      within = np.concatenate([np.zeros(len(frame_slots) - len(restart) * stack, np.int64),
                               np.tile(np.arange(stack), len(restart))])
      positions = first + within
    self._pending.append((np.ascontiguousarray(frames), frame_slots, positions))
    self._position += count
    self._previous = obs
    return self._position * self.num_slots + slots

  def take_frames(self) -> dict[str, np.ndarray]:
    """The frames pushed since the last call, for ``FrameStackWriter.add``:
    ``frames`` [M, H, W], ``frame_slot`` int [M] and ``frame_position``
    int64 [M] (in its slot's stream)."""
    frames, slots, positions = (np.concatenate(parts) for parts in zip(*self._pending))
    self._pending = []
    return {"frames": frames, "frame_slot": slots, "frame_position": positions}


class FrameStackReplay(SharedReplay):
  """Uniform replay of transitions between stacked observations [H, W, S],
  each frame stored once, in shared memory: many writer processes, one sampler.

  The capacity counts cells; a cell holds one frame (uint8 [H, W]) and,
  when that frame is the newest of a transition's ``obs``, the transition:
  action, reward, discount, policy_step and the offset of its
  ``next_obs``'s newest frame. Each writer has ``streams_per_writer`` slots
  (its actor's env copies), each a ring of cells written in order; a
  transition's stacks are the S cells ending at its cell and at its cell
  plus the offset. An episode of T steps takes T + S cells for T
  transitions; a cell costs H * W + 60 bytes (7,116 B at 84x84).

  Torn-cell protection (seqlocks, as ``SharedReplay``): a cell's frame and
  its transition each carry a version, ``2p + 1`` while being written for
  the frame at stream position p and ``2p + 2`` once complete. A cell at
  position p is a sample when its transition's version and the frame
  versions of both stacks' cells are exactly those of complete writes at
  their positions: read before the copy and again after it, so a stack
  overwritten by the ring, a transition not written yet, or one torn by a
  writer, is never served. Frames are written before the transitions that
  name them, and a stream's frame counter is raised in between.

  ``sample`` draws cells uniformly and draws again for those holding no
  transition (so the batch is uniform over stored transitions, as
  Dopamine's replay does). Rate limiting as ``SharedReplay``, in
  transitions.

  Priorities as ``SharedReplay``'s, a row being a cell: a transition's
  priority is stored in its cell, and each writer logs the cells of its
  transitions in order (``written_cell``, a ring over its cells), so that
  the rows written since a write count are known. A cell whose frame is
  overwritten, and the S - 1 after it, lose their transition (their obs
  stacks lose their oldest frame).
  """

  _saved = ("frame", *_TRANSITION_FIELDS, "next_offset", "frame_version", "transition_version",
            "frame_count", "write_count", "samples", *PRIORITY_FIELDS)
  _version = "transition_version"

  def __init__(self, block, handle):
    super().__init__(block, handle)
    self.streams_per_writer, self.stack = handle.options  # E slots per writer, S frames a stack.
    self.frame_shape = self._arrays["frame"].shape[1:]
    num_streams = self.num_writers * self.streams_per_writer
    # Streams: writer w's slot e is stream w * E + e, holding cells [bounds[s], bounds[s + 1]).
    self._stream_bounds = np.arange(num_streams + 1) * self.capacity // num_streams
    self._stream_sizes = np.diff(self._stream_bounds)

  @staticmethod
  def _specs(obs_shape, obs_dtype, capacity, num_writers, streams_per_writer=1):
    height, width, _ = obs_shape
    return {
        "frame": ((capacity, height, width), obs_dtype),
        "action": ((capacity,), np.int32),
        "reward": ((capacity,), np.float32),
        "discount": ((capacity,), np.float32),
        "policy_step": ((capacity,), np.int64),
        "next_offset": ((capacity,), np.int32),
        "frame_version": ((capacity,), np.int64),
        "transition_version": ((capacity,), np.int64),
        "frame_count": ((num_writers * streams_per_writer,), np.int64),  # One past the newest frame.
        "write_count": ((num_writers,), np.int64),  # Transitions inserted.
        "samples": ((1,), np.int64),
        "waiting": ((num_writers,), np.int64),
        "served": ((num_writers,), np.int64),
        "written_cell": ((capacity,), np.int64),  # Writer w's k-th transition's cell at bounds[w] + k % size_w.
        **_priority_specs(capacity),
    }

  @staticmethod
  def nbytes(obs_shape, obs_dtype, capacity, num_writers=1, streams_per_writer=1) -> int:
    """Bytes of shared memory ``create`` takes with these arguments (about
    ``capacity * (H * W + 60)`` at uint8)."""
    from jaxrl.shm import SharedBlock  # pylint: disable=import-outside-toplevel
    return SharedBlock.nbytes(FrameStackReplay._specs(obs_shape, obs_dtype, capacity, num_writers,
                                                      streams_per_writer))

  @classmethod
  def create(cls, obs_shape, obs_dtype, capacity, num_writers=1, min_size=1, samples_per_insert=None,
             rate_tolerance=0.0, streams_per_writer=1) -> "FrameStackReplay":
    """Creates an empty replay (owner); as ``SharedReplay.create``, for
    observations of ``obs_shape`` (H, W, S) from ``streams_per_writer`` slots
    per writer. Each stream must hold more than two stacks and a step's
    frames: at least 4 S cells."""
    check(len(obs_shape) == 3, "obs_shape", "(height, width, stack)", obs_shape)
    check_positive_int("streams_per_writer", streams_per_writer)
    least = cls.min_capacity(obs_shape, num_writers, streams_per_writer)
    check(capacity >= least, "capacity", f">= 4 * stack * writers * streams per writer ({least})", capacity)
    replay = cls._create(cls._specs(obs_shape, obs_dtype, capacity, num_writers, streams_per_writer),
                         capacity, num_writers, min_size, samples_per_insert, rate_tolerance,
                         (streams_per_writer, obs_shape[2]))
    return replay

  @staticmethod
  def min_capacity(obs_shape, num_writers: int, streams_per_writer: int) -> int:
    """The fewest cells ``create`` takes: 4 S a stream."""
    return 4 * obs_shape[2] * num_writers * streams_per_writer

  def writer(self, writer_id: int) -> "FrameStackWriter":
    """The writer of writer ``writer_id``'s streams, for one ``FrameStream``
    (its references start at the streams' ends); at most one live per id."""
    return FrameStackWriter(self, writer_id)

  def size(self) -> int:
    """Transitions stored, counted as if each took a cell (a few cells hold frames only)."""
    cells = self._bounds[1:] - self._bounds[:-1]
    return int(np.minimum(self._arrays["write_count"], cells).sum())

  def _cells(self, stream: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Cells holding the frames at ``position`` of ``stream`` (broadcast)."""
    return self._stream_bounds[stream] + position % self._stream_sizes[stream]

  def _found(self, stream, position, arrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For candidate transitions at ``position`` of ``stream`` [K]: whether each
    is complete and both its stacks are in place, with the cells of its obs
    and next_obs stacks [K, S] (oldest first)."""
    stack = self.stack
    cell = self._cells(stream, position)
    expected = 2 * position + 2
    offset = arrays["next_offset"][cell].astype(np.int64)
    back = np.arange(1 - stack, 1)
    positions = np.concatenate([position[:, None] + back, (position + offset)[:, None] + back], axis=1)
    cells = self._cells(stream[:, None], positions)
    found = ((arrays["transition_version"][cell] == expected) & (arrays["frame_version"][cell] == expected)
             & (offset > 0) & (positions[:, 0] >= 0)
             & (arrays["frame_version"][cells] == 2 * positions + 2).all(axis=1))
    return found, cells[:, :stack], cells[:, stack:]

  def _stacks(self, cells: np.ndarray, versions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_found`` of the transitions of ``versions`` in ``cells`` [K] (not found for -1)."""
    stream = np.searchsorted(self._stream_bounds, cells, side="right") - 1
    found, obs_cells, next_cells = self._found(stream, versions // 2 - 1, self._arrays)
    return found & (versions > 0) & (versions % 2 == 0), obs_cells, next_cells

  def _servable(self, rows, versions):
    return self._stacks(rows, versions)[0]

  def marks(self) -> np.ndarray:
    """Counters that ``changed_rows`` compares: the write counts [W], then
    the frame counts [W * E] (read in that order), int64."""
    written = self._arrays["write_count"].copy()
    return np.concatenate([written, self._arrays["frame_count"]])

  def changed_rows(self, before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cells changed between two ``marks``: (cells whose transition lost a
    frame: those of the frames written and the S - 1 after each stream's
    newest; cells of the transitions logged) int64."""
    w = self.num_writers
    frames_before, frames_after = before[w:], after[w:]
    end = np.where(frames_after > frames_before, frames_after + self.stack - 1, frames_before)
    position, stream = _ranges(np.maximum(frames_before, end - self._stream_sizes), end)
    index, writer = _ranges(np.maximum(before[:w], after[:w] - self._sizes), after[:w])
    logged = self._arrays["written_cell"][self._bounds[writer] + index % self._sizes[writer]]
    return self._cells(stream, position), logged

  def padding_batch(self, batch_size: int) -> Transition:
    rows = {key: np.zeros(batch_size, self._arrays[key].dtype) for key in _TRANSITION_FIELDS}
    rows["obs"] = rows["next_obs"] = np.zeros((batch_size, *self.frame_shape, self.stack),
                                              self._arrays["frame"].dtype)
    return _as_batch(rows, np.zeros(batch_size))

  def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[Transition, np.ndarray]:
    """Samples ``batch_size`` transitions uniformly (with replacement), as
    ``SharedReplay.sample``: obs and next_obs [B, H, W, S] as stored.

    Draws cells uniformly among those written, and again for those that
    hold no transition, up to ``_DRAWS`` rounds; a row still not found, or
    torn by a writer during the copy, is padding (valid 0.0, zeros).
    """
    arrays = self._arrays
    count = arrays["frame_count"].copy()  # Read before the versions.
    held = np.minimum(count, self._stream_sizes)
    ends = np.cumsum(held)
    if arrays["write_count"].sum() == 0:
      raise ValueError("cannot sample from an empty replay")
    stream = np.zeros(batch_size, np.int64)
    position = np.zeros(batch_size, np.int64)
    found = np.zeros(batch_size, bool)
    for _ in range(_DRAWS):
      todo = (~found).nonzero()[0]
      if len(todo) == 0:
        break
      u = rng.integers(0, ends[-1], len(todo))
      s = np.searchsorted(ends, u, side="right")
      p = count[s] - held[s] + u - (ends - held)[s]
      ok, _, _ = self._found(s, p, arrays)
      stream[todo], position[todo], found[todo] = s, p, ok
    batch, policy_step, _ = self.read(self._cells(stream, position), np.where(found, 2 * position + 2, -1))
    return batch, policy_step

  def read(self, rows, versions):
    """``SharedReplay.read`` of cells: obs and next_obs [K, H, W, S] as stored."""
    arrays = self._arrays
    _, obs_cells, next_cells = self._stacks(rows, versions)
    fields = {key: arrays[key][rows] for key in _TRANSITION_FIELDS}
    fields["obs"], fields["next_obs"] = _stacked(arrays["frame"], obs_cells), _stacked(arrays["frame"], next_cells)
    valid = self._servable(rows, versions)  # Unchanged after the copy.
    arrays["samples"][0] += len(rows)
    if not valid.all():
      for value in fields.values():
        value[~valid] = 0
    return _as_batch(fields, valid), fields["policy_step"], valid

  def contents(self) -> dict[str, np.ndarray]:
    """A copy of every array, for a checkpoint, taken while writers may be
    writing: a cell's frame or transition being written during the copy is
    saved with version 0 (never written), so it serves nothing after
    ``restore`` until rewritten. Counters are copied last; a restored
    writer resumes past every frame saved complete (see ``FrameStackWriter``).
    The learner's priorities are saved as they are; the log of written
    cells is not (a sampler made after ``restore`` reads every cell)."""
    arrays = self._arrays
    first = {key: arrays[key].copy() for key in ("frame_version", "transition_version")}
    contents = {key: arrays[key].copy() for key in ("frame", *_TRANSITION_FIELDS, "next_offset", "priority")}
    second = {key: arrays[key].copy() for key in first}
    for key, version in second.items():
      version[(version != first[key]) | (first[key] % 2 == 1)] = 0
    contents.update(second)
    for key in ("frame_count", "write_count", "samples", *PRIORITY_FIELDS[1:]):
      contents[key] = arrays[key].copy()
    return contents


def _stacked(frames: np.ndarray, cells: np.ndarray) -> np.ndarray:
  """The stacks of ``cells`` [K, S] (oldest first) of ``frames`` [C, H, W]:
  [K, H, W, S]. One frame slot at a time, each gathered straight into its
  strided place: a gather [K, S, H, W] then a contiguous moveaxis copies
  the frames twice and is 3x slower (the learner's sample of 128 stacks of
  84x84x4 spent 70% of its time in that copy)."""
  stacks = np.empty((len(cells), *frames.shape[1:], cells.shape[1]), frames.dtype)
  for slot in range(cells.shape[1]):
    stacks[..., slot] = frames[cells[:, slot]]
  return stacks


class FrameStackWriter(ReplayWriter):
  """Writes one actor's frames and transitions into its streams of a
  ``FrameStackReplay``.

  ``add`` takes what the actor's ``FrameStream`` and n-step accumulator
  made of one or more steps: the frames pushed (``FrameStream.take_frames``)
  and the transitions, whose ``obs`` and ``next_obs`` are references to
  stacks (int64 [N]). Frames go in first, then the streams' frame counters,
  then the transitions. A writer starts each stream at the position after
  the newest frame found complete there (or its counter, if higher), so a
  new writer with the same id never rewrites a complete cell with other
  content; cells a dead writer left half-written stay unserved until
  rewritten.
  """

  def __init__(self, replay: FrameStackReplay, writer_id: int):
    check(0 <= writer_id < replay.num_writers, "writer_id", f"in [0, {replay.num_writers})", writer_id)
    self._replay = replay
    self.writer_id = writer_id
    arrays = replay._arrays
    e = replay.streams_per_writer
    self._streams = np.arange(writer_id * e, (writer_id + 1) * e)
    self._start = np.empty(e, np.int64)  # Stream position of reference position 0, per slot.
    for i, stream in enumerate(self._streams):
      versions = arrays["frame_version"][replay._stream_bounds[stream]:replay._stream_bounds[stream + 1]]
      complete = versions[versions % 2 == 0] // 2  # One past the position of each complete frame.
      self._start[i] = max(int(arrays["frame_count"][stream]), int(complete.max(initial=0)))
    arrays["frame_count"][self._streams] = self._start
    arrays["waiting"][writer_id] = _NOT_WAITING  # A dead predecessor's place in line.

  def add(self, transitions: dict[str, np.ndarray]) -> None:
    """Writes ``transitions``: ``frames`` [M, H, W], ``frame_slot`` [M],
    ``frame_position`` [M] (``FrameStream.take_frames``), and the N
    transitions' action, reward, discount, policy_step [N], stack
    references ``obs``, ``next_obs`` int64 [N] and optionally ``priority``
    float32 [N] (as ``ReplayWriter.add``)."""
    replay, arrays = self._replay, self._replay._arrays
    e = replay.streams_per_writer
    if len(transitions["frames"]):
      slot = transitions["frame_slot"]
      position = self._start[slot] + transitions["frame_position"]
      cell = replay._cells(self._streams[slot], position)
      arrays["frame_version"][cell] = 2 * position + 1
      arrays["frame"][cell] = transitions["frames"]
      arrays["frame_version"][cell] = 2 * position + 2
      newest = np.full(e, -1, np.int64)
      np.maximum.at(newest, slot, position)
      counts = arrays["frame_count"]
      counts[self._streams] = np.maximum(counts[self._streams], newest + 1)
    count = len(transitions["action"])
    if count:
      slot = transitions["obs"] % e
      position = transitions["obs"] // e + self._start[slot]
      next_position = transitions["next_obs"] // e + self._start[slot]
      cell = replay._cells(self._streams[slot], position)
      arrays["transition_version"][cell] = 2 * position + 1
      for key in _TRANSITION_FIELDS:
        arrays[key][cell] = transitions[key]
      arrays["next_offset"][cell] = next_position - position
      arrays["priority"][cell] = _priorities(transitions, count)
      arrays["transition_version"][cell] = 2 * position + 2
      start, size = replay._bounds[self.writer_id], replay._sizes[self.writer_id]
      kept = slice(max(count - size, 0), count)   # Of more than the log holds, the last.
      index = arrays["write_count"][self.writer_id] + np.arange(count)[kept]
      arrays["written_cell"][start + index % size] = cell[kept]
      arrays["write_count"][self.writer_id] += count
    self._served(count)
