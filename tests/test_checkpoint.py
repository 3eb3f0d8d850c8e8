"""Checkpoints: exact round trips, rotation, atomicity under SIGKILL, corruption."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jaxrl
from jaxrl.checkpoint import (CheckpointError, CorruptCheckpointError, latest_checkpoint, load_extra_arrays,
                              newest_intact, restore_checkpoint, save_checkpoint)

OBS_SHAPE, NUM_ACTIONS, BATCH = (4,), 2, 8
COUNTERS = {"env_steps": 1200, "episodes": 7, "learner_steps": 3, "wall_seconds": 12.5}
CONFIG = {"seed": 0, "agent": {"algo": "dqn", "hidden_sizes": [16, 16]}, "run_dir": "runs/x"}


def _agent(algo: str, hidden_sizes=(16, 16)) -> jaxrl.Agent:
  cfg = jaxrl.AgentConfig(algo=algo, hidden_sizes=hidden_sizes, num_tau_samples=4, num_tau_prime_samples=4,
                          num_quantile_samples=4, quantile_embedding_dim=8)
  return jaxrl.make_agent(cfg, OBS_SHAPE, NUM_ACTIONS)


def _batch(seed: int) -> jaxrl.Transition:
  rng = np.random.default_rng(seed)
  return jaxrl.Transition(
      obs=rng.standard_normal((BATCH, *OBS_SHAPE), np.float32),
      action=rng.integers(0, NUM_ACTIONS, BATCH).astype(np.int32),
      reward=rng.standard_normal(BATCH).astype(np.float32),
      discount=rng.choice([0.0, 0.99], BATCH).astype(np.float32),
      next_obs=rng.standard_normal((BATCH, *OBS_SHAPE), np.float32),
      valid=np.ones(BATCH, np.float32))


def _bits(tree) -> list[tuple[str, tuple[int, ...], bytes]]:
  """Every leaf as (dtype, shape, raw bytes): equal iff bit for bit equal."""
  return [(str(x.dtype), x.shape, x.tobytes()) for x in map(np.asarray, jax.tree.leaves(tree))]


def _assert_identical(restored, original) -> None:
  assert jax.tree.structure(restored) == jax.tree.structure(original)
  chex.assert_trees_all_equal(restored, original, strict=True)
  assert _bits(restored) == _bits(original)


DQN = _agent("dqn")


def _state_at(step: int, seed: int = 0) -> jaxrl.LearnerState:
  return DQN.init(jax.random.PRNGKey(seed)).replace(step=jnp.asarray(step, jnp.int32))


@pytest.mark.parametrize("algo", ["dqn", "iqn"])
def test_round_trip_after_train_steps_is_exact_and_continues_identically(tmp_path, algo):
  agent = _agent(algo)
  train_step = jax.jit(agent.train_step)
  state = agent.init(jax.random.PRNGKey(0))
  for seed in range(3):
    state, _ = train_step(state, _batch(seed))
  extra = {"obs": np.arange(24, dtype=np.uint8).reshape(6, 4), "policy_step": np.arange(6, dtype=np.int64)}
  path = save_checkpoint(tmp_path, state, COUNTERS, CONFIG, keep=2, extra_arrays=extra)
  assert path == tmp_path / "step_000000003.ckpt"

  restored, counters, config = restore_checkpoint(path, agent.init(jax.random.PRNGKey(1)))
  _assert_identical(restored, state)
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(restored))
  assert (counters, config) == (COUNTERS, CONFIG)
  loaded = load_extra_arrays(path)
  assert loaded.keys() == extra.keys()
  assert all(_bits(loaded[k]) == _bits(extra[k]) for k in extra)

  next_state, metrics = train_step(state, _batch(3))
  compiled = train_step._cache_size()
  next_restored, metrics_restored = train_step(restored, _batch(3))
  assert train_step._cache_size() == compiled, "train_step retraced on the restored state"
  _assert_identical(next_restored, next_state)
  _assert_identical(metrics_restored, metrics)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), step=st.integers(0, 2**31 - 1))
def test_every_bit_pattern_round_trips(seed, step):
  """Random bits in every leaf (NaN payloads, -0.0, denormals) come back unchanged."""
  template = _state_at(0)
  rng = np.random.default_rng(seed)
  random_bits = lambda x: rng.integers(0, 256, x.nbytes, np.uint8).view(x.dtype).reshape(x.shape)
  state = jax.tree.map(random_bits, template).replace(step=np.asarray(step, np.int32))
  with tempfile.TemporaryDirectory() as directory:
    path = save_checkpoint(directory, state, COUNTERS, CONFIG, keep=1)
    assert path.name == f"step_{step:09d}.ckpt"
    restored, _, _ = restore_checkpoint(directory, template)
  assert _bits(restored) == _bits(state)


@settings(max_examples=30, deadline=None)
@given(keep=st.integers(1, 3), steps=st.lists(st.integers(0, 12), min_size=1, max_size=8))
def test_rotation_keeps_the_newest_of_one_timeline(keep, steps):
  """After each save: latest is the new checkpoint; the directory holds the
  newest ``keep`` steps not above it, each with the content of its last save."""
  expected: dict[int, int] = {}  # step -> index of the save that wrote it
  with tempfile.TemporaryDirectory() as directory:
    for index, step in enumerate(steps):
      path = save_checkpoint(directory, _state_at(step), {"save": index}, CONFIG, keep)
      expected[step] = index
      expected = {s: expected[s] for s in sorted(s for s in expected if s <= step)[-keep:]}
      assert latest_checkpoint(directory) == path
      assert sorted(os.listdir(directory)) == [f"step_{s:09d}.ckpt" for s in sorted(expected)]
    for s, index in expected.items():
      restored, counters, _ = restore_checkpoint(Path(directory) / f"step_{s:09d}.ckpt", _state_at(0))
      assert (int(restored.step), counters) == (s, {"save": index})


def test_latest_orders_steps_numerically(tmp_path):
  for step in (5, 999_999_999, 1_000_000_000):  # a save deletes later steps
    save_checkpoint(tmp_path / "a", _state_at(step), COUNTERS, CONFIG, keep=5)
  assert latest_checkpoint(tmp_path / "a").name == "step_1000000000.ckpt"
  (tmp_path / "empty").mkdir()
  assert latest_checkpoint(tmp_path / "empty") is None


_KILLED_SAVE = """
import sys, time
import jax, numpy as np
import jaxrl
from jaxrl.checkpoint import save_checkpoint

