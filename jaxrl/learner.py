"""The functional learner core: ``make_agent`` -> ``Agent`` of pure functions.

All learner state is explicit data in ``LearnerState``; ``Agent.train_step``
is one pure, jittable function that updates every field of it consistently:
loss and gradient, global-norm clipping, the Adam update at the learning
rate of the current step, ``step + 1``, the periodic target update and the
epsilon of the new step.
"""

from __future__ import annotations

from typing import Any, Sequence

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrl import augment, networks
from jaxrl.config import AgentConfig
from jaxrl.transition import Transition

Params = Any


@flax.struct.dataclass
class LearnerState:
  """Everything a learner step reads and writes.

  Attributes:
    params: online network parameters.
    target_params: target network parameters.
    opt_state: ``agent.optimizer`` state built for ``params``.
    epsilon: float32 [], exploration rate; always ``epsilon_schedule(step)``.
    step: int32 [], number of train_steps applied.
    rng: PRNG key, split inside train_step for stochastic losses (IQN taus).
  """
  params: Params
  target_params: Params
  opt_state: optax.OptState
  epsilon: chex.Array
  step: chex.Array
  rng: chex.PRNGKey


def _linear(start: float, end: float | None, steps: int):
  """step -> float32 value, linear from start to end over steps, then constant."""
  if end is None or steps == 0:
    value = start if end is None else end
    return lambda step: jnp.full((), value, jnp.float32)
  schedule = optax.linear_schedule(start, end, steps)
  return lambda step: jnp.asarray(schedule(step), jnp.float32)


