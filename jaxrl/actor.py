"""Acting: stepping an env set's agents epsilon-greedily, each with its learner's snapshot.

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
Each learner has its own inference path, exploration draws (and IQN's key)
from a numpy Generator spawned from the actor's seed, n-step accumulator and
policy step, so acting is deterministic for a seed on both paths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxrl.envs import EnvSet, LearnerSpace, SlotStep
from jaxrl.frame_replay import FrameStream
from jaxrl.nstep import NStepAccumulator


# --- Numpy inference ----------------------------------------------------------

Dense = tuple[np.ndarray, np.ndarray]  # (kernel float32 [in, out], bias float32 [out])


class DuelingStreams(NamedTuple):
  """A dueling head in numpy: each stream's Dense layers in call order, ReLU
  between them; value [.., 1] and advantage [.., A] at the end."""
  value: tuple[Dense, ...]
  advantage: tuple[Dense, ...]


def mlp_params(params: Any) -> tuple[Dense | DuelingStreams, ...]:
  """A numpy copy of the params (numpy or jax tree) of a ``networks.QNetwork``
  with an ``MLPTorso``: its layers in call order, the torso's
  (``params["params"]["torso"]["Dense_<i>"]``, none for a torso without
  layers) then the head: the output layer (``params["params"]["Dense_0"]``),
  shapes [D, H1], [H1, H2], ..., [H, A], or for a dueling network
  (``params["params"]["head"]``) ``DuelingStreams``: ``value_hidden`` and
  ``value``, ``advantage_hidden`` and ``advantage`` (no hidden layers if
  the streams are linear)."""
  def dense(layer) -> Dense:
    return np.array(layer["kernel"], np.float32), np.array(layer["bias"], np.float32)

  def dense_layers(tree) -> tuple[Dense, ...]:
    names = sorted((name for name in tree if name.startswith("Dense_")), key=lambda s: int(s[6:]))
    return tuple(dense(tree[name]) for name in names)

  def stream(head, name: str) -> tuple[Dense, ...]:
    return tuple(dense(head[key]) for key in (f"{name}_hidden", name) if key in head)
  tree = params["params"]
  torso = dense_layers(tree.get("torso", {}))
  if "head" not in tree:
    return torso + dense_layers(tree)
  return torso + (DuelingStreams(stream(tree["head"], "value"), stream(tree["head"], "advantage")),)


def _relu_dense(x: np.ndarray, layer: Dense) -> np.ndarray:
  """ReLU(x @ kernel + bias), in place on the one new array."""
  w, b = layer
  x = x @ w
  x += b
  np.maximum(x, 0.0, out=x)
  return x


def _dense_stack(x: np.ndarray, layers: tuple[Dense, ...]) -> np.ndarray:
  """ReLU dense layers, then the last one linear."""
  *hidden, (kernel, bias) = layers
  for layer in hidden:
    x = _relu_dense(x, layer)
  return x @ kernel + bias


def numpy_q_values(layers: tuple[Dense | DuelingStreams, ...], obs: np.ndarray) -> np.ndarray:
  """Q(obs) float32 [B, A] of a ``networks.QNetwork`` with an ``MLPTorso``
  (dueling or not), in numpy: ReLU dense layers, then the linear output
  layer, or for ``DuelingStreams`` V + A - mean_a A.

  Args:
    layers: ``mlp_params`` of the network's params.
    obs: [B, D] observations.
  """
  x = np.asarray(obs, np.float32)
  *torso, head = layers
  if not isinstance(head, DuelingStreams):
    return _dense_stack(x, layers)
  for layer in torso:
    x = _relu_dense(x, layer)
  value = _dense_stack(x, head.value)                # [B, 1]
  advantage = _dense_stack(x, head.advantage)        # [B, A]
  return value + advantage - advantage.mean(axis=1, keepdims=True)


# --- Acting ------------------------------------------------------------------

_DRAW_STEPS = 256  # Steps of exploration draws taken from a Generator at once.


class Episode(NamedTuple):
  """A finished episode of agent ``agent_id`` in env copy ``env``: its return
  and length (the steps it acted), and ``policy_lag``: learner steps between
  the params that acted and its learner's newest step, averaged over them."""
  env: int
  agent_id: str
  episode_return: float
  length: int
  policy_lag: float


class ActorStep(NamedTuple):
  """What one ``Actor.step`` gives: per learner id, the n-step transitions it
  completed (a dict of ``NStepAccumulator.step``; None if not collecting),
  the agents' episodes that ended, and ``env_steps``: the real environment
  transitions taken (``EnvSet.step``'s count, without autoreset steps)."""
  transitions: dict[str, dict[str, np.ndarray]] | None
  episodes: list[Episode]
  env_steps: int


