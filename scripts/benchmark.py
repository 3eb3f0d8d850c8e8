"""jaxrl benchmarks: prints a table and writes JSON.

  python scripts/benchmark.py [--sections train_step] [--out benchmark.json]

Each figure is the median of repeats; ratios are against a baseline measured
in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import numpy as np

import jaxrl


def _batch(size: int, obs_dim: int, num_actions: int, seed: int = 0) -> jaxrl.Transition:
  rng = np.random.default_rng(seed)
  return jaxrl.Transition(
      obs=rng.normal(size=(size, obs_dim)).astype(np.float32),
      action=rng.integers(0, num_actions, size).astype(np.int32),
      reward=rng.normal(size=size).astype(np.float32),
      discount=np.full(size, 0.99, np.float32),
      next_obs=rng.normal(size=(size, obs_dim)).astype(np.float32),
      valid=np.ones(size, np.float32))


def bench_train_step(repeats: int = 5, calls: int = 300) -> list[dict]:
  """Jitted train_step updates/s: hidden (120, 84), batch 128, CartPole shapes."""
  rows = []
  for algo in ("dqn", "iqn"):
    agent = jaxrl.make_agent(jaxrl.AgentConfig(algo=algo, hidden_sizes=(120, 84)), (4,), 2)
    state = agent.init(jax.random.PRNGKey(0))
    batch = jax.device_put(_batch(128, 4, 2))
    step = jax.jit(agent.train_step)
    state, _ = step(state, batch)
    jax.block_until_ready(state)
    n = calls if algo == "dqn" else calls // 10
    rates = []
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(n):
        state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
      rates.append(n / (time.perf_counter() - start))
    rows.append({"name": f"train_step {algo} (120,84) batch 128", "updates_per_s": statistics.median(rates),
                 "repeats": [round(r, 1) for r in rates]})
  return rows


SECTIONS = {"train_step": bench_train_step}


def main():
  parser = argparse.ArgumentParser(description="jaxrl benchmarks")
  parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
  parser.add_argument("--out", default="benchmark.json")
  args = parser.parse_args()
  results = {"machine": {"platform": platform.platform(), "cpus": jax.local_device_count(),
                         "backend": jax.default_backend(), "jax": jax.__version__}}
  for name in args.sections:
    rows = SECTIONS[name]()
    results[name] = rows
    print(f"\n== {name}")
    for row in rows:
      print("  " + "  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
