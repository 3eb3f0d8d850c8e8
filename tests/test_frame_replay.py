"""Tests of jaxrl.frame_replay: stacked frames stored once, served bit-identical to whole observations."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from children import reaped
from jaxrl.frame_replay import FrameStackReplay, FrameStream
from jaxrl.nstep import NStepAccumulator
from jaxrl.replay import SharedReplay

GAMMA = 0.9


@pytest.fixture(autouse=True)
def no_leaked_segments():
  yield
  assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"jaxrl_{os.getpid()}_")]


@contextlib.contextmanager
def frame_replay(obs_shape, capacity, num_writers=1, streams_per_writer=1, **kwargs):
  replay = FrameStackReplay.create(obs_shape, np.uint8, capacity, num_writers,
                                   streams_per_writer=streams_per_writer, **kwargs)
  try:
    yield replay
  finally:
    replay.close()
    replay.unlink()


class StackedEnv:
  """E slots of a game with stacked frames [H, W, S] and gymnasium's NEXT_STEP
  autoreset: random frames, episode lengths, truncations, lost lives, and at
  each reset the padding of one of two kinds (zeros, or the first frame)."""

  def __init__(self, rng, num_slots, frame_shape, stack, mean_length, life_loss=0.1):
    self.rng, self.num_slots, self.frame_shape, self.stack = rng, num_slots, frame_shape, stack
    self.mean_length, self.life_loss = mean_length, life_loss
    self.obs = np.stack([self._first() for _ in range(num_slots)])
    self.ended = np.zeros(num_slots, bool)

  def _first(self):
    frame = self.rng.integers(0, 256, self.frame_shape, np.uint8)
    pad = np.zeros_like(frame) if self.rng.random() < 0.5 else frame
    return np.stack([pad] * (self.stack - 1) + [frame], axis=-1)

  def step(self):
    """(next_obs, reward, terminated, truncated, active, life_lost)."""
    e = self.num_slots
    active = ~self.ended
    next_obs = self.obs.copy()
    for i in range(e):
      if self.ended[i]:
        next_obs[i] = self._first()
      else:
        frame = self.rng.integers(0, 256, self.frame_shape, np.uint8)
        next_obs[i] = np.concatenate([self.obs[i][..., 1:], frame[..., None]], axis=-1)
    end = active & (self.rng.random(e) < 1 / self.mean_length)
    terminated = end & (self.rng.random(e) < 0.5)
    truncated = end & ~terminated
    life_lost = active & ~end & (self.rng.random(e) < self.life_loss)
    reward = np.where(active, self.rng.normal(size=e), 0.0)
    self.obs, self.ended = next_obs, end
    return next_obs, reward, terminated, truncated, active, life_lost


def run_actor(env, writer, naive, n_step, steps, id_offset, rng):
  """Steps ``env`` as an actor does into ``writer`` (references to stacks)
  and, alongside, through an accumulator of whole observations into
  ``naive`` (id -> transition). A transition's id is its policy_step:
  unique per slot and start step. Returns id -> (slot, obs position)."""
  e, obs = env.num_slots, env.obs
  stream = FrameStream(e)
  ref = stream.push(obs)
  by_reference = NStepAccumulator(e, n_step, GAMMA, (), np.int64)
  whole = NStepAccumulator(e, n_step, GAMMA, obs.shape[1:], np.uint8)
  positions = {}
  for t in range(steps):
    next_obs, reward, terminated, truncated, active, cut = env.step()
    action = rng.integers(0, 5, e)
    ids = id_offset + t * e + np.arange(e)
    next_ref = stream.push(next_obs)
    stored = by_reference.step(ref, action, reward, terminated, truncated, next_ref, ids, active, cut)
    full = whole.step(obs, action, reward, terminated, truncated, next_obs, ids, active, cut)
    stored.update(stream.take_frames())
    writer.add(stored)
    assert np.array_equal(stored["policy_step"], full["policy_step"])
    for i, id_ in enumerate(full["policy_step"].tolist()):
      naive[id_] = {key: full[key][i] for key in ("obs", "action", "reward", "discount", "next_obs")}
      positions[id_] = (int(stored["obs"][i] % e), int(stored["obs"][i] // e))
    ref, obs = next_ref, next_obs
  return positions


def assert_served_as_stored(replay, naive, expected_ids, draws):
  """Every valid row sampled is bit-identical to the naive store's
  transition of its id, and the ids sampled are exactly ``expected_ids``."""
  batch, ids = replay.sample(draws, np.random.default_rng(0))
  valid = batch.valid.astype(bool)
  for i in valid.nonzero()[0]:
    want = naive[int(ids[i])]
    for key in want:
      got = getattr(batch, key)[i]
      assert got.dtype == np.asarray(want[key]).dtype or key == "action"
      assert np.array_equal(got, want[key]), (key, int(ids[i]))
  assert set(ids[valid].tolist()) == expected_ids
  assert batch.obs.shape == (draws, *replay.frame_shape, replay.stack) and batch.obs.dtype == np.uint8


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), num_writers=st.integers(1, 2), slots=st.integers(1, 3),
       stack=st.integers(1, 4), n_step=st.integers(1, 4), extra=st.integers(0, 40),
       steps=st.integers(1, 70), mean_length=st.sampled_from([1.5, 4.0, 20.0]))
def test_batches_are_bit_identical_to_a_store_of_whole_observations(seed, num_writers, slots, stack, n_step,
                                                                    extra, steps, mean_length):
  rng = np.random.default_rng(seed)
  per_stream = 4 * stack + extra
  with frame_replay((3, 2, stack), per_stream * num_writers * slots, num_writers, slots) as replay:
    naive, positions = {}, {}
    for w in range(num_writers):
      env = StackedEnv(rng, slots, (3, 2), stack, mean_length)
      positions[w] = run_actor(env, replay.writer(w), naive, n_step, steps, w * 10**6, rng)
    expected = set()
    for w, by_id in positions.items():
      count = replay._arrays["frame_count"][w * slots:(w + 1) * slots]
      sizes = replay._stream_sizes[w * slots:(w + 1) * slots]
      # Servable: both stacks still in the ring (the obs stack's oldest frame is the oldest).
      expected |= {id_ for id_, (slot, pos) in by_id.items() if pos - stack + 1 >= count[slot] - sizes[slot]}
    assert replay.inserts() == len(naive)
    if not naive:
      return
    assert_served_as_stored(replay, naive, expected, 60 * replay.capacity)


def test_a_transition_is_served_once_its_frames_are_written_and_no_longer_once_overwritten():
  rng = np.random.default_rng(0)
  with frame_replay((4, 4, 4), 32) as replay:  # One stream of 32 cells.
    env = StackedEnv(rng, 1, (4, 4), 4, mean_length=1e9, life_loss=0.0)
    naive = {}
    positions = run_actor(env, replay.writer(0), naive, 3, 40, 0, rng)
    # 4 frames at reset, then one a step: obs_t at position t + 3; the ring holds 12..43.
    assert replay._arrays["frame_count"].tolist() == [44]
    assert sorted(naive) == list(range(38))  # The 3-step windows of t = 0..37 are complete.
    expected = {id_ for id_, (_, pos) in positions.items() if pos - 3 >= 12}
    assert expected == set(range(12, 38))
    assert_served_as_stored(replay, naive, expected, 4000)


def test_bytes_per_transition_at_84x84x4_meet_dopamines():
  capacity = 1_000
  nbytes = FrameStackReplay.nbytes((84, 84, 4), np.uint8, capacity, num_writers=2, streams_per_writer=8)
  with frame_replay((84, 84, 4), capacity, 2, 8) as replay:
    assert nbytes == os.path.getsize(f"/dev/shm/{replay.handle.block.name}")
  assert nbytes / capacity <= 7_200
  whole = SharedReplay.nbytes((84, 84, 4), np.uint8, capacity, 2)
  assert whole / capacity > 7.5 * nbytes / capacity  # Two whole stacks a transition: eight frames.
  assert FrameStackReplay.nbytes((84, 84, 4), np.uint8, 1_000_000, 4, 8) < 7.5e9


def test_contents_restore_and_a_new_writer_continue_the_streams():
  rng = np.random.default_rng(1)
  with frame_replay((3, 3, 4), 2 * 40, 1, 2) as replay:
    naive = {}
    positions = run_actor(StackedEnv(rng, 2, (3, 3), 4, 6.0), replay.writer(0), naive, 2, 25, 0, rng)
    contents = replay.contents()
    with frame_replay((3, 3, 4), 2 * 40, 1, 2) as restored:
      restored.restore(contents)
      count = restored._arrays["frame_count"]
      expected = {id_ for id_, (slot, pos) in positions.items() if pos - 3 >= count[slot] - 40}
      assert_served_as_stored(restored, naive, expected, 4000)
      # A new actor's references start at 0 again; its writer puts them after the saved frames.
      more = run_actor(StackedEnv(rng, 2, (3, 3), 4, 6.0), restored.writer(0), naive, 2, 10, 10**6, rng)
      assert restored.inserts() == len(naive)
      batch, ids = restored.sample(4000, np.random.default_rng(2))
      served = set(ids[batch.valid.astype(bool)].tolist())
      assert served & set(more) and served & expected  # Both the old actor's and the new one's.
      for i in batch.valid.nonzero()[0]:
        assert np.array_equal(batch.next_obs[i], naive[int(ids[i])]["next_obs"])
    with frame_replay((3, 4, 4), 2 * 40, 1, 2) as other:
      with pytest.raises(ValueError, match="frame"):
        other.restore(contents)


def test_a_cell_torn_while_contents_copies_it_is_saved_unserved():
  rng = np.random.default_rng(2)
  with frame_replay((2, 2, 2), 30) as replay:
    naive = {}
    run_actor(StackedEnv(rng, 1, (2, 2), 2, 1e9, life_loss=0.0), replay.writer(0), naive, 1, 20, 0, rng)
    arrays = replay._arrays
    newest = int(arrays["frame_count"][0]) - 2  # The obs frame of the newest transition.
    cell = newest % 30
    arrays["transition_version"][cell] += 1  # Odd: being rewritten while contents copies it.
    contents = replay.contents()
    assert contents["transition_version"][cell] == 0 and contents["frame_version"][cell] == 2 * newest + 2
    with frame_replay((2, 2, 2), 30) as restored:
      restored.restore(contents)
      batch, ids = restored.sample(2000, np.random.default_rng(0))
      # All but the newest transition (id 19, whose obs frame is the torn cell).
      assert set(ids[batch.valid.astype(bool)].tolist()) == set(range(19))


def _write_forever(handle, stop, frame_shape):
  """A writer whose frames encode (slot, position): every pixel of frame p of slot e is (7e + p) % 256."""
  replay = SharedReplay.attach(handle)
  writer = replay.writer(0)
  e = replay.streams_per_writer
  position = np.zeros(e, np.int64)
  while not stop.is_set():
    slots = np.arange(e)
    frames = ((7 * slots + position)[:, None, None] % 256 + np.zeros((1, *frame_shape), np.int64)).astype(np.uint8)
    obs_ref = (position - 2) * e + slots  # A 2-step transition from position - 2 to position.
    fresh = position >= replay.stack + 1
    writer.add({"frames": frames, "frame_slot": slots, "frame_position": position.copy(),
                "obs": obs_ref[fresh], "next_obs": (position * e + slots)[fresh],
                "action": (position[fresh] - 2).astype(np.int32), "reward": np.zeros(fresh.sum(), np.float32),
                "discount": np.ones(fresh.sum(), np.float32), "policy_step": slots[fresh].astype(np.int64)})
    position += 1
  replay.close()


def test_samples_taken_while_another_process_overwrites_the_ring_are_never_torn():
  stack = 3
  with frame_replay((16, 16, stack), 2 * 24, 1, 2) as replay:
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    child = ctx.Process(target=_write_forever, args=(replay.handle, stop, (16, 16)))
    with reaped([child]):
      child.start()
      rng = np.random.default_rng(0)
      valid_rows = 0
      while valid_rows < 20_000:
        if replay.inserts() == 0:
          continue
        batch, slot = replay.sample(256, rng)
        for i in batch.valid.nonzero()[0]:
          obs_pos = int(batch.action[i])  # The writer's action is the obs position.
          want = (7 * int(slot[i]) + np.arange(obs_pos - stack + 1, obs_pos + 3)) % 256
          assert (batch.obs[i] == want[:stack]).all() and (batch.next_obs[i] == want[2:]).all()
        valid_rows += int(batch.valid.sum())
      stop.set()
      child.join(30)
      assert child.exitcode == 0


def test_invalid_arguments_name_the_field():
  with pytest.raises(ValueError, match="capacity"):
    FrameStackReplay.create((84, 84, 4), np.uint8, 100, 1, streams_per_writer=8)
  with pytest.raises(ValueError, match="obs_shape"):
    FrameStackReplay.create((84, 84), np.uint8, 100)