def stall(fp, array, **kwargs):  # writes part of the array, then waits to be killed
  fp.write(array.tobytes()[:4096])
  print("stalled", flush=True)
  time.sleep(600)

np.lib.format.write_array = stall
agent = jaxrl.make_agent(jaxrl.AgentConfig(algo="dqn", hidden_sizes=(16, 16)), (4,), 2)
state = agent.init(jax.random.PRNGKey(7)).replace(step=jax.numpy.asarray(1, jax.numpy.int32))
save_checkpoint(sys.argv[1], state, {"save": "killed"}, {}, keep=1,
                extra_arrays={"obs": np.ones(1 << 20, np.uint8)})
"""


def test_save_killed_midway_leaves_the_previous_checkpoint(tmp_path):
  """A save that replaces step 1 is SIGKILLed while writing: step 1 is still
  the old checkpoint, the partial file is never latest, the next save cleans it."""
  state = _state_at(1)
  path = save_checkpoint(tmp_path, state, COUNTERS, CONFIG, keep=1)
  child = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(tmp_path)], stdout=subprocess.PIPE,
                           text=True)
  try:
    assert child.stdout.readline() == "stalled\n"
  finally:
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
  assert sorted(os.listdir(tmp_path)) == [".step_000000001.ckpt.tmp", "step_000000001.ckpt"]
  assert latest_checkpoint(tmp_path) == path
  restored, counters, config = restore_checkpoint(tmp_path, _state_at(0, seed=3))
  _assert_identical(restored, state)
  assert (counters, config) == (COUNTERS, CONFIG)

  save_checkpoint(tmp_path, _state_at(2), COUNTERS, CONFIG, keep=1)
  assert os.listdir(tmp_path) == ["step_000000002.ckpt"]


def _no_space(*args, **kwargs):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fill_then_no_space(fp, array, **kwargs):
  fp.write(array.tobytes()[:4096])
  _no_space()


@pytest.mark.parametrize("target, replacement", [
    (np.lib.format, ("write_array", _fill_then_no_space)),
    (os, ("fsync", _no_space)),
    (os, ("replace", _no_space)),
], ids=["write", "fsync", "rename"])
def test_failed_save_raises_and_leaves_no_tmp_file(tmp_path, monkeypatch, target, replacement):
  """A full disk at any point of a save: the OSError comes out, the previous
  checkpoint is intact and latest, and no partial file is left behind."""
  path = save_checkpoint(tmp_path, _state_at(1), COUNTERS, CONFIG, keep=1)
  monkeypatch.setattr(target, *replacement)
  with pytest.raises(OSError) as info:
    save_checkpoint(tmp_path, _state_at(2), COUNTERS, CONFIG, keep=1, extra_arrays=EXTRA)
  monkeypatch.undo()
  assert info.value.errno == errno.ENOSPC
  assert os.listdir(tmp_path) == [path.name]
  assert latest_checkpoint(tmp_path) == path
  _assert_identical(restore_checkpoint(tmp_path, _state_at(0, seed=3))[0], _state_at(1))


def _assert_one_line_error(read, path: Path) -> None:
  with pytest.raises(CheckpointError) as info:
    read()
  assert "\n" not in str(info.value) and str(info.value).startswith(f"{path}: ")


EXTRA = {"obs": np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)}


@pytest.mark.parametrize("corrupt", [
    lambda data: data[:len(data) // 2],
    lambda data: np.random.default_rng(0).integers(0, 256, len(data), np.uint8).tobytes(),
    lambda data: b"",
], ids=["truncated", "garbage", "empty"])
def test_damaged_file_raises_one_line(tmp_path, corrupt):
  path = save_checkpoint(tmp_path, _state_at(4), COUNTERS, CONFIG, keep=1, extra_arrays=EXTRA)
  path.write_bytes(corrupt(path.read_bytes()))
  _assert_one_line_error(lambda: restore_checkpoint(path, _state_at(0)), path)
  _assert_one_line_error(lambda: load_extra_arrays(path), path)


@pytest.mark.parametrize("target", ["state", "extra"])
def test_flipped_bit_raises_one_line(tmp_path, target):
  """One bit flipped inside an array's stored bytes is caught, not restored."""
  state = _state_at(4)
  path = save_checkpoint(tmp_path, state, COUNTERS, CONFIG, keep=1, extra_arrays=EXTRA)
  if target == "state":
    stored, read = state.params["params"]["Dense_0"]["kernel"], lambda: restore_checkpoint(path, _state_at(0))
  else:
    stored, read = EXTRA["obs"], lambda: load_extra_arrays(path)
  stored = np.asarray(stored).tobytes()
  data = path.read_bytes()
  at = data.index(stored) + len(stored) // 2
  path.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1:])
  _assert_one_line_error(read, path)


