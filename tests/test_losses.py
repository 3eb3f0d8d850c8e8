"""Loss functions against tiny hand-computed fixtures, jitted and not."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from hypothesis import given, settings, strategies as st

from jaxrl import losses


class DqnLossTest(chex.TestCase):

  def _args(self, selector):
    # q_tm1[a=0] = 1; target-net values [3, 4] at the next observation.
    return (jnp.array([1.0, 2.0]), jnp.array(0), jnp.array(1.0), jnp.array(0.5),
            jnp.array([3.0, 4.0]), jnp.array(selector))

  @chex.all_variants(with_pmap=False)
  @parameterized.named_parameters(
      # Double: the selector picks a*=0 -> target 1 + 0.5*3 = 2.5, td = 1.5.
      ("double_huber", [5.0, 0.0], 1.0, 0.5 + 1.0 * 0.5),
      ("double_l2", [5.0, 0.0], None, 0.5 * 1.5**2),
      # Plain DQN: selector = target values picks a*=1 -> target 3, td = 2.
      ("dqn_huber", [3.0, 4.0], 1.0, 0.5 + 1.0 * 1.0),
      ("dqn_l2", [3.0, 4.0], None, 0.5 * 2.0**2),
      ("dqn_wide_huber", [3.0, 4.0], 3.0, 0.5 * 2.0**2),
  )
  def test_fixture(self, selector, delta, expected):
    loss = self.variant(losses.dqn_loss, static_argnums=6)(*self._args(selector), delta)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)

  def test_target_is_not_differentiated(self):
    args = self._args([5.0, 0.0])
    grads = jax.grad(losses.dqn_loss, argnums=(0, 4, 5))(*args, 1.0)
    np.testing.assert_allclose(grads[0], [-1.0, 0.0])  # Huber gradient clipped to delta.
    np.testing.assert_array_equal(grads[1], 0.0)
    np.testing.assert_array_equal(grads[2], 0.0)


class IqnLossTest(chex.TestCase):

  def _args(self):
    # Two online quantiles of action 1: values [0, 1] at tau [0.25, 0.75];
    # one target sample, discount 0 -> target value 1; u = [1, 0].
    z_tm1 = jnp.array([[9.0, 0.0], [9.0, 1.0]])
    return (z_tm1, jnp.array([0.25, 0.75]), jnp.array(1), jnp.array(1.0), jnp.array(0.0),
            jnp.array([[7.0, 8.0]]), jnp.array([[0.0, 1.0]]))

  @chex.all_variants(with_pmap=False)
  @parameterized.named_parameters(
      ("kappa1", 1.0, 0.25 * 0.5),            # weight 0.25 * huber_1(1) = 0.5
      ("kappa2", 2.0, 0.25 * 0.5 / 2.0),      # huber_2(1) = 0.5, divided by kappa
      ("kappa0", 0.0, 0.25 * 1.0),            # plain quantile regression |u|
  )
  def test_fixture(self, kappa, expected):
    loss = self.variant(losses.iqn_loss, static_argnums=7)(*self._args(), kappa)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)

  def test_selector_uses_mean_over_samples(self):
    z_tm1, tau, a, r, _, _, _ = self._args()
    # Selector means: action 0 -> 1.0, action 1 -> 0.5, though action 1 has the max sample.
    selector = jnp.array([[1.0, 3.0], [1.0, -2.0]])
    value = jnp.array([[2.0, 100.0]])
    loss = losses.iqn_loss(z_tm1, tau, a, r, jnp.array(1.0), value, selector, 1.0)
    # Target = 1 + 2 = 3 (action 0), u = [3, 2]: 0.25 * 2.5 + 0.75 * 1.5.
    np.testing.assert_allclose(loss, 0.25 * 2.5 + 0.75 * 1.5, rtol=1e-6)


  @chex.all_variants(with_pmap=False)
  @parameterized.named_parameters(
      # Target j: 1 + 0.5 * [-4, 4] = [-1, 3] (selector: action 0). Online
      # quantiles [0, 1] at tau [0.25, 0.75] give u_0j = [-1, 3], u_1j = [-2, 2],
      # weights |tau_i - 1{u_ij < 0}|: [0.75, 0.25] and [0.25, 0.75].
      # Mean over j, sum over i; summing over j would double both.
      ("kappa1", 1.0, (0.75 * 0.5 + 0.25 * 2.5) / 2 + (0.25 * 1.5 + 0.75 * 1.5) / 2),   # = 1.25
      ("kappa2", 2.0, ((0.75 * 0.5 + 0.25 * 4.0) / 2 + (0.25 * 2.0 + 0.75 * 2.0) / 2) / 2.0),   # = 0.84375
  )
  def test_fixture_with_two_target_samples(self, kappa, expected):
    z_tm1 = jnp.array([[0.0, 9.0], [1.0, 9.0]])
    z_t_value = jnp.array([[-4.0, 10.0], [4.0, 10.0]])   # N' = 2; action 1 is not the selected one.
    args = (z_tm1, jnp.array([0.25, 0.75]), jnp.array(0), jnp.array(1.0), jnp.array(0.5),
            z_t_value, jnp.array([[1.0, 0.0]]))
    loss = self.variant(losses.iqn_loss, static_argnums=7)(*args, kappa)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


@settings(deadline=None)   # the first example traces and compiles: over 200 ms on a busy machine
@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.booleans()), min_size=1, max_size=20))
def test_masked_mean_is_mean_over_valid(rows):
  x = np.array([r[0] for r in rows], np.float32)
  valid = np.array([r[1] for r in rows], np.float32)
  expected = x[valid > 0].mean() if valid.any() else 0.0
  np.testing.assert_allclose(losses.masked_mean(jnp.asarray(x), jnp.asarray(valid)), expected,
                             rtol=1e-4, atol=1e-3)


class TdErrorTest(chex.TestCase):
  """The signed TD errors behind the losses, on the fixtures above."""

  @chex.all_variants(with_pmap=False)
  @parameterized.named_parameters(
      ("double", [5.0, 0.0], 1.5),    # a* = 0: 1 + 0.5 * 3 - 1
      ("dqn", [3.0, 4.0], 2.0),       # a* = 1: 1 + 0.5 * 4 - 1
  )
  def test_dqn_td_fixture(self, selector, expected):
    args = DqnLossTest()._args(selector)
    np.testing.assert_allclose(self.variant(losses.dqn_td)(*args), expected, rtol=1e-6)
    np.testing.assert_allclose(losses.dqn_loss(*args, 1.0), losses.td_loss(jnp.array(expected), 1.0), rtol=1e-6)

  @chex.all_variants(with_pmap=False)
  def test_iqn_td_fixture(self):
    # As IqnLossTest.test_fixture_with_two_target_samples: targets [-1, 3],
    # online quantiles [0, 1] of the action taken.
    z_tm1 = jnp.array([[0.0, 9.0], [1.0, 9.0]])
    z_t_value = jnp.array([[-4.0, 10.0], [4.0, 10.0]])
    u = self.variant(losses.iqn_td)(z_tm1, jnp.array(0), jnp.array(1.0), jnp.array(0.5), z_t_value,
                                    jnp.array([[1.0, 0.0]]))
    np.testing.assert_allclose(u, [[-1.0, 3.0], [-2.0, 2.0]], rtol=1e-6)

  def test_iqn_td_picks_the_action_of_the_selectors_mean(self):
    z_tm1, _, a, r, _, _, _ = IqnLossTest()._args()
    selector = jnp.array([[1.0, 3.0], [1.0, -2.0]])   # means [1, 0.5]: action 0
    u = losses.iqn_td(z_tm1, a, r, jnp.array(1.0), jnp.array([[2.0, 100.0]]), selector)
    np.testing.assert_allclose(u, [[3.0], [2.0]], rtol=1e-6)   # target 1 + 2 - [0, 1]

  def test_targets_are_not_differentiated(self):
    q_grads = jax.grad(losses.dqn_td, argnums=(0, 4, 5))(*DqnLossTest()._args([5.0, 0.0]))
    np.testing.assert_allclose(q_grads[0], [-1.0, 0.0])
    np.testing.assert_array_equal(q_grads[1], 0.0)
    z_tm1, _, a, r, _, value, selector = IqnLossTest()._args()
    z_grads = jax.grad(lambda *x: losses.iqn_td(*x).sum(), argnums=(0, 4, 5))(z_tm1, a, r, jnp.array(1.0), value,
                                                                              selector)
    np.testing.assert_allclose(z_grads[0], [[0.0, -1.0], [0.0, -1.0]])   # N' = 1 target per quantile
    np.testing.assert_array_equal(z_grads[1], 0.0)


@settings(deadline=None)
@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.booleans(), st.floats(0.0, 4.0)), min_size=1, max_size=20))
def test_weighted_masked_mean_weighs_terms_and_counts_valid_rows(rows):
  x, valid, weight = (np.array(column, np.float32) for column in zip(*rows))
  expected = np.sum((x * weight)[valid > 0]) / max(valid.sum(), 1.0)
  np.testing.assert_allclose(losses.masked_mean(jnp.asarray(x), jnp.asarray(valid), jnp.asarray(weight)),
                             expected, rtol=1e-4, atol=1e-3)
