"""Tests of jaxrl.priorities: the sum tree, proportional sampling and its
weights, priorities kept per row version, in both replay layouts."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest
import scipy.stats

from jaxrl.frame_replay import FrameStackReplay
from jaxrl.priorities import PrioritizedSampler, SumTree, importance_exponent, importance_weights
from children import reaped
from jaxrl.replay import SharedReplay
from test_frame_replay import StackedEnv, _write_forever, run_actor

F32 = np.float32
ALPHA, EPS = 0.6, 1e-6


@pytest.fixture(autouse=True)
def no_leaked_segments():
  yield
  assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"jaxrl_{os.getpid()}_")]


@contextlib.contextmanager
def replay_of(layout, *args, **kwargs):
  replay = layout.create(*args, **kwargs)
  try:
    yield replay
  finally:
    replay.close()
    replay.unlink()


def rows(ids, priority=None) -> dict[str, np.ndarray]:
  """Transitions whose fields encode their id, with ``priority`` if given."""
  ids = np.asarray(ids, np.int64)
  obs = np.repeat(ids.astype(F32)[:, None], 2, axis=1)
  out = {"obs": obs, "action": ids.astype(np.int32), "reward": ids.astype(F32),
         "discount": np.ones(len(ids), F32), "next_obs": obs, "policy_step": ids}
  if priority is not None:
    out["priority"] = np.asarray(priority, F32)
  return out


def leaf(priority) -> np.ndarray:
  """The tree's leaf of each priority (an array, as the sampler computes it)."""
  return (np.atleast_1d(np.asarray(priority, F32)).astype(np.float64) + EPS) ** ALPHA


# ---------------------------------------------------------------- the tree

@settings(max_examples=80, deadline=None)
@given(size=st.integers(1, 300), fanout=st.sampled_from([2, 3, 4, 32]), top=st.sampled_from([1, 2, 7, 1024]),
       updates=st.lists(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 5)), min_size=1, max_size=40),
                        min_size=1, max_size=6))
def test_the_tree_finds_what_a_cumsum_sampler_finds(size, fanout, top, updates):
  """Integer leaves, so that sums are exact: every target k + 0.5 finds the
  row np.searchsorted finds on the running sum, never a row of 0."""
  tree, naive = SumTree(size, fanout, top), np.zeros(size)
  for update in updates:
    index = np.array([i % size for i, _ in update])
    values = np.array([v for _, v in update], np.float64)
    tree.update(index, values)
    naive[index] = values   # Of a row given twice, the last, as numpy assigns.
    np.testing.assert_array_equal(tree.leaves, naive)
    assert tree.total == naive.sum()
    targets = np.arange(int(naive.sum())) + 0.5
    found = tree.find(targets)
    np.testing.assert_array_equal(found, np.searchsorted(np.cumsum(naive), targets, side="right"))
    assert (naive[found] > 0).all()


@pytest.mark.parametrize("top", [1, 1024])   # Levels above the leaves, or none.
def test_a_target_past_the_total_by_rounding_finds_the_last_positive_row(top):
  tree = SumTree(100, 4, top)
  tree.update(np.array([3, 50, 61]), np.array([0.1, 0.2, 0.3]))
  assert tree.find(np.array([tree.total, np.nextafter(tree.total, 1.0)])).tolist() == [61, 61]


def test_stratified_sampling_covers_the_mass():
  rng = np.random.default_rng(0)
  tree = SumTree(1_000)
  values = rng.exponential(size=1_000) * (rng.random(1_000) < 0.7)
  tree.update(np.arange(1_000), values)
  batch = 64
  drawn = tree.sample(batch, rng, batches=3).reshape(3, batch)
  end = np.cumsum(values)
  segment = np.arange(batch) * tree.total / batch
  for row in drawn:   # Draw i lies in segment i: the row's span of the running sum meets it.
    assert ((end[row] - values[row] <= segment + tree.total / batch) & (end[row] >= segment)).all()
  tree.update(np.arange(1_000), np.where(np.arange(1_000) < 32, 1.0, 0.0))
  assert sorted(tree.sample(32, rng)) == list(range(32))   # Equal mass: each row once.
  tree.update(np.arange(1_000), 0.0)
  with pytest.raises(ValueError, match="total priority 0"):
    tree.sample(4, rng)


def test_importance_weights_and_beta_schedule():
  p = np.array([[1.0, 2.0, 4.0], [3.0, 3.0, 6.0]])
  np.testing.assert_allclose(importance_weights(p, 0.5), [[1, 2**-0.5, 0.5], [1, 1, 2**-0.5]])
  assert [importance_exponent(0.4, steps, 100) for steps in (0, 50, 100, 500)] == [0.4, 0.7, 1.0, 1.0]
  assert importance_exponent(0.4, 10**9, None) == 0.4


