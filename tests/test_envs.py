"""Tests of jaxrl.envs: learners by agents.share, the slots of env sets
(PettingZoo and gymnasium), per-agent ends and autoreset, and their n-step
transitions, on the tiny env of ``parallel_env.py`` and on mpe2."""

from __future__ import annotations

import numpy as np
import pytest

from jaxrl.config import AgentsConfig, EnvConfig
from jaxrl.envs import (EnvError, GymVectorEnvSet, LearnerSpace, ParallelEnvSet, env_learner_spaces,
                        learner_ids, make_env_set, make_vec_env)
from jaxrl.nstep import NStepAccumulator
from parallel_env import AGENTS, TinyParallelEnv

F32 = np.dtype(np.float32)


def tiny(share="type", num_envs=1, **kwargs):
  return make_env_set(EnvConfig("parallel_env", kwargs), AgentsConfig(share), num_envs)


def tiny_obs(agent, seed, episode=0, t=0):
  """What TinyParallelEnv shows ``agent`` at step t of an episode."""
  dim = 2 if agent == "speaker_0" else 3
  return np.r_[1000 * episode + 10 * t + AGENTS.index(agent), [seed] * (dim - 1)]


def test_learner_ids_by_share():
  ids = ["adversary_0", "adversary_1", "agent_0", "big_boss_2", "solo"]
  assert learner_ids(ids, "none") == {a: a for a in ids}
  assert learner_ids(ids, "type") == {"adversary_0": "adversary", "adversary_1": "adversary",
                                      "agent_0": "agent", "big_boss_2": "big_boss", "solo": "solo"}
  assert learner_ids(ids, "all") == dict.fromkeys(ids, "shared")
  with pytest.raises(ValueError, match="^share must be"):
    learner_ids(ids, "some")


@pytest.mark.parametrize("share, expected", [
    ("none", {"speaker_0": (("speaker_0",), (2,), 3), "listener_0": (("listener_0",), (3,), 4),
              "listener_1": (("listener_1",), (3,), 4)}),
    ("type", {"speaker": (("speaker_0",), (2,), 3), "listener": (("listener_0", "listener_1"), (3,), 4)}),
])
def test_slots_and_spaces_per_learner(share, expected):
  """Slot e * k + j of a learner with k agents is its agent j in env copy e,
  and copy e is seeded with seed + e."""
  expected = {learner: LearnerSpace(ids, shape, F32, n) for learner, (ids, shape, n) in expected.items()}
  with tiny(share, num_envs=3) as envs:
    assert isinstance(envs, ParallelEnvSet) and envs.num_envs == 3
    assert envs.learners == expected and list(envs.learners) == list(expected)
    obs = envs.reset(seed=7)
  assert list(obs) == list(expected)
  for learner, space in expected.items():
    k = len(space.agent_ids)
    assert obs[learner].shape == (3 * k, *space.obs_shape) and obs[learner].dtype == F32
    for e in range(3):
      for j, agent in enumerate(space.agent_ids):
        np.testing.assert_array_equal(obs[learner][e * k + j], tiny_obs(agent, seed=7 + e))
  assert env_learner_spaces(EnvConfig("parallel_env"), AgentsConfig(share)) == expected


def test_module_function_ids_build_with_the_kwargs():
  spaces = env_learner_spaces(EnvConfig("parallel_env:TinyParallelEnv", {"speaker_obs_shape": [4]}),
                              AgentsConfig())
  assert spaces["speaker_0"] == LearnerSpace(("speaker_0",), (4,), F32, 3)


def test_rewards_observations_and_actions_reach_their_slots():
  with tiny("type", num_envs=2) as envs:
    envs.reset(seed=0)
    steps, env_steps = envs.step({"speaker": np.array([1, 2]), "listener": np.array([0, 1, 2, 3])})
  assert env_steps == 2
  speaker, listener = steps["speaker"], steps["listener"]
  # Reward 100 * t + 10 * i + action; speaker_0 is agent 0, listener_j agent 1 + j.
  np.testing.assert_array_equal(speaker.reward, [101, 102])
  np.testing.assert_array_equal(listener.reward, [110, 121, 112, 123])
  np.testing.assert_array_equal(speaker.obs, [tiny_obs("speaker_0", 0, t=1), tiny_obs("speaker_0", 1, t=1)])
  np.testing.assert_array_equal(listener.obs, [tiny_obs(agent, seed, t=1) for seed in (0, 1)
                                               for agent in ("listener_0", "listener_1")])
  for step in (speaker, listener):
    assert step.active.all() and not step.terminated.any() and not step.truncated.any()
    assert step.active.dtype == step.terminated.dtype == step.truncated.dtype == bool


