"""Environment sets: E copies of an environment, their agents grouped by learner.

Every agent id is served by one learner (``learner_ids``). An ``EnvSet``
steps E copies of an environment and lays each learner's agents out in
**slots**: for learner l with agents a_1 .. a_k (``LearnerSpace.agent_ids``),
slot ``s = e * k + j`` is agent a_j of env copy e, so learner l has
``S_l = E * k`` slots, and its observations, actions and rewards are arrays
over them, ready for its network and its ``NStepAccumulator``.

Autoreset is gymnasium's NEXT_STEP mode, per env copy: once all agents of a
copy are done (terminated or truncated), its next step ignores the actions
and resets it: every slot of that copy is inactive in that step, with reward
0 and the new episode's first observation. An agent done before the others
is inactive from the step after its end until its copy resets.

Three implementations: ``GymVectorEnvSet`` (a gymnasium vector env: one agent
"agent_0"), ``AtariEnvSet`` (ale-py's threaded vector env for ``ALE/...``
ids: stacks of frames [H, W, K], lost lives) and ``ParallelEnvSet``
(copies of a PettingZoo parallel env); ``make_env_set`` picks one from the
config. Making and inspecting environments is here too (``make_vec_env``,
``has_time_limit``, ``make_video_env``), and every environment jaxrl cannot
serve is an ``EnvError``. Numpy only (no jax), and nothing of ``jaxrl.actor``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import importlib
import importlib.util
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from jaxrl.config import AgentsConfig, EnvConfig

AGENT_ID = "agent_0"  # The one agent of a gymnasium env.
SHARED = "shared"     # The one learner of share "all".

MINATAR_GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")
MINATAR_MAX_EPISODE_STEPS = 27_000  # Frames; the time limit Dopamine sets for Atari (and MinAtar) episodes.

# Arguments of ale-py's AtariVectorEnv that jaxrl sets unless env.kwargs does:
# no FIRE at reset (as Dopamine and Machado et al. 2018 do), and one worker
# thread, as an actor is one CPU (ale-py's default is a thread per env, up to
# the machine's cores). 8 envs of ALE/Pong-v5 on 2 cores: 3.2k env steps/s with
# 1 thread at 1.0 core busy, 5.4k-5.9k with 2 at 1.7 cores: the same per core.
# More actors, not more threads, use more cores.
ATARI_DEFAULTS = {"use_fire_reset": False, "num_threads": 1}
# Arguments of AtariVectorEnv that jaxrl keeps False (episodes are whole games,
# scored unclipped) -> jaxrl's own key, which changes only what the learner sees.
ATARI_JAXRL_KEYS = {"reward_clipping": "env.clip_rewards", "episodic_life": "env.terminal_on_life_loss",
                    "life_loss_info": "env.terminal_on_life_loss"}
# The twin of an Atari env that shows the game's screen for a video: ALE's full
# 210x160 RGB frame, the last of each step's frame skip.
ATARI_SCREEN = {"grayscale": False, "img_height": 210, "img_width": 160, "stack_num": 1, "maxpool": False}
ATARI_FPS = 60  # Frames per second of the Atari 2600.


class EnvError(ValueError):
  """An environment jaxrl cannot serve (one-line message)."""


def minatar_game(game: str) -> str:
  """MinAtar's own name of one of ``MINATAR_GAMES``: "SpaceInvaders" -> "space_invaders"."""
  return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(game))


def register_minatar(env_id: str) -> None:
  """Registers ``MinAtar/<Game>-v0`` (full action set) and ``-v1`` (minimal
  action set) with gymnasium, as ``minatar.gym.register_envs()`` does, plus
  a time limit of ``MINATAR_MAX_EPISODE_STEPS`` frames (MinAtar registers
  none), when ``env_id`` is a MinAtar id not registered yet. Sticky actions
  (p = 0.1) stay on, as in the MinAtar paper.

  Raises:
    EnvError: one line, when the ``minatar`` package is not installed.
  """
  if not env_id.startswith("MinAtar/") or env_id in gym.registry:
    return
  if importlib.util.find_spec("minatar") is None:
    raise EnvError(f"env.id: {env_id!r} needs the minatar package: pip install -e '.[minatar]'")
  for game in MINATAR_GAMES:
    for version, minimal in (("v0", False), ("v1", True)):
      if f"MinAtar/{game}-{version}" not in gym.registry:
        gym.register(f"MinAtar/{game}-{version}", entry_point="minatar.gym:BaseEnv",
                     kwargs={"game": minatar_game(game), "use_minimal_action_set": minimal},
                     max_episode_steps=MINATAR_MAX_EPISODE_STEPS)


