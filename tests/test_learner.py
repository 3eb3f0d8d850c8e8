"""The learner's guarantees: one test per failure of ../shared/learning-pitfalls.md."""

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from hypothesis import given, settings, strategies as st

import jaxrl

OBS_SHAPE, NUM_ACTIONS, BATCH = (4,), 3, 16


def make(network=None, **overrides):
  cfg = jaxrl.AgentConfig(**{"hidden_sizes": (16, 16), "num_tau_samples": 4, "num_tau_prime_samples": 5,
                             "num_quantile_samples": 6, "quantile_embedding_dim": 8, **overrides})
  return jaxrl.make_agent(cfg, OBS_SHAPE, NUM_ACTIONS, network=network)


def random_batch(seed=0, size=BATCH, obs_shape=OBS_SHAPE):
  rng = np.random.default_rng(seed)
  return jaxrl.Transition(
      obs=rng.normal(size=(size, *obs_shape)).astype(np.float32),
      action=rng.integers(0, NUM_ACTIONS, size).astype(np.int32),
      reward=rng.normal(size=size).astype(np.float32),
      discount=(0.99 * (rng.random(size) > 0.2)).astype(np.float32),
      next_obs=rng.normal(size=(size, *obs_shape)).astype(np.float32),
      valid=(rng.random(size) > 0.1).astype(np.float32))


def run_steps(agent, state, n, seed=0):
  step = jax.jit(agent.train_step)
  for i in range(n):
    state, metrics = step(state, random_batch(seed + i))
  return state, metrics


ALGOS = parameterized.parameters("dqn", "iqn")


def huber(x, delta):
  return np.where(np.abs(x) <= delta, 0.5 * x**2, delta * (np.abs(x) - 0.5 * delta))


def expected_loss(agent, state, b):
  """train_step's loss, in numpy from agent.network.apply, over the valid rows only."""
  cfg, rows = agent.config, np.flatnonzero(b.valid > 0)
  if not len(rows):
    return 0.0
  obs, action, reward, discount, next_obs = (np.asarray(getattr(b, name))[rows] for name in
                                              ("obs", "action", "reward", "discount", "next_obs"))
  apply = lambda params, *inputs: np.asarray(agent.network.apply(params, *inputs), np.float64)
  online_or_target = state.params if cfg.double_q else state.target_params
  i = np.arange(len(rows))
  if cfg.algo == "dqn":
    q, q_next = apply(state.params, obs), apply(state.target_params, next_obs)       # [R, A]
    a_star = np.argmax(apply(online_or_target, next_obs), axis=1)
    td = reward + discount * q_next[i, a_star] - q[i, action]
    per_row = 0.5 * td**2 if cfg.huber_delta is None else huber(td, cfg.huber_delta)
  else:
    # The keys as train_step and _loss split them; taus for all B rows.
    tau_key, tau_prime_key, selector_key = jax.random.split(jax.random.split(state.rng)[1], 3)
    taus = lambda key, num: np.asarray(jax.random.uniform(key, (len(b.valid), num)))[rows]
    tau = taus(tau_key, cfg.num_tau_samples)                                          # [R, N]
    z = apply(state.params, obs, tau)                                                 # [R, N, A]
    z_next = apply(state.target_params, next_obs, taus(tau_prime_key, cfg.num_tau_prime_samples))  # [R, N', A]
    z_selector = apply(online_or_target, next_obs, taus(selector_key, cfg.num_quantile_samples))   # [R, K, A]
    a_star = np.argmax(z_selector.mean(axis=1), axis=1)
    target = reward[:, None] + discount[:, None] * z_next[i, :, a_star]              # [R, N']
    u = target[:, None, :] - z[i, :, action][:, :, None]                              # [R, N, N']
    # Dabney et al. 2018, eq. 10: sum over i (N), mean over j (N').
    per_quantile = np.abs(tau[:, :, None] - (u < 0)) * huber(u, cfg.kappa) / cfg.kappa
    per_row = per_quantile.mean(axis=2).sum(axis=1)
  return np.sum(b.valid[rows] * per_row) / max(np.sum(b.valid), 1.0)


