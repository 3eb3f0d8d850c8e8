"""Per-example TD losses (rlax style: one example, vmapped by the caller).

Argument names carry their time index: ``q_tm1`` is evaluated at the
observation the action ``a_tm1`` was taken in, ``r_t``/``discount_t`` are
the (n-step) reward and bootstrap factor, ``q_t*`` are evaluated at the
next observation. The TD machinery is rlax's; these functions fix how jaxrl
combines it with the contract's loss options.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import rlax


def dqn_td(q_tm1: chex.Array, a_tm1: chex.Numeric, r_t: chex.Numeric, discount_t: chex.Numeric,
           q_t_value: chex.Array, q_t_selector: chex.Array) -> chex.Numeric:
  """(Double) Q-learning TD error of one transition (van Hasselt et al. 2016).

  td = r_t + discount_t * q_t_value[argmax(q_t_selector)] - q_tm1[a_tm1],
  with the target under stop_gradient.

  Args:
    q_tm1: float [A] online Q at the observation.
    a_tm1: int [] action taken.
    r_t: float [] reward (n-step discounted sum).
    discount_t: float [] bootstrap factor (gamma**k, 0 at termination).
    q_t_value: float [A] target-net Q at the next observation.
    q_t_selector: float [A] Q that picks the bootstrap action.

  Returns:
    float [] td.
  """
  chex.assert_rank([q_tm1, a_tm1, r_t, discount_t, q_t_value, q_t_selector], [1, 0, 0, 0, 1, 1])
  return rlax.double_q_learning(q_tm1, a_tm1, r_t, discount_t, q_t_value, q_t_selector)


def td_loss(td: chex.Array, huber_delta: float | None) -> chex.Array:
  """huber(td, huber_delta) elementwise; huber_delta None gives 0.5 * td**2."""
  return rlax.l2_loss(td) if huber_delta is None else rlax.huber_loss(td, huber_delta)


def dqn_loss(q_tm1: chex.Array, a_tm1: chex.Numeric, r_t: chex.Numeric,
             discount_t: chex.Numeric, q_t_value: chex.Array,
             q_t_selector: chex.Array, huber_delta: float | None) -> chex.Numeric:
  """(Double) Q-learning loss of one transition (Mnih et al. 2015; van Hasselt et al. 2016).

  ``td_loss(dqn_td(...), huber_delta)``: the Huber loss of
  td = r_t + discount_t * q_t_value[argmax(q_t_selector)] - q_tm1[a_tm1],
  with the target under stop_gradient. Pass ``q_t_selector = q_t_value``
  (the target net) for DQN and the online net's values for Double DQN.

  Args: those of ``dqn_td``, and huber_delta: the Huber threshold; None
  gives 0.5 * td**2.

  Returns:
    float [] loss.
  """
  return td_loss(dqn_td(q_tm1, a_tm1, r_t, discount_t, q_t_value, q_t_selector), huber_delta)


def iqn_loss(z_tm1: chex.Array, tau_tm1: chex.Array, a_tm1: chex.Numeric,
             r_t: chex.Numeric, discount_t: chex.Numeric, z_t_value: chex.Array,
             z_t_selector: chex.Array, kappa: float) -> chex.Numeric:
  """Quantile Huber loss of one transition (Dabney et al. 2018, eq. 3 and 10).

  With u_ij = r_t + discount_t * z_t_value[j, a*] - z_tm1[i, a_tm1] and
  a* = argmax_a mean_k z_t_selector[k, a]:
  loss = sum_i mean_j |tau_i - 1{u_ij < 0}| * L_kappa(u_ij) / kappa,
  where L_kappa is the Huber loss (kappa = 0: |u|, plain quantile regression).

  Args:
    z_tm1: float [N, A] online quantile values at the observation.
    tau_tm1: float [N] quantile fractions of z_tm1.
    a_tm1: int [] action taken.
    r_t: float [] reward.
    discount_t: float [] bootstrap factor.
    z_t_value: float [N', A] target-net quantile values at the next observation.
    z_t_selector: float [K, A] quantile values that pick the bootstrap action.
    kappa: Huber threshold >= 0.

  Returns:
    float [] loss.
  """
  chex.assert_rank([z_tm1, tau_tm1, a_tm1, r_t, discount_t, z_t_value, z_t_selector],
                   [2, 1, 0, 0, 0, 2, 2])
  loss = rlax.quantile_q_learning(z_tm1, tau_tm1, a_tm1, r_t, discount_t,
                                  z_t_selector, z_t_value, huber_param=kappa)
  return loss / kappa if kappa > 0 else loss


def iqn_td(z_tm1: chex.Array, a_tm1: chex.Numeric, r_t: chex.Numeric, discount_t: chex.Numeric,
           z_t_value: chex.Array, z_t_selector: chex.Array) -> chex.Array:
  """Pairwise quantile TD errors of one transition (Dabney et al. 2018, eq. 3).

  u_ij = r_t + discount_t * z_t_value[j, a*] - z_tm1[i, a_tm1] with
  a* = argmax_a mean_k z_t_selector[k, a]: the u that ``iqn_loss`` weighs,
  the target under stop_gradient.

  Args:
    z_tm1: float [N, A] online quantile values at the observation.
    a_tm1: int [] action taken.
    r_t: float [] reward.
    discount_t: float [] bootstrap factor.
    z_t_value: float [N', A] target-net quantile values at the next observation.
    z_t_selector: float [K, A] quantile values that pick the bootstrap action.

  Returns:
    float [N, N'] u.
  """
  chex.assert_rank([z_tm1, a_tm1, r_t, discount_t, z_t_value, z_t_selector], [2, 0, 0, 0, 2, 2])
  a_t = jnp.argmax(jnp.mean(z_t_selector, axis=0))
  target = jax.lax.stop_gradient(r_t + discount_t * z_t_value[:, a_t])    # [N']
  return target[None, :] - z_tm1[:, a_tm1][:, None]


def masked_mean(x: chex.Array, valid: chex.Array, weight: chex.Array | None = None) -> chex.Numeric:
  """sum(valid * weight * x) / max(sum(valid), 1) for x, valid, weight of
  shape [B]; weight None is ones. The weights scale each sample's term, the
  denominator counts the valid samples alone (not the weights)."""
  chex.assert_equal_shape([x, valid])
  if weight is not None:
    chex.assert_equal_shape([x, weight])
    valid_weight = valid * weight   # 0 on padding rows, before any product with x
  else:
    valid_weight = valid
  return jnp.sum(valid_weight * x) / jnp.maximum(jnp.sum(valid), 1.0)