def is_atari(env_id: str) -> bool:
  """Whether ``env_id`` is one of ale-py's gymnasium ids (``ALE/Pong-v5``)."""
  return env_id.startswith("ALE/")


def register_atari(env_id: str) -> None:
  """Imports ale-py, which registers its ``ALE/<Game>-v5`` ids with
  gymnasium, when ``env_id`` is an ALE id not registered yet.

  Raises:
    EnvError: one line, when the ``ale_py`` package is not installed.
  """
  if not is_atari(env_id) or env_id in gym.registry:
    return
  if importlib.util.find_spec("ale_py") is None:
    raise EnvError(f"env.id: {env_id!r} needs the ale-py package: pip install -e '.[atari]'")
  importlib.import_module("ale_py")


def atari_kwargs(env: EnvConfig) -> dict[str, Any]:
  """The keyword arguments of ale-py's ``AtariVectorEnv`` for ``env``:
  ``env.kwargs`` (ale-py's names) over ``ATARI_DEFAULTS``, and the id's own
  (v5: ``repeat_action_probability`` 0.25, ``frameskip`` 4,
  ``max_num_frames_per_episode`` 108,000) under both; ale-py's reward
  clipping and life-loss ends are off (``ATARI_JAXRL_KEYS``).

  Raises:
    EnvError: one line, for a key of ``ATARI_JAXRL_KEYS``, or a
      ``max_num_frames_per_episode`` below 1 (ale-py would truncate every step).
  """
  for key, own in ATARI_JAXRL_KEYS.items():
    if key in env.kwargs:
      raise EnvError(f"env.kwargs.{key}: jaxrl keeps ale-py's {key} off (episodes are whole games, "
                     f"scored unclipped); set {own} instead, which changes only what the learner sees")
  frames = env.kwargs.get("max_num_frames_per_episode", 1)
  if not (isinstance(frames, int) and frames >= 1):
    raise EnvError(f"env.kwargs.max_num_frames_per_episode: must be an integer >= 1 (ale-py truncates "
                   f"every step otherwise), got {frames!r}")
  return {**ATARI_DEFAULTS, **env.kwargs, **dict.fromkeys(ATARI_JAXRL_KEYS, False)}


def import_env_modules(env: EnvConfig) -> None:
  """Imports ``env.imports`` (modules that register environment ids, e.g.
  ``minatar.gym``), raising EnvError naming the module that fails; then
  registers jaxrl's MinAtar ids if ``env.id`` is one (``register_minatar``)
  and ale-py's if it is an ALE id (``register_atari``)."""
  for name in env.imports:
    try:
      importlib.import_module(name)
    except Exception as e:  # pylint: disable=broad-except  # A user's module may raise anything.
      raise EnvError(f"env.imports: cannot import {name!r}: {type(e).__name__}: {e}") from None
  register_minatar(env.id)
  register_atari(env.id)


