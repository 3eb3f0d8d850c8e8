"""Tests for jaxrl.shm: ParamStore round trips, versions, isolation, a read
torn by publishes and a multi-process seqlock hammer; the machine and
/dev/shm checks."""

from __future__ import annotations

import collections
import contextlib
import multiprocessing as mp
import os
import pickle
import platform
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from children import FetchHook, reaped
from jaxrl.replay import SharedReplay
from jaxrl.shm import (ParamStore, SharedBlock, SharedMemoryError, check_free_space, check_memory_ordering,
                       remove_dead_segments)


def _segments(pid: int) -> set[str]:
  return {n for n in os.listdir("/dev/shm") if n.startswith(f"jaxrl_{pid}_")}


@pytest.fixture(autouse=True)
def no_leaked_segments():
  before = _segments(os.getpid())
  yield
  assert _segments(os.getpid()) == before


@contextlib.contextmanager
def _owned(template):
  store = ParamStore.create(template)
  try:
    yield store
  finally:
    store.close()
    store.unlink()


def _assert_same_tree(got, want):
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    assert isinstance(g, np.ndarray) and g.flags.owndata
    assert g.dtype == np.asarray(w).dtype
    np.testing.assert_array_equal(g, np.asarray(w))


_leaves = st.sampled_from([np.float32, np.float64, np.int32, np.uint8, np.bool_]).flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
)
_trees = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.dictionaries(st.text("abcxyz", min_size=1, max_size=3), children, min_size=1, max_size=3),
        st.lists(children, min_size=1, max_size=3),
        st.lists(children, min_size=1, max_size=3).map(tuple),
    ),
    max_leaves=8,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_trees, epsilons=st.lists(st.floats(0, 1), min_size=1, max_size=5), step=st.integers(0, 2**40))
def test_round_trip_and_versions(tree, epsilons, step):
  with _owned(tree) as store:
    reader = ParamStore.attach(pickle.loads(pickle.dumps(store.handle)))
    try:
      assert store.latest_version() == reader.latest_version() == 0
      versions = [store.publish(tree, epsilon=e, step=step + i) for i, e in enumerate(epsilons)]
      assert versions == list(range(1, len(epsilons) + 1))
      assert reader.latest_version() == versions[-1]
      for snap in (store.read(), reader.read()):
        _assert_same_tree(snap.params, tree)
        assert (snap.epsilon, snap.step, snap.version) == (epsilons[-1], step + len(epsilons) - 1, versions[-1])
    finally:
      reader.close()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_trees)
def test_nbytes_is_the_segment_size(tree):
  with _owned(tree) as store:
    assert ParamStore.nbytes(tree) == os.path.getsize(f"/dev/shm/{store.handle.block.name}")
  assert ParamStore.nbytes(tree) >= 3 * sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(tree))


def _mlp(value, like=np):
  return {
      "dense0": {"kernel": like.full((5, 3), value, like.float32), "bias": like.full((3,), value, like.float32)},
      "head": [like.full((3, 2), value, like.float32), like.full((), value, like.int32)],
  }


def test_read_before_publish_raises():
  with _owned(_mlp(0)) as store:
    with pytest.raises(RuntimeError, match="nothing published"):
      store.read()


def test_snapshot_isolation():
  with _owned(_mlp(0)) as store:
    params = _mlp(1)
    store.publish(params, epsilon=0.5, step=1)
    params["dense0"]["kernel"][:] = -1  # The store holds its own copy.
    first = store.read()
    for v in range(2, 6):  # Wraps around every buffer slot.
      store.publish(_mlp(v, like=jnp), epsilon=0.1, step=v)
    _assert_same_tree(first.params, _mlp(1))
    assert (first.epsilon, first.step, first.version) == (0.5, 1, 1)
    latest = store.read()
    latest.params["head"][0][:] = -1  # Mutating a snapshot leaves the store alone.
    _assert_same_tree(store.read().params, _mlp(5))


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p["dense0"].update(kernel=np.zeros((5, 4), np.float32)),  # shape
        lambda p: p["dense0"].pop("bias"),  # missing key
        lambda p: p.update(extra=np.zeros(1, np.float32)),  # extra key
        lambda p: p.update(head=tuple(p["head"])),  # container type
        lambda p: p["head"].__setitem__(1, np.float32(0.5)),  # float into an int leaf
    ],
)
def test_publish_mismatch_raises(change):
  with _owned(_mlp(0)) as store:
    store.publish(_mlp(1), epsilon=0.0, step=0)
    params = _mlp(2)
    change(params)
    with pytest.raises(ValueError):
      store.publish(params, epsilon=0.0, step=0)
    assert store.latest_version() == 1
    _assert_same_tree(store.read().params, _mlp(1))


