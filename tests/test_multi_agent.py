"""Several agents end to end: independent learners, their checkpoints, a
stopped run that leaves nothing, and learning on an MPE env."""

import shutil
import signal

import chex
import jax
import numpy as np
import psutil
import pytest

import jaxrl
from jaxrl import runtime
from jaxrl.checkpoint import latest_checkpoint, restore_checkpoint
from jaxrl.config_file import load_config
from jaxrl.replay import SharedReplay
from jaxrl.runtime.builders import learner_stream
from jaxrl.runtime.learning import LearningLoop
from runs import ROOT, assert_clean_exit, records, start_cli, train_cli, wait_until_learning

SPREAD = str(ROOT / "configs" / "mpe_spread_dqn.yaml")
SPEAKER_LISTENER = str(ROOT / "configs" / "mpe_speaker_listener_dqn.yaml")
QUICK = ["replay.min_size=256", "learner.batch_size=32", "eval.interval=300", "eval.episodes=4",
         "runtime.log_interval_seconds=0.5", "runtime.progress=false"]


def saved_states(path, cfg_path):
  """(learner id -> LearnerState, counters) of the checkpoint at ``path``."""
  agents = runtime.make_agents(load_config(cfg_path))
  states, counters, _ = restore_checkpoint(path, runtime.state_templates(agents))
  return states, counters


def test_a_learner_trains_the_same_beside_another_as_alone():
  """Learner B's state after k updates beside learner A (other data, other
  spaces) is bit for bit B's state after k updates alone."""
  cfg = load_config(SPEAKER_LISTENER, ["learner.batch_size=16", "learner.updates_per_call=2"])
  agents = runtime.make_agents(cfg)
  rng = np.random.default_rng(0)
  replays = {}
  try:
    for lid, agent in agents.items():
      replays[lid] = SharedReplay.create(agent.obs_shape, np.float32, 512)
      size = 512
      replays[lid].writer(0).add({
          "obs": rng.normal(size=(size, *agent.obs_shape)).astype(np.float32),
          "action": rng.integers(0, agent.num_actions, size).astype(np.int32),
          "reward": rng.normal(size=size).astype(np.float32), "discount": np.full(size, 0.95, np.float32),
          "next_obs": rng.normal(size=(size, *agent.obs_shape)).astype(np.float32),
          "policy_step": np.zeros(size, np.int64)})
    states = {lid: agent.init(jax.random.PRNGKey(i)) for i, (lid, agent) in enumerate(agents.items())}

    def learner(lid):
      index = list(agents).index(lid)
      return runtime.Learner(cfg, agents[lid], replays[lid], states[lid], lambda s: None, learner_stream(index))

    together = {lid: learner(lid) for lid in agents}
    loop = LearningLoop(together, checkpointer=None, counters=lambda: {"env_steps": 0},
                        count=lambda lid, steps: None, emit=lambda record: None)
    for _ in range(20):
      assert loop.step()
    for lid in agents:
      alone = learner(lid)
      for _ in range(20):
        alone.update()
      chex.assert_trees_all_equal(alone.state, together[lid].state)
      assert int(alone.state.step) == 40
  finally:
    for replay in replays.values():
      replay.close()
      replay.unlink()


def test_resume_restores_every_learner_bit_for_bit(tmp_path):
  run_dir = tmp_path / "run"
  first = train_cli(SPREAD, f"run_dir={run_dir}", "runtime.mode=sync", "stop.env_steps=1500", *QUICK)
  assert first.returncode == 0, first.stderr
  saved = latest_checkpoint(run_dir / "checkpoints")
  original = tmp_path / "original.ckpt"
  shutil.copy(saved, original)
  again = train_cli("--resume", str(run_dir))   # its stop condition met: it saves the restored states again
  assert again.returncode == 0, again.stderr
  restored, restored_counters = saved_states(latest_checkpoint(run_dir / "checkpoints"), run_dir / "config.yaml")
  states, counters = saved_states(original, run_dir / "config.yaml")
  assert list(states) == ["agent_0", "agent_1", "agent_2"]
  chex.assert_trees_all_equal(restored, states)
  assert restored_counters == counters
  assert counters["learner_steps"] == sum(int(s.step) for s in states.values()) > 0


def test_sigint_with_several_learners_saves_them_all_and_leaves_nothing(tmp_path):
  run_dir = tmp_path / "run"
  proc = start_cli(SPREAD, f"run_dir={run_dir}", "stop.env_steps=10_000_000", *QUICK)
  wait_until_learning(run_dir, proc)
  descendants = psutil.Process(proc.pid).children(recursive=True)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 0, err
  assert_clean_exit(proc, descendants, err)
  states, counters = saved_states(latest_checkpoint(run_dir / "checkpoints"), run_dir / "config.yaml")
  assert all(int(s.step) > 0 for s in states.values())
  assert counters["learner_steps"] == sum(int(s.step) for s in states.values())
  learner_records = [r for r in records(run_dir) if "loss" in r]
  assert {r["learner_id"] for r in learner_records} == {"agent_0", "agent_1", "agent_2"}
  episodes = [r for r in records(run_dir) if "episode_return" in r]
  assert {r["agent_id"] for r in episodes} == {"agent_0", "agent_1", "agent_2"}
  assert all(r["episode_length"] == 25 for r in episodes)


def test_speaker_and_listener_learn_to_talk(tmp_path):
  """End-to-end learning with two learners of different spaces (sync mode):
  the greedy team return beats the uniform random policy (-85.4) and staying
  put (-71.5) by a wide margin."""
  cfg = load_config(SPEAKER_LISTENER, ["runtime.mode=sync", "stop.env_steps=60_000", "stop.eval_return=-45",
                                       "runtime.progress=false"])
  summary = runtime.train(cfg, tmp_path / "run")
  assert summary["stopped_because"] == "eval_return", summary
  evals = [r for r in records(tmp_path / "run") if "eval_return" in r]
  assert {"eval_return/speaker_0", "eval_return/listener_0"} <= set(evals[-1])
  assert evals[-1]["eval_return"] == pytest.approx(evals[-1]["eval_return/speaker_0"] + evals[-1]["eval_return/listener_0"])


def test_predators_share_a_learner_by_type_and_the_prey_has_its_own(tmp_path):
  """simple_tag with agents.share=type: adversary_0..2 -> learner "adversary",
  agent_0 -> "agent"; their observations differ in shape."""
  run_dir = tmp_path / "run"
  proc = train_cli(SPREAD, f"run_dir={run_dir}", "env.id=mpe2.simple_tag_v3", "env.kwargs={}", "agents.share=type",
                   "runtime.mode=sync", "stop.env_steps=1500", *QUICK)
  assert proc.returncode == 0, proc.stderr
  run = jaxrl.load_run(run_dir)
  assert run.agents == {"adversary_0": "adversary", "adversary_1": "adversary", "adversary_2": "adversary",
                        "agent_0": "agent"}
  assert {lid: agent.obs_shape for lid, (agent, _) in run.learners.items()} == {"adversary": (16,), "agent": (14,)}
  assert {r["learner_id"] for r in records(run_dir) if "loss" in r} == {"adversary", "agent"}
  assert {r["agent_id"] for r in records(run_dir) if "episode_return" in r} == set(run.agents)
