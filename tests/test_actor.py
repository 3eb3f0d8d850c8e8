"""Tests of jaxrl.actor: numpy inference, epsilon-greedy acting, episode
bookkeeping and evaluation, on gymnasium vector envs (one learner) and on the
tiny PettingZoo env of ``parallel_env.py`` (several learners)."""

from __future__ import annotations

import functools

import gymnasium as gym
from hypothesis import example, given, settings, strategies as st
import jax
import numpy as np
import pytest

import jaxrl
from jaxrl.actor import Actor, Episode, evaluate, mlp_params, numpy_q_values
from jaxrl.config import AgentsConfig, EnvConfig
from jaxrl.envs import AGENT_ID, EnvError, GymVectorEnvSet, ParallelEnvSet, make_env_set, make_vec_env
from parallel_env import AGENTS, TinyParallelEnv


@functools.cache
def _agent(algo: str, num_quantile_samples: int = 16):
  config = jaxrl.AgentConfig(algo=algo, hidden_sizes=(16, 16), num_quantile_samples=num_quantile_samples,
                             quantile_embedding_dim=8)
  agent = jaxrl.make_agent(config, (4,), 2)
  return agent, jax.device_get(agent.init(jax.random.PRNGKey(0)).params)


def make(algo="dqn", num_quantile_samples=16):
  """A CartPole agent and its init params as a fresh, writable numpy tree
  (as ParamStore.read gives them)."""
  agent, params = _agent(algo, num_quantile_samples)
  return agent, jax.tree.map(np.array, params)


def cartpole_envs(num_envs=8, **kwargs):
  return GymVectorEnvSet(make_vec_env(EnvConfig("CartPole-v1", kwargs), num_envs))


def cartpole_actor(agent, params, epsilon=0.0, num_envs=8, seed=0, collect=True, **kwargs):
  actor = Actor({AGENT_ID: agent}, cartpole_envs(num_envs, **kwargs), seed=seed, collect=collect)
  actor.set_policy(AGENT_ID, params, epsilon, step=0)
  return actor


def run(actor, steps, learner_step=lambda t: 0):
  """Steps ``actor``, every learner's newest step ``learner_step(t)`` at step t.

  Returns, per learner id, its transitions (fields concatenated over steps;
  with n_step 1 one per active slot and step), and a list of (step index,
  Episode) for the episodes that ended.
  """
  transitions, episodes = [], []
  for t in range(steps):
    out = actor.step(dict.fromkeys(actor.env_set.learners, learner_step(t)))
    transitions.append(out.transitions)
    episodes += [(t, episode) for episode in out.episodes]
  return {learner: {k: np.concatenate([out[learner][k] for out in transitions]) for k in first}
          for learner, first in transitions[0].items()}, episodes


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
  agent, params = make(algo, num_quantile_samples=1024)
  transitions, _ = run(cartpole_actor(agent, params), 30)
  obs, action = transitions[AGENT_ID]["obs"], transitions[AGENT_ID]["action"]
  # IQN's Q is a mean over K sampled quantile fractions, the actor's own: only
  # obs whose Q gap over 32 such samples is 4 of its standard deviations from
  # zero count (for DQN every sample is the same).
  q_values = jax.jit(agent.q_values)
  q = np.stack([q_values(params, obs, key) for key in jax.random.split(jax.random.PRNGKey(1), 32)])  # [32, N, 2]
  gap = q[..., 1] - q[..., 0]
  clear = np.abs(gap.mean(0)) > np.maximum(4 * gap.std(0), 1e-4)
  assert clear.mean() > 0.5
  np.testing.assert_array_equal(action[clear], (gap.mean(0) > 0)[clear])


@pytest.mark.parametrize("epsilon", [1.0, 0.4])
def test_epsilon_explores_uniformly_over_all_actions(epsilon):
  agent, params = make("dqn")
  transitions = run(cartpole_actor(agent, params, epsilon, num_envs=16), 250)[0][AGENT_ID]
  greedy = np.asarray(agent.q_values(params, transitions["obs"])).argmax(1)
  share = (transitions["action"] != greedy).mean()  # epsilon * (A - 1) / A
  assert abs(share - epsilon / 2) < 0.03, share