class _LearnerSlots:
  """One learner's part of an ``Actor``: its policy, exploration draws,
  n-step accumulator and episode bookkeeping over its S slots, and the
  observations [S, *obs_shape] they act in next (``obs``).

  Stacked frames (``space.frame_stacked``) reach replay through a
  ``FrameStream``: the accumulator then carries references to stacks, and
  each step's transitions carry the new frames. ``clip_rewards`` and
  ``terminal_on_life_loss`` change the transitions only, never the episodes.

  With ``priorities``, the transitions carry their n-step TD errors under
  the acting values (``NStepAccumulator.step``'s ``priority``): Q(obs) of
  each step is taken once, after the env step that gives obs, where it
  serves both the finished transitions' bootstrap and the next actions; only
  a new policy in between makes a second pass.
  """

  def __init__(self, agent, space: LearnerSpace, obs: np.ndarray, rng: np.random.Generator, n_step: int,
               gamma: float, collect: bool, clip_rewards: bool = False, terminal_on_life_loss: bool = False,
               priorities: bool = False):
    self.agent_ids = space.agent_ids
    self.obs = obs
    self.num_slots = num_slots = len(obs)
    self.num_actions = space.num_actions
    # DQN with the built-in MLP acts in numpy; IQN, the conv torso and a user's network in JAX.
    numpy_path = agent.config.algo == "dqn" and len(space.obs_shape) == 1 and agent.builtin_network
    self._jax_q_values = None if numpy_path else jax.jit(agent.q_values)
    self._frames = FrameStream(num_slots) if collect and space.frame_stacked else None
    self._obs_ref = None if self._frames is None else self._frames.push(obs)  # int64 [S]
    self._accumulator = None
    if collect:
      stored_shape, stored_dtype = ((), np.int64) if self._frames else (space.obs_shape, space.obs_dtype)
      self._accumulator = NStepAccumulator(num_slots, n_step, gamma, stored_shape, stored_dtype)
    self._clip_rewards, self._terminal_on_life_loss = clip_rewards, terminal_on_life_loss
    self._priorities = collect and priorities
    self._q = None      # float [S, A]: Q(obs) under the current policy, if taken already
    self._value = None  # float [S]: Q(obs, action) of this step's actions (with priorities)
    self._slots = np.arange(num_slots)
    self._rng = rng
    # Exploration draws, float [D, S] uniforms and int [D, S] random actions,
    # taken _DRAW_STEPS steps at a time; row self._draw is this step's. From
    # them and epsilon: bool [D, S] explore (uniform < epsilon) and bool [D]
    # whether a row explores at all (most rows do not, once epsilon is small).
    self._explore_u = self._random_actions = self._explore = np.zeros((0, num_slots))
    self._explores = np.zeros(0, bool)
    self._draw = 0
    self._action = np.zeros(num_slots, np.int64)  # This step's actions.
    # Episode bookkeeping: the running sum of policy lags, and per slot the
    # return so far and the values of the actor's step count and of that sum
    # before its episode's first step.
    self._lag_sum = 0.0
    self.returns = np.zeros(num_slots)
    self._start_steps = np.zeros(num_slots, np.int64)
    self._start_lag_sums = np.zeros(num_slots)
    self._ended = np.zeros(0, np.int64)  # Slots whose episode ended last step.
    self.params: Any = None
    self.epsilon = 1.0
    self.policy_step = 0

  def set_policy(self, params: Any, epsilon: float, step: int) -> None:
    if self._jax_q_values is None:
      self.params = mlp_params(params)
    else:  # Our own copy: JAX on the CPU may alias a numpy buffer.
      self.params = jax.device_put(jax.tree.map(np.array, params))
    self.epsilon = float(epsilon)
    self.policy_step = int(step)
    self._q = None
    self._set_explore()

  def _set_explore(self) -> None:
    """Which draws explore at this epsilon."""
    self._explore = self._explore_u < self.epsilon
    self._explores = self._explore.any(axis=1)

  def choose_actions(self) -> np.ndarray:
    """Epsilon-greedy actions int [S] in ``obs``: with probability epsilon
    uniform over all actions, else the argmax of Q."""
    if self._draw == len(self._explore_u):
      self._explore_u = self._rng.random((_DRAW_STEPS, self.num_slots))
      self._random_actions = self._rng.integers(0, self.num_actions, (_DRAW_STEPS, self.num_slots))
      self._set_explore()
      self._draw = 0
    draw = self._draw
    self._draw += 1
    q = self._q_values(self.obs) if self._q is None else self._q
    self._action = q.argmax(axis=1)
    if self._explores[draw]:
      self._action = np.where(self._explore[draw], self._random_actions[draw], self._action)
    if self._priorities:
      self._value = q[self._slots, self._action]
    return self._action

  def _q_values(self, obs: np.ndarray) -> np.ndarray:
    """Q(obs) float32 [S, A] under the current policy."""
    if self._jax_q_values is None:
      return numpy_q_values(self.params, obs)
    key = self._rng.integers(0, 2**32, 2, np.uint32)  # A raw jax.random key.
    return np.asarray(self._jax_q_values(self.params, obs, key))

  def record(self, step: SlotStep, learner_step: int, steps: int,
             episodes: list[Episode]) -> dict[str, np.ndarray] | None:
    """Books the actor's ``steps``-th step (``choose_actions``'s actions, then ``step``);
    appends the episodes that ended to ``episodes``; returns the transitions
    completed (None if not collecting)."""
    next_obs, reward, terminated, truncated, active = step.obs, step.reward, step.terminated, step.truncated, step.active
    # A slot whose episode ended is inactive in the next step, which the
    # accumulator drops by itself: it needs ``active`` only for the others.
    ended = self._ended
    if np.count_nonzero(active) + len(ended) == self.num_slots:
      inactive, accumulator_active = ended, None
    else:
      inactive, accumulator_active = (~active).nonzero()[0], active
    transitions = None if self._accumulator is None else self._transitions(step, accumulator_active)
    self.obs = next_obs
    # The learner's newest step is at least that of the params it published: a
    # step read before them (Ray's driver reads it, then the newest snapshot) is stale.
    self._lag_sum += max(learner_step - self.policy_step, 0)
    self.returns += reward
    if len(inactive):  # Out of their episodes: the next ones start after this step.
      self.returns[inactive] = 0.0
      self._start_steps[inactive] = steps
      self._start_lag_sums[inactive] = self._lag_sum
    self._ended = (terminated | truncated).nonzero()[0]
    for slot in self._ended.tolist():
      length = steps - int(self._start_steps[slot])
      env, agent = divmod(slot, len(self.agent_ids))
      episodes.append(Episode(env, self.agent_ids[agent], float(self.returns[slot]), length,
                              (self._lag_sum - float(self._start_lag_sums[slot])) / length))
    return transitions

  def _transitions(self, step: SlotStep, active: np.ndarray | None) -> dict[str, np.ndarray]:
    """The n-step transitions this step completes, as the learner sees them."""
    reward = np.clip(step.reward, -1.0, 1.0) if self._clip_rewards else step.reward
    cut = step.life_lost if self._terminal_on_life_loss else None
    next_value = None
    if self._priorities:  # The next actions' Q, and the bootstrap of what ends here.
      self._q = self._q_values(step.obs)
      next_value = self._q.max(axis=1)
    if self._frames is None:
      return self._accumulator.step(self.obs, self._action, reward, step.terminated, step.truncated, step.obs,
                                    self.policy_step, active, cut, self._value, next_value)
    next_ref = self._frames.push(step.obs)
    transitions = self._accumulator.step(self._obs_ref, self._action, reward, step.terminated, step.truncated,
                                         next_ref, self.policy_step, active, cut, self._value, next_value)
    self._obs_ref = next_ref
    transitions.update(self._frames.take_frames())
    return transitions


