"""Checkpoints: whole learner states, the run counters and the config.

A checkpoint is one file, ``<directory>/step_<step:09d>.ckpt``, where step is
the state's ``step``, or for a mapping ``{learner_id: LearnerState}`` (what
the runtime saves: every learner of a run) the sum of their steps: an
uncompressed zip archive (ZIP64) whose members are

  meta.json          {"format": 1, "step", "counters", "config"}
  state.msgpack      the state(s), ``flax.serialization.to_bytes``: every
                     leaf's raw bytes, dtype and shape (params, target params,
                     optax state, epsilon, step, rng), so a restore is exact
  extra/<name>.npy   optional arrays (e.g. the replay contents), numpy .npy

Zip stores a CRC-32 per member and ``zipfile`` checks it on every read, so a
truncated, overwritten or bit-flipped checkpoint raises
``CorruptCheckpointError`` instead of restoring wrong numbers, and
``newest_intact`` falls back on the newest checkpoint that reads.

Atomicity: a save writes ``.step_<...>.ckpt.tmp`` in the same directory,
fsyncs it, renames it onto the final name (``os.replace``, atomic also over a
checkpoint of the same step) and fsyncs the directory. A save killed at any
point leaves the previous checkpoints intact and at most a ``.tmp`` file,
which ``latest_checkpoint`` never considers and the next save deletes; a save
that fails (an ``OSError`` such as ENOSPC, any exception) removes its ``.tmp``
before it raises. One writer per directory.

The directory holds one timeline: a save at step s deletes every checkpoint
of a later step (a run resumed from an older checkpoint abandons them), then
all but the newest ``keep``; so after a save ``latest_checkpoint`` is always
the checkpoint just written.

Why flax.serialization + msgpack rather than orbax-checkpoint: on a
CartPole-sized DQN state (hidden 120, 84: 44k numbers, 176 kB) a save with
fsync takes 5-15 ms and a restore ~2 ms, where orbax's StandardCheckpointer
takes 0.45 s to import, 0.5 s for the first save and ~50 ms for later ones,
starts background threads in the learner, writes a dozen files per
checkpoint, and cannot atomically replace a checkpoint of the same step (a
directory cannot be renamed over a non-empty one).
"""

from __future__ import annotations

from collections.abc import Mapping
import contextlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, TypeVar

import jax
import numpy as np
from flax import serialization, traverse_util

from jaxrl.config import check, check_positive_int
from jaxrl.learner import LearnerState

_FORMAT = 1
_NAME = re.compile(r"step_(\d{9,})\.ckpt")
_TMP_SUFFIX = ".tmp"
_EXTRA_NAME = re.compile(r"[A-Za-z0-9_.-]+")
T = TypeVar("T")


class CheckpointError(ValueError):
  """A missing, absent or unreadable checkpoint; the message is one line
  that names the path and the problem."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint file whose bytes cannot be read back (truncated,
  overwritten, a flipped bit): an older one may still be intact."""


def _error(path: Path, problem: str, kind: type[CheckpointError] = CheckpointError) -> CheckpointError:
  return kind(re.sub(r"\s*\n\s*", " ", f"{path}: {problem}"))


def _checkpoints(directory: Path) -> dict[int, Path]:
  """step -> path of every complete checkpoint in ``directory``."""
  if not directory.is_dir():
    raise _error(directory, "no such checkpoint directory")
  names = (_NAME.fullmatch(name) for name in os.listdir(directory))
  return {int(m.group(1)): directory / m.group(0) for m in names if m}


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
  """The checkpoint of the highest step in ``directory``, None if it has none.

  Raises:
    CheckpointError: ``directory`` does not exist.
  """
  steps = _checkpoints(Path(directory))
  return steps[max(steps)] if steps else None