@pytest.mark.parametrize("algo", ["dqn", "iqn"])
def test_acting_is_deterministic_for_a_seed(algo):
  agent, params = make(algo)
  first, second, other = (run(cartpole_actor(agent, params, 0.3, seed=seed), 60) for seed in (5, 5, 6))
  for key in first[0][AGENT_ID]:
    np.testing.assert_array_equal(first[0][AGENT_ID][key], second[0][AGENT_ID][key])
  assert first[1] == second[1]
  assert not np.array_equal(first[0][AGENT_ID]["action"], other[0][AGENT_ID]["action"])


def test_an_actor_that_does_not_collect_acts_and_ends_episodes_the_same():
  """Evaluation's actor (collect=False) builds no transitions and is otherwise the same actor."""
  agent, params = make()
  collecting = cartpole_actor(agent, params, 0.3, seed=5)
  evaluating = cartpole_actor(agent, params, 0.3, seed=5, collect=False)
  for t in range(80):
    (transitions, ended, _), (nothing, also_ended, _) = collecting.step({AGENT_ID: t}), evaluating.step({AGENT_ID: t})
    assert nothing is None and "action" in transitions[AGENT_ID]
    assert ended == also_ended
    np.testing.assert_array_equal(collecting.obs[AGENT_ID], evaluating.obs[AGENT_ID])


@pytest.mark.parametrize("algo", ["dqn", "iqn"])
def test_set_policy_keeps_its_own_copy_of_the_params(algo):
  agent, params = make(algo)
  pristine = jax.tree.map(np.copy, params)
  mutated = cartpole_actor(agent, params, seed=3)
  for leaf in jax.tree.leaves(params):   # The caller reuses its buffers (as ParamStore.read may).
    leaf *= -1.0
  reference = cartpole_actor(agent, pristine, seed=3)
  np.testing.assert_array_equal(run(mutated, 40)[0][AGENT_ID]["action"], run(reference, 40)[0][AGENT_ID]["action"])


