"""Atari end to end: Pong through the CLI with the DQN and IQN configs (a tiny
replay), its frame-stacked replay in shared memory and in checkpoints, and
``--resume``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jaxrl.checkpoint import latest_checkpoint, load_extra_arrays
from runs import ROOT, records, segments_of, train_cli

pytest.importorskip("ale_py")

ATARI_DQN = str(ROOT / "configs" / "atari_dqn.yaml")
ATARI_IQN = str(ROOT / "configs" / "atari_iqn.yaml")
# A few thousand agent steps of Pong: a replay of 1,600 cells that wraps, learning
# from the first 400 transitions, games cut at 1,000 agent steps, an evaluation game every 200 updates.
TINY = ["runtime.progress=false", "replay.capacity=1600", "replay.min_size=400", "replay.rate_tolerance=64",
        "actors.num=1", "actors.envs_per_actor=4", "learner.updates_per_call=4", "learner.publish_interval=8",
        "env.kwargs.max_num_frames_per_episode=4000", "eval.interval=200", "eval.episodes=1",
        "checkpoint.replay=true", "runtime.log_interval_seconds=1"]


def summary_of(run_dir) -> dict:
  return json.loads((run_dir / "summary.json").read_text())


def assert_trained(proc, run_dir, env_steps):
  """Exit 0 at ``env_steps``, finite losses from learner steps that sampled
  the replay, a Pong score as the last evaluation, and the replay saved
  in the final checkpoint in its frame layout: 1,600 frames of 84x84."""
  assert proc.returncode == 0, proc.stderr
  summary = summary_of(run_dir)
  assert summary["stopped_because"] == "env_steps" and env_steps <= summary["env_steps"] < env_steps + 64
  losses = [r["loss"] for r in records(run_dir) if "loss" in r]
  assert losses and all(math.isfinite(x) for x in losses) and summary["learner_steps"] > 0
  assert -21 <= summary["eval_return"] <= 21 and summary["eval_return"] == int(summary["eval_return"])
  extra = load_extra_arrays(latest_checkpoint(run_dir / "checkpoints"))
  assert extra["replay.agent_0.frame"].shape == (1600, 84, 84)
  assert extra["replay.agent_0.write_count"].sum() > 800
  return summary, extra


@pytest.fixture(scope="module")
def dqn_run(tmp_path_factory):
  run_dir = tmp_path_factory.mktemp("atari") / "pong_dqn"
  proc = train_cli(ATARI_DQN, f"run_dir={run_dir}", "stop.env_steps=2000", *TINY, timeout=400)
  return proc, run_dir


def test_pong_dqn_trains_through_the_cli_on_stacked_frames(dqn_run):
  proc, run_dir = dqn_run
  assert_trained(proc, run_dir, 2000)
  assert not segments_of(proc.pid)


def test_pong_iqn_trains_through_the_cli_in_sync_mode_with_the_actors_priorities(tmp_path):
  """Prioritized replay and a dueling head on stacked frames: the cells hold
  the actors' priorities (finite, not the NaN of "none given")."""
  run_dir = tmp_path / "pong_iqn"
  proc = train_cli(ATARI_IQN, f"run_dir={run_dir}", "stop.env_steps=1200", "runtime.mode=sync", *TINY,
                   "agent.num_tau_samples=8", "agent.num_tau_prime_samples=8", "agent.num_quantile_samples=8",
                   "replay.prioritized=true", "agent.dueling=true", timeout=400)
  _, extra = assert_trained(proc, run_dir, 1200)
  priority = extra["replay.agent_0.priority"]
  assert np.isfinite(priority).mean() > 0.9 and (priority[np.isfinite(priority)] >= 0).all()


def test_an_atari_run_resumes_with_its_replay(dqn_run):
  _, run_dir = dqn_run
  before = summary_of(run_dir)
  saved = load_extra_arrays(latest_checkpoint(run_dir / "checkpoints"))
  proc = train_cli("--resume", str(run_dir), "stop.env_steps=2600", timeout=400)
  after, extra = assert_trained(proc, run_dir, 2600)
  assert "not restored" not in proc.stderr
  assert after["learner_steps"] > before["learner_steps"]
  # The saved frames are still there; the resumed actor's were added after them.
  assert extra["replay.agent_0.write_count"].sum() > saved["replay.agent_0.write_count"].sum()
  assert (extra["replay.agent_0.frame_count"] >= saved["replay.agent_0.frame_count"]).all()
  old = saved["replay.agent_0.frame_version"]
  kept = extra["replay.agent_0.frame_version"] == old
  assert kept.any() and np.array_equal(extra["replay.agent_0.frame"][kept & (old > 0)],
                                       saved["replay.agent_0.frame"][kept & (old > 0)])


def test_a_replay_too_small_for_the_frame_streams_is_one_line(tmp_path):
  proc = train_cli(ATARI_DQN, f"run_dir={tmp_path / 'run'}", "replay.capacity=100", "replay.min_size=10",
                   "actors.num=1", "learner.batch_size=8", timeout=120)
  assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
  assert "replay.capacity must be >= 128" in proc.stderr and not (tmp_path / "run").exists()
