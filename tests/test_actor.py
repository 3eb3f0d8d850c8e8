"""Tests of jaxrl.actor: numpy inference, epsilon-greedy acting, episode bookkeeping."""

from __future__ import annotations

import functools

from hypothesis import example, given, settings, strategies as st
import jax
import numpy as np
import pytest

import jaxrl
from jaxrl.actor import Actor, make_vec_env, mlp_params, numpy_q_values
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
    out, ended = actor.step(learner_step(t))
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
    (transitions, ended), (nothing, also_ended) = collecting.step(t), evaluating.step(t)
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
