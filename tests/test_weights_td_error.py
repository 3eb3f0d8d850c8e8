"""Importance weights in the loss and train_step's td_error (design sections 1
and 9), against an independent numpy computation from agent.network.apply."""

import chex
import jax
import numpy as np
import pytest

import jaxrl

from test_learner import BATCH, NUM_ACTIONS, make, random_batch


def weighted_batch(seed=0, size=BATCH):
  """``random_batch`` with a padding row and a valid one first, and weights in [0.1, 2] (none equal)."""
  batch = random_batch(seed, size)
  valid = batch.valid.copy()
  valid[:2] = 0.0, 1.0
  weight = np.random.default_rng([seed, 1]).uniform(0.1, 2.0, size).astype(np.float32)
  return batch._replace(valid=valid, weight=weight)


def a_state(agent):
  """A state whose params, target params and rng all differ from init's."""
  state = agent.init(jax.random.PRNGKey(0))
  state, _ = jax.jit(agent.train_step)(state, weighted_batch(5))
  return state.replace(target_params=agent.init(jax.random.PRNGKey(7)).params)


def huber(x, delta):
  return np.where(np.abs(x) <= delta, 0.5 * x**2, delta * (np.abs(x) - 0.5 * delta))


def oracle(agent, state, b):
  """(|TD error| float64 [B], the weighted loss) in numpy, every row computed
  (a padding row with action 0)."""
  cfg = agent.config
  apply = lambda params, *inputs: np.asarray(agent.network.apply(params, *inputs), np.float64)
  selector_params = state.params if cfg.double_q else state.target_params
  i = np.arange(len(b.valid))
  reward, discount = b.reward.astype(np.float64), b.discount.astype(np.float64)
  action = np.where(b.valid > 0, b.action, 0)   # padding rows may hold any action
  if cfg.algo == "dqn":
    q, q_next = apply(state.params, b.obs), apply(state.target_params, b.next_obs)   # [B, A]
    a_star = np.argmax(apply(selector_params, b.next_obs), axis=1)
    td = reward + discount * q_next[i, a_star] - q[i, action]                          # [B]
    per_row = 0.5 * td**2 if cfg.huber_delta is None else huber(td, cfg.huber_delta)
    abs_td = np.abs(td)
  else:
    # The keys as train_step and its loss split them.
    tau_key, tau_prime_key, selector_key = jax.random.split(jax.random.split(state.rng)[1], 3)
    taus = lambda key, num: np.asarray(jax.random.uniform(key, (len(b.valid), num)))
    tau = taus(tau_key, cfg.num_tau_samples)                                            # [B, N]
    z = apply(state.params, b.obs, tau)                                                 # [B, N, A]
    z_next = apply(state.target_params, b.next_obs, taus(tau_prime_key, cfg.num_tau_prime_samples))
    z_selector = apply(selector_params, b.next_obs, taus(selector_key, cfg.num_quantile_samples))
    a_star = np.argmax(z_selector.mean(axis=1), axis=1)
    target = reward[:, None] + discount[:, None] * z_next[i, :, a_star]                 # [B, N']
    u = target[:, None, :] - z[i, :, action][:, :, None]                               # [B, N, N']
    rho = huber(u, cfg.kappa) / cfg.kappa if cfg.kappa > 0 else np.abs(u)
    per_row = (np.abs(tau[:, :, None] - (u < 0)) * rho).mean(axis=2).sum(axis=1)
    abs_td = np.abs(u).mean(axis=(1, 2))
  loss = np.sum(b.valid * b.weight * per_row) / max(np.sum(b.valid), 1.0)
  return abs_td, loss


CASES = [("dqn", {"double_q": True, "huber_delta": 1.0}), ("dqn", {"double_q": False, "huber_delta": 1.0}),
         ("dqn", {"double_q": True, "huber_delta": None}), ("dqn", {"dueling": True}),
         ("iqn", {"double_q": True, "kappa": 1.0}), ("iqn", {"double_q": False, "kappa": 2.0}),
         ("iqn", {"double_q": True, "kappa": 0.0}), ("iqn", {"dueling": True})]