@pytest.mark.parametrize("hidden_sizes, problem", [((16, 16, 8), "keys do not match"),
                                                   ((16, 8), "the template's is float32"),
                                                   ((16,), "entries the template lacks, e.g. params/params/torso/")])
def test_template_mismatch_raises_one_line(tmp_path, hidden_sizes, problem):
  path = save_checkpoint(tmp_path, _state_at(4), COUNTERS, CONFIG, keep=1)
  template = _agent("dqn", hidden_sizes).init(jax.random.PRNGKey(0))
  with pytest.raises(CheckpointError, match=problem):
    restore_checkpoint(path, template)
  _assert_one_line_error(lambda: restore_checkpoint(path, template), path)


def test_newest_intact_skips_corrupt_checkpoints_and_says_so_in_one_line(tmp_path):
  paths = [save_checkpoint(tmp_path, _state_at(step), COUNTERS, CONFIG, keep=4) for step in (1, 2, 3, 4)]
  paths[3].write_bytes(paths[3].read_bytes()[:100])
  paths[2].write_bytes(b"")
  warnings = []
  path, (state, _, _) = newest_intact(tmp_path, lambda p: restore_checkpoint(p, _state_at(0)), warnings.append)
  assert path == paths[1]
  _assert_identical(state, _state_at(2))
  (line,) = warnings
  assert line.startswith(f"{paths[3]}: corrupt checkpoint (") and "\n" not in line
  assert line.endswith(f" (and 1 more corrupt); using the newest intact checkpoint, {paths[1]}")
  warnings.clear()
  assert newest_intact(tmp_path, lambda p: p, warnings.append) == (paths[3], paths[3])
  assert warnings == []   # only what read finds corrupt is skipped