class Actor:
  """Steps an ``EnvSet``'s agents epsilon-greedily, each with its learner's policy.

  ``agents`` maps each learner id of ``env_set.learners`` to its Agent. Call
  ``set_policy`` with each learner's new snapshot; ``step`` advances every
  env copy once and returns an ``ActorStep``: per learner the n-step
  transitions of its slots (None if not ``collect``: evaluation, which saves
  a fifth of the step), one Episode per agent whose episode ended, and the
  real env steps taken. Inactive slots (an env copy's autoreset step, an
  agent done before the others) make no transition and add nothing to any
  episode; a slot's next active step starts its next episode.
  ``clip_rewards`` and ``terminal_on_life_loss`` (the ``env`` keys) change
  the transitions only: episodes report the game's score over whole games.
  ``priorities`` (``replay.prioritized``) gives each transition its first
  priority, its n-step TD error under the acting params (Ape-X).
  Deterministic for a given ``seed``, params and sequence of calls.
  """

  def __init__(self, agents: Mapping[str, Any], env_set: EnvSet, seed: int, n_step: int = 1,
               gamma: float = 0.99, collect: bool = True, clip_rewards: bool = False,
               terminal_on_life_loss: bool = False, priorities: bool = False):
    if set(agents) != set(env_set.learners):
      raise ValueError(f"agents are for learners {sorted(agents)}, the env set has {list(env_set.learners)}")
    for learner, space in env_set.learners.items():
      if (agents[learner].obs_shape, agents[learner].num_actions) != (space.obs_shape, space.num_actions):
        raise ValueError(f"learner {learner!r}: its agent is for obs {agents[learner].obs_shape} and "
                         f"{agents[learner].num_actions} actions, the env set has {space.obs_shape} and "
                         f"{space.num_actions}")
    self.env_set = env_set
    self.num_envs = env_set.num_envs
    rngs = np.random.default_rng(seed).spawn(len(env_set.learners))
    obs = env_set.reset(seed)
    self._learners = {
        learner: _LearnerSlots(agents[learner], space, obs[learner], rng, n_step, gamma, collect, clip_rewards,
                               terminal_on_life_loss, priorities)
        for (learner, space), rng in zip(env_set.learners.items(), rngs)}
    self._steps = 0
    self._collect = collect

  @property
  def obs(self) -> dict[str, np.ndarray]:
    """Learner id -> the observations [S_l, *obs_shape] the next step acts in."""
    return {learner: slots.obs for learner, slots in self._learners.items()}

  @property
  def running_returns(self) -> dict[str, np.ndarray]:
    """Learner id -> float [S_l]: the return so far of each slot's latest
    episode (0 from its first inactive step on)."""
    return {learner: slots.returns.copy() for learner, slots in self._learners.items()}

  def set_policy(self, learner_id: str, params: Any, epsilon: float, step: int) -> None:
    """Learner ``learner_id``'s agents act from now on with a copy of
    ``params`` (numpy or jax tree), so the caller may reuse or overwrite its
    buffers; ``step`` is the learner step of these params."""
    self._learners[learner_id].set_policy(params, epsilon, step)

  def step(self, learner_steps: Mapping[str, int]) -> ActorStep:
    """One step of every env copy; ``learner_steps``: learner id -> its newest step."""
    actions = {}  # Loops, not comprehensions: a microsecond a step less.
    for learner, slots in self._learners.items():
      actions[learner] = slots.choose_actions()
    slot_steps, env_steps = self.env_set.step(actions)
    self._steps += 1
    episodes: list[Episode] = []
    transitions = {}
    for learner, slots in self._learners.items():
      transitions[learner] = slots.record(slot_steps[learner], learner_steps[learner], self._steps, episodes)
    return ActorStep(transitions if self._collect else None, episodes, env_steps)


