"""The learner's guarantees: one test per failure of ../shared/learning-pitfalls.md."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from hypothesis import given, settings, strategies as st

import jaxrl

OBS_SHAPE, NUM_ACTIONS, BATCH = (4,), 3, 16


def make(**overrides):
  cfg = jaxrl.AgentConfig(**{"hidden_sizes": (16, 16), "num_tau_samples": 4, "num_tau_prime_samples": 5,
                             "num_quantile_samples": 6, "quantile_embedding_dim": 8, **overrides})
  return jaxrl.make_agent(cfg, OBS_SHAPE, NUM_ACTIONS)


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

  def test_dqn_loss_matches_independent_computation(self):
    for double_q, delta in [(True, 1.0), (False, 1.0), (True, None)]:
      agent = make(double_q=double_q, huber_delta=delta)
      state, _ = run_steps(agent, agent.init(jax.random.PRNGKey(0)), 2)
      state = state.replace(target_params=agent.init(jax.random.PRNGKey(7)).params)
      b = random_batch(11)
      q = np.asarray(agent.q_values(state.params, b.obs))
      q_next_online = np.asarray(agent.q_values(state.params, b.next_obs))
      q_next_target = np.asarray(agent.q_values(state.target_params, b.next_obs))
      a_star = np.argmax(q_next_online if double_q else q_next_target, axis=1)
      target = b.reward + b.discount * q_next_target[np.arange(BATCH), a_star]
      td = target - q[np.arange(BATCH), b.action]
      if delta is None:
        per = 0.5 * td**2
      else:
        per = np.where(np.abs(td) <= delta, 0.5 * td**2, delta * (np.abs(td) - 0.5 * delta))
      expected = np.sum(b.valid * per) / max(np.sum(b.valid), 1.0)
      _, metrics = agent.train_step(state, b)
      np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)

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
    q = agent.q_values(state.params, obs[:1], jax.random.split(key, 3)[0])
    self.assertTrue(np.all(greedy == np.argmax(q)))
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
    self.assertIn("Conv_0", state.params["params"]["torso"])
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
