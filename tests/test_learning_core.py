"""Behaviour tests of the pure core: it learns known values on tiny problems."""

import jax
import numpy as np

import jaxrl


def train(agent, sample_batch, steps, seed=0):
  state = agent.init(jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  step = jax.jit(agent.train_step)
  for _ in range(steps):
    state, _ = step(state, sample_batch(rng))
  return state


def one_hot(index, size):
  return np.eye(size, dtype=np.float32)[index]


def test_dqn_recovers_contextual_bandit_rewards():
  contexts, actions, batch = 4, 3, 64
  mean_reward = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [-0.5, -1.0, 1.5], [0.0, 0.3, 0.7]])

  def sample(rng):
    c = rng.integers(contexts, size=batch)
    a = rng.integers(actions, size=batch)
    r = mean_reward[c, a] + rng.normal(0, 0.3, size=batch)
    return jaxrl.Transition(one_hot(c, contexts), a.astype(np.int32), r.astype(np.float32),
                            np.zeros(batch, np.float32), one_hot(c, contexts), np.ones(batch, np.float32))

  cfg = jaxrl.AgentConfig(hidden_sizes=(32, 32), learning_rate=3e-3, huber_delta=None)
  agent = jaxrl.make_agent(cfg, (contexts,), actions)
  state = train(agent, sample, 1500)
  q = np.asarray(agent.q_values(state.params, np.eye(contexts, dtype=np.float32)))
  np.testing.assert_allclose(q, mean_reward, atol=0.1)


def test_dqn_converges_to_q_star_of_chain_mdp():
  # States 0..4; action 1 moves right, 0 moves left (0 stays). Moving right
  # from state 4 terminates with reward 1; every other reward is 0.
  n, gamma = 5, 0.9
  s = np.repeat(np.arange(n), 2)
  a = np.tile(np.arange(2), n)
  terminal = (s == n - 1) & (a == 1)
  s_next = np.where(a == 1, np.minimum(s + 1, n - 1), np.maximum(s - 1, 0))
  r = terminal.astype(np.float32)
  q_star = np.zeros((n, 2))                  # value iteration, independent of jaxrl
  for _ in range(200):
    q_star[s, a] = r + gamma * (~terminal) * q_star[s_next].max(axis=1)

  def sample(rng):
    i = rng.integers(len(s), size=32)
    return jaxrl.Transition(one_hot(s[i], n), a[i].astype(np.int32), r[i],
                            (gamma * ~terminal[i]).astype(np.float32), one_hot(s_next[i], n),
                            np.ones(32, np.float32))

  cfg = jaxrl.AgentConfig(hidden_sizes=(32, 32), learning_rate=3e-3, huber_delta=None,
                          target_update_period=50)
  agent = jaxrl.make_agent(cfg, (n,), 2)
  state = train(agent, sample, 3000)
  q = np.asarray(agent.q_values(state.params, np.eye(n, dtype=np.float32)))
  np.testing.assert_allclose(q, q_star, atol=0.05)
  assert np.all(np.argmax(q, axis=1) == 1)


def test_iqn_recovers_a_stochastic_reward_distribution():
  # One state. Action 0 pays 0 or 2 with equal probability (mean 1);
  # action 1 pays N(0.5, 0.2^2). Quantiles of action 0 must be bimodal.
  batch = 64

  def sample(rng):
    a = rng.integers(2, size=batch)
    r = np.where(a == 0, 2.0 * rng.integers(2, size=batch), rng.normal(0.5, 0.2, size=batch))
    obs = np.ones((batch, 1), np.float32)
    return jaxrl.Transition(obs, a.astype(np.int32), r.astype(np.float32), np.zeros(batch, np.float32),
                            obs, np.ones(batch, np.float32))

  cfg = jaxrl.AgentConfig(algo="iqn", hidden_sizes=(32,), learning_rate=3e-3, num_tau_samples=16,
                          num_tau_prime_samples=16, num_quantile_samples=64, quantile_embedding_dim=16)
  agent = jaxrl.make_agent(cfg, (1,), 2)
  state = train(agent, sample, 2000)
  obs = np.ones((1, 1), np.float32)
  q = np.asarray(agent.q_values(state.params, obs, jax.random.PRNGKey(0)))[0]
  np.testing.assert_allclose(q, [1.0, 0.5], atol=0.12)
  z = np.asarray(agent.network.apply(state.params, obs, np.array([[0.1, 0.9]], np.float32)))[0, :, 0]
  assert z[0] < 0.5 and z[1] > 1.5, z      # the 10% and 90% quantiles of {0, 2}
