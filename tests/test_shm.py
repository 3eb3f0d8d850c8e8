"""Tests for jaxrl.shm.ParamStore: round trips, versions, isolation, and a
multi-process seqlock hammer."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
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

from jaxrl.shm import ParamStore


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


# Multi-process hammer: every element of publish v equals v.

_NUM_PUBLISHES = 20000
_NUM_READS = 5000  # At least; readers go on until the publisher is done.


def _hammer_tree(version: int):
  return {"w": np.full((128, 128), version, np.float32), "b": [np.full(128, version, np.float32), np.full(7, version, np.int64)]}


def _hammer_epsilon(version: int) -> float:
  return 1.0 / (1.0 + version)


def _publisher(handle, barrier, out):
  store = ParamStore.attach(handle)
  barrier.wait()
  published = 0
  for version in range(1, _NUM_PUBLISHES + 1):
    published += store.publish(_hammer_tree(version), epsilon=_hammer_epsilon(version), step=3 * version) == version
  store.close()
  out.put(("publisher", published))


def _reader(handle, barrier, out):
  store = ParamStore.attach(handle)
  barrier.wait()
  while store.latest_version() == 0:
    pass
  versions, errors = [], []
  while len(versions) < _NUM_READS or store.latest_version() < _NUM_PUBLISHES:
    snap = store.read()
    leaves_ok = all(np.all(leaf == snap.version) for leaf in jax.tree_util.tree_leaves(snap.params))
    if not (leaves_ok and snap.epsilon == _hammer_epsilon(snap.version) and snap.step == 3 * snap.version):
      errors.append(f"torn snapshot: version {snap.version}, epsilon {snap.epsilon}, step {snap.step}")
    versions.append(snap.version)
  store.close()
  out.put(("reader", versions, errors[:3]))


def test_multiprocess_hammer(capfd):
  ctx = mp.get_context("spawn")
  with _owned(_hammer_tree(0)) as store:
    barrier, out = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=f, args=(store.handle, barrier, out)) for f in (_publisher, _reader, _reader)]
    try:
      for p in procs:
        p.start()
      results = [out.get(timeout=60) for _ in procs]
      for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    finally:
      for p in procs:
        if p.is_alive():
          p.kill()
          p.join()
    assert os.path.exists(f"/dev/shm/{store.handle.block.name}")  # Children's exit did not unlink it.
    assert store.latest_version() == _NUM_PUBLISHES
    assert [r[1] for r in results if r[0] == "publisher"] == [_NUM_PUBLISHES]
    readers = [r for r in results if r[0] == "reader"]
    assert len(readers) == 2
    for _, versions, errors in readers:
      assert errors == []
      assert len(versions) >= _NUM_READS
      assert all(a <= b for a, b in zip(versions, versions[1:]))
      assert len(set(versions)) > 1  # It read while the publisher was publishing.
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
