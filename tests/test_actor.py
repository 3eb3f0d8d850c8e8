"""Tests of jaxrl.actor: numpy inference, epsilon-greedy acting, episode bookkeeping."""

from __future__ import annotations

import functools

import gymnasium as gym
from hypothesis import example, given, settings, strategies as st
import jax
import numpy as np
import pytest

import jaxrl
from jaxrl.actor import Actor, EnvError, evaluate, make_vec_env, mlp_params, numpy_q_values
from jaxrl.config import EnvConfig


@functools.cache
def _agent(algo: str):
  config = jaxrl.AgentConfig(algo=algo, hidden_sizes=(16, 16), num_quantile_samples=16,
                             quantile_embedding_dim=8)
  agent = jaxrl.make_agent(config, (4,), 2)
  return agent, jax.device_get(agent.init(jax.random.PRNGKey(0)).params)


def make(algo="dqn"):
  """A CartPole agent and its init params as a fresh, writable numpy tree
  (as ParamStore.read gives them)."""
  agent, params = _agent(algo)
  return agent, jax.tree.map(np.array, params)


def cartpole_actor(agent, params, epsilon=0.0, num_envs=8, seed=0, **kwargs):
  actor = Actor(agent, make_vec_env(EnvConfig("CartPole-v1", kwargs), num_envs), seed=seed)
  actor.set_policy(params, epsilon, step=0)
  return actor


def run(actor, steps, learner_step=lambda t: 0):
  """Steps ``actor`` (n_step 1: one transition per live env and step).

  Returns its transitions (fields concatenated over steps) and a list of
  (step index, Episode) for the episodes that ended.
  """
  transitions, episodes = [], []
  for t in range(steps):
    out, ended, _ = actor.step(learner_step(t))
    transitions.append(out)
    episodes += [(t, episode) for episode in ended]
  return {k: np.concatenate([out[k] for out in transitions]) for k in transitions[0]}, episodes


@settings(max_examples=20, deadline=None)
@example(hidden_sizes=[8] * 11, obs_dim=4, num_actions=2, seed=1)
@given(hidden_sizes=st.lists(st.sampled_from([1, 3, 8]), min_size=1, max_size=11),
       obs_dim=st.sampled_from([1, 4]), num_actions=st.sampled_from([1, 2, 5]), seed=st.integers(0, 2**16))
def test_numpy_q_values_match_the_flax_network(hidden_sizes, obs_dim, num_actions, seed):
  """Any depth (Dense_10 follows Dense_9) and widths: the same Q and greedy actions.
  (A few distinct widths keep JAX's per-shape compilations few.)"""
  agent = jaxrl.make_agent(jaxrl.AgentConfig(hidden_sizes=tuple(hidden_sizes)), (obs_dim,), num_actions)
  obs = np.random.default_rng(seed).normal(size=(7, obs_dim)).astype(np.float32) * 3
  params = agent.network.init(jax.random.PRNGKey(seed), obs)
  expected = np.asarray(agent.q_values(params, obs))
  got = numpy_q_values(mlp_params(params), obs)
  assert got.dtype == np.float32 and got.shape == (7, num_actions)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  top2 = np.sort(expected, axis=1)[:, -2:]
  clear = top2[:, -1] - top2[:, 0] > 1e-4 if num_actions > 1 else np.ones(7, bool)
  np.testing.assert_array_equal(got.argmax(1)[clear], expected.argmax(1)[clear])


@pytest.mark.parametrize("algo", ["dqn", "iqn"])
def test_greedy_actor_takes_the_argmax_of_q_values(algo):
  """DQN acts in numpy, IQN in JAX: both take argmax of ``agent.q_values``."""
  agent, params = make(algo)
  transitions, _ = run(cartpole_actor(agent, params), 30)
  obs, action = transitions["obs"], transitions["action"]
  # IQN's Q is a mean over sampled quantile fractions: only obs whose greedy
  # action is the same for each of 32 samples count.
  q_values = jax.jit(agent.q_values)
  q = np.stack([q_values(params, obs, key) for key in jax.random.split(jax.random.PRNGKey(1), 32)])
  greedy = q.argmax(-1)  # [32, N]
  clear = (greedy == greedy[0]).all(0) & (np.abs(q[..., 0] - q[..., 1]) > 1e-4).all(0)
  assert clear.mean() > 0.5
  np.testing.assert_array_equal(action[clear], greedy[0][clear])


@pytest.mark.parametrize("epsilon", [1.0, 0.4])
def test_epsilon_explores_uniformly_over_all_actions(epsilon):
  agent, params = make("dqn")
  transitions, _ = run(cartpole_actor(agent, params, epsilon, num_envs=16), 250)
  greedy = np.asarray(agent.q_values(params, transitions["obs"])).argmax(1)
  share = (transitions["action"] != greedy).mean()  # epsilon * (A - 1) / A
  assert abs(share - epsilon / 2) < 0.03, share