# ---------------------------------------------------------------- the sampler on a SharedReplay

def test_sampling_frequencies_match_priority_to_the_alpha_across_writer_partitions():
  """Three writers' partitions, priorities given and defaulted (the largest
  given, all taken in at once): over 100k draws a row's frequency is
  p**alpha / sum p**alpha (chi-square)."""
  rng = np.random.default_rng(0)
  priority = rng.uniform(0.05, 5.0, 24).astype(F32)
  with replay_of(SharedReplay, (2,), F32, 30, 3) as replay:
    for w in range(3):
      ids = np.arange(8 * w, 8 * w + 8)
      replay.writer(w).add(rows(ids[:6], priority[ids[:6]]))
      replay.writer(w).add(rows(ids[6:]))   # None given: the largest so far.
    defaulted = np.arange(24) % 8 >= 6
    priority[defaulted] = priority[~defaulted].max()
    sampler = PrioritizedSampler(replay, ALPHA, EPS)
    counts = np.zeros(24)
    for _ in range(100):
      batch, policy_step, drawn, _ = sampler.sample(100, rng, 0.4, batches=10)
      assert batch.valid.all() and (batch.action == policy_step).all()
      counts += np.bincount(batch.action, minlength=24)
    expected = leaf(priority) / leaf(priority).sum() * counts.sum()
    assert counts.sum() == 100_000 and replay.samples() == 100_000
    assert scipy.stats.chisquare(counts, expected).pvalue > 0.001


def test_importance_weights_match_the_formula():
  rng = np.random.default_rng(1)
  priority = rng.uniform(0.1, 3.0, 40).astype(F32)
  with replay_of(SharedReplay, (2,), F32, 50, 2) as replay:
    replay.writer(0).add(rows(range(20), priority[:20]))
    replay.writer(1).add(rows(range(20, 40), priority[20:]))
    sampler = PrioritizedSampler(replay, ALPHA, EPS)
    batch, _, _, _ = sampler.sample(16, rng, 0.7, batches=2)
    p = leaf(priority) / leaf(priority).sum()   # P(i) over the N = 40 transitions held.
    w = (40 * p[batch.action].reshape(2, 16)) ** -0.7
    np.testing.assert_allclose(batch.weight.reshape(2, 16), w / w.max(1, keepdims=True), rtol=1e-6)
    assert batch.weight.dtype == F32


def test_updates_set_the_priorities_of_sampled_rows_and_the_default_follows_the_largest():
  rng = np.random.default_rng(2)
  with replay_of(SharedReplay, (2,), F32, 8) as replay:
    writer = replay.writer(0)
    writer.add(rows(range(4), [1, 2, 3, 4]))
    sampler = PrioritizedSampler(replay, ALPHA, EPS)
    _, _, drawn, versions = sampler.sample(4, rng, 0.4)
    td = -np.arange(1, 5, dtype=F32) * 2   # |td| is the priority.
    sampler.update(drawn, versions, td)
    want = leaf([1, 2, 3, 4])
    want[drawn] = leaf(np.abs(td))   # Of a row drawn twice, the last.
    np.testing.assert_array_equal(sampler.tree.leaves[:4], want)
    writer.add(rows([4]))   # None given: the largest so far, the learner's 8.
    sampler.sample(1, rng, 0.4)
    assert sampler.tree.leaves[4] == leaf(8.0)
    sampler.update(np.array([4]), sampler._version[[4]], np.array([np.nan], F32))   # Not finite: kept.
    assert sampler.tree.leaves[4] == leaf(8.0)


@pytest.mark.parametrize("taken_in_first", [False, True])
def test_a_row_overwritten_after_it_was_sampled_keeps_its_new_priority(taken_in_first):
  """Whether or not the sampler took the new row in before the update."""
  rng = np.random.default_rng(3)
  with replay_of(SharedReplay, (2,), F32, 4) as replay:
    writer = replay.writer(0)
    writer.add(rows(range(4), [1, 1, 1, 1]))
    sampler = PrioritizedSampler(replay, ALPHA, EPS)
    _, _, drawn, versions = sampler.sample(4, rng, 0.4)
    assert sorted(drawn) == [0, 1, 2, 3]   # Equal priorities, 4 strata.
    writer.add(rows([4, 5], [30, 40]))   # Into slots 0 and 1.
    if taken_in_first:
      sampler.sample(4, rng, 0.4)
    sampler.update(drawn, versions, np.full(4, 7.0, F32))
    sampler.sample(4, rng, 0.4)
    np.testing.assert_array_equal(sampler.tree.leaves, leaf([30, 40, 7, 7]))
    with replay_of(SharedReplay, (2,), F32, 4) as restored:   # What a checkpoint keeps.
      restored.restore(replay.contents())
      np.testing.assert_array_equal(PrioritizedSampler(restored, ALPHA, EPS).tree.leaves, leaf([30, 40, 7, 7]))