def test_newest_intact_raises_when_none_is_intact_or_on_another_agents_checkpoint(tmp_path):
  paths = [save_checkpoint(tmp_path, _state_at(step), COUNTERS, CONFIG, keep=2) for step in (1, 2)]
  for path in paths:
    path.write_bytes(b"")
  with pytest.raises(CorruptCheckpointError) as info:
    newest_intact(tmp_path, lambda p: restore_checkpoint(p, _state_at(0)), print)
  assert str(info.value).startswith(f"{paths[1]}: corrupt checkpoint")
  assert str(info.value).endswith(f"; no intact checkpoint in {tmp_path}")
  good = save_checkpoint(tmp_path / "other", _state_at(1), COUNTERS, CONFIG, keep=2)
  save_checkpoint(tmp_path / "other", _state_at(2), COUNTERS, CONFIG, keep=2)
  other_agent = _agent("dqn", (16, 8)).init(jax.random.PRNGKey(0))
  with pytest.raises(CheckpointError, match="the template's is float32") as info:
    newest_intact(tmp_path / "other", lambda p: restore_checkpoint(p, other_agent), print)
  assert not isinstance(info.value, CorruptCheckpointError) and good.name not in str(info.value)
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match="no checkpoint in this directory"):
    newest_intact(tmp_path / "empty", lambda p: p, print)


def test_unknown_format_raises(tmp_path):
  path = save_checkpoint(tmp_path, _state_at(4), COUNTERS, CONFIG, keep=1)
  with zipfile.ZipFile(path) as archive:
    members = {name: archive.read(name) for name in archive.namelist()}
  with zipfile.ZipFile(path, "w") as archive:
    for name, data in members.items():
      archive.writestr(name, data.replace(b'"format": 1', b'"format": 2') if name == "meta.json" else data)
  with pytest.raises(CheckpointError, match="format 2"):
    restore_checkpoint(path, _state_at(0))


def test_missing_checkpoints_raise(tmp_path):
  with pytest.raises(CheckpointError, match="no such checkpoint directory"):
    latest_checkpoint(tmp_path / "nope")
  with pytest.raises(CheckpointError, match="no such checkpoint"):
    restore_checkpoint(tmp_path / "nope", _state_at(0))
  with pytest.raises(CheckpointError, match="no checkpoint in this directory"):
    restore_checkpoint(tmp_path, _state_at(0))
  with pytest.raises(CheckpointError, match="no checkpoint in this directory"):
    load_extra_arrays(tmp_path)


@pytest.mark.parametrize("kwargs", [{"keep": 0}, {"keep": 1, "extra_arrays": {"a/b": np.zeros(1)}}])
def test_bad_arguments_raise_before_writing(tmp_path, kwargs):
  with pytest.raises(ValueError):
    save_checkpoint(tmp_path / "ckpt", _state_at(1), COUNTERS, CONFIG, **kwargs)
  assert not (tmp_path / "ckpt").exists()