class Agent:
  """DQN or IQN as pure functions over ``LearnerState`` (see ``make_agent``).

  Attributes:
    config: the AgentConfig.
    obs_shape: shape of one observation.
    num_actions: size of the discrete action space.
    obs_range: (low, high) of image observations, which the built-in conv
      torso scales to [0, 1]; None for vectors, or images taken unscaled.
    network: the flax module: ``networks.make_network``'s QNetwork or
      IQNNetwork, or the one given to ``make_agent``.
    builtin_network: True if ``network`` is jaxrl's own (its params have
      the layout of ``networks.QNetwork`` / ``IQNNetwork``).
    optimizer: the optax.GradientTransformation used by train_step
      (global-norm clipping, then Adam; its learning rate is set from
      ``state.step`` at every train_step).
    epsilon_schedule, learning_rate_schedule: learner step -> float32 [].
  """

  def __init__(self, config: AgentConfig, obs_shape: Sequence[int], num_actions: int,
               network: nn.Module | None = None, obs_range: tuple[float, float] | None = None):
    if not (isinstance(num_actions, (int, np.integer)) and num_actions >= 1):
      raise ValueError(f"num_actions must be an integer >= 1, got {num_actions!r}")
    self.config = config
    self.obs_shape = tuple(int(d) for d in obs_shape)
    self.num_actions = int(num_actions)
    self.obs_range = None if obs_range is None else (float(obs_range[0]), float(obs_range[1]))
    if self.obs_range is not None and not (np.all(np.isfinite(self.obs_range)) and obs_range[0] < obs_range[1]):
      raise ValueError(f"obs_range must be finite (low, high) with low < high, got {obs_range!r}")
    if config.augment is not None and len(self.obs_shape) != 3:
      raise ValueError(f"augment {config.augment!r} needs image observations (H, W, C), "
                       f"got obs_shape {self.obs_shape}")
    self.builtin_network = network is None
    if network is None:
      network = networks.make_network(config.algo, self.obs_shape, self.num_actions, config.hidden_sizes,
                                      self.obs_range, config.quantile_embedding_dim, config.dueling)
    self.network = network
    self.epsilon_schedule = _linear(config.epsilon_start, config.epsilon_end, config.epsilon_decay_steps)
    self.learning_rate_schedule = _linear(config.learning_rate, config.lr_end, config.lr_decay_steps)
    self.optimizer = optax.inject_hyperparams(self._clipped_adam)(learning_rate=config.learning_rate)

  def _clipped_adam(self, learning_rate):
    clip = [] if self.config.max_grad_norm is None else [optax.clip_by_global_norm(self.config.max_grad_norm)]
    return optax.chain(*clip, optax.adam(learning_rate, eps=self.config.adam_eps))

  # --- Networks -------------------------------------------------------------

  def _taus(self, key: chex.PRNGKey, batch: int, num: int) -> chex.Array:
    return jax.random.uniform(key, (batch, num), jnp.float32)

  def q_values(self, params: Params, obs: chex.Array, key: chex.PRNGKey | None = None) -> chex.Array:
    """Q(obs) float32 [B, A] for obs [B, *obs_shape].

    IQN averages K = num_quantile_samples quantile values drawn with ``key``
    (required for IQN, ignored by DQN).
    """
    obs = jnp.asarray(obs)
    chex.assert_rank(obs, 1 + len(self.obs_shape))
    if self.config.algo == "dqn":
      return self.network.apply(params, obs)
    if key is None:
      raise ValueError("IQN q_values needs a PRNG key to sample quantile fractions")
    taus = self._taus(key, obs.shape[0], self.config.num_quantile_samples)
    return jnp.mean(self.network.apply(params, obs, taus), axis=1)

  def act(self, params: Params, obs: chex.Array, epsilon: chex.Numeric, key: chex.PRNGKey) -> chex.Array:
    """Epsilon-greedy actions int32 [B] for obs [B, *obs_shape].

    With probability epsilon an action uniform over all actions, else the
    argmax of q_values.
    """
    q_key, explore_key, action_key = jax.random.split(key, 3)
    greedy = jnp.argmax(self.q_values(params, obs, q_key), axis=-1).astype(jnp.int32)
    batch = greedy.shape[0]
    explore = jax.random.uniform(explore_key, (batch,)) < epsilon
    random_actions = jax.random.randint(action_key, (batch,), 0, self.num_actions, jnp.int32)
    return jnp.where(explore, random_actions, greedy)

  # --- Learner state --------------------------------------------------------

  def init(self, key: chex.PRNGKey) -> LearnerState:
    """A fresh state: random params, target = params, step 0, epsilon_start.

    Raises:
      ValueError: the network's output is not [B, A] (DQN) or [B, N, A] (IQN).
    """
    params_key, rng = jax.random.split(key)
    inputs = (jnp.zeros((2, *self.obs_shape), jnp.float32),)   # B = 2, N = 3: no axis mix-up fits.
    if self.config.algo == "dqn":
      expected, signature, sizes = (2, self.num_actions), "obs [B, *obs_shape] -> Q [B, A]", "B = 2"
    else:
      inputs += (jnp.zeros((2, 3), jnp.float32),)
      expected, signature = (2, 3, self.num_actions), "(obs [B, *obs_shape], taus [B, N]) -> Z [B, N, A]"
      sizes = "B = 2, N = 3"
    out, params = self.network.init_with_output(params_key, *inputs)
    if jnp.shape(out) != expected:
      raise ValueError(f"network: expected a {self.config.algo.upper()} network, {signature} with "
                       f"A = {self.num_actions} actions; got output shape {jnp.shape(out)} for {sizes}")
    step = jnp.zeros((), jnp.int32)
    return LearnerState(params=params, target_params=params, opt_state=self.optimizer.init(params),
                        epsilon=self.epsilon_schedule(step), step=step, rng=rng)

  def load_params(self, state: LearnerState, params: Params) -> LearnerState:
    """Replaces the weights: params and target_params become ``params`` and
    opt_state is rebuilt for them; step, epsilon and rng are kept."""
    params = jax.tree.map(jnp.asarray, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, state.params)
    return state.replace(params=params, target_params=params, opt_state=self.optimizer.init(params))

  # --- The learner step -----------------------------------------------------

  def _bootstrap_nets(self, params: Params, target_params: Params, value_fn, selector_fn):
    """(value_fn(target_params), selector_fn(selector net)) under stop_gradient:
    the target net's values on next_obs and the output that picks a*, of
    the online net with ``double_q``, else of the target net.

    With a hard copy every step (``target_update_period`` 1, ``target_tau``
    1, as DrQ's), every state that init and train_step make has
    ``target_params == params``: a ``lax.cond`` on that equality then calls
    both functions with the same params, so XLA computes the torso on
    ``next_obs`` once instead of twice; other states take the other branch.
    """
    cfg = self.config
    params = jax.lax.stop_gradient(params)
    if not cfg.double_q:
      return value_fn(target_params), selector_fn(target_params)
    if not (cfg.target_update_period == 1 and cfg.target_tau == 1.0):
      return value_fn(target_params), selector_fn(params)
    same = jax.tree.reduce(jnp.logical_and, jax.tree.map(lambda a, b: jnp.all(a == b), params, target_params))
    return jax.lax.cond(same, lambda: (value_fn(target_params), selector_fn(target_params)),
                        lambda: (value_fn(target_params), selector_fn(params)))

  def _loss(self, params: Params, target_params: Params, batch: Transition, key: chex.PRNGKey):
    """The loss, and (the masked mean of Q(obs, action), td_error [B]).

    loss = sum(valid * weight * per_sample_loss) / max(sum(valid), 1)
    (``batch.weight`` None: ones). td_error float32 [B] is each sample's
    absolute TD error, under stop_gradient: DQN |td|; IQN the mean over its
    N x N' quantile pairs of |u_ij|; 0 on padding rows (valid 0), whatever
    they hold.

    The loss, Q's mean and a valid row's td_error are NaN, and so is the
    loss's gradient, if a valid row's action is outside [0, num_actions);
    padding rows take action 0 in their place.
    """
    # rlax (with tensorflow-probability, ~0.35 s to import) loads on the first
    # trace: actors and the supervisor build agents but never compute a loss.
    from jaxrl import losses  # pylint: disable=import-outside-toplevel
    cfg = self.config
    action = batch.action.astype(jnp.int32)
    reward = batch.reward.astype(jnp.float32)
    discount = batch.discount.astype(jnp.float32)
    valid = batch.valid.astype(jnp.float32)
    weight = jnp.ones_like(valid) if batch.weight is None else batch.weight.astype(jnp.float32)
    in_range = (action >= 0) & (action < self.num_actions)
    poison = jnp.where(in_range | (valid <= 0), 1.0, jnp.nan)   # [B]; a factor, so NaN reaches the gradient.
    action = jnp.where(in_range, action, 0)
    size = action.shape[0]
    if cfg.algo == "dqn":
      q_tm1 = self.network.apply(params, batch.obs)
      next_q = lambda net_params: self.network.apply(net_params, batch.next_obs)
      q_t_value, q_t_selector = self._bootstrap_nets(params, target_params, next_q, next_q)
      td = jax.vmap(losses.dqn_td)(q_tm1, action, reward, discount, q_t_value, q_t_selector)   # [B]
      per_sample = losses.td_loss(td, cfg.huber_delta)
      abs_td = jnp.abs(td)
      q_taken = jnp.take_along_axis(q_tm1, action[:, None], axis=1)[:, 0]
    else:
      tau_key, tau_prime_key, selector_key = jax.random.split(key, 3)
      tau_tm1 = self._taus(tau_key, size, cfg.num_tau_samples)
      z_tm1 = self.network.apply(params, batch.obs, tau_tm1)
      tau_t_value = self._taus(tau_prime_key, size, cfg.num_tau_prime_samples)
      tau_t_selector = self._taus(selector_key, size, cfg.num_quantile_samples)
      z_t_value, z_t_selector = self._bootstrap_nets(
          params, target_params, lambda net_params: self.network.apply(net_params, batch.next_obs, tau_t_value),
          lambda net_params: self.network.apply(net_params, batch.next_obs, tau_t_selector))
      per_sample = jax.vmap(losses.iqn_loss, in_axes=(0, 0, 0, 0, 0, 0, 0, None))(
          z_tm1, tau_tm1, action, reward, discount, z_t_value, z_t_selector, cfg.kappa)
      u = jax.vmap(losses.iqn_td)(z_tm1, action, reward, discount, z_t_value, z_t_selector)   # [B, N, N']
      abs_td = jnp.mean(jnp.abs(u), axis=(1, 2))
      q_taken = jnp.take_along_axis(jnp.mean(z_tm1, axis=1), action[:, None], axis=1)[:, 0]
    td_error = jnp.where(valid > 0, poison * jax.lax.stop_gradient(abs_td), 0.0)
    loss = losses.masked_mean(poison * per_sample, valid, weight)
    return loss, (losses.masked_mean(poison * q_taken, valid), td_error)

  def train_step(self, state: LearnerState, batch: Transition) -> tuple[LearnerState, dict[str, chex.Array]]:
    """One learner update; pure, so ``jax.jit(agent.train_step)`` works.

    Args:
      state: the LearnerState.
      batch: a Transition batched on axis 0 (numpy or jax arrays); its
        ``weight`` (None: ones) scales each sample's loss:
        ``loss = sum(valid * weight * per_sample_loss) / max(sum(valid), 1)``.

    Returns:
      (new state, metrics): metrics are float32 scalars, ``loss`` (of the
      params before the update), ``grad_norm`` (before clipping),
      ``q_mean`` (mean Q(obs, action) over valid samples), ``epsilon`` and
      ``learning_rate`` (of the new state / this update); and ``td_error``
      float32 [B], each sample's absolute TD error on the params before the
      update (DQN: |reward + discount * Q_target(next_obs, a*) - Q(obs,
      action)|; IQN: the mean of |u_ij| over its N x N' quantile pairs),
      0 on padding rows: prioritized replay's new priorities.

    With ``augment: "random_shift"``, ``obs`` and ``next_obs`` are shifted
    first (``augment.random_shift``, each with its own key, split after the
    loss's key: the loss's taus are those of the same step without it).
    Without augment, ``state.rng`` splits as it always did.

    A valid row (``valid > 0``) whose action is outside [0, num_actions)
    makes ``loss``, ``grad_norm``, ``q_mean`` and that row's ``td_error``
    NaN and, through the NaN gradient, the new params and opt_state: such a
    batch never trains silently, and the runtime stops on it. This check is
    inside the jitted computation; nothing is raised. Padding rows (``valid
    == 0``) may hold any action.
    """
    cfg = self.config
    batch = jax.tree.map(jnp.asarray, batch)
    rng, loss_key = jax.random.split(state.rng)
    if cfg.augment == "random_shift":   # keys of its own, split after the loss's
      rng, augment_key = jax.random.split(rng)
      obs_key, next_obs_key = jax.random.split(augment_key)
      batch = batch._replace(obs=augment.random_shift(obs_key, batch.obs),
                             next_obs=augment.random_shift(next_obs_key, batch.next_obs))
    (loss, (q_mean, td_error)), grads = jax.value_and_grad(self._loss, has_aux=True)(
        state.params, state.target_params, batch, loss_key)
    learning_rate = self.learning_rate_schedule(state.step)
    opt_state = state.opt_state._replace(
        hyperparams={**state.opt_state.hyperparams, "learning_rate": learning_rate})
    updates, opt_state = self.optimizer.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    if cfg.target_tau == 1.0:
      new_target = params
    else:
      new_target = optax.incremental_update(params, state.target_params, cfg.target_tau)
    target_params = optax.periodic_update(new_target, state.target_params, step, cfg.target_update_period)
    epsilon = self.epsilon_schedule(step)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "q_mean": q_mean,
        "epsilon": epsilon,
        "learning_rate": learning_rate,
        "td_error": td_error,
    }
    new_state = LearnerState(params=params, target_params=target_params, opt_state=opt_state,
                             epsilon=epsilon, step=step, rng=rng)
    return new_state, metrics


def make_agent(config: AgentConfig, obs_shape: Sequence[int], num_actions: int,
               network: nn.Module | None = None, obs_range: tuple[float, float] | None = None) -> Agent:
  """Builds the Agent for ``config`` and an environment's spaces.

  Args:
    config: AgentConfig (algo, network and learning hyperparameters).
    obs_shape: one observation's shape: (D,) for vectors, (H, W, C) frames.
    num_actions: number of discrete actions.
    network: a flax module replacing the built-in network: for DQN
      ``obs [B, *obs_shape] -> Q [B, A]``, for IQN ``(obs, taus [B, N]) ->
      Z [B, N, A]``. ``hidden_sizes``, ``quantile_embedding_dim`` and
      ``dueling`` are then unused; ``agent.init`` checks the output shape.
    obs_range: (low, high), the bounds of image observations: the built-in
      conv torso scales frames to [0, 1] by them (MinAtar's bool frames
      (0, 1), an Atari frame's uint8 (0, 255)). None: frames unscaled.
      Vector observations are never scaled.

  Raises:
    ValueError: ``augment`` is set for observations that are not images
      (H, W, C), or ``num_actions`` is not an integer >= 1.
  """
  return Agent(config, obs_shape, num_actions, network, obs_range)