def newest_intact(directory: str | os.PathLike, read: Callable[[Path], T],
                  warn: Callable[[str], None]) -> tuple[Path, T]:
  """Reads the newest checkpoint of ``directory`` that ``read`` (path ->
  what it reads, e.g. by ``restore_checkpoint``) can read: (its path, what
  ``read`` returned). Newer, corrupt ones are skipped and said in one line
  to ``warn``; any other error (a checkpoint of another agent) is raised.

  Raises:
    CheckpointError: ``directory`` does not exist or holds no checkpoint;
      every checkpoint in it is corrupt (the newest's error, saying so).
  """
  directory = Path(directory)
  steps = _checkpoints(directory)
  if not steps:
    raise _error(directory, "no checkpoint in this directory")
  corrupt: list[CorruptCheckpointError] = []
  for step in sorted(steps, reverse=True):
    try:
      value = read(steps[step])
    except CorruptCheckpointError as e:
      corrupt.append(e)
      continue
    if corrupt:
      more = f" (and {len(corrupt) - 1} more corrupt)" if len(corrupt) > 1 else ""
      warn(f"{corrupt[0]}{more}; using the newest intact checkpoint, {steps[step]}")
    return steps[step], value
  raise CorruptCheckpointError(f"{corrupt[0]}; no intact checkpoint in {directory}")