def test_a_read_overtaken_by_three_publishes_is_retried():
  """Publishes 2..4 land while ``read`` copies the leaves of version 1, the
  last one after the others: the copy is torn and discarded, and the read
  returns version 4 whole."""
  with _owned(_mlp(0)) as store:
    store.publish(_mlp(1), epsilon=1.0, step=1)
    reader = ParamStore.attach(store.handle)
    try:
      def publish():
        for v in (2, 3, 4):  # Version 4 rewrites slot 4 % 3 = 1, version 1's.
          store.publish(_mlp(v), epsilon=1 / v, step=v)
      reader._block.arrays = FetchHook(reader._block.arrays, reader._keys[1][-1], publish)
      snap = reader.read()
      assert reader.torn_reads == 1
      _assert_same_tree(snap.params, _mlp(4))
      assert (snap.epsilon, snap.step, snap.version) == (0.25, 4, 4)
    finally:
      reader.close()


# Multi-process hammer, a smoke test: every element of publish v equals v.
# A read retries only when three publishes overtake its copy, so the leaves
# are large (a copy lasts long enough to be preempted on a busy machine);
# whether any read is torn depends on the machine, and the test above tears
# one on purpose.

_MIN_READS = 200


def _hammer_tree(version: int):
  return {"w": np.full((512, 512), version, np.float32),
          "b": [np.full(512, version, np.float32), np.full(7, version, np.int64)]}


def _hammer_epsilon(version: int) -> float:
  return 1.0 / (1.0 + version)


def _publisher(handle, barrier, readers_left, out):
  store = ParamStore.attach(handle)
  barrier.wait()
  published, version = 0, 0
  while readers_left.value > 0:
    version += 1
    published += store.publish(_hammer_tree(version), epsilon=_hammer_epsilon(version), step=3 * version) == version
  store.close()
  out.put(("publisher", version, published))


def _reader(handle, barrier, readers_left, out):
  store = ParamStore.attach(handle)
  barrier.wait()
  while store.latest_version() == 0:
    pass
  versions, errors = [], []
  while len(versions) < _MIN_READS:
    snap = store.read()
    leaves_ok = all(np.all(leaf == snap.version) for leaf in jax.tree_util.tree_leaves(snap.params))
    if not (leaves_ok and snap.epsilon == _hammer_epsilon(snap.version) and snap.step == 3 * snap.version):
      errors.append(f"torn snapshot: version {snap.version}, epsilon {snap.epsilon}, step {snap.step}")
    versions.append(snap.version)
  with readers_left.get_lock():
    readers_left.value -= 1
  out.put(("reader", versions, errors[:3]))
  store.close()


@pytest.mark.slow
def test_multiprocess_hammer(capfd):
  ctx = mp.get_context("spawn")
  with _owned(_hammer_tree(0)) as store:
    barrier, readers_left, out = ctx.Barrier(3), ctx.Value("i", 2), ctx.Queue()
    procs = [ctx.Process(target=f, args=(store.handle, barrier, readers_left, out))
             for f in (_publisher, _reader, _reader)]
    with reaped(procs):
      for p in procs:
        p.start()
      results = [out.get(timeout=120) for _ in procs]
      for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert os.path.exists(f"/dev/shm/{store.handle.block.name}")  # Children's exit did not unlink it.
    [(_, last, published)] = [r for r in results if r[0] == "publisher"]
    assert published == last == store.latest_version()
    readers = [r for r in results if r[0] == "reader"]
    assert len(readers) == 2
    for _, versions, errors in readers:
      assert errors == []
      assert len(versions) >= _MIN_READS
      assert all(a <= b for a, b in zip(versions, versions[1:]))
  err = capfd.readouterr().err
  assert "resource_tracker" not in err and "Traceback" not in err, err


