"""A tiny deterministic PettingZoo parallel env for the tests of jaxrl.envs.

``env.id: parallel_env`` (with ``tests/`` on sys.path) builds it through
``parallel_env(**kwargs)``, ``parallel_env:TinyParallelEnv`` through the class.
"""

import gymnasium as gym
import numpy as np
from pettingzoo import ParallelEnv

AGENTS = ("speaker_0", "listener_0", "listener_1")


class TinyParallelEnv(ParallelEnv):
  """Agent i of ``AGENTS``: speaker_0 (obs [2], 3 actions), listener_0 and
  listener_1 (obs [3], 4 actions).

  With t the steps taken in the episode (0 at reset) and ep the resets since
  the last seeded one, agent i observes ``[1000 * ep + 10 * t + i, seed, ...]``
  (the rest filled with the last reset seed); at step t taking action a it
  gets reward ``100 * t + 10 * i + a``. ``leaver`` terminates at step
  ``terminate_at`` (None = never); the others are truncated at ``max_cycles``.
  ``step`` asserts it gets an action for exactly the agents still in play.
  """

  metadata = {"name": "tiny_parallel_v0"}

  def __init__(self, max_cycles=4, terminate_at=None, leaver="listener_1", speaker_obs_shape=(2,)):
    self.possible_agents = list(AGENTS)
    self.agents = []
    self._max_cycles, self._terminate_at, self._leaver = max_cycles, terminate_at, leaver
    self._spaces = {a: (gym.spaces.Box(-np.inf, np.inf, tuple(speaker_obs_shape), np.float32),
                        gym.spaces.Discrete(3)) if a.startswith("speaker") else
                       (gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), gym.spaces.Discrete(4))
                    for a in AGENTS}
    self._seed = self._episode = self._t = 0

  def observation_space(self, agent):
    return self._spaces[agent][0]

  def action_space(self, agent):
    return self._spaces[agent][1]

  def _obs(self, agent):
    obs = np.full(self.observation_space(agent).shape, self._seed, np.float32)
    obs.flat[0] = 1000 * self._episode + 10 * self._t + AGENTS.index(agent)
    return obs

  def reset(self, seed=None, options=None):
    if seed is None:
      self._episode += 1
    else:
      self._seed, self._episode = seed, 0
    self._t = 0
    self.agents = list(AGENTS)
    return {a: self._obs(a) for a in self.agents}, {a: {} for a in self.agents}

  def step(self, actions):
    assert sorted(actions) == sorted(self.agents), (actions, self.agents)
    self._t += 1
    reward = {a: float(100 * self._t + 10 * AGENTS.index(a) + actions[a]) for a in self.agents}
    terminated = {a: a == self._leaver and self._t == self._terminate_at for a in self.agents}
    truncated = {a: self._t >= self._max_cycles and not terminated[a] for a in self.agents}
    obs = {a: self._obs(a) for a in self.agents}
    info = {a: {} for a in self.agents}
    self.agents = [a for a in self.agents if not (terminated[a] or truncated[a])]
    return obs, reward, terminated, truncated, info


def parallel_env(**kwargs):
  return TinyParallelEnv(**kwargs)
