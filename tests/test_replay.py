"""Tests of jaxrl.replay: the shared replay, torn rows, checkpoints, rate limiting."""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing as mp
import os
import time

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from children import FetchHook, reaped
from jaxrl.replay import SharedReplay, Transition

F32 = np.float32


@pytest.fixture(autouse=True)
def no_leaked_segments():
  yield
  assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"jaxrl_{os.getpid()}_")]


@contextlib.contextmanager
def shared_replay(capacity, num_writers=1, obs_shape=(3,), obs_dtype=F32, **kwargs):
  replay = SharedReplay.create(obs_shape, obs_dtype, capacity, num_writers, **kwargs)
  try:
    yield replay
  finally:
    replay.close()
    replay.unlink()


@contextlib.contextmanager
def attached(replay):
  """The replay as another process opens it: writers there use their own arrays."""
  other = SharedReplay.attach(replay.handle)
  try:
    yield other
  finally:
    other.close()


def rows(ids, obs_shape=(3,)) -> dict[str, np.ndarray]:
  """Transitions whose every field encodes its id (ids < 2**24, exact in float32)."""
  ids = np.asarray(ids, np.int64)
  obs = np.broadcast_to(ids.astype(F32).reshape(-1, *[1] * len(obs_shape)), (len(ids), *obs_shape))
  return {"obs": obs, "action": ids.astype(np.int32), "reward": ids.astype(F32),
          "discount": ids.astype(F32), "next_obs": obs, "policy_step": ids}


def self_consistent(batch, policy_step) -> np.ndarray:
  """bool [B]: every field of the row holds the same id."""
  ids = batch.action
  fields = [batch.obs, batch.next_obs, batch.reward, batch.discount, policy_step]
  return np.logical_and.reduce([(f.reshape(len(ids), -1) == ids[:, None]).all(1) for f in fields])


def stored_consistent(contents) -> np.ndarray:
  """bool [capacity]: every field of the stored slot holds the same id."""
  slots = Transition(contents["obs"], contents["action"], contents["reward"], contents["discount"],
                     contents["next_obs"], None)
  return self_consistent(slots, contents["policy_step"])