class DuelingHead(nn.Module):
  """Dueling Q (Wang et al. 2016): V + A - mean_a A; [B, A], or [B, N, A] given taus [B, N]."""
  num_actions: int

  @nn.compact
  def __call__(self, obs, taus=None):
    x = nn.relu(nn.Dense(32)(obs))                                                    # [B, H]
    if taus is not None:
      cos = jnp.cos(jnp.pi * taus[:, :, None] * jnp.arange(8.0)[None, None, :])     # [B, N, 8]
      x = x[:, None, :] * nn.relu(nn.Dense(32)(cos))                                  # [B, N, H]
    value, advantage = nn.Dense(1)(x), nn.Dense(self.num_actions)(x)
    return value + advantage - advantage.mean(axis=-1, keepdims=True)


class MistakenHead(nn.Module):
  """A linear head with a wrong output shape."""
  mistake: str

  @nn.compact
  def __call__(self, obs, taus=None):
    q = nn.Dense(NUM_ACTIONS + (self.mistake == "one action too many"))(obs)          # [B, A]
    if self.mistake == "quantile axis":
      return q[:, None, :]                                                            # [B, 1, A]
    if self.mistake == "transposed":
      return jnp.broadcast_to(q, (taus.shape[1], *q.shape))                           # [N, B, A]
    return q


