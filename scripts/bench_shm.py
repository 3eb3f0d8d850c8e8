"""Publish-to-visible latency of ``jaxrl.shm.ParamStore``, and what a read costs.

  python scripts/bench_shm.py [num_params] [repeats]

Latency is measured from the start of ``publish`` in this process to the end
of a complete ``read()`` in a spawned reader that spins on
``latest_version()``. Both ends use ``time.perf_counter_ns`` (CLOCK_MONOTONIC
on Linux, one clock for all processes).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time

import jax.numpy as jnp
import numpy as np

from jaxrl.shm import ParamStore

_WARMUP = 5  # Publishes before timing: every buffer slot gets touched once.


def _spin_reader(handle, ready, out, count: int) -> None:
  reader = ParamStore.attach(handle)
  ready.set()
  seen = 0
  for _ in range(count):
    while reader.latest_version() == seen:
      pass
    snap = reader.read()
    done_ns = time.perf_counter_ns()
    out.put((snap.version, done_ns))
    seen = snap.version
  reader.close()


def _median_ms(ns: list[int]) -> float:
  return float(np.median(ns)) / 1e6


def measure_publish_latency(num_params: int = 1_000_000, repeats: int = 50) -> dict:
  """Times ``ParamStore`` on a tree of 4 float32 leaves holding ``num_params`` in all.

  Returns a dict of milliseconds: ``latency_ms_median`` / ``latency_ms_p90``
  (publish start to a reader in another process holding a complete copy),
  ``publish_ms_median``, ``read_ms_median`` (one in-process ``read()``) and
  ``np_copy_ms_median`` (``np.copy`` of one float32 array of ``num_params``),
  plus ``num_params`` and ``repeats``.
  """
  sizes = [num_params // 4] * 3 + [num_params - 3 * (num_params // 4)]
  params = {f"layer{i}": {"kernel": jnp.full((n,), float(i), jnp.float32)} for i, n in enumerate(sizes)}
  store = ParamStore.create(params)
  ctx = mp.get_context("spawn")
  ready, out = ctx.Event(), ctx.Queue()
  proc = ctx.Process(target=_spin_reader, args=(store.handle, ready, out, _WARMUP + repeats))
  try:
    proc.start()
    ready.wait(timeout=60)
    latency_ns, publish_ns = [], []
    for i in range(_WARMUP + repeats):
      time.sleep(0.005)  # The reader is spinning when the publish starts.
      start_ns = time.perf_counter_ns()
      version = store.publish(params, epsilon=0.1, step=i)
      published_ns = time.perf_counter_ns()
      seen, done_ns = out.get(timeout=60)
      assert seen == version, (seen, version)
      if i >= _WARMUP:
        latency_ns.append(done_ns - start_ns)
        publish_ns.append(published_ns - start_ns)
    proc.join(timeout=60)

    read_ns, copy_ns = [], []
    flat = np.ones(num_params, np.float32)
    for _ in range(repeats):
      start_ns = time.perf_counter_ns()
      store.read()
      read_ns.append(time.perf_counter_ns() - start_ns)
      start_ns = time.perf_counter_ns()
      np.copy(flat)
      copy_ns.append(time.perf_counter_ns() - start_ns)
  finally:
    if proc.is_alive():
      proc.kill()
      proc.join()
    store.close()
    store.unlink()
  return {
      "num_params": num_params,
      "repeats": repeats,
      "latency_ms_median": _median_ms(latency_ns),
      "latency_ms_p90": float(np.percentile(latency_ns, 90)) / 1e6,
      "publish_ms_median": _median_ms(publish_ns),
      "read_ms_median": _median_ms(read_ns),
      "np_copy_ms_median": _median_ms(copy_ns),
  }


if __name__ == "__main__":
  print(json.dumps(measure_publish_latency(*map(int, sys.argv[1:])), indent=2))