def make_vec_env(env: EnvConfig, num_envs: int) -> gym.vector.VectorEnv:
  """The fastest gymnasium vector env for ``env.id``: native vectorisation
  when the environment has one, else ``SyncVectorEnv``; for an ALE id always
  ale-py's ``AtariVectorEnv``, with ``atari_kwargs(env)``. Imports
  ``env.imports`` first. Checks that jaxrl can serve it: discrete actions,
  Box observations of rank 1 or 3, and gymnasium's NEXT_STEP autoreset
  (the mode ``NStepAccumulator`` and ``Actor`` are written for)."""
  import_env_modules(env)
  atari = is_atari(env.id)
  kwargs = atari_kwargs(env) if atari else env.kwargs
  try:
    try:
      envs = gym.make_vec(env.id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    except (gym.error.Error, ValueError, TypeError):
      if atari:  # AtariEnv, a single env, takes other arguments and preprocesses nothing.
        raise
      envs = gym.make_vec(env.id, num_envs=num_envs, vectorization_mode="sync", **kwargs)
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


def learner_ids(agent_ids: Sequence[str], share: str) -> dict[str, str]:
  """Agent id -> the id of the learner serving it, by ``agents.share``:
  "none": the agent id; "type": the id before its last "_" (``adversary_0``
  -> ``adversary``; an id without "_" is its own type); "all": "shared"."""
  if share == "none":
    return {a: a for a in agent_ids}
  if share == "type":
    return {a: a.rpartition("_")[0] or a for a in agent_ids}
  if share == "all":
    return {a: SHARED for a in agent_ids}
  raise ValueError(f'share must be one of "none", "type", "all", got {share!r}')


class LearnerSpace(NamedTuple):
  """What one learner serves: its agents, in slot order within an env copy,
  and their (shared) spaces.

  Attributes:
    obs_dtype: the dtype observations are stored as: the space's, but
      uint8 for bool (MinAtar's frames: one byte each, never a float copy).
    obs_range: (low, high) bounds of image observations (rank 3) that the
      network scales to [0, 1] by; None for vectors.
    frame_stacked: the observation [H, W, S] is a stack of the S newest
      frames on its last axis, oldest first (Atari): replay may store each
      frame once.
  """
  agent_ids: tuple[str, ...]
  obs_shape: tuple[int, ...]
  obs_dtype: np.dtype
  num_actions: int
  obs_range: tuple[float, float] | None = None
  frame_stacked: bool = False


def learner_space(agent_ids: tuple[str, ...], obs_space: gym.spaces.Box, num_actions: int) -> LearnerSpace:
  """The LearnerSpace of agents whose observations come from ``obs_space``
  (a Box of rank 1 or 3; an image's bounds must be finite)."""
  dtype = np.dtype(np.uint8) if obs_space.dtype == np.bool_ else np.dtype(obs_space.dtype)
  obs_range = None
  if len(obs_space.shape) == 3:
    low, high = float(np.min(obs_space.low)), float(np.max(obs_space.high))
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
      raise EnvError(f"observation space {obs_space}: image observations need finite bounds, "
                      "which the network scales them to [0, 1] by")
    obs_range = (low, high)
  return LearnerSpace(tuple(agent_ids), tuple(obs_space.shape), dtype, int(num_actions), obs_range)


class SlotStep(NamedTuple):
  """One step of one learner's S slots.

  Attributes:
    obs: [S, *obs_shape] next observations (the real final one of an agent
      whose episode ended this step; the new episode's first on a reset step).
    reward: float [S].
    terminated, truncated: bool [S], the agent's episode ended this step.
    active: bool [S], the slot's agent acted this step: False for an agent
      already done, and for every slot of an env copy resetting this step.
    life_lost: bool [S], the agent lost a life this step and its episode
      goes on (Atari); None where the environment has no lives.
  """
  obs: np.ndarray
  reward: np.ndarray
  terminated: np.ndarray
  truncated: np.ndarray
  active: np.ndarray
  life_lost: np.ndarray | None = None


class EnvSet:
  """E copies of an environment whose agents are grouped by learner into slots.

  Attributes:
    learners: learner id -> its ``LearnerSpace``, in order of first agent.
    num_envs: E, the env copies.
  """

  learners: dict[str, LearnerSpace]
  num_envs: int

  def reset(self, seed: int) -> dict[str, np.ndarray]:
    """Resets every copy (copy e seeded from ``seed`` and e); learner id ->
    first observations [S_l, *obs_shape]."""
    raise NotImplementedError

  def step(self, actions: Mapping[str, np.ndarray]) -> tuple[dict[str, SlotStep], int]:
    """Steps every copy with ``actions`` (learner id -> int [S_l]; those of
    inactive slots are ignored). Returns learner id -> its ``SlotStep``, and
    the env steps taken: the copies stepped, less those that reset."""
    raise NotImplementedError

  def close(self) -> None:
    raise NotImplementedError

  def __enter__(self) -> "EnvSet":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class GymVectorEnvSet(EnvSet):
  """A gymnasium vector env (NEXT_STEP autoreset) as an env set: one learner
  whose one agent "agent_0" has a slot per env; a slot is inactive in its
  env's autoreset step (the step after it terminated or was truncated)."""

  def __init__(self, envs: gym.vector.VectorEnv, learner_id: str = AGENT_ID):
    self.envs = envs
    self.num_envs = envs.num_envs
    space = envs.single_observation_space
    self.learners = {learner_id: learner_space((AGENT_ID,), space, envs.single_action_space.n)}
    self._learner_id = learner_id
    self._ended = np.zeros(self.num_envs, bool)  # Envs whose next step is their autoreset.

  def reset(self, seed: int) -> dict[str, np.ndarray]:
    obs, _ = self.envs.reset(seed=seed)
    self._ended = np.zeros(self.num_envs, bool)
    return {self._learner_id: obs}

  def step(self, actions: Mapping[str, np.ndarray]) -> tuple[dict[str, SlotStep], int]:
    obs, reward, terminated, truncated, _ = self.envs.step(actions[self._learner_id])
    active = ~self._ended
    self._ended = terminated | truncated
    return ({self._learner_id: SlotStep(obs, reward, terminated, truncated, active)},
            int(np.count_nonzero(active)))

  def close(self) -> None:
    self.envs.close()


def hwc_frames(obs: np.ndarray) -> np.ndarray:
  """ale-py's stacks of K frames [E, K, H, W] as [E, H, W, K] (contiguous)."""
  return np.ascontiguousarray(obs.transpose(0, 2, 3, 1))


class AtariEnvSet(GymVectorEnvSet):
  """ale-py's ``AtariVectorEnv`` (``make_vec_env`` of an ALE id) as an env set.

  Observations are uint8 [E, H, W, K] (84x84x4 by default): the K newest
  preprocessed frames on the last axis, oldest first (``frame_stacked``);
  ale-py pads the stack with zero frames after a reset. Rewards are the
  game's, unclipped. ``life_lost`` is True for a slot whose life count
  (``info["lives"]``) fell in an active step that did not end its episode:
  the last life's end is the game's termination, and a reset (whose count
  starts again) is no loss.
  """

  def __init__(self, envs: gym.vector.VectorEnv, learner_id: str = AGENT_ID):
    super().__init__(envs, learner_id)
    stack, height, width = envs.single_observation_space.shape
    frames = gym.spaces.Box(0, 255, (height, width, stack), np.uint8)
    space = learner_space((AGENT_ID,), frames, envs.single_action_space.n)
    self.learners = {learner_id: space._replace(frame_stacked=True)}
    self._lives = np.zeros(self.num_envs, np.int32)  # Each env's life count after its last step.

  def reset(self, seed: int) -> dict[str, np.ndarray]:
    obs, info = self.envs.reset(seed=ale_seed(seed, self.num_envs))
    self._ended = np.zeros(self.num_envs, bool)
    self._lives = info["lives"]
    return {self._learner_id: hwc_frames(obs)}

  def step(self, actions: Mapping[str, np.ndarray]) -> tuple[dict[str, SlotStep], int]:
    obs, reward, terminated, truncated, info = self.envs.step(np.asarray(actions[self._learner_id], np.int64))
    active = ~self._ended
    self._ended = terminated | truncated
    life_lost = active & ~self._ended & (info["lives"] < self._lives)
    self._lives = info["lives"]
    step = SlotStep(hwc_frames(obs), reward.astype(np.float64), terminated, truncated, active, life_lost)
    return {self._learner_id: step}, int(np.count_nonzero(active))


def ale_seed(seed: int, num_envs: int) -> int:
  """``seed`` (jaxrl's are uint32) folded into the range ale-py takes: it
  seeds env e with ``seed + e``, a C int."""
  return int(seed) % (2**31 - num_envs)


class AtariVideoEnv:
  """One game of an ALE id for a video, as a gymnasium env: ``reset`` and
  ``step`` give the observations jaxrl trains on ([H, W, K] uint8, those of
  ``AtariEnvSet``), and ``render()`` the game's RGB screen [210, 160, 3]
  uint8 at the end of the last step.

  The screen comes from a twin ``AtariVectorEnv`` with the same settings but
  ``ATARI_SCREEN`` frames, stepped in lockstep with the same seed and
  actions: ale-py draws its no-ops and sticky actions from the seed, so the
  twin plays the same game (checked each step: a twin whose frame number,
  reward or lives differ is an EnvError).
  """

  def __init__(self, env: EnvConfig):
    self._game = make_vec_env(env, 1)
    self._screen = gym.make_vec(env.id, num_envs=1, vectorization_mode="vector_entry_point",
                                **{**atari_kwargs(env), **ATARI_SCREEN})
    self.metadata = {"render_fps": ATARI_FPS / self._game.spec.kwargs["frameskip"]}
    self._frame = None

  def _lockstep(self, game: tuple, screen: tuple) -> np.ndarray:
    """The game's observation [H, W, K] from the outputs of a reset or step
    of the game and of its twin, whose screen it keeps."""
    (obs, *game_out, game_info), (frame, *screen_out, screen_info) = game, screen
    game_out += [game_info["episode_frame_number"], game_info["lives"]]
    screen_out += [screen_info["episode_frame_number"], screen_info["lives"]]
    if not all(np.array_equal(a, b) for a, b in zip(game_out, screen_out)):
      raise EnvError("the twin env that shows the RGB screen fell out of step with the game")
    self._frame = frame[0, 0]
    return hwc_frames(obs)[0]

  def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
    seed = None if seed is None else ale_seed(seed, 1)
    obs = self._lockstep(self._game.reset(seed=seed), self._screen.reset(seed=seed))
    return obs, {}

  def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
    actions = np.array([action], np.int64)
    game = self._game.step(actions)
    obs = self._lockstep(game, self._screen.step(actions))
    return obs, float(game[1][0]), bool(game[2][0]), bool(game[3][0]), {}

  def render(self) -> np.ndarray:
    return self._frame

  def close(self) -> None:
    self._game.close()
    self._screen.close()


def make_video_env(env: EnvConfig) -> Any:
  """One copy of ``env``'s (gymnasium) environment whose ``render()`` gives
  RGB frames: an ``AtariVideoEnv`` for an ALE id, else
  ``gymnasium.make(env.id, render_mode="rgb_array", **env.kwargs)``."""
  if is_atari(env.id):
    return AtariVideoEnv(env)
  return gym.make(env.id, render_mode="rgb_array", **env.kwargs)


def has_time_limit(env_set: EnvSet) -> bool:
  """Whether the episodes of ``env_set`` end by a time limit of their own:
  known for a gymnasium env, always for Atari (``max_num_frames_per_episode``);
  a PettingZoo env is taken to have none."""
  if isinstance(env_set, AtariEnvSet):
    return True
  envs = getattr(env_set, "envs", None)
  if not isinstance(envs, gym.vector.VectorEnv):
    return False
  spec = envs.envs[0].spec if isinstance(getattr(envs, "envs", None), list) else envs.spec
  return bool(getattr(spec, "max_episode_steps", None) or getattr(envs, "max_episode_steps", None))


class ParallelEnvSet(EnvSet):
  """``num_envs`` copies of a PettingZoo parallel env, built by ``make_env()``.

  Learners come from the env's ``possible_agents`` and ``share``; each
  agent needs Discrete actions and a Box observation of rank 1 or 3, and the
  agents of one learner identical spaces (else EnvError, naming ``name``).
  ``reset(seed)`` seeds copy e with ``seed + e``; its later resets are
  unseeded, continuing its random stream.
  """

  def __init__(self, make_env: Callable[[], Any], num_envs: int, share: str = "none",
               name: str = "env"):
    self._envs = [make_env()]
    try:
      self.learners = _learner_spaces(self._envs[0], share, name)
      self._envs += [make_env() for _ in range(num_envs - 1)]
    except BaseException:
      self.close()
      raise
    self.num_envs = num_envs
    # Per copy: agent id -> (learner id, slot).
    self._slots = [{a: (learner, e * len(space.agent_ids) + j)
                    for learner, space in self.learners.items() for j, a in enumerate(space.agent_ids)}
                   for e in range(num_envs)]
    self._obs = {learner: np.zeros((num_envs * len(space.agent_ids), *space.obs_shape), space.obs_dtype)
                 for learner, space in self.learners.items()}
    self._live: list[list[str]] = [[] for _ in range(num_envs)]  # Agents acting next; [] = resetting.

  def _reset_copy(self, e: int, obs: dict[str, np.ndarray], seed: int | None) -> None:
    """Resets copy e, writing its first observations into ``obs``."""
    env = self._envs[e]
    first, _ = env.reset(seed=seed)
    self._write(e, obs, first)
    self._live[e] = list(env.agents)

  def _write(self, e: int, obs: dict[str, np.ndarray], agent_obs: Mapping[str, Any]) -> None:
    slots = self._slots[e]
    for agent, ob in agent_obs.items():
      learner, slot = slots[agent]
      obs[learner][slot] = ob

  def reset(self, seed: int) -> dict[str, np.ndarray]:
    obs = {learner: np.zeros_like(o) for learner, o in self._obs.items()}
    for e in range(self.num_envs):
      self._reset_copy(e, obs, seed + e)
    self._obs = obs
    return obs

  def step(self, actions: Mapping[str, np.ndarray]) -> tuple[dict[str, SlotStep], int]:
    obs = {learner: o.copy() for learner, o in self._obs.items()}  # Inactive slots keep theirs.
    reward = {learner: np.zeros(len(o)) for learner, o in obs.items()}
    terminated = {learner: np.zeros(len(o), bool) for learner, o in obs.items()}
    truncated = {learner: np.zeros(len(o), bool) for learner, o in obs.items()}
    active = {learner: np.zeros(len(o), bool) for learner, o in obs.items()}
    env_steps = 0
    for e, env in enumerate(self._envs):
      live, slots = self._live[e], self._slots[e]
      if not live:  # Every agent of this copy is done: this step is its reset.
        self._reset_copy(e, obs, None)
        continue
      env_actions = {}
      for agent in live:
        learner, slot = slots[agent]
        env_actions[agent] = int(actions[learner][slot])
        active[learner][slot] = True
      agent_obs, agent_reward, agent_terminated, agent_truncated, _ = env.step(env_actions)
      env_steps += 1
      for agent in live:
        learner, slot = slots[agent]
        reward[learner][slot] = agent_reward[agent]
        terminated[learner][slot] = agent_terminated[agent]
        truncated[learner][slot] = agent_truncated[agent]
      self._write(e, obs, agent_obs)
      self._live[e] = list(env.agents)  # A parallel env drops the agents that are done.
    self._obs = obs
    return {learner: SlotStep(obs[learner], reward[learner], terminated[learner], truncated[learner],
                              active[learner]) for learner in obs}, env_steps

  def close(self) -> None:
    for env in self._envs:
      env.close()


def _learner_spaces(env: Any, share: str, name: str) -> dict[str, LearnerSpace]:
  """The learners of the parallel env ``env`` under ``share``; EnvError
  (one line) for spaces jaxrl cannot serve."""
  agents = tuple(env.possible_agents)
  by_learner: dict[str, list[str]] = {}
  for agent, learner in learner_ids(agents, share).items():
    by_learner.setdefault(learner, []).append(agent)
  learners = {}
  for learner, members in by_learner.items():
    first = members[0]
    obs_space, action_space = env.observation_space(first), env.action_space(first)
    if not isinstance(action_space, gym.spaces.Discrete):
      raise EnvError(f"env.id: {name!r} agent {first!r} has {type(action_space).__name__} actions; "
                      "jaxrl's DQN and IQN need Discrete actions")
    if not (isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) in (1, 3)):
      raise EnvError(f"env.id: {name!r} agent {first!r} has {obs_space} observations; "
                      "jaxrl needs a Box of rank 1 or 3")
    for other in members[1:]:
      if (env.observation_space(other), env.action_space(other)) != (obs_space, action_space):
        raise EnvError(
            f"agents.share: agents {first!r} and {other!r} of {name!r} share learner {learner!r} "
            f"but their spaces differ ({obs_space}, {action_space} against "
            f"{env.observation_space(other)}, {env.action_space(other)})")
    learners[learner] = learner_space(tuple(members), obs_space, action_space.n)
  return learners