class LearnerStateTest(parameterized.TestCase):

  def test_state_has_exactly_the_contract_fields(self):
    fields = [f.name for f in dataclasses.fields(jaxrl.LearnerState)]
    self.assertEqual(fields, ["params", "target_params", "opt_state", "epsilon", "step", "rng"])

  @ALGOS
  def test_init(self, algo):
    agent = make(algo=algo, epsilon_start=0.7)
    state = agent.init(jax.random.PRNGKey(0))
    chex.assert_trees_all_equal(state.target_params, state.params)
    chex.assert_trees_all_equal(state.opt_state, agent.optimizer.init(state.params))
    self.assertEqual(state.step.dtype, jnp.int32)
    self.assertEqual(int(state.step), 0)
    self.assertEqual(state.epsilon.dtype, jnp.float32)
    np.testing.assert_allclose(state.epsilon, 0.7)

  # Pitfall 1: optimizer state left over after a weight copy.
  @ALGOS
  def test_load_params_rebuilds_optimizer_state(self, algo):
    agent = make(algo=algo)
    state, _ = run_steps(agent, agent.init(jax.random.PRNGKey(0)), 3)
    other = agent.init(jax.random.PRNGKey(1)).params
    loaded = agent.load_params(state, jax.tree.map(np.asarray, other))  # a numpy tree
    chex.assert_trees_all_equal(loaded.params, other)
    chex.assert_trees_all_equal(loaded.target_params, other)
    chex.assert_trees_all_equal(loaded.opt_state, agent.optimizer.init(other))
    # The moments of the old run are gone: they were non-zero before.
    self.assertGreater(float(optax.tree.norm(state.opt_state.inner_state[-1][0].mu)), 0.0)
    for name in ("step", "epsilon", "rng"):
      chex.assert_trees_all_equal(getattr(loaded, name), getattr(state, name))

  def test_load_params_rejects_wrong_shapes(self):
    agent = make()
    state = agent.init(jax.random.PRNGKey(0))
    wrong = make(hidden_sizes=(8,)).init(jax.random.PRNGKey(0)).params
    with pytest.raises(AssertionError):
      agent.load_params(state, wrong)

  # Pitfall 3: a step counter out of scope / not advanced.
  @ALGOS
  def test_step_advances_by_one(self, algo):
    agent = make(algo=algo)
    state = agent.init(jax.random.PRNGKey(0))
    step = jax.jit(agent.train_step)
    for expected in range(1, 5):
      state, _ = step(state, random_batch(expected))
      self.assertEqual(int(state.step), expected)
      self.assertEqual(state.step.dtype, jnp.int32)

  # Pitfalls 2 and 8: epsilon that never decays / is not in the published state.
  @ALGOS
  def test_epsilon_follows_schedule_of_step(self, algo):
    agent = make(algo=algo, epsilon_start=1.0, epsilon_end=0.1, epsilon_decay_steps=4)
    state = agent.init(jax.random.PRNGKey(0))
    step = jax.jit(agent.train_step)
    seen = [float(state.epsilon)]
    for i in range(7):
      state, metrics = step(state, random_batch(i))
      np.testing.assert_allclose(metrics["epsilon"], state.epsilon)
      seen.append(float(state.epsilon))
    np.testing.assert_allclose(seen, [1.0, 0.775, 0.55, 0.325, 0.1, 0.1, 0.1, 0.1], rtol=1e-6)

  # Pitfall 4: a target network that is never updated.
  @ALGOS
  def test_hard_target_update_only_at_period(self, algo):
    agent = make(algo=algo, target_update_period=3, target_tau=1.0)
    state = agent.init(jax.random.PRNGKey(0))
    initial_target = state.target_params
    step = jax.jit(agent.train_step)
    for i in range(1, 7):
      state, _ = step(state, random_batch(i))
      if i % 3 == 0:
        chex.assert_trees_all_equal(state.target_params, state.params)
        last_sync = state.params
      else:
        expected = initial_target if i < 3 else last_sync
        chex.assert_trees_all_equal(state.target_params, expected)
        self.assertFalse(np.allclose(state.params["params"]["Dense_0"]["kernel"],
                                     state.target_params["params"]["Dense_0"]["kernel"]))

  @ALGOS
  def test_soft_target_update(self, algo):
    agent = make(algo=algo, target_update_period=2, target_tau=0.25)
    state = agent.init(jax.random.PRNGKey(0))
    step = jax.jit(agent.train_step)
    state, _ = step(state, random_batch(1))
    before = state.target_params
    state, _ = step(state, random_batch(2))
    expected = jax.tree.map(lambda p, t: 0.25 * p + 0.75 * t, state.params, before)
    chex.assert_trees_all_close(state.target_params, expected, rtol=1e-6, atol=1e-7)
    state, _ = step(state, random_batch(3))   # step 3: not a multiple of 2.
    chex.assert_trees_all_close(state.target_params, expected, rtol=1e-6, atol=1e-7)

  # Pitfall 5: batches on the wrong device.
  @ALGOS
  def test_numpy_batch_equals_device_batch(self, algo):
    agent = make(algo=algo)
    state = agent.init(jax.random.PRNGKey(0))
    batch = random_batch()
    step = jax.jit(agent.train_step)
    from_numpy, metrics_numpy = step(state, batch)
    from_device, metrics_device = step(state, jax.device_put(batch))
    chex.assert_trees_all_equal(from_numpy, from_device)
    chex.assert_trees_all_equal(metrics_numpy, metrics_device)
    device = jax.devices()[0]
    for leaf in jax.tree.leaves(from_numpy):
      self.assertEqual(leaf.devices(), {device})

  # Pitfall 6: train/eval mode confusion.
  @ALGOS
  def test_no_mode_state_and_explicit_randomness(self, algo):
    agent = make(algo=algo)
    state = agent.init(jax.random.PRNGKey(0))
    self.assertEqual(list(state.params), ["params"])  # no batch_stats or other mutable collections
    obs = random_batch().obs
    key = jax.random.PRNGKey(3)
    chex.assert_trees_all_equal(agent.q_values(state.params, obs, key), agent.q_values(state.params, obs, key))
    stepped_twice = [agent.train_step(state, random_batch()) for _ in range(2)]
    chex.assert_trees_all_equal(*stepped_twice)
    if algo == "iqn":
      other = agent.q_values(state.params, obs, jax.random.PRNGKey(4))
      self.assertFalse(np.allclose(other, agent.q_values(state.params, obs, key)))

  # Pitfall 9: no gradient clipping.
  @ALGOS
  def test_gradient_clipping_bounds_the_gradient_adam_sees(self, algo):
    agent = make(algo=algo, max_grad_norm=0.01)
    state = agent.init(jax.random.PRNGKey(0))
    batch = random_batch()._replace(reward=np.full(BATCH, 100.0, np.float32))
    state, metrics = agent.train_step(state, batch)
    self.assertGreater(float(metrics["grad_norm"]), 1.0)
    # After one step Adam's first moment is (1 - b1) * clipped gradient.
    mu = state.opt_state.inner_state[-1][0].mu
    np.testing.assert_allclose(optax.tree.norm(mu) / 0.1, 0.01, rtol=1e-4)

  def test_no_clipping_when_off(self):
    agent = make(max_grad_norm=None)
    state = agent.init(jax.random.PRNGKey(0))
    state, metrics = agent.train_step(state, random_batch())
    mu = state.opt_state.inner_state[-1][0].mu
    np.testing.assert_allclose(optax.tree.norm(mu) / 0.1, metrics["grad_norm"], rtol=1e-4)

  # Pitfall 9: no learning-rate schedule.
  def test_learning_rate_decays_to_lr_end_by_learner_step(self):
    agent = make(learning_rate=1e-2, lr_end=1e-4, lr_decay_steps=4)
    state = agent.init(jax.random.PRNGKey(0))
    rates = []
    for i in range(6):
      state, metrics = agent.train_step(state, random_batch(i))
      rates.append(float(metrics["learning_rate"]))
    np.testing.assert_allclose(rates, [1e-2, 7.525e-3, 5.05e-3, 2.575e-3, 1e-4, 1e-4], rtol=1e-5)
    # The rate follows the learner step, not the optimizer's own count: the
    # first Adam step after a weight copy moves each weight by ~lr_end.
    fresh = agent.load_params(state, state.params)
    moved, _ = agent.train_step(fresh, random_batch(9))
    delta = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), moved.params, fresh.params)
    np.testing.assert_allclose(max(jax.tree.leaves(delta)), 1e-4, rtol=1e-2)

  # Purity: one trace for fixed shapes, jit and no-jit agree, inputs untouched.
  @ALGOS
  def test_traces_once(self, algo):
    agent = make(algo=algo)
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(agent.train_step, n=1))
    state = agent.init(jax.random.PRNGKey(0))
    for i in range(3):
      state, _ = step(state, random_batch(i))
    state = agent.load_params(state, state.params)
    state, _ = step(state, jax.device_put(random_batch(5)))

  @ALGOS
  def test_jit_and_no_jit_agree_and_inputs_are_not_mutated(self, algo):
    agent = make(algo=algo)
    state = agent.init(jax.random.PRNGKey(0))
    copy = jax.tree.map(np.array, state)
    batch = random_batch()
    eager = agent.train_step(state, batch)
    jitted = jax.jit(agent.train_step)(state, batch)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal(jax.tree.map(np.array, state), copy)

  @ALGOS
  def test_vmap_over_seeds_equals_each_seed_alone(self, algo):
    """Research code trains several seeds in one program: ``jax.vmap`` of init
    and train_step over seeds gives each seed's own states and metrics."""
    agent = make(algo=algo)
    seeds = jnp.arange(2)
    batches = jax.tree.map(lambda *x: np.stack(x), *(random_batch(int(seed)) for seed in seeds))
    init, step = jax.jit(jax.vmap(lambda seed: agent.init(jax.random.PRNGKey(seed)))), jax.jit(
        jax.vmap(agent.train_step))
    states = init(seeds)
    for _ in range(2):
      states, metrics = step(states, batches)
    chex.assert_tree_shape_prefix((states, metrics), (2,))
    step_alone = jax.jit(agent.train_step)
    for i, seed in enumerate(seeds):
      alone, alone_metrics = agent.init(jax.random.PRNGKey(seed)), None
      for _ in range(2):
        alone, alone_metrics = step_alone(alone, random_batch(int(seed)))
      chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], (states, metrics)), (alone, alone_metrics),
                                  rtol=2e-5, atol=1e-6)
    assert not np.allclose(metrics["loss"][0], metrics["loss"][1])   # the seeds differ

  # Period 1 with a hard copy (DrQ's) shares the torso on next_obs while the
  # target equals the online net; a state whose target differs still gets it.
  @parameterized.parameters((True, 1.0, 500), (False, 1.0, 500), (True, None, 500), (True, 1.0, 1), (False, 1.0, 1))
  def test_dqn_loss_matches_independent_computation(self, double_q, delta, period):
    agent = make(double_q=double_q, huber_delta=delta, target_update_period=period)
    trained, _ = run_steps(agent, agent.init(jax.random.PRNGKey(0)), 2)
    other_target = trained.replace(target_params=agent.init(jax.random.PRNGKey(7)).params)
    b = random_batch(11)
    step = jax.jit(agent.train_step)   # compiled once for both states
    for state in (trained, other_target):
      _, metrics = step(state, b)
      np.testing.assert_allclose(metrics["loss"], expected_loss(agent, state, b), rtol=1e-5)

  @parameterized.parameters((True, 1.0, 500), (False, 1.0, 500), (True, 2.0, 500), (False, 0.5, 500), (True, 1.0, 1))
  def test_iqn_loss_matches_independent_computation(self, double_q, kappa, period):
    agent = make(algo="iqn", double_q=double_q, kappa=kappa, target_update_period=period)   # N = 4, N' = 5, K = 6
    trained, _ = run_steps(agent, agent.init(jax.random.PRNGKey(0)), 2)
    other_target = trained.replace(target_params=agent.init(jax.random.PRNGKey(7)).params)
    b = random_batch(11)
    self.assertGreater(np.sum(b.valid * b.discount), 0.0)
    step = jax.jit(agent.train_step)   # compiled once for both states
    for state in (trained, other_target):
      _, metrics = step(state, b)
      np.testing.assert_allclose(metrics["loss"], expected_loss(agent, state, b), rtol=1e-5)

  # A valid row with an action outside [0, A) must not train silently.
  @parameterized.product(algo=("dqn", "iqn"), bad_action=(NUM_ACTIONS, 7, -1))
  def test_out_of_range_action_in_a_valid_row_poisons_the_step(self, algo, bad_action):
    agent = make(algo=algo)
    state = agent.init(jax.random.PRNGKey(0))
    b = random_batch()
    action = b.action.copy()
    action[np.flatnonzero(b.valid)[3]] = bad_action
    for train_step in (agent.train_step, jax.jit(agent.train_step)):
      new_state, metrics = train_step(state, b._replace(action=action))
      for name in ("loss", "grad_norm", "q_mean"):
        self.assertTrue(np.isnan(metrics[name]), name)
      for leaf in jax.tree.leaves(new_state.params):
        self.assertTrue(np.isnan(leaf).all())

  @ALGOS
  def test_padding_rows_may_hold_any_action(self, algo):
    agent = make(algo=algo)
    state = agent.init(jax.random.PRNGKey(0))
    b = random_batch()._replace(valid=np.r_[np.ones(10), np.zeros(6)].astype(np.float32))
    zeros = b._replace(action=np.r_[b.action[:10], np.zeros(6)].astype(np.int32))
    anything = b._replace(action=np.r_[b.action[:10], [NUM_ACTIONS, 7, -1, -8, 2**31 - 1, 0]].astype(np.int32))
    step = jax.jit(agent.train_step)
    chex.assert_trees_all_equal(step(state, anything), step(state, zeros))
    _, metrics = step(state, anything)
    chex.assert_tree_all_finite(metrics)
    np.testing.assert_allclose(metrics["loss"], expected_loss(agent, state, b), rtol=1e-5)

  # Research code can bring its own network.
  @ALGOS
  def test_custom_network_trains_jits_and_loads(self, algo):
    agent = make(algo=algo, network=DuelingHead(NUM_ACTIONS), learning_rate=1e-2)
    self.assertFalse(agent.builtin_network)
    self.assertTrue(make(algo=algo).builtin_network)
    state = agent.init(jax.random.PRNGKey(0))
    layers = 4 if algo == "iqn" else 3
    self.assertEqual(set(state.params["params"]), {f"Dense_{i}" for i in range(layers)})   # no built-in torso
    b = random_batch(3)._replace(discount=np.zeros(BATCH, np.float32))
    np.testing.assert_allclose(agent.train_step(state, b)[1]["loss"], expected_loss(agent, state, b), rtol=1e-5)
    step = jax.jit(agent.train_step)
    trained, first = step(state, b)
    for _ in range(300):
      trained, metrics = step(trained, b)
    self.assertLess(float(metrics["loss"]), 0.1 * float(first["loss"]))
    self.assertEqual(agent.act(trained.params, b.obs, 0.0, jax.random.PRNGKey(1)).shape, (BATCH,))
    loaded = agent.load_params(trained, jax.tree.map(np.asarray, state.params))
    chex.assert_trees_all_equal(loaded.params, state.params)
    chex.assert_trees_all_equal(loaded.opt_state, agent.optimizer.init(state.params))

  def test_custom_dqn_network_is_the_one_applied(self):
    agent = make(network=DuelingHead(NUM_ACTIONS))
    params = agent.init(jax.random.PRNGKey(0)).params["params"]
    dense = lambda x, name: x @ np.asarray(params[name]["kernel"]) + np.asarray(params[name]["bias"])
    obs = random_batch().obs
    x = np.maximum(dense(obs, "Dense_0"), 0.0)
    value, advantage = dense(x, "Dense_1"), dense(x, "Dense_2")
    expected = value + advantage - advantage.mean(1, keepdims=True)
    np.testing.assert_allclose(agent.q_values({"params": params}, obs), expected, rtol=1e-5, atol=1e-6)

  @parameterized.parameters(("dqn", "one action too many"), ("dqn", "quantile axis"),
                            ("iqn", "no quantile axis"), ("iqn", "transposed"))
  def test_network_of_the_wrong_shape_is_a_value_error(self, algo, mistake):
    agent = make(algo=algo, network=MistakenHead(mistake))
    expected = r"\[B, A\]" if algo == "dqn" else r"\[B, N, A\]"
    with self.assertRaisesRegex(ValueError, rf"^network: expected [^\n]*{expected}[^\n]*got output shape [^\n]*$"):
      agent.init(jax.random.PRNGKey(0))

  @ALGOS
  def test_invalid_samples_do_not_contribute(self, algo):
    agent = make(algo=algo)
    state = agent.init(jax.random.PRNGKey(0))
    b = random_batch()._replace(valid=np.r_[np.ones(8), np.zeros(8)].astype(np.float32))
    garbage = b._replace(obs=b.obs.at[8:].set(1e6) if hasattr(b.obs, "at") else np.r_[b.obs[:8], np.full((8, 4), 1e6, np.float32)],
                         reward=np.r_[b.reward[:8], np.full(8, 1e6, np.float32)])
    chex.assert_trees_all_close(agent.train_step(state, b), agent.train_step(state, garbage), rtol=1e-5)
    _, metrics = agent.train_step(state, b._replace(valid=np.zeros(BATCH, np.float32)))
    self.assertEqual(float(metrics["loss"]), 0.0)

  @ALGOS
  def test_act_is_epsilon_greedy(self, algo):
    agent = make(algo=algo)
    state = agent.init(jax.random.PRNGKey(0))
    obs = np.repeat(random_batch().obs[:1], 3000, axis=0)
    key = jax.random.PRNGKey(1)
    greedy = agent.act(state.params, obs, 0.0, key)
    self.assertEqual(greedy.dtype, jnp.int32)
    self.assertEqual(greedy.shape, (3000,))
    q = agent.q_values(state.params, obs, jax.random.split(key, 3)[0])   # IQN: each row's own taus
    np.testing.assert_array_equal(greedy, np.argmax(q, axis=-1))
    counts = np.bincount(np.asarray(agent.act(state.params, obs, 1.0, key)), minlength=NUM_ACTIONS)
    np.testing.assert_allclose(counts / 3000, 1 / NUM_ACTIONS, atol=0.04)  # uniform over ALL actions
    half = np.asarray(agent.act(state.params, obs, 0.5, key))
    np.testing.assert_allclose(np.mean(half == np.asarray(greedy)), 0.5 + 0.5 / NUM_ACTIONS, atol=0.04)

  def test_iqn_q_values_average_quantile_samples(self):
    agent = make(algo="iqn")
    state = agent.init(jax.random.PRNGKey(0))
    obs = random_batch().obs
    key = jax.random.PRNGKey(5)
    taus = jax.random.uniform(key, (BATCH, 6))
    expected = agent.network.apply(state.params, obs, taus).mean(axis=1)
    chex.assert_trees_all_close(agent.q_values(state.params, obs, key), expected, rtol=1e-6)

  @ALGOS
  def test_image_observations_use_conv_torso(self, algo):
    cfg = jaxrl.AgentConfig(algo=algo, hidden_sizes=(32,), num_tau_samples=2, num_tau_prime_samples=2,
                            num_quantile_samples=2, quantile_embedding_dim=4)
    agent = jaxrl.make_agent(cfg, (10, 10, 4), NUM_ACTIONS)
    state = agent.init(jax.random.PRNGKey(0))
    self.assertIn("Im2colConv_0", state.params["params"]["torso"])
    b = random_batch(obs_shape=(10, 10, 4))
    state, metrics = jax.jit(agent.train_step)(state, b)
    self.assertTrue(np.isfinite(metrics["loss"]))
    self.assertEqual(agent.q_values(state.params, b.obs, jax.random.PRNGKey(0)).shape, (BATCH, NUM_ACTIONS))