_LIFECYCLE = textwrap.dedent("""
    import multiprocessing as mp
    import numpy as np
    from jaxrl.shm import ParamStore

    def child(handle):
      reader = ParamStore.attach(handle)
      assert reader.read().version == 1
      reader.close()

    if __name__ == "__main__":
      store = ParamStore.create({"w": np.zeros(3, np.float32)})
      store.publish({"w": np.ones(3, np.float32)}, epsilon=1.0, step=0)
      p = mp.get_context("spawn").Process(target=child, args=(store.handle,))
      p.start()
      p.join()
      assert p.exitcode == 0
      store.close()
      store.unlink()
      store.unlink()
      print(store.handle.block.name)
""")


def test_lifecycle_leaves_nothing_behind(tmp_path):
  """A fresh interpreter (own resource tracker) that attaches from a child, closes and unlinks."""
  script = tmp_path / "lifecycle.py"
  script.write_text(_LIFECYCLE)
  proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr == ""
  name = proc.stdout.strip()
  assert name.startswith("jaxrl_") and not os.path.exists(f"/dev/shm/{name}")


def test_remove_dead_segments_removes_those_of_dead_processes_only():
  """A SIGKILLed process group (supervisor, children and resource tracker)
  leaves its segments; only those whose pid is gone are removed."""
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                        text=True, check=True)
  dead_pid = int(dead.stdout)
  left = [f"jaxrl_{dead_pid}_{suffix}" for suffix in ("0123456789ab", "ba9876543210")]
  others = [f"jaxrl_{dead_pid}", f"jaxrl_{dead_pid}_notes.txt", f"other_{dead_pid}_0123456789ab"]
  for name in left + others:
    with open(f"/dev/shm/{name}", "wb") as f:
      f.write(b"x" * 4096)
  live = SharedBlock.create({"x": ((4,), "float32")})
  try:
    assert set(left) <= set(remove_dead_segments())
    assert not any(os.path.exists(f"/dev/shm/{name}") for name in left)
    assert all(os.path.exists(f"/dev/shm/{name}") for name in others)
    assert os.path.exists(f"/dev/shm/{live.handle.name}")
    assert remove_dead_segments() == []
  finally:
    for name in others:
      os.unlink(f"/dev/shm/{name}")
    live.close()
    live.unlink()


@pytest.mark.parametrize("machine", ["x86_64", "AMD64"])
def test_memory_ordering_accepts_x86_64(monkeypatch, machine):
  monkeypatch.setattr(platform, "machine", lambda: machine)
  check_memory_ordering()


@pytest.mark.parametrize("machine", ["aarch64", "arm64", "ppc64le", "riscv64", "i686"])
def test_memory_ordering_refuses_other_cpus_but_constructors_work(monkeypatch, machine):
  monkeypatch.setattr(platform, "machine", lambda: machine)
  with pytest.raises(SharedMemoryError) as error:
    check_memory_ordering()
  message = str(error.value)
  assert isinstance(error.value, ValueError) and "\n" not in message
  assert repr(machine) in message and "x86-64 total store order" in message
  assert "runtime.mode=sync" in message
  with _owned(_mlp(0)) as store:  # One process (sync mode) needs no check.
    store.publish(_mlp(1), epsilon=0.0, step=0)
    _assert_same_tree(store.read().params, _mlp(1))
  replay = SharedReplay.create((3,), np.float32, capacity=4)
  replay.close()
  replay.unlink()


_Usage = collections.namedtuple("_Usage", "total used free")


def test_check_free_space(monkeypatch):
  mib, paths = 2**20, []
  monkeypatch.setattr(shutil, "disk_usage", lambda path: paths.append(path) or _Usage(64 * mib, 60 * mib, 4 * mib))
  check_free_space(4 * mib, "the replay")  # Fits exactly.
  with pytest.raises(SharedMemoryError) as error:
    check_free_space(100 * mib + 1, "the replay and parameter store")
  message = str(error.value)
  assert paths == ["/dev/shm"] * 2 and isinstance(error.value, ValueError) and "\n" not in message
  assert message.startswith("the replay and parameter store needs 100.0 MiB of shared memory")
  assert "/dev/shm has 4.0 MiB free of 64.0 MiB" in message
  assert "docker run --shm-size=161m" in message and "replay.capacity" in message