def test_a_row_torn_or_never_completed_is_invalid_and_leaves_the_tree():
  rng = np.random.default_rng(4)
  with replay_of(SharedReplay, (2,), F32, 4) as replay:
    replay.writer(0).add(rows(range(4), [1, 1, 1, 1]))
    sampler = PrioritizedSampler(replay, ALPHA, EPS)
    replay._arrays["version"][2] += 1   # Odd: a writer killed while rewriting slot 2.
    batch, _, drawn, versions = sampler.sample(4, rng, 0.4)
    torn = drawn == 2
    assert torn.any() and (batch.valid == ~torn).all() and (versions[torn] == -1).all()
    assert sampler.tree.leaves[2] == 0
    sampler.update(drawn, versions, np.full(4, 5.0, F32))
    assert sampler.tree.leaves[2] == 0 and (sampler.tree.leaves[[0, 1, 3]] == leaf(5.0)).all()
    replay._arrays["version"][:] += 1   # Every row torn: drawn invalid, then nothing to draw.
    for _ in range(2):
      batch, _, _, versions = sampler.sample(4, rng, 0.4)
      assert not batch.valid.any() and (versions == -1).all() and np.isfinite(batch.weight).all()
    assert sampler.tree.total == 0 and (batch.weight == 1).all()


def test_contents_and_restore_rebuild_the_saved_tree():
  rng = np.random.default_rng(5)
  with replay_of(SharedReplay, (2,), F32, 40, 2) as replay:
    writers = [replay.writer(0), replay.writer(1)]
    sampler = PrioritizedSampler(replay, ALPHA, EPS)
    for step in range(12):
      given = rng.uniform(0, 3, 3) if step % 3 else None   # Some without: the largest so far.
      writers[step % 2].add(rows(range(3 * step, 3 * step + 3), given))
      _, _, drawn, versions = sampler.sample(8, rng, 0.4)
      sampler.update(drawn, versions, rng.normal(size=8).astype(F32) * 4)
    sampler.sample(1, rng, 0.4)   # Takes in nothing new: the tree as saved.
    saved = replay.contents()
    with replay_of(SharedReplay, (2,), F32, 40, 2) as restored:
      restored.restore(saved)
      rebuilt = PrioritizedSampler(restored, ALPHA, EPS)
      np.testing.assert_array_equal(rebuilt.tree.leaves, sampler.tree.leaves)
      assert rebuilt.tree.total == sampler.tree.total
      for target in (replay, restored):   # Rows without a priority get the same default after.
        target.writer(1).add(rows([99]))
      sampler.sample(1, rng, 0.4)
      rebuilt.sample(1, rng, 0.4)
      np.testing.assert_array_equal(rebuilt.tree.leaves, sampler.tree.leaves)


def test_contents_saved_without_priorities_restore_with_the_default():
  with replay_of(SharedReplay, (2,), F32, 6) as replay:
    replay.writer(0).add(rows(range(4), [5, 6, 7, 8]))
    saved = {k: v for k, v in replay.contents().items() if "priority" not in k and k != "learned_version"}
    with replay_of(SharedReplay, (2,), F32, 6) as restored:
      restored.restore(saved)
      np.testing.assert_array_equal(PrioritizedSampler(restored, ALPHA, EPS).tree.leaves, [*leaf([1, 1, 1, 1]), 0, 0])


def _write_with_priorities(handle, stop):
  """A writer process: rows of random ids, half with priority id % 7, half with none."""
  replay = SharedReplay.attach(handle)
  writer, rng = replay.writer(0), np.random.default_rng(0)
  while not stop.is_set():
    ids = rng.integers(0, 2**24, 8)
    writer.add(rows(ids, ids % 7 if ids[0] % 2 else None))
  replay.close()


