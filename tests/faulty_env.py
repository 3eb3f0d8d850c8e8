"""Environments that fail on purpose, for the fault-injection tests.

Importing this module registers them; actor processes import it through the
gymnasium id ``faulty_env:<name>`` (with ``tests/`` on PYTHONPATH).
"""

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class FaultyCartPole(CartPoleEnv):
  """CartPole that raises after ``raise_after`` steps of one env instance,
  or returns NaN observations from step ``nan_after`` on (None = never)."""

  def __init__(self, raise_after=None, nan_after=None, **kwargs):
    super().__init__(**kwargs)
    self._raise_after, self._nan_after, self._steps = raise_after, nan_after, 0

  def step(self, action):
    self._steps += 1
    if self._raise_after is not None and self._steps > self._raise_after:
      raise RuntimeError(f"injected failure after {self._raise_after} steps")
    obs, reward, terminated, truncated, info = super().step(action)
    if self._nan_after is not None and self._steps > self._nan_after:
      obs = np.full_like(obs, np.nan)
    return obs, reward, terminated, truncated, info


class DictObservation(gym.Env):
  """An env with Dict observations, which jaxrl does not serve."""

  observation_space = gym.spaces.Dict({"x": gym.spaces.Box(-1, 1, (2,))})
  action_space = gym.spaces.Discrete(2)


gym.register("FaultyCartPole-v0", entry_point=FaultyCartPole, max_episode_steps=500)
gym.register("DictObservation-v0", entry_point=DictObservation)