def partition(capacity, num_writers, w) -> tuple[int, int]:
  """Start and size of writer w's slots, as documented by SharedReplay.create."""
  start, end = (w * capacity // num_writers, (w + 1) * capacity // num_writers)
  return start, end - start


# ---------------------------------------------------------------- replay

def test_ring_overwrites_oldest_and_samples_uniformly():
  with shared_replay(capacity=10, num_writers=2) as replay:
    first, second = replay.writer(0), replay.writer(1)
    for ids in (range(0, 3), range(3, 7), range(7, 9)):
      first.add(rows(ids))
    second.add(rows([100]))
    assert (replay.size(), replay.inserts()) == (6, 10)
    batch, policy_step = replay.sample(60_000, np.random.default_rng(0))
    assert batch.valid.all() and self_consistent(batch, policy_step).all()
    ids, counts = np.unique(batch.action, return_counts=True)
    assert ids.tolist() == [4, 5, 6, 7, 8, 100]
    np.testing.assert_allclose(counts / 60_000, 1 / 6, atol=0.01)  # Uniform over slots.
    assert replay.samples() == 60_000
    first.add(rows(range(20, 32)))  # More than a partition: the last 5 are kept.
    batch, _ = replay.sample(2_000, np.random.default_rng(1))
    assert set(batch.action.tolist()) == {27, 28, 29, 30, 31, 100}


@pytest.mark.parametrize("stored, served", [(F32, F32), (np.float64, F32), (np.uint8, np.uint8)])
def test_sample_dtypes(stored, served):
  with shared_replay(capacity=4, obs_dtype=stored) as replay:
    replay.writer(0).add(rows([1, 2]))
    batch, policy_step = replay.sample(5, np.random.default_rng(0))
    assert [x.dtype for x in batch] == [served, np.int32, F32, F32, served, F32, F32]
    assert (batch.weight == 1).all() and batch.weight.shape == (5,)   # uniform replay: ones
    assert self_consistent(batch, policy_step).all()
    assert batch.obs.shape == batch.next_obs.shape == (5, 3) and policy_step.dtype == np.int64


@pytest.mark.parametrize("obs_shape, obs_dtype, capacity, num_writers",
                         [((3,), F32, 10, 2), ((84, 84, 4), np.uint8, 100, 3), ((), np.float64, 1, 1)])
def test_nbytes_is_the_segment_size(obs_shape, obs_dtype, capacity, num_writers):
  nbytes = SharedReplay.nbytes(obs_shape, obs_dtype, capacity, num_writers)
  with shared_replay(capacity, num_writers, obs_shape, obs_dtype) as replay:
    assert nbytes == os.path.getsize(f"/dev/shm/{replay.handle.block.name}")
  per_transition = 2 * np.dtype(obs_dtype).itemsize * math.prod(obs_shape) + 44
  unpadded = capacity * per_transition + 8 * (3 * num_writers + 1) + 4  # 3 words a writer, 1 of samples; max_priority.
  assert 0 <= nbytes - unpadded < 15 * 64  # Fifteen arrays, each padded to 64 bytes.


def tear(replay, writer_id, count) -> list[int]:
  """Leaves what a writer killed inside ``add`` of ``count`` rows leaves behind.

  The next write indices' slots get their odd version and part of a new row
  (obs = -1); the write counter is not raised. Returns the slots.
  """
  arrays = replay._arrays
  start, size = partition(replay.capacity, replay.num_writers, writer_id)
  index = arrays["write_count"][writer_id] + np.arange(min(count, size))
  slots = start + index % size
  arrays["version"][slots] = 2 * index + 1
  arrays["obs"][slots] = -1.0
  return slots.tolist()


@settings(max_examples=60, deadline=None)
@given(num_writers=st.integers(1, 3), extra=st.integers(0, 9),
       ops=st.lists(st.tuples(st.sampled_from(["add", "add", "tear", "restart"]),
                              st.integers(0, 2), st.integers(0, 9)), max_size=20))
def test_samples_only_committed_complete_rows(num_writers, extra, ops):
  capacity = num_writers + extra
  rng = np.random.default_rng(0)
  with shared_replay(capacity, num_writers) as replay:
    writers = [replay.writer(w) for w in range(num_writers)]
    held, count, next_id = {}, [0] * num_writers, 0  # held: slot -> id, or None if torn.
    for op, w, m in ops:
      w %= num_writers
      start, size = partition(capacity, num_writers, w)
      if op == "add":
        writers[w].add(rows(range(next_id, next_id + m)))
        for j in range(m):
          held[start + (count[w] + j) % size] = next_id + j
        count[w], next_id = count[w] + m, next_id + m
      elif op == "tear":
        held.update((slot, None) for slot in tear(replay, w, m))
      else:
        writers[w] = replay.writer(w)
      committed = [partition(capacity, num_writers, v)[0] + j
                   for v in range(num_writers)
                   for j in range(min(count[v], partition(capacity, num_writers, v)[1]))]
      assert replay.inserts() == sum(count) and replay.size() == len(committed)
      if not committed:
        continue
      batch, policy_step = replay.sample(64, rng)
      valid = batch.valid == 1
      live = {held[s] for s in committed} - {None}
      assert set(batch.action[valid].tolist()) <= live
      assert self_consistent(batch, policy_step)[valid].all()
      assert (batch.obs[~valid] == 0).all() and (batch.action[~valid] == 0).all()
      if all(held[s] is not None for s in committed):
        assert valid.all()


def test_writer_restart_resumes_its_partition():
  with shared_replay(capacity=4) as replay:
    replay.writer(0).add(rows(range(4)))  # Slots 0..3 hold ids 0..3 (write indices 0..3).
    torn = tear(replay, 0, 1)  # Died writing index 4 into slot 0.
    assert torn == [0]
    batch, policy_step = replay.sample(400, np.random.default_rng(0))
    valid = batch.valid == 1
    assert not valid.all() and set(batch.action[valid].tolist()) == {1, 2, 3}
    assert self_consistent(batch, policy_step)[valid].all()

    attached = SharedReplay.attach(replay.handle)  # As a new actor process would.
    attached.writer(0).add(rows([10]))  # Rewrites index 4 in slot 0.
    attached.close()
    assert replay.inserts() == 5
    batch, _ = replay.sample(400, np.random.default_rng(1))
    assert batch.valid.all() and set(batch.action.tolist()) == {1, 2, 3, 10}

    # Died after completing index 5 (slot 1) but before raising the counter:
    # the next writer keeps that row and goes on at index 6 (slot 2), so no
    # slot's version ever goes back.
    version = replay._arrays["version"]
    version[1] = 11
    replay._arrays["obs"][1] = replay._arrays["next_obs"][1] = 11
    for key in ("action", "reward", "discount", "policy_step"):
      replay._arrays[key][1] = 11
    version[1] = 12
    replay.writer(0).add(rows([12]))
    assert replay.inserts() == 7 and version.tolist() == [10, 12, 14, 8]
    batch, _ = replay.sample(400, np.random.default_rng(2))
    assert batch.valid.all() and set(batch.action.tolist()) == {3, 10, 11, 12}


def test_never_written_rows_never_sample_valid():
  """A restored counter ahead of the slots written (version 0, every field
  0), as ``contents`` saved before it cut its counters."""
  with shared_replay(8) as replay, shared_replay(8) as restored:
    replay.writer(0).add(rows([1, 2, 3]))
    saved = replay.contents()
    saved["write_count"][0] = 6
    restored.restore(saved)
    batch, policy_step = restored.sample(2_000, np.random.default_rng(0))
    valid = batch.valid == 1
    assert set(batch.action[valid].tolist()) == {1, 2, 3} and 0.4 < (~valid).mean() < 0.6
    assert self_consistent(batch, policy_step)[valid].all()


def test_contents_counts_no_slot_begun_after_it_read_the_versions():
  with shared_replay(8) as replay, attached(replay) as other, shared_replay(8) as restored:
    writer = other.writer(0)
    writer.add(rows([1, 2, 3]))
    replay._arrays = FetchHook(replay._arrays, "write_count", lambda: writer.add(rows([4, 5])))
    saved = replay.contents()  # The add lands between the versions' second read and the counter's.
    assert saved["version"].tolist() == [2, 4, 6, 0, 0, 0, 0, 0] and saved["write_count"].tolist() == [3]
    restored.restore(saved)
    assert restored.size() == restored.inserts() == 3
    restored.writer(0).add(rows([6]))  # Index 3, into slot 3.
    batch, _ = restored.sample(400, np.random.default_rng(0))
    assert batch.valid.all() and set(batch.action.tolist()) == {1, 2, 3, 6}


def test_a_row_rewritten_while_sample_copies_it_is_invalid():
  with shared_replay(4) as replay, attached(replay) as other:
    writer = other.writer(0)
    writer.add(rows([1, 2, 3, 4]))
    replay._arrays = FetchHook(replay._arrays, "next_obs", lambda: writer.add(rows([5])))
    batch, policy_step = replay.sample(64, np.random.default_rng(0))  # Slot 0: 1 -> 5 mid-copy.
    valid = batch.valid == 1
    assert set(batch.action[valid].tolist()) == {2, 3, 4} and self_consistent(batch, policy_step)[valid].all()
    assert (~valid).any() and (batch.obs[~valid] == 0).all() and (policy_step[~valid] == 0).all()
    batch, _ = replay.sample(64, np.random.default_rng(1))
    assert batch.valid.all() and set(batch.action.tolist()) == {2, 3, 4, 5}


def test_contents_saves_a_row_rewritten_during_its_copy_invalid():
  """The torn slot is saved with the odd version of the write it saw begun,
  stays invalid after restore, and is valid again once rewritten."""
  with shared_replay(4) as replay, attached(replay) as other, shared_replay(4) as restored:
    writer = other.writer(0)
    writer.add(rows([1, 2, 3, 4]))
    replay._arrays = FetchHook(replay._arrays, "next_obs", lambda: writer.add(rows([5])))
    saved = replay.contents()  # Slot 0 (index 0 -> 4) torn: obs of id 1, next_obs of id 5.
    assert saved["version"].tolist() == [9, 4, 6, 8] and saved["write_count"].tolist() == [5]
    assert stored_consistent(saved).tolist() == [False, True, True, True]
    restored.restore(saved)
    batch, policy_step = restored.sample(64, np.random.default_rng(0))
    valid = batch.valid == 1
    assert set(batch.action[valid].tolist()) == {2, 3, 4} and (~valid).any()
    restored.writer(0).add(rows([6, 7, 8, 9]))  # Indices 5..8: index 8 rewrites slot 0.
    assert restored._arrays["version"].tolist() == [18, 12, 14, 16]
    batch, _ = restored.sample(64, np.random.default_rng(1))
    assert batch.valid.all() and set(batch.action.tolist()) == {6, 7, 8, 9}


def _write(handle, writer_id, num_batches, seed, obs_shape, stop=None):
  """Writer process: batches of 16 rows with random ids, all fields equal to
  the id; ``num_batches`` of them, or fewer once the event ``stop`` is set."""
  replay = SharedReplay.attach(handle)
  writer = replay.writer(writer_id)
  rng = np.random.default_rng(seed)
  for _ in range(num_batches):
    if stop is not None and stop.is_set():
      break
    writer.add(rows(rng.integers(0, 2**24, 16), obs_shape))
  replay.close()


@pytest.mark.slow
def test_two_writer_processes_and_a_sampler():
  """Smoke test across processes: every row sampled valid is whole, and a
  writer SIGKILLed (most likely inside ``add``) is resumed by a new one.
  Whether any copy was torn depends on the machine; the tests above tear
  one on purpose."""
  ctx, obs_shape, rng = mp.get_context("spawn"), (512,), np.random.default_rng(0)
  procs, checked = [], 0

  def start(writer_id, num_batches, seed):
    procs.append(ctx.Process(target=_write,
                             args=(replay.handle, writer_id, num_batches, seed, obs_shape)))
    procs[-1].start()
    return procs[-1]

  def sample_while(*running):
    nonlocal checked
    while any(p.is_alive() for p in running):
      if replay.size():
        batch, policy_step = replay.sample(64, rng)
        valid = batch.valid == 1
        assert self_consistent(batch, policy_step)[valid].all()
        checked += int(valid.sum())

  with shared_replay(capacity=128, num_writers=2, obs_shape=obs_shape) as replay, reaped(procs):
    writers = [start(0, 500, 0), start(1, 500, 1)]
    sample_while(*writers)
    inserted = 2 * 500 * 16
    assert [p.exitcode for p in writers] == [0, 0] and replay.inserts() == inserted

    doomed = start(1, 10**9, 2)
    while doomed.is_alive() and replay.inserts() < inserted + 10 * 16:
      pass
    doomed.kill()  # SIGKILL, most likely inside add().
    doomed.join()
    killed_at = replay.inserts()
    restarted = start(1, 8, 3)
    sample_while(restarted)
    assert restarted.exitcode == 0 and replay.inserts() >= killed_at + 8 * 16
    batch, policy_step = replay.sample(4_096, rng)  # 8 batches rewrote partition 1 whole.
    assert batch.valid.all() and self_consistent(batch, policy_step).all()
  assert checked > 0


@pytest.mark.slow
def test_contents_taken_while_writers_write_restores_no_torn_row():
  """Smoke test: checkpoints taken while two writer processes rewrite their
  partitions save every torn slot (fields of two transitions) invalid, and a
  replay restored from one samples only self-consistent rows, before and
  after its writers resume. Large observations make each copy long, so that
  writers are likely to rewrite slots within it."""
  ctx, obs_shape, rng = mp.get_context("spawn"), (4096,), np.random.default_rng(0)
  stop = ctx.Event()
  with shared_replay(128, 2, obs_shape=obs_shape) as replay, \
       shared_replay(128, 2, obs_shape=obs_shape) as restored:
    procs = [ctx.Process(target=_write, args=(replay.handle, w, 10**9, w, obs_shape, stop))
             for w in range(2)]
    with reaped(procs):
      for p in procs:
        p.start()
      while replay.inserts() < 4 * replay.capacity:  # The writers are under way.
        assert all(p.is_alive() for p in procs)
        time.sleep(0.01)
      for _ in range(100):
        saved = replay.contents()
        assert (saved["version"] <= replay._arrays["version"]).all()  # Never ahead of the replay.
        mixed = ~stored_consistent(saved)
        assert (saved["version"][mixed] % 2 == 1).all(), "a torn slot was saved as complete"
        restored.restore(saved)
        if restored.size():
          batch, policy_step = restored.sample(64, rng)
          assert self_consistent(batch, policy_step)[batch.valid == 1].all()
        for w in range(2):  # The writers resume past, or rewrite, every torn slot.
          restored.writer(w).add(rows(np.full(8, 10 + w), obs_shape))
        assert (restored._arrays["version"] >= saved["version"]).all()
        batch, policy_step = restored.sample(64, rng)
        assert self_consistent(batch, policy_step)[batch.valid == 1].all()
      stop.set()
      for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0


# ---------------------------------------------------------------- rate limiting

@settings(max_examples=40, deadline=None)
@given(ratio=st.floats(0.25, 8.0), tolerance=st.floats(0.0, 40.0), min_size=st.integers(1, 16),
       batch=st.integers(1, 32), insert_sizes=st.lists(st.integers(1, 12), min_size=1, max_size=4),
       prefer_insert=st.lists(st.booleans(), min_size=1, max_size=40))
def test_rate_limiter_bounds_the_ratio_and_never_deadlocks(ratio, tolerance, min_size, batch,
                                                           insert_sizes, prefer_insert):
  rng = np.random.default_rng(0)
  with shared_replay(32, num_writers=2, min_size=min_size, samples_per_insert=ratio,
                     rate_tolerance=tolerance) as replay:
    writers = [replay.writer(0), replay.writer(1)]
    for step in range(300):
      n = insert_sizes[step % len(insert_sizes)]
      may_insert, may_sample = writers[step % 2].can_insert(n), replay.can_sample(batch)
      assert may_insert or may_sample
      if may_insert and (prefer_insert[step % len(prefer_insert)] or not may_sample):
        writers[step % 2].add(rows(np.zeros(n)))
      else:
        replay.sample(batch, rng)
      inserts, samples = replay.inserts(), replay.samples()
      assert inserts - min_size - samples / ratio <= tolerance + 2 * max(insert_sizes) + 1e-9
      learner_lead = max(tolerance, batch / ratio)
      assert samples == 0 or samples <= ratio * (inserts - min_size + learner_lead) + 1e-9
    assert replay.samples() > 0


def test_writers_that_keep_waiting_add_equal_rows():
  """Steps of 1, 5 and 20 rows, polled in turn; the learner samples 4 rows
  whenever no writer was admitted, so the lead stays above 0 and only the
  line decides who inserts."""
  sizes = (1, 5, 20)
  with shared_replay(96, len(sizes), min_size=1, samples_per_insert=1.0, rate_tolerance=10.0) as replay:
    writers, rng = [replay.writer(w) for w in range(len(sizes))], np.random.default_rng(0)
    for _ in range(1_000):
      admitted = [writer.can_insert(n) for writer, n in zip(writers, sizes)]
      for writer, n in itertools.compress(zip(writers, sizes), admitted):
        writer.add(rows(np.zeros(n)))
      if not any(admitted):
        replay.sample(4, rng)
    inserted = replay._arrays["write_count"]
    assert inserted.min() > 500 and inserted.max() - inserted.min() <= max(sizes), inserted


def test_a_writer_killed_while_waiting_holds_the_line_down_to_zero_lead():
  with shared_replay(64, 2, min_size=1, samples_per_insert=1.0, rate_tolerance=8.0) as replay:
    first, second, rng = replay.writer(0), replay.writer(1), np.random.default_rng(0)
    second.add(rows(np.zeros(5)))  # Lead 4; the largest tag added, V, is 5.
    assert first.can_insert(1)  # Tag 5 + 1: first in line; then killed before adding.
    assert not second.can_insert(3)  # Tag 5 + 3: behind it.
    replay.sample(4, rng)
    assert second.can_insert(3)  # Lead 0 admits every writer.
    second.add(rows(np.zeros(3)))  # V = 8.
    assert not second.can_insert(3)  # Lead 3, tag 8 + 3: still behind the dead writer.
    replay.writer(0)  # A restarted writer 0 leaves the line.
    assert second.can_insert(3)


def _insert_steps(handle, writer_id, n, start, stop):
  """Writer process: steps of ``n`` rows, each added once ``can_insert(n)``
  admits it, from the barrier ``start`` until the event ``stop`` is set."""
  replay = SharedReplay.attach(handle)
  writer, step = replay.writer(writer_id), rows(np.full(n, writer_id))
  start.wait()
  while not stop.is_set():
    if writer.can_insert(n):
      writer.add(step)
    else:
      time.sleep(0.0002)
  replay.close()


def test_writers_with_unequal_steps_share_the_inserts():
  """Three writer processes with steps of 8, 40 and 160 rows and a learner
  sampling 32 rows every 2 ms: in every second each writer inserts at least
  1/6 of the rows (an even share is 1/3)."""
  sizes, seconds = (8, 40, 160), 4
  ctx, rng = mp.get_context("spawn"), np.random.default_rng(0)
  start, stop = ctx.Barrier(len(sizes) + 1), ctx.Event()
  with shared_replay(3 * 512, len(sizes), min_size=160, samples_per_insert=1.0,
                     rate_tolerance=64.0) as replay:
    procs = [ctx.Process(target=_insert_steps, args=(replay.handle, w, n, start, stop))
             for w, n in enumerate(sizes)]
    with reaped(procs):
      for p in procs:
        p.start()
      start.wait(timeout=60)
      write_count = replay._arrays["write_count"]
      counts, tick = [write_count.copy()], time.monotonic() + 1.0
      while len(counts) <= seconds:
        if replay.can_sample(32):
          replay.sample(32, rng)
        time.sleep(0.002)
        if time.monotonic() >= tick:
          counts.append(write_count.copy())
          tick += 1.0
      stop.set()
      for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
  inserted = np.diff(counts, axis=0)  # [second, writer] rows.
  share = inserted / inserted.sum(1, keepdims=True)
  assert (share >= 1 / (2 * len(sizes))).all(), f"rows inserted per second and writer:\n{inserted}"


@pytest.mark.parametrize("ratio", [None, 0.0])
def test_no_rate_limit(ratio):
  with shared_replay(8, min_size=3, samples_per_insert=ratio) as replay:
    writer = replay.writer(0)
    writer.add(rows([1, 2]))
    assert not replay.can_sample(1)
    writer.add(rows([3]))
    for _ in range(5):
      assert replay.can_sample(1_000) and writer.can_insert(1_000)
      replay.sample(1_000, np.random.default_rng(0))


def test_invalid_arguments_name_the_field():
  with pytest.raises(ValueError, match="^min_size"):
    SharedReplay.create((3,), F32, capacity=10, num_writers=2, min_size=6)
  with shared_replay(4, num_writers=2) as replay:
    with pytest.raises(ValueError, match="^writer_id"):
      replay.writer(2)