@pytest.mark.parametrize("layout", [SharedReplay, FrameStackReplay])
def test_taken_in_while_another_process_writes_the_tree_is_what_a_new_sampler_reads(layout):
  """Sampling and updating while a writer process laps the ring: the rows
  served are whole, and once it stops, the tree taken in row by row equals
  one read from the whole replay (every cell holding no transition at 0)."""
  ctx, rng = mp.get_context("spawn"), np.random.default_rng(8)
  frames = layout is FrameStackReplay
  args = ((16, 16, 3), np.uint8, 2 * 24, 1) if frames else ((2,), F32, 64, 1)
  with replay_of(layout, *args, **({"streams_per_writer": 2} if frames else {})) as replay:
    sampler = PrioritizedSampler(replay, ALPHA, EPS)
    stop = ctx.Event()
    child = ctx.Process(target=_write_forever if frames else _write_with_priorities,
                        args=(replay.handle, stop, (16, 16)) if frames else (replay.handle, stop))
    with reaped([child]):
      child.start()
      served = 0
      while served < 5_000 or replay.inserts() < 4 * replay.capacity:
        if not replay.inserts():
          continue
        batch, policy_step, drawn, versions = sampler.sample(32, rng, 0.4)
        valid = batch.valid.astype(bool)
        if not frames:
          assert ((batch.action == policy_step) & (batch.obs[:, 0] == batch.action))[valid].all()
        for i in valid.nonzero()[0] if frames else ():   # Frames encode (slot, position); action the obs's.
          want = (7 * policy_step[i] + np.arange(batch.action[i] - 2, batch.action[i] + 3)) % 256
          assert (batch.obs[i] == want[:3]).all() and (batch.next_obs[i] == want[2:]).all()
        sampler.update(drawn, versions, rng.normal(size=32).astype(F32))
        served += int(valid.sum())
      stop.set()
      child.join(30)
      assert child.exitcode == 0
    sampler.sample(1, rng, 0.4)
    np.testing.assert_array_equal(sampler.tree.leaves, PrioritizedSampler(replay, ALPHA, EPS).tree.leaves)
    if frames:
      np.testing.assert_array_equal(sampler.tree.leaves > 0, held_cells(replay))


# ---------------------------------------------------------------- the sampler on a FrameStackReplay

def held_cells(replay) -> np.ndarray:
  """bool [capacity]: cells holding a transition the replay serves."""
  cells = np.arange(replay.capacity)
  return replay._servable(cells, replay._arrays["transition_version"][cells])


def test_frame_cells_without_a_transition_have_priority_zero():
  """Streams that wrap the ring several times, sampled between steps: the
  tree's positive leaves are exactly the cells holding a transition, and
  every sample is served bit-identical to what the actor made."""
  rng = np.random.default_rng(6)
  stack, slots = 3, 2
  with replay_of(FrameStackReplay, (3, 2, stack), np.uint8, 2 * slots * 20, 2, streams_per_writer=slots) as replay:
    sampler = PrioritizedSampler(replay, ALPHA, EPS)
    envs = [StackedEnv(rng, slots, (3, 2), stack, 6.0) for _ in range(2)]
    naive = {}
    for chunk in range(12):
      for w, env in enumerate(envs):   # A new writer each chunk: streams begin again with a stack.
        run_actor(env, replay.writer(w), naive, 2, 7, (chunk * 2 + w) * 10**6, rng)
      batch, ids, drawn, versions = sampler.sample(16, rng, 0.4, batches=2)
      np.testing.assert_array_equal(sampler.tree.leaves > 0, held_cells(replay))
      assert batch.valid.all() and (versions >= 0).all()
      for i, id_ in enumerate(ids.tolist()):
        assert np.array_equal(batch.obs[i], naive[id_]["obs"])
        assert np.array_equal(batch.next_obs[i], naive[id_]["next_obs"])
      sampler.update(drawn, versions, rng.normal(size=32).astype(F32))
    assert replay.inserts() > 2 * replay.capacity   # The ring came round.


def test_frame_contents_and_restore_rebuild_the_saved_tree():
  rng = np.random.default_rng(7)
  with replay_of(FrameStackReplay, (3, 3, 4), np.uint8, 2 * 40, 1, streams_per_writer=2) as replay:
    sampler = PrioritizedSampler(replay, ALPHA, EPS)
    env = StackedEnv(rng, 2, (3, 3), 4, 6.0)
    for chunk in range(4):
      run_actor(env, replay.writer(0), {}, 2, 12, chunk * 10**6, rng)
      _, _, drawn, versions = sampler.sample(8, rng, 0.4)
      sampler.update(drawn, versions, rng.normal(size=8).astype(F32))
    sampler.sample(1, rng, 0.4)
    with replay_of(FrameStackReplay, (3, 3, 4), np.uint8, 2 * 40, 1, streams_per_writer=2) as restored:
      restored.restore(replay.contents())
      rebuilt = PrioritizedSampler(restored, ALPHA, EPS)
      np.testing.assert_array_equal(rebuilt.tree.leaves, sampler.tree.leaves)
      assert rebuilt.tree.total == sampler.tree.total