@pytest.mark.parametrize("algo", ["dqn", "iqn"])
def test_acting_is_deterministic_for_a_seed(algo):
  agent, params = make(algo)
  first, second, other = (run(cartpole_actor(agent, params, 0.3, seed=seed), 60) for seed in (5, 5, 6))
  for key in first[0]:
    np.testing.assert_array_equal(first[0][key], second[0][key])
  assert first[1] == second[1]
  assert not np.array_equal(first[0]["action"], other[0]["action"])


def test_an_actor_that_does_not_collect_acts_and_ends_episodes_the_same():
  """Evaluation's actor (collect=False) builds no transitions and is otherwise the same actor."""
  agent, params = make()
  collecting = cartpole_actor(agent, params, 0.3, seed=5)
  evaluating = Actor(agent, make_vec_env(EnvConfig("CartPole-v1", {}), 8), seed=5, collect=False)
  evaluating.set_policy(params, 0.3, step=0)
  for t in range(80):
    (transitions, ended, _), (nothing, also_ended, _) = collecting.step(t), evaluating.step(t)
    assert nothing is None and "action" in transitions
    assert ended == also_ended
    np.testing.assert_array_equal(collecting.obs, evaluating.obs)


@pytest.mark.parametrize("algo", ["dqn", "iqn"])
def test_set_policy_keeps_its_own_copy_of_the_params(algo):
  agent, params = make(algo)
  pristine = jax.tree.map(np.copy, params)
  mutated = cartpole_actor(agent, params, seed=3)
  for leaf in jax.tree.leaves(params):   # The caller reuses its buffers (as ParamStore.read may).
    leaf *= -1.0
  reference = cartpole_actor(agent, pristine, seed=3)
  np.testing.assert_array_equal(run(mutated, 40)[0]["action"], run(reference, 40)[0]["action"])


def test_episodes_exclude_the_autoreset_step_and_average_the_policy_lag():
  """CartPole pays 1 per step, so return == length; env i's episodes are back
  to back with one autoreset step between them; learner_step = t + 100 and
  policy step 0 make an episode's lag the mean of t + 100 over its steps."""
  agent, params = make("dqn")
  actor = cartpole_actor(agent, params, epsilon=0.5, num_envs=4, max_episode_steps=12)
  _, episodes = run(actor, 200, learner_step=lambda t: t + 100)
  assert {episode.env for _, episode in episodes} == {0, 1, 2, 3}
  truncated = 0
  for env in range(4):
    first_step = 0
    for t, episode in [(t, e) for t, e in episodes if e.env == env]:
      assert episode.length == t - first_step + 1 and episode.episode_return == episode.length
      assert episode.policy_lag == pytest.approx((first_step + t) / 2 + 100)
      truncated += episode.length == 12
      first_step = t + 2
  assert truncated > 0


def test_env_steps_count_real_transitions_not_the_autoreset_steps():
  """An env whose episode ended spends its next step on gymnasium's no-op
  autoreset: that step is no env step, and makes no transition either."""
  agent, params = make("dqn")
  actor = cartpole_actor(agent, params, epsilon=0.5, num_envs=4, max_episode_steps=5)
  total = transitions = resets = 0
  for _ in range(40):
    out, ended, env_steps = actor.step()
    total += env_steps
    transitions += len(out["action"])   # n_step 1: one per real env step
    resets += len(ended)
  assert resets > 4 and total == transitions == 4 * 40 - resets + len(ended)


def test_another_autoreset_mode_is_refused_in_one_line():
  with pytest.raises(EnvError, match="autoresets in SameStep mode") as error:
    make_vec_env(EnvConfig("CartPole-v1", {"vector_kwargs": {"autoreset_mode": "SameStep"}}), 2)
  assert "\n" not in str(error.value)


def test_env_imports_are_imported_before_the_env_is_made_and_a_bad_one_is_one_line():
  """faulty_env (tests/) registers its id on import: without env.imports the id is unknown."""
  with pytest.raises(EnvError, match="env.id"):
    make_vec_env(EnvConfig("jaxrl_tests/Registered-v0"), 1)
  envs = make_vec_env(EnvConfig("jaxrl_tests/Registered-v0", imports=("registered_env",)), 1)
  assert envs.num_envs == 1
  with pytest.raises(EnvError, match="env.imports: cannot import 'no_such_module'"):
    make_vec_env(EnvConfig("CartPole-v1", imports=("no_such_module",)), 1)


class _Endless(gym.Env):
  """An env without a time limit whose episodes never end: reward 1 a step."""
  observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
  action_space = gym.spaces.Discrete(2)

  def reset(self, *, seed=None, options=None):
    super().reset(seed=seed)
    return np.zeros(4, np.float32), {}

  def step(self, action):
    return np.zeros(4, np.float32), 1.0, False, False, {}


def test_evaluation_of_an_env_without_a_time_limit_stops_at_the_cap():
  agent, params = make("dqn")
  envs = gym.vector.SyncVectorEnv([_Endless] * 3)
  result = evaluate(agent, params, envs, epsilon=0.0, seed=0, max_steps=50)
  assert result == (50.0, 3)   # each episode's return so far; all three cut
  finished = evaluate(agent, params, make_vec_env(EnvConfig("CartPole-v1"), 3), 0.0, seed=0, max_steps=10_000)
  assert finished.capped == 0 and finished.mean_return > 0