def _json_default(value: Any) -> Any:
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _fsync_directory(directory: Path) -> None:
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def save_checkpoint(directory: str | os.PathLike, state: LearnerState | Mapping[str, LearnerState],
                    counters: dict[str, Any],
                    config: dict[str, Any], keep: int,
                    extra_arrays: dict[str, np.ndarray] | None = None) -> Path:
  """Atomically writes ``directory/step_<step:09d>.ckpt``; keeps ``keep``.

  Args:
    directory: the checkpoint directory (created if missing).
    state: the LearnerState, or learner id -> LearnerState, to save, every
      leaf bit for bit.
    counters: JSON-able run counters (env_steps, episodes, learner_steps,
      wall_seconds, ...); numpy scalars are accepted.
    config: JSON-able resolved run config (tuples come back as lists).
    keep: number of newest checkpoints left in ``directory`` (>= 1).
    extra_arrays: optional name -> numpy array (names of letters, digits,
      ``_``, ``-``, ``.``), streamed to disk without a copy and read back by
      ``load_extra_arrays``.

  Returns:
    The path of the new checkpoint, which replaces one of the same step.

  Raises:
    OSError: the write failed (a full disk: ENOSPC); the directory holds the
      checkpoints it held before and no ``.tmp`` file.
  """
  check_positive_int("keep", keep)
  extra_arrays = extra_arrays or {}
  for name in extra_arrays:
    check(isinstance(name, str) and _EXTRA_NAME.fullmatch(name) is not None, "extra_arrays key",
          "made of letters, digits, '_', '-' and '.'", name)
  step = sum(int(s.step) for s in (state.values() if isinstance(state, Mapping) else [state]))
  meta = json.dumps({"format": _FORMAT, "step": step, "counters": counters, "config": config},
                    default=_json_default)
  state_bytes = serialization.to_bytes(jax.device_get(state))

  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for stale in directory.glob(f".step_*.ckpt{_TMP_SUFFIX}"):
    stale.unlink()
  path = directory / f"step_{step:09d}.ckpt"
  tmp = directory / f".{path.name}{_TMP_SUFFIX}"
  try:
    with open(tmp, "wb") as f:
      with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("meta.json", meta)
        archive.writestr("state.msgpack", state_bytes)
        for name, array in extra_arrays.items():
          with archive.open(f"extra/{name}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)   # a full disk keeps no partial copy
    raise
  _fsync_directory(directory)

  existing = _checkpoints(directory)
  kept = sorted(s for s in existing if s <= step)[-keep:]
  for old_step, old_path in existing.items():
    if old_step not in kept:
      old_path.unlink()
  return path


def _resolve(path: str | os.PathLike) -> Path:
  """A checkpoint file, or the latest one when ``path`` is a directory."""
  path = Path(path)
  if path.is_dir():
    latest = latest_checkpoint(path)
    if latest is None:
      raise _error(path, "no checkpoint in this directory")
    return latest
  if not path.is_file():
    raise _error(path, "no such checkpoint")
  return path


@contextlib.contextmanager
def _reading(path: Path):
  """Turns any failure to decode the checkpoint at ``path`` into a CheckpointError."""
  try:
    yield
  except CheckpointError:
    raise
  except Exception as e:  # A file on disk may hold anything.
    raise _error(path, f"corrupt checkpoint ({type(e).__name__}: {e})", CorruptCheckpointError) from e


def restore_checkpoint(path: str | os.PathLike,
                       template_state: LearnerState) -> tuple[LearnerState, dict[str, Any], dict[str, Any]]:
  """Reads a checkpoint into the structure of ``template_state``.

  Args:
    path: a checkpoint file, or a checkpoint directory (its latest is read).
    template_state: a state (or learner id -> state) of the same config,
      e.g. ``agent.init(key)``; only its structure, shapes and dtypes are used.

  Returns:
    (state, counters, config): the saved state, bit for bit, as uncommitted
    jax arrays with the template's pytree structure, shapes and dtypes (a
    jitted train_step does not retrace); counters and config as saved.

  Raises:
    CheckpointError: no checkpoint, a corrupt one (``CorruptCheckpointError``),
      or one whose state does not fit the template.
  """
  path = _resolve(path)
  with _reading(path), zipfile.ZipFile(path) as archive:
    meta = json.loads(archive.read("meta.json"))
    if meta["format"] != _FORMAT:
      raise _error(path, f"checkpoint format {meta['format']!r}, this code reads {_FORMAT}")
    saved = serialization.msgpack_restore(archive.read("state.msgpack"))
    counters, config = meta["counters"], meta["config"]
  try:
    state = serialization.from_state_dict(template_state, saved)
  except Exception as e:  # pylint: disable=broad-except
    raise _error(path, f"the saved state does not fit the template ({type(e).__name__}: {e})") from e
  # from_state_dict ignores saved entries the template lacks: a network with a
  # layer fewer would load, every shape matching, and act without that layer.
  extra = (set(traverse_util.flatten_dict(saved, sep="/"))
           - set(traverse_util.flatten_dict(serialization.to_state_dict(template_state), sep="/")))
  if extra:
    raise _error(path, f"the saved state has {len(extra)} entries the template lacks, e.g. "
                       f"{min(extra, key=lambda p: (len(p), p))} (saved by another network or config)")
  if jax.tree.structure(state) != jax.tree.structure(template_state):
    raise _error(path, "the saved state's structure differs from the template's")
  for (key_path, saved), like in zip(jax.tree_util.tree_leaves_with_path(state),
                                     jax.tree.leaves(template_state)):
    saved = np.asarray(saved)
    if saved.shape != like.shape or saved.dtype != like.dtype:
      raise _error(path, f"state{jax.tree_util.keystr(key_path)} is {saved.dtype}{list(saved.shape)}, "
                         f"the template's is {like.dtype}{list(like.shape)}")
  return jax.device_put(state), counters, config


def load_extra_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The ``extra_arrays`` saved with a checkpoint (empty if none), as numpy.

  Args:
    path: a checkpoint file, or a checkpoint directory (its latest is read).

  Raises:
    CheckpointError: no checkpoint, or a corrupt one (``CorruptCheckpointError``).
  """
  path = _resolve(path)
  arrays = {}
  with _reading(path), zipfile.ZipFile(path) as archive:
    for member in archive.namelist():
      if member.startswith("extra/"):
        with archive.open(member) as f:
          arrays[member[len("extra/"):-len(".npy")]] = np.lib.format.read_array(f, allow_pickle=False)
  return arrays