@pytest.mark.parametrize("algo, options", CASES)
def test_td_error_and_weighted_loss_match_numpy(algo, options):
  agent = make(algo=algo, **options)
  state, b = a_state(agent), weighted_batch(11)
  _, metrics = jax.jit(agent.train_step)(state, b)
  abs_td, loss = oracle(agent, state, b)
  assert metrics["td_error"].dtype == np.float32 and metrics["td_error"].shape == (BATCH,)
  valid = b.valid > 0
  assert valid.sum() > BATCH // 2 and (b.valid * b.discount).sum() > 0
  np.testing.assert_allclose(metrics["td_error"][valid], abs_td[valid], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  # The weights are in the loss: the unweighted loss is another number.
  assert abs(loss - oracle(agent, state, b._replace(weight=np.ones(BATCH, np.float32)))[1]) > 1e-3 * loss


@pytest.mark.parametrize("algo", ["dqn", "iqn"])
def test_padding_rows_have_a_finite_td_error_whatever_they_hold(algo):
  agent = make(algo=algo)
  state, b = a_state(agent), weighted_batch(3)
  padding = np.r_[np.zeros(BATCH - 4, bool), np.ones(4, bool)]
  b = b._replace(valid=(~padding).astype(np.float32),   # garbage, large but finite, in the padding rows
                 obs=np.where(padding[:, None], 1e6, b.obs).astype(np.float32),
                 reward=np.where(padding, -1e6, b.reward).astype(np.float32),
                 action=np.where(padding, np.r_[np.zeros(BATCH - 4), [7, -1, NUM_ACTIONS, 2**31 - 1]],
                                 b.action).astype(np.int32),
                 weight=np.where(padding, 1e6, b.weight).astype(np.float32))
  for train_step in (agent.train_step, jax.jit(agent.train_step)):
    _, metrics = train_step(state, b)
    chex.assert_tree_all_finite(metrics)
    np.testing.assert_allclose(metrics["td_error"][~padding], oracle(agent, state, b)[0][~padding], rtol=1e-5)


@pytest.mark.parametrize("algo", ["dqn", "iqn"])
def test_a_valid_row_with_a_bad_action_has_a_nan_td_error(algo):
  agent = make(algo=algo)
  state, b = a_state(agent), weighted_batch(3)
  bad = np.flatnonzero(b.valid)[2]
  _, metrics = jax.jit(agent.train_step)(state, b._replace(action=np.where(np.arange(BATCH) == bad, 9, b.action)))
  assert np.isnan(metrics["td_error"][bad]) and np.isfinite(np.delete(metrics["td_error"], bad)).all()


def loss_and_grads(agent, state, b):
  """train_step's loss, and its gradient in the params (through train_step)."""
  loss_of = lambda params: agent.train_step(state.replace(params=params), b)[1]["loss"]
  return jax.jit(jax.value_and_grad(loss_of))(state.params)


@pytest.mark.parametrize("algo", ["dqn", "iqn"])
def test_weight_zero_removes_the_sample_from_the_numerator_only(algo):
  agent = make(algo=algo)
  state, b = a_state(agent), weighted_batch(4)
  k = np.flatnonzero(b.valid)[3]
  n = float(b.valid.sum())
  zero_weight = loss_and_grads(agent, state, b._replace(weight=np.where(np.arange(BATCH) == k, 0.0, b.weight)))
  removed = loss_and_grads(agent, state, b._replace(valid=np.where(np.arange(BATCH) == k, 0.0, b.valid)))
  # sum over the others / n against sum over the others / (n - 1).
  chex.assert_trees_all_close(jax.tree.map(lambda x: x * n, zero_weight),
                              jax.tree.map(lambda x: x * (n - 1), removed), rtol=1e-4, atol=1e-7)
  full = loss_and_grads(agent, state, b)
  assert float(full[0]) != pytest.approx(float(zero_weight[0]), rel=1e-3)


@pytest.mark.parametrize("algo", ["dqn", "iqn"])
def test_weights_scale_each_samples_gradient_contribution(algo):
  """Loss and gradient are linear in the weights: w = w1 + w2 gives the sum,
  so each sample's term is its weight times its own (weights not all equal)."""
  agent = make(algo=algo)
  state, b = a_state(agent), weighted_batch(6)
  rng = np.random.default_rng(1)
  w1 = rng.uniform(0.0, 2.0, BATCH).astype(np.float32)
  w2 = rng.uniform(0.0, 2.0, BATCH).astype(np.float32)
  parts = [loss_and_grads(agent, state, b._replace(weight=w)) for w in (w1, w2, w1 + w2)]
  chex.assert_trees_all_close(jax.tree.map(lambda x, y: x + y, parts[0], parts[1]), parts[2], rtol=1e-4, atol=1e-6)
  # One sample alone: weight c on it and 0 elsewhere is c times weight 1 on it.
  k = np.flatnonzero(b.valid)[0]
  one = lambda c: loss_and_grads(agent, state, b._replace(weight=np.where(np.arange(BATCH) == k, c, 0.0)
                                                           .astype(np.float32)))
  chex.assert_trees_all_close(jax.tree.map(lambda x: 3.5 * x, one(1.0)), one(3.5), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("algo", ["dqn", "iqn"])
def test_a_batch_without_weights_trains_as_with_ones(algo):
  agent = make(algo=algo)
  state, b = a_state(agent), weighted_batch(8)
  unweighted = jaxrl.Transition(b.obs, b.action, b.reward, b.discount, b.next_obs, b.valid)
  assert unweighted.weight is None
  step = jax.jit(agent.train_step)
  chex.assert_trees_all_equal(step(state, unweighted), step(state, b._replace(weight=np.ones(BATCH, np.float32))))
  # And under lax.scan, as the runtime fuses steps.
  stacked = jax.tree.map(lambda x: np.stack([x, x]), unweighted)
  scanned = jax.jit(lambda s, bs: jax.lax.scan(agent.train_step, s, bs))(state, stacked)
  assert scanned[1]["td_error"].shape == (2, BATCH)


@pytest.mark.parametrize("algo", ["dqn", "iqn"])
def test_weights_do_not_change_td_error(algo):
  agent = make(algo=algo)
  state, b = a_state(agent), weighted_batch(9)
  step = jax.jit(agent.train_step)
  np.testing.assert_array_equal(step(state, b)[1]["td_error"],
                                step(state, b._replace(weight=np.ones(BATCH, np.float32)))[1]["td_error"])