class Evaluation(NamedTuple):
  """The result of ``evaluate``, over the first episode of each env copy:
  ``mean_return``, the team return (the mean over copies of the sum over
  agents of their returns); ``agent_returns``, agent id -> the mean over
  copies of its return; ``capped``, the copies whose episode was cut at
  ``max_steps``."""
  mean_return: float
  agent_returns: dict[str, float]
  capped: int


def evaluate(agents: Mapping[str, Any], params: Mapping[str, Any], env_set: EnvSet, epsilon: float,
             seed: int, max_steps: int | None = None,
             should_stop: Callable[[], bool] = lambda: False) -> Evaluation | None:
  """The returns of the first episode of each of ``env_set``'s env copies,
  every agent acting ``epsilon``-greedily (0 = greedy) with its learner's
  ``params[learner_id]``; nothing is written to replay.

  Taking one whole episode per copy (rather than the first N to finish)
  keeps the mean unbiased towards short episodes. An agent still in its
  first episode after ``max_steps`` steps (None = no cap) counts with its
  return so far, so that a policy that never ends its episode cannot hang
  the caller. None if ``should_stop()``, asked before each step, said so.
  """
  actor = Actor(agents, env_set, seed, collect=False)
  for learner in env_set.learners:
    actor.set_policy(learner, params[learner], epsilon, 0)
  learner_steps = dict.fromkeys(env_set.learners, 0)
  agent_ids = [agent for space in env_set.learners.values() for agent in space.agent_ids]
  column = {agent: i for i, agent in enumerate(agent_ids)}
  first_return = np.full((env_set.num_envs, len(agent_ids)), np.nan)  # [E, agents]
  steps = 0
  while np.isnan(first_return).any():
    if should_stop():
      return None
    finished = actor.step(learner_steps).episodes
    steps += 1
    for episode in finished:
      cell = episode.env, column[episode.agent_id]
      if np.isnan(first_return[cell]):
        first_return[cell] = episode.episode_return
    if max_steps is not None and steps >= max_steps:
      break
  capped = np.isnan(first_return)  # Still in their first episode.
  running = np.concatenate([r.reshape(env_set.num_envs, -1) for r in actor.running_returns.values()], axis=1)
  first_return[capped] = running[capped]
  return Evaluation(float(first_return.sum(axis=1).mean()),
                    dict(zip(agent_ids, first_return.mean(axis=0).tolist())), int(capped.any(axis=1).sum()))