@settings(deadline=None, max_examples=50)
@given(start=st.floats(0, 1), end_frac=st.floats(0, 1), decay=st.integers(0, 1000), step=st.integers(0, 5000))
def test_epsilon_schedule_is_linear_and_floored(start, end_frac, decay, step):
  end = start * end_frac
  agent = make(epsilon_start=start, epsilon_end=end, epsilon_decay_steps=decay)
  eps = float(agent.epsilon_schedule(jnp.int32(step)))
  expected = end if decay == 0 or step >= decay else start + (end - start) * step / decay
  np.testing.assert_allclose(eps, expected, rtol=1e-5, atol=1e-6)
  assert eps >= np.float32(end) - 1e-7


@functools.cache
def jitted(algo):
  agent = make(algo=algo)
  return agent, agent.init(jax.random.PRNGKey(0)), jax.jit(agent.train_step)


@pytest.mark.parametrize("algo", ["dqn", "iqn"])
@settings(deadline=None, max_examples=30)
@given(rows=st.lists(st.tuples(st.integers(-3, NUM_ACTIONS + 2), st.booleans()), min_size=BATCH, max_size=BATCH))
def test_loss_is_finite_iff_every_valid_action_is_in_range(algo, rows):
  agent, state, step = jitted(algo)
  action, valid = (np.array(column) for column in zip(*rows))
  b = random_batch()._replace(action=action.astype(np.int32), valid=valid.astype(np.float32))
  _, metrics = step(state, b)
  in_range = np.all((action[valid] >= 0) & (action[valid] < NUM_ACTIONS))
  assert np.isfinite(metrics["loss"]) == np.isfinite(metrics["grad_norm"]) == in_range
  if in_range:
    np.testing.assert_allclose(metrics["loss"], expected_loss(agent, state, b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("field,value", [
    ("algo", "ppo"), ("learning_rate", -1e-3), ("learning_rate", 0.0), ("target_tau", 0.0),
    ("target_tau", 1.5), ("hidden_sizes", ()), ("hidden_sizes", (0,)), ("epsilon_start", 1.5),
    ("epsilon_end", -0.1), ("target_update_period", 0), ("max_grad_norm", -1.0), ("huber_delta", 0.0),
    ("num_tau_samples", 0), ("kappa", -1.0), ("adam_eps", 0.0), ("epsilon_decay_steps", -1),
    ("lr_end", -1.0), ("double_q", "yes"), ("learning_rate", float("nan")),
])
def test_invalid_config_names_the_field(field, value):
  with pytest.raises(ValueError, match=rf"^{field} "):
    jaxrl.AgentConfig(**{field: value})


def test_lr_end_needs_decay_steps():
  with pytest.raises(ValueError, match="^lr_decay_steps "):
    jaxrl.AgentConfig(lr_end=1e-5, lr_decay_steps=0)


def test_epsilon_end_above_start_is_rejected():
  with pytest.raises(ValueError, match="^epsilon_end "):
    jaxrl.AgentConfig(epsilon_start=0.1, epsilon_end=0.5)