def test_an_agent_that_ends_early_then_truncation_then_the_reset_step():
  """Copy 0: listener_1 terminates at step 2, the others are truncated at 3;
  copy 1: all truncated at 5. Listener slots: (copy 0: listener_0,
  listener_1; copy 1: listener_0, listener_1); listeners act 1."""
  made = iter([TinyParallelEnv(max_cycles=3, terminate_at=2), TinyParallelEnv(max_cycles=5)])
  envs = ParallelEnvSet(lambda: next(made), 2, share="type")
  envs.reset(seed=10)
  got = [envs.step({"speaker": np.zeros(2, int), "listener": np.ones(4, int)}) for _ in range(7)]
  envs.close()
  listener = [steps["listener"] for steps, _ in got]
  speaker = [steps["speaker"] for steps, _ in got]
  # Step 4: copy 0 resets (its env steps 0); step 6: copy 1 resets.
  assert [env_steps for _, env_steps in got] == [2, 2, 2, 1, 2, 1, 2]
  np.testing.assert_array_equal([s.active for s in listener], [
      [1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 1]])
  np.testing.assert_array_equal([s.terminated for s in listener], [
      [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal([s.truncated for s in listener], [
      [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]])
  np.testing.assert_array_equal([s.reward for s in listener], [
      [111, 121, 111, 121], [211, 221, 211, 221], [311, 0, 311, 321], [0, 0, 411, 421],
      [111, 121, 511, 521], [211, 221, 0, 0], [311, 0, 111, 121]])
  # obs[:, 0]: 1000 * episode + 10 * t + agent; listener_1 keeps its final obs (22) while out.
  np.testing.assert_array_equal([s.obs[:, 0] for s in listener], [
      [11, 12, 11, 12], [21, 22, 21, 22], [31, 22, 31, 32], [1001, 1002, 41, 42],
      [1011, 1012, 51, 52], [1021, 1022, 1001, 1002], [1031, 1022, 1011, 1012]])
  assert all((s.obs[:, 1] == [10, 10, 11, 11]).all() for s in listener)  # Resets continue the seeded RNG.
  np.testing.assert_array_equal([s.active for s in speaker], [[1, 1]] * 3 + [[0, 1], [1, 1], [1, 0], [1, 1]])
  np.testing.assert_array_equal([s.truncated for s in speaker],
                                [[0, 0], [0, 0], [1, 0], [0, 0], [0, 1], [0, 0], [1, 0]])
  assert not any(s.terminated.any() for s in speaker)


def test_n_step_transitions_of_a_learner_whose_agent_leaves_early():
  """n = 3, gamma = 0.5, one copy, max_cycles 4, listener_1 terminates at t = 2.
  listener_0 acts 1 (reward 100 t + 11), listener_1 acts 2 (reward 100 t + 22).
  Steps 1-4 are episode 0, step 5 the reset, steps 6-8 episode 1."""
  with tiny("type", max_cycles=4, terminate_at=2) as envs:
    obs = envs.reset(seed=0)["listener"]
    acc = NStepAccumulator(2, 3, 0.5, (3,), np.float32)
    out = []
    for t in range(8):
      steps, _ = envs.step({"speaker": np.zeros(1, int), "listener": np.array([1, 2])})
      s = steps["listener"]
      got = acc.step(obs, np.array([1, 2]), s.reward, s.terminated, s.truncated, s.obs, t, active=s.active)
      out.append(list(zip(got["obs"][:, 0].tolist(), got["action"].tolist(), got["reward"].tolist(),
                          got["discount"].tolist(), got["next_obs"][:, 0].tolist(),
                          got["policy_step"].tolist())))
      obs = s.obs
  assert out == [
      [],
      # listener_1 terminates: both its windows, discount 0, next_obs its final obs.
      [(2, 2, 122 + 222 / 2, 0.0, 22, 0), (12, 2, 222, 0.0, 22, 1)],
      [(1, 1, 111 + 211 / 2 + 311 / 4, 0.125, 31, 0)],
      # listener_0 truncated: bootstrap from its real final obs with gamma**k.
      [(11, 1, 211 + 311 / 2 + 411 / 4, 0.125, 41, 1), (21, 1, 311 + 411 / 2, 0.25, 41, 2),
       (31, 1, 411, 0.5, 41, 3)],
      [],  # The reset step.
      [],
      [(1002, 2, 122 + 222 / 2, 0.0, 1022, 5), (1012, 2, 222, 0.0, 1022, 6)],
      [(1001, 1, 111 + 211 / 2 + 311 / 4, 0.125, 1031, 5)],
  ]


def test_gym_vector_env_set_is_the_vector_env_with_autoreset_steps_inactive():
  cfg = EnvConfig("CartPole-v1", {"max_episode_steps": 8})
  raw = make_vec_env(cfg, 3)
  rng = np.random.default_rng(0)
  ended, resets = np.zeros(3, bool), 0
  with make_env_set(cfg, AgentsConfig(), 3) as envs:
    assert isinstance(envs, GymVectorEnvSet) and envs.num_envs == 3
    assert envs.learners == {"agent_0": LearnerSpace(("agent_0",), (4,), F32, 2)}
    np.testing.assert_array_equal(envs.reset(seed=3)["agent_0"], raw.reset(seed=3)[0])
    for _ in range(40):
      action = rng.integers(0, 2, 3)
      steps, env_steps = envs.step({"agent_0": action})
      expected = raw.step(action)
      step = steps["agent_0"]
      for got, want in zip(step[:4], expected[:4]):
        np.testing.assert_array_equal(got, want)
      np.testing.assert_array_equal(step.active, ~ended)  # The step after an end is the autoreset.
      assert env_steps == np.count_nonzero(~ended)
      resets += np.count_nonzero(ended)
      ended = expected[2] | expected[3]
  raw.close()
  assert resets >= 6
  # A gymnasium env's one agent is served by the learner agents.share names.
  assert list(env_learner_spaces(cfg, AgentsConfig("type"))) == ["agent"]
  assert list(env_learner_spaces(cfg, AgentsConfig("all"))) == ["shared"]


@pytest.mark.parametrize("env_cfg, agents_cfg, expected", [
    (EnvConfig("parallel_env"), AgentsConfig("all"),
     "agents.share: agents 'speaker_0' and 'listener_0' of 'parallel_env' share learner 'shared' but "
     "their spaces differ (Box(-inf, inf, (2,), float32), Discrete(3) against Box(-inf, inf, (3,), "
     "float32), Discrete(4))"),
    (EnvConfig("parallel_env", {"speaker_obs_shape": [2, 2]}), AgentsConfig(),
     "env.id: 'parallel_env' agent 'speaker_0' has Box(-inf, inf, (2, 2), float32) observations; "
     "jaxrl needs a Box of rank 1 or 3"),
    (EnvConfig("parallel_env", {"max_cycle": 3}), AgentsConfig(), "env.kwargs: 'parallel_env' rejects them"),
    (EnvConfig("parallel_env:nothing"), AgentsConfig(),
     "env.id: 'parallel_env:nothing' is no registered gymnasium id, and 'parallel_env' has no function "
     "'nothing'"),
    (EnvConfig("no_such_env_module"), AgentsConfig(),
     "env.id: 'no_such_env_module' is no registered gymnasium id, and importing 'no_such_env_module' "
     "failed: ModuleNotFoundError"),
    (EnvConfig("gymnasium:make", {"id": "CartPole-v1"}), AgentsConfig(),
     "env.id: 'gymnasium:make' built a TimeLimit, not a PettingZoo ParallelEnv"),
    (EnvConfig("NoSuchEnv-v0"), AgentsConfig(), "env.id: cannot make 'NoSuchEnv-v0'"),
    (EnvConfig("parallel_env"), AgentsConfig("type", {"listner": {"learning_rate": 1.0}}),
     "agents.overrides: 'parallel_env' with agents.share 'type' has no learner 'listner' "
     "(its learners: speaker, listener)"),
    (EnvConfig("CartPole-v1"), AgentsConfig(overrides={"agent": {}}),
     "agents.overrides: 'CartPole-v1' with agents.share 'none' has no learner 'agent' "
     "(its learners: agent_0)"),
])
def test_an_env_jaxrl_cannot_serve_is_a_one_line_env_error(env_cfg, agents_cfg, expected):
  with pytest.raises(EnvError) as info:
    make_env_set(env_cfg, agents_cfg, 2)
  message = str(info.value)
  assert "\n" not in message and message.startswith(expected), message


@pytest.mark.parametrize("env_id, kwargs, share, expected", [
    ("mpe2.simple_spread_v3", {"N": 3, "max_cycles": 25}, "none",
     {f"agent_{i}": ((f"agent_{i}",), (18,), 5) for i in range(3)}),
    ("mpe2.simple_speaker_listener_v4", {"max_cycles": 25}, "none",
     {"speaker_0": (("speaker_0",), (3,), 3), "listener_0": (("listener_0",), (11,), 5)}),
    ("mpe2.simple_tag_v3", {}, "type",
     {"adversary": (("adversary_0", "adversary_1", "adversary_2"), (16,), 5),
      "agent": (("agent_0",), (14,), 5)}),
])
def test_mpe2_env_sets_step_with_random_actions(env_id, kwargs, share, expected):
  """MPE episodes end by truncating every agent at max_cycles (25); none
  terminates or leaves early. Every 26th step is the reset step."""
  expected = {learner: LearnerSpace(ids, shape, F32, n) for learner, (ids, shape, n) in expected.items()}
  num_envs, num_steps, rng = 2, 300, np.random.default_rng(0)
  total = 0
  with make_env_set(EnvConfig(env_id, kwargs), AgentsConfig(share), num_envs) as envs:
    assert envs.learners == expected
    obs = envs.reset(seed=0)
    for t in range(1, num_steps + 1):
      steps, env_steps = envs.step({learner: rng.integers(0, space.num_actions, len(obs[learner]))
                                    for learner, space in expected.items()})
      total += env_steps
      resetting = t % 26 == 0
      assert env_steps == (0 if resetting else num_envs)
      for learner, space in expected.items():
        step = steps[learner]
        assert step.obs.shape == (num_envs * len(space.agent_ids), *space.obs_shape)
        assert np.isfinite(step.obs).all() and not step.terminated.any()
        assert (step.active != resetting).all() and (step.truncated == (t % 26 == 25)).all()
        assert not resetting or (step.reward == 0).all()
      obs = {learner: step.obs for learner, step in steps.items()}
  assert total == num_envs * (num_steps - num_steps // 26)