@pytest.mark.parametrize("n_step", [1, 3])
def test_priorities_are_the_n_step_td_errors_under_the_acting_values(n_step):
  """With ``priorities``, each transition carries |R + discount * max_a Q(next_obs, a) - Q(obs, action)|
  (Ape-X), Q being the acting params'; truncations (CartPole's 20-step limit) bootstrap, terminations not."""
  agent, params = make("dqn")
  actor = Actor({AGENT_ID: agent}, cartpole_envs(8, max_episode_steps=20), seed=0, n_step=n_step, gamma=0.9,
                priorities=True)
  actor.set_policy(AGENT_ID, params, 0.3, step=0)
  t = run(actor, 60)[0][AGENT_ID]
  q, next_q = (np.asarray(agent.q_values(params, t[key])) for key in ("obs", "next_obs"))
  want = np.abs(t["reward"] + t["discount"] * next_q.max(1) - q[np.arange(len(q)), t["action"]])
  assert (t["discount"] == 0).any()   # terminated
  assert (t["discount"] > 0.9 ** n_step + 1e-6).any() or n_step == 1   # truncated, its windows cut short
  np.testing.assert_allclose(t["priority"], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("algo", ["dqn", "iqn"])
def test_priorities_change_no_action_and_a_new_policy_acts_at_once(algo):
  """The Q an actor takes for the priorities serves the next actions, except
  after a new policy: those act on the new params' Q. DQN's transitions are
  the same with priorities as without (IQN draws a key more for each Q)."""
  agent, params = make(algo)
  other = jax.tree.map(lambda x: -x, params)
  runs = []
  for priorities in (False, True):
    actor = Actor({AGENT_ID: agent}, cartpole_envs(8), seed=1, priorities=priorities)
    actor.set_policy(AGENT_ID, params, 0.0, step=0)
    first = run(actor, 20)[0][AGENT_ID]
    actor.set_policy(AGENT_ID, other, 0.0, step=1)
    after = actor.step({AGENT_ID: 1}).transitions[AGENT_ID]   # n = 1: a transition per active env
    obs, action = after["obs"], after["action"]
    if algo == "dqn":
      np.testing.assert_array_equal(action, np.asarray(agent.q_values(other, obs)).argmax(1))
    runs.append((first, action))
    assert ("priority" in first) == priorities
  if algo == "dqn":
    for key in runs[0][0]:
      np.testing.assert_array_equal(runs[0][0][key], runs[1][0][key])
  else:   # IQN: its greedy actions under the negated params differ from the old ones'
    assert not np.array_equal(runs[1][1], np.asarray(agent.q_values(params, obs, jax.random.PRNGKey(0))).argmax(1))


def test_episodes_exclude_the_autoreset_step_and_average_the_policy_lag():
  """CartPole pays 1 per step, so return == length; env i's episodes are back
  to back with one autoreset step between them; learner_step = t + 100 and
  policy step 0 make an episode's lag the mean of t + 100 over its steps."""
  agent, params = make("dqn")
  actor = cartpole_actor(agent, params, epsilon=0.5, num_envs=4, max_episode_steps=12)
  _, episodes = run(actor, 200, learner_step=lambda t: t + 100)
  assert {episode.env for _, episode in episodes} == {0, 1, 2, 3}
  assert {episode.agent_id for _, episode in episodes} == {AGENT_ID}
  truncated = 0
  for env in range(4):
    first_step = 0
    for t, episode in [(t, e) for t, e in episodes if e.env == env]:
      assert episode.length == t - first_step + 1 and episode.episode_return == episode.length
      assert episode.policy_lag == pytest.approx((first_step + t) / 2 + 100)
      truncated += episode.length == 12
      first_step = t + 2
  assert truncated > 0


def test_a_learner_step_older_than_the_policy_counts_as_no_lag():
  """A newest learner step read before the params arrived (Ray's driver reads
  it, then the newest snapshot) is stale: the lag is never negative."""
  agent, params = make("dqn")
  actor = Actor({AGENT_ID: agent}, cartpole_envs(4, max_episode_steps=12), seed=0)
  actor.set_policy(AGENT_ID, params, 0.5, step=50)
  _, episodes = run(actor, 60, learner_step=lambda t: 40 + t)   # behind the policy until t = 10
  lags = [episode.policy_lag for _, episode in episodes]
  assert lags and min(lags) >= 0 and max(lags) > 0
  first = min(episodes, key=lambda e: e[0])[1]
  assert first.policy_lag == pytest.approx(0.0)


def test_env_steps_count_real_transitions_not_the_autoreset_steps():
  """An env whose episode ended spends its next step on gymnasium's no-op
  autoreset: that step is no env step, and makes no transition either."""
  agent, params = make("dqn")
  actor = cartpole_actor(agent, params, epsilon=0.5, num_envs=4, max_episode_steps=5)
  total = transitions = resets = 0
  for _ in range(40):
    out, ended, env_steps = actor.step({AGENT_ID: 0})
    total += env_steps
    transitions += len(out[AGENT_ID]["action"])   # n_step 1: one per real env step
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
  envs = GymVectorEnvSet(gym.vector.SyncVectorEnv([_Endless] * 3))
  result = evaluate({AGENT_ID: agent}, {AGENT_ID: params}, envs, epsilon=0.0, seed=0, max_steps=50)
  assert result == (50.0, {AGENT_ID: 50.0}, 3)   # each episode's return so far; all three cut
  finished = evaluate({AGENT_ID: agent}, {AGENT_ID: params}, cartpole_envs(3), 0.0, seed=0, max_steps=10_000)
  assert finished.capped == 0 and finished.mean_return == finished.agent_returns[AGENT_ID] > 0


# --- Several learners: the tiny PettingZoo env of parallel_env.py -------------
# Agent i of AGENTS (speaker_0, listener_0, listener_1) observes obs[0] =
# 1000 * episode + 10 * t + i and gets reward 100 * t + 10 * i + action at step t.


def tiny_agents(envs, algo="dqn"):
  """Per learner of ``envs``: an agent and its init params (numpy)."""
  agents = {learner: jaxrl.make_agent(jaxrl.AgentConfig(algo=algo, hidden_sizes=(8,), quantile_embedding_dim=8),
                                      space.obs_shape, space.num_actions)
            for learner, space in envs.learners.items()}
  return agents, {learner: jax.tree.map(np.array, jax.device_get(agent.init(jax.random.PRNGKey(0)).params))
                  for learner, agent in agents.items()}


def fixed_policy(envs, actions):
  """Per learner of ``envs``: an agent (DQN, built-in MLP: the numpy path)
  and params whose greedy action is always ``actions[learner]`` (output
  layer: kernel 0, bias one-hot)."""
  agents, params = tiny_agents(envs)
  for learner, space in envs.learners.items():
    out = params[learner]["params"]["Dense_0"]
    out["kernel"][:] = 0.0
    out["bias"][:] = np.eye(space.num_actions)[actions[learner]]
  return agents, params


def tiny_actor(envs, agents, params, seed=0, epsilon=0.0, **kwargs):
  actor = Actor(agents, envs, seed=seed, **kwargs)
  for learner in envs.learners:
    actor.set_policy(learner, params[learner], epsilon, step=0)
  return actor


@pytest.mark.parametrize("share, actions", [
    ("none", {"speaker_0": 2, "listener_0": 1, "listener_1": 3}),
    ("type", {"speaker": 2, "listener": 3}),
])
def test_each_agent_acts_with_its_learners_policy(share, actions):
  """Two copies, max_cycles 3 (resets included): every transition of a
  learner is one of its own agents' (obs[0] % 10), with its learner's action
  (in the transition and in the reward the env paid)."""
  with make_env_set(EnvConfig("parallel_env", {"max_cycles": 3}), AgentsConfig(share), 2) as envs:
    transitions, _ = run(tiny_actor(envs, *fixed_policy(envs, actions)), 8)
    for learner, space in envs.learners.items():
      got = transitions[learner]
      agent = got["obs"][:, 0].astype(int) % 10
      assert sorted(set(agent.tolist())) == sorted(AGENTS.index(a) for a in space.agent_ids)
      assert (got["action"] == actions[learner]).all()
      np.testing.assert_array_equal(got["reward"] % 100, 10 * agent + actions[learner])
      assert len(got["action"]) == 2 * len(space.agent_ids) * 6  # Steps 4 and 8 reset.


def test_transitions_are_routed_per_learner_with_n_step_rewards_and_discounts():
  """share type, one copy, n = 3, gamma = 0.5, max_cycles 4; listener_1
  terminates at t = 2, then speaker_0 and listener_0 are truncated at t = 4.
  The speaker acts 0 (reward 100 t), the listeners 1 (rewards 100 t + 11 and
  100 t + 21). Steps 1-4 are episode 0, step 5 the reset, steps 6-8 episode 1.
  Policy steps: speaker 7, listener 9; learner steps at step s: 10 + s and 20 + 2 s."""
  envs = ParallelEnvSet(lambda: TinyParallelEnv(max_cycles=4, terminate_at=2), 1, share="type")
  agents, params = fixed_policy(envs, {"speaker": 0, "listener": 1})
  actor = Actor(agents, envs, seed=0, n_step=3, gamma=0.5)
  actor.set_policy("speaker", params["speaker"], 0.0, step=7)
  actor.set_policy("listener", params["listener"], 0.0, step=9)
  got = {"speaker": [], "listener": []}
  episodes, env_steps = [], []
  for s in range(1, 9):
    out = actor.step({"speaker": 10 + s, "listener": 20 + 2 * s})
    for learner, rows in out.transitions.items():
      got[learner].append(list(zip(rows["obs"][:, 0].tolist(), rows["action"].tolist(), rows["reward"].tolist(),
                                   rows["discount"].tolist(), rows["next_obs"][:, 0].tolist(),
                                   rows["policy_step"].tolist())))
    episodes += [(s, episode) for episode in out.episodes]
    env_steps.append(out.env_steps)
  envs.close()
  assert env_steps == [1, 1, 1, 1, 0, 1, 1, 1]
  assert got["speaker"] == [
      [], [], [(0, 0, 100 + 200 / 2 + 300 / 4, 0.125, 30, 7)],
      # Truncated: every open window, bootstrapping from the real final obs with gamma**k.
      [(10, 0, 200 + 300 / 2 + 400 / 4, 0.125, 40, 7), (20, 0, 300 + 400 / 2, 0.25, 40, 7), (30, 0, 400, 0.5, 40, 7)],
      [], [], [], [(1000, 0, 100 + 200 / 2 + 300 / 4, 0.125, 1030, 7)],
  ]
  assert got["listener"] == [
      [],
      # listener_1 terminates: both its windows, discount 0, next_obs its final obs.
      [(2, 1, 121 + 221 / 2, 0.0, 22, 9), (12, 1, 221, 0.0, 22, 9)],
      [(1, 1, 111 + 211 / 2 + 311 / 4, 0.125, 31, 9)],
      [(11, 1, 211 + 311 / 2 + 411 / 4, 0.125, 41, 9), (21, 1, 311 + 411 / 2, 0.25, 41, 9), (31, 1, 411, 0.5, 41, 9)],
      [],  # The reset step.
      [],
      [(1002, 1, 121 + 221 / 2, 0.0, 1022, 9), (1012, 1, 221, 0.0, 1022, 9)],
      [(1001, 1, 111 + 211 / 2 + 311 / 4, 0.125, 1031, 9)],
  ]
  # One episode per agent: its own return and length; lag (learner step - policy
  # step: speaker 3 + s, listener 11 + 2 s) averaged over the steps it acted.
  assert episodes == [
      (2, Episode(0, "listener_1", 121 + 221, 2, 11 + 2 * 1.5)),
      (4, Episode(0, "speaker_0", 100 + 200 + 300 + 400, 4, 3 + 2.5)),
      (4, Episode(0, "listener_0", 111 + 211 + 311 + 411, 4, 11 + 2 * 2.5)),
      (7, Episode(0, "listener_1", 121 + 221, 2, 11 + 2 * 6.5)),
  ]


@pytest.mark.parametrize("share, actions, returns", [
    # Returns of max_cycles 3, listener_1 leaving at t = 2: sum over its steps of 100 t + 10 i + action.
    ("none", {"speaker_0": 2, "listener_0": 1, "listener_1": 3},
     {"speaker_0": 600 + 6, "listener_0": 600 + 33, "listener_1": 300 + 46}),
    ("type", {"speaker": 2, "listener": 1}, {"speaker_0": 600 + 6, "listener_0": 600 + 33, "listener_1": 300 + 42}),
])
def test_evaluation_gives_the_team_and_per_agent_returns_of_the_first_episodes(share, actions, returns):
  with make_env_set(EnvConfig("parallel_env", {"max_cycles": 3, "terminate_at": 2}), AgentsConfig(share), 2) as envs:
    agents, params = fixed_policy(envs, actions)
    result = evaluate(agents, params, envs, epsilon=0.0, seed=0)
    assert result == (sum(returns.values()), returns, 0)
    # Cut after 2 steps: listener_1's episode had ended; the others count their returns so far.
    capped = evaluate(agents, params, envs, epsilon=0.0, seed=0, max_steps=2)
  so_far = {"speaker_0": 300 + 4, "listener_0": 300 + 22, "listener_1": returns["listener_1"]}
  assert capped == (sum(so_far.values()), so_far, 2)


@pytest.mark.parametrize("algo", ["dqn", "iqn"])
def test_acting_with_several_learners_is_deterministic_for_a_seed(algo):
  """DQN acts in numpy, IQN in JAX (with a key per step from the learner's Generator)."""
  def transitions_and_episodes(seed):
    with make_env_set(EnvConfig("parallel_env", {"max_cycles": 5, "terminate_at": 3}), AgentsConfig("none"),
                      2) as envs:
      return run(tiny_actor(envs, *tiny_agents(envs, algo), seed=seed, epsilon=0.5, n_step=2), 30)
  (first, first_episodes), (second, second_episodes), (other, _) = map(transitions_and_episodes, (5, 5, 6))
  assert first_episodes == second_episodes
  for learner in AGENTS:
    for key in first[learner]:
      np.testing.assert_array_equal(first[learner][key], second[learner][key])
  assert any(not np.array_equal(first[learner]["action"], other[learner]["action"]) for learner in AGENTS)


def test_agents_must_match_the_env_sets_learners():
  with make_env_set(EnvConfig("parallel_env"), AgentsConfig("type"), 1) as envs:
    agents, _ = fixed_policy(envs, {"speaker": 0, "listener": 0})
    with pytest.raises(ValueError, match="the env set has"):
      Actor({"speaker": agents["speaker"]}, envs, seed=0)
    with pytest.raises(ValueError, match="learner 'listener'"):
      Actor({"speaker": agents["speaker"], "listener": agents["speaker"]}, envs, seed=0)
