"""scripts/benchmark.py's time-to-475 criteria, against a brute-force reading of the records."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

_spec = importlib.util.spec_from_file_location(
    "benchmark", Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py")
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)

_RETURNS = st.sampled_from([0.0, 9.0, 474.0, 475.0, 500.0])
_RECORD = st.one_of(
    st.builds(lambda r: {"episode_return": r, "agent_id": 0}, _RETURNS),
    st.builds(lambda r: {"eval_return": r}, st.one_of(st.none(), _RETURNS)),
    st.just({"loss": 0.1}))


def _expected(records, offset):
  """The first record meeting each criterion, by direct definition."""
  first_learning = next((r for r in records if r["learner_steps"] > 0), None)
  first_eval = next((r for r in records if r.get("eval_return") is not None and r["eval_return"] >= 475), None)
  episodes = [r for r in records if "episode_return" in r]
  first_last20 = next((r for i, r in enumerate(episodes)
                       if i >= 19 and np.mean([e["episode_return"] for e in episodes[i - 19:i + 1]]) >= 475), None)
  return {k: r and {"seconds": r["time"] + offset, "env_steps": r["env_steps"]}
          for k, r in (("learning", first_learning), ("eval", first_eval), ("last20", first_last20))}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_RECORD, st.integers(1, 25)), max_size=12), st.floats(-5.0, 5.0))
def test_criteria_times_match_definition(runs, offset):
  """Runs of repeated records, so that 20 high returns in a row happen."""
  records = [r for r, count in runs for _ in range(count)]
  records = [{"time": 0.5 * i, "env_steps": 8 * i, "learner_steps": max(i - 3, 0), **r}
             for i, r in enumerate(records)]
  assert benchmark.criteria_times(records, offset) == _expected(records, offset)


def test_fewer_than_20_solved_episodes_do_not_count():
  records = [{"time": float(i), "env_steps": i, "learner_steps": i, "episode_return": 500.0} for i in range(19)]
  assert benchmark.criteria_times(records)["last20"] is None
  records.append({"time": 19.0, "env_steps": 19, "learner_steps": 19, "episode_return": 500.0})
  assert benchmark.criteria_times(records)["last20"] == {"seconds": 19.0, "env_steps": 19}