def _parallel_env_builder(env_id: str) -> Callable[..., Any] | None:
  """The function named by ``env_id`` that builds a PettingZoo parallel env
  (a module's ``parallel_env``, or ``module:function``), or None for a
  gymnasium id (or what can only be one: gymnasium reports what is wrong)."""
  module_name, colon, function = env_id.partition(":")
  function = function if colon else "parallel_env"
  if (env_id in gym.registry or not function.isidentifier()
      or not all(part.isidentifier() for part in module_name.split("."))):
    return None
  try:
    module = importlib.import_module(module_name)
  except Exception as e:  # pylint: disable=broad-except  # A user's module may raise anything.
    missing = e.name.partition(".")[0] if isinstance(e, ModuleNotFoundError) and e.name else None
    if missing in ("mpe2", "pettingzoo"):
      raise EnvError(f"env.id: {env_id!r} needs the {missing} package: pip install -e '.[mpe]'") from None
    raise EnvError(f"env.id: {env_id!r} is no registered gymnasium id, and importing "
                    f"{module_name!r} failed: {type(e).__name__}: {e}") from None
  if colon and function in gym.registry:  # "module:EnvId", registered by importing module.
    return None
  builder = getattr(module, function, None)
  if not callable(builder):
    raise EnvError(f"env.id: {env_id!r} is no registered gymnasium id, and {module_name!r} has no "
                    f"function {function!r} that builds a PettingZoo parallel env")
  return builder


