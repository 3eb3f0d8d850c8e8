"""Acting: stepping gymnasium vector envs epsilon-greedily with a policy snapshot.

``Actor`` is shared by the actor processes, the synchronous mode and
evaluation; it never writes to replay itself (the caller does), so the same
stepping code serves training and greedy evaluation.

Inference, chosen by measurement (2-core CPU, one thread, async dispatch
off, CartPole's 128-128 networks; an actor with its replay writes, fixed
snapshot, against the bare vector env stepped with random actions):
- DQN with an MLP torso runs a numpy forward pass (``numpy_q_values``):
  9 us at batch 4, 20 us at 32. One actor keeps 0.54 / 0.42 of the raw
  env rate at E = 4 / 32, against 0.43 / 0.35 with the jitted
  ``agent.q_values`` (and 0.13 / 0.12 with a jitted ``agent.act`` and a
  ``jax.random.split`` per step).
- IQN (K quantile samples per env: K times the rows) and the conv torso
  run the jitted ``agent.q_values``: XLA fuses the cosine embedding, and a
  numpy IQN forward took 2-3x as long (45 against 25 us at batch 4, K=8).
Exploration draws (and IQN's key) come from a numpy Generator seeded with
the actor's seed, so acting is deterministic for a seed on both paths.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

import gymnasium as gym
import jax
import numpy as np

from jaxrl.config import EnvConfig
from jaxrl.replay import NStepAccumulator


class EnvError(ValueError):
  """An environment jaxrl cannot serve (one-line message)."""


def import_env_modules(env: EnvConfig) -> None:
  """Imports ``env.imports`` (modules that register environment ids, e.g.
  ``minatar.gym``); raises EnvError naming the module that fails."""
  for name in env.imports:
    try:
      importlib.import_module(name)
    except Exception as e:  # pylint: disable=broad-except  # A user's module may raise anything.
      raise EnvError(f"env.imports: cannot import {name!r}: {type(e).__name__}: {e}") from None


def make_vec_env(env: EnvConfig, num_envs: int) -> gym.vector.VectorEnv:
  """The fastest gymnasium vector env for ``env.id``: native vectorisation
  when the environment has one, else ``SyncVectorEnv``. Imports
  ``env.imports`` first. Checks that jaxrl can serve it: discrete actions,
  Box observations of rank 1 or 3, and gymnasium's NEXT_STEP autoreset
  (the mode ``NStepAccumulator`` and ``Actor`` are written for)."""
  import_env_modules(env)
  try:
    try:
      envs = gym.make_vec(env.id, num_envs=num_envs, vectorization_mode="vector_entry_point", **env.kwargs)
    except (gym.error.Error, ValueError, TypeError):
      envs = gym.make_vec(env.id, num_envs=num_envs, vectorization_mode="sync", **env.kwargs)
  except gym.error.Error as e:
    raise EnvError(f"env.id: cannot make {env.id!r}: {str(e).splitlines()[0]}") from None
  except (TypeError, ValueError) as e:
    raise EnvError(f"env.kwargs: {env.id!r} rejects them: {e}") from None
  problem = None
  mode = envs.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
  space = envs.single_observation_space
  if not isinstance(envs.single_action_space, gym.spaces.Discrete):
    problem = (f"env.id: {env.id!r} has {type(envs.single_action_space).__name__} actions; "
               "jaxrl's DQN and IQN need Discrete actions")
  elif not (isinstance(space, gym.spaces.Box) and len(space.shape) in (1, 3)):
    problem = f"env.id: {env.id!r} has {space} observations; jaxrl needs a Box of rank 1 or 3"
  elif mode != gym.vector.AutoresetMode.NEXT_STEP:
    problem = (f"env.kwargs: {env.id!r} autoresets in {getattr(mode, 'value', mode)} mode; jaxrl's "
               "n-step and truncation bookkeeping needs gymnasium's NextStep mode (the default)")
  if problem is not None:
    envs.close()
    raise EnvError(problem)
  return envs


def has_time_limit(envs: gym.vector.VectorEnv) -> bool:
  """Whether the episodes of ``envs`` end by a time limit of their own."""
  spec = envs.envs[0].spec if hasattr(envs, "envs") else envs.spec
  return bool(getattr(spec, "max_episode_steps", None) or getattr(envs, "max_episode_steps", None))


# --- Numpy inference ----------------------------------------------------------

Dense = tuple[np.ndarray, np.ndarray]  # (kernel float32 [in, out], bias float32 [out])


def mlp_params(params: Any) -> tuple[Dense, ...]:
  """A numpy copy of the params (numpy or jax tree) of a ``networks.QNetwork``
  with an ``MLPTorso``: its Dense layers in call order, the torso's
  (``params["params"]["torso"]["Dense_<i>"]``) then the output layer
  (``params["params"]["Dense_0"]``), shapes [D, H1], [H1, H2], ..., [H, A]."""
  def dense_layers(tree) -> tuple[Dense, ...]:
    names = sorted((name for name in tree if name.startswith("Dense_")), key=lambda s: int(s[6:]))
    return tuple((np.array(tree[name]["kernel"], np.float32), np.array(tree[name]["bias"], np.float32))
                 for name in names)
  tree = params["params"]
  return dense_layers(tree["torso"]) + dense_layers(tree)


def numpy_q_values(layers: tuple[Dense, ...], obs: np.ndarray) -> np.ndarray:
  """Q(obs) float32 [B, A] of a ``networks.QNetwork`` with an ``MLPTorso``,
  in numpy: ReLU dense layers, then the linear output layer.

  Args:
    layers: ``mlp_params`` of the network's params.
    obs: [B, D] observations.
  """
  *hidden, (kernel, bias) = layers
  x = np.asarray(obs, np.float32)
  for w, b in hidden:
    x = np.maximum(x @ w + b, 0.0)
  return x @ kernel + bias


# --- Acting ------------------------------------------------------------------

_DRAW_STEPS = 256  # Steps of exploration draws taken from the Generator at once.


class Episode(NamedTuple):
  """A finished episode of env ``env``: its return, length (env steps) and
  ``policy_lag``: learner steps between the params that acted and the
  learner's newest step, averaged over the episode's steps."""
  env: int
  episode_return: float
  length: int
  policy_lag: float


class ActorStep(NamedTuple):
  """What one ``Actor.step`` gives: the n-step transitions it completed (a
  dict of NStepAccumulator.step, None if not collecting), the episodes that
  ended, and ``env_steps``: the real environment transitions taken (the
  envs stepped, less those whose step was gymnasium's no-op autoreset)."""
  transitions: dict[str, np.ndarray] | None
  episodes: list[Episode]
  env_steps: int


class Actor:
  """Steps ``num_envs`` environments with an epsilon-greedy policy.

  Call ``set_policy`` with each new snapshot; ``step`` advances every env
  once and returns an ``ActorStep``: the n-step transitions completed (None
  if not ``collect``: evaluation, which saves a fifth of the step), the
  episodes that finished and the real env steps taken.
  Episode returns and lengths exclude gymnasium's autoreset step.
  Deterministic for a given ``seed``, params and sequence of calls.
  """

  def __init__(self, agent, envs: gym.vector.VectorEnv, seed: int, n_step: int = 1, gamma: float = 0.99,
               collect: bool = True):
    self.envs = envs
    self.num_envs = envs.num_envs
    self.num_actions = int(envs.single_action_space.n)
    space = envs.single_observation_space
    # DQN with the built-in MLP acts in numpy; IQN, the conv torso and a user's network in JAX.
    numpy_path = agent.config.algo == "dqn" and len(space.shape) == 1 and agent.builtin_network
    self._jax_q_values = None if numpy_path else jax.jit(agent.q_values)
    self._accumulator = NStepAccumulator(self.num_envs, n_step, gamma, space.shape, space.dtype) if collect else None
    self._rng = np.random.default_rng(seed)
    # Exploration draws, float [S, E] uniforms and int [S, E] random actions,
    # taken _DRAW_STEPS steps at a time; row self._draw is this step's.
    self._explore_u = self._random_actions = np.zeros((0, self.num_envs))
    self._draw = 0
    self.obs, _ = envs.reset(seed=seed)
    # Episode bookkeeping: steps taken and the running sum of policy lags
    # (both actor-wide), and per env the return so far and the values of
    # those two counters when its episode began.
    self._steps = 0
    self._lag_sum = 0.0
    self._returns = np.zeros(self.num_envs)
    self._start_steps = np.zeros(self.num_envs, np.int64)
    self._start_lag_sums = np.zeros(self.num_envs)
    self._resetting = np.zeros(0, np.int64)  # Envs whose next step is their autoreset.
    self.params: Any = None
    self.epsilon = 1.0
    self.policy_step = 0

  @property
  def running_returns(self) -> np.ndarray:
    """float [E]: the return so far of each env's current episode."""
    return self._returns.copy()

  def set_policy(self, params: Any, epsilon: float, step: int) -> None:
    """Acts from now on with a copy of ``params`` (numpy or jax tree), so
    the caller may reuse or overwrite its buffers."""
    if self._jax_q_values is None:
      self.params = mlp_params(params)
    else:  # Our own copy: JAX on the CPU may alias a numpy buffer.
      self.params = jax.device_put(jax.tree.map(np.array, params))
    self.epsilon = float(epsilon)
    self.policy_step = int(step)

  def _act(self, obs: np.ndarray) -> np.ndarray:
    """Epsilon-greedy actions int [E] for obs [E, *obs_shape]: with
    probability epsilon uniform over all actions, else the argmax of Q."""
    if self._draw == len(self._explore_u):
      self._explore_u = self._rng.random((_DRAW_STEPS, self.num_envs))
      self._random_actions = self._rng.integers(0, self.num_actions, (_DRAW_STEPS, self.num_envs))
      self._draw = 0
    explore = self._explore_u[self._draw] < self.epsilon
    random_action = self._random_actions[self._draw]
    self._draw += 1
    if self._jax_q_values is None:
      q = numpy_q_values(self.params, obs)
    else:
      key = self._rng.integers(0, 2**32, 2, np.uint32)  # A raw jax.random key.
      q = np.asarray(self._jax_q_values(self.params, obs, key))
    return np.where(explore, random_action, q.argmax(axis=1))

  def step(self, learner_step: int = 0) -> ActorStep:
    """One step of every env; ``learner_step`` is the learner's newest step."""
    action = self._act(self.obs)
    next_obs, reward, terminated, truncated, _ = self.envs.step(action)
    transitions = None if self._accumulator is None else self._accumulator.step(
        self.obs, action, reward, terminated, truncated, next_obs, self.policy_step)
    self.obs = next_obs
    env_steps = self.num_envs - len(self._resetting)
    self._steps += 1
    self._lag_sum += learner_step - self.policy_step
    self._returns += reward
    if len(self._resetting):  # This was their autoreset step: new episodes start after it.
      self._returns[self._resetting] = 0.0
      self._start_steps[self._resetting] = self._steps
      self._start_lag_sums[self._resetting] = self._lag_sum
    # Gymnasium's autoreset step reports neither terminated nor truncated.
    self._resetting = np.nonzero(terminated | truncated)[0]
    episodes = []
    for i in self._resetting.tolist():
      length = self._steps - int(self._start_steps[i])
      episodes.append(Episode(i, float(self._returns[i]), length,
                              (self._lag_sum - float(self._start_lag_sums[i])) / length))
    return ActorStep(transitions, episodes, env_steps)


class Evaluation(NamedTuple):
  """The result of ``evaluate``: ``mean_return`` of one episode per env, and
  ``capped``: how many of those episodes were cut at ``max_steps``."""
  mean_return: float
  capped: int


def evaluate(agent, params: Any, envs: gym.vector.VectorEnv, epsilon: float, seed: int,
             max_steps: int | None = None) -> Evaluation:
  """The return of the first episode of each of ``envs``' environments,
  acting ``epsilon``-greedily (0 = greedy); nothing is written to replay.

  Taking one whole episode per env (rather than the first N to finish)
  keeps the mean unbiased towards short episodes. An episode still running
  after ``max_steps`` env steps (None = no cap) counts with its return so
  far, so that a policy that never ends its episode cannot hang the caller.
  """
  actor = Actor(agent, envs, seed, collect=False)
  actor.set_policy(params, epsilon, 0)
  first_return = np.full(envs.num_envs, np.nan)
  steps = 0
  while np.isnan(first_return).any():
    _, finished, _ = actor.step()
    steps += 1
    for episode in finished:
      if np.isnan(first_return[episode.env]):
        first_return[episode.env] = episode.episode_return
    if max_steps is not None and steps >= max_steps:
      break
  capped = np.isnan(first_return)
  first_return[capped] = actor.running_returns[capped]   # still in their first episode
  return Evaluation(float(first_return.mean()), int(capped.sum()))