def make_env_set(env_cfg: EnvConfig, agents_cfg: AgentsConfig, num_envs: int) -> EnvSet:
  """``num_envs`` copies of ``env_cfg``'s environment, after importing
  ``env.imports``: an ``AtariEnvSet`` for an ALE id, a ``GymVectorEnvSet``
  for another gymnasium id, else a ``ParallelEnvSet`` of the PettingZoo
  parallel env that ``env.id`` names (a module whose
  ``parallel_env(**env.kwargs)`` builds it, or ``module:function``),
  learners by ``agents.share``.

  Raises:
    EnvError: one line, for an env jaxrl cannot serve, an ``env.id`` that
      names none, or ``agents.overrides`` of a learner the env does not have.
  """
  import_env_modules(env_cfg)
  builder = _parallel_env_builder(env_cfg.id)
  if builder is None:
    learner = learner_ids((AGENT_ID,), agents_cfg.share)[AGENT_ID]
    env_set = AtariEnvSet if is_atari(env_cfg.id) else GymVectorEnvSet
    envs = env_set(make_vec_env(env_cfg, num_envs), learner)
  else:
    def make_env():
      try:
        env = builder(**env_cfg.kwargs)
      except (TypeError, ValueError) as e:
        raise EnvError(f"env.kwargs: {env_cfg.id!r} rejects them: {e}") from None
      from pettingzoo import ParallelEnv  # pylint: disable=import-outside-toplevel
      if not isinstance(env, ParallelEnv):
        raise EnvError(f"env.id: {env_cfg.id!r} built a {type(env).__name__}, not a PettingZoo "
                        "ParallelEnv")
      return env
    envs = ParallelEnvSet(make_env, num_envs, agents_cfg.share, env_cfg.id)
  unknown = [learner for learner in agents_cfg.overrides if learner not in envs.learners]
  if unknown:
    envs.close()
    raise EnvError(f"agents.overrides: {env_cfg.id!r} with agents.share {agents_cfg.share!r} has no "
                    f"learner {unknown[0]!r} (its learners: {', '.join(envs.learners)})")
  return envs


def env_learner_spaces(env_cfg: EnvConfig, agents_cfg: AgentsConfig) -> dict[str, LearnerSpace]:
  """Learner id -> its ``LearnerSpace`` for this env and ``agents.share``
  (builds one copy of the env and closes it); raises EnvError as
  ``make_env_set``."""
  with make_env_set(env_cfg, agents_cfg, 1) as envs:
    return envs.learners
