"""A module that registers a gymnasium id on import, as third-party packages
do (``minatar.gym``, ``ale_py``): the ``env.imports`` tests use it."""

import gymnasium as gym

gym.register("jaxrl_tests/Registered-v0", entry_point="gymnasium.envs.classic_control.cartpole:CartPoleEnv",
             max_episode_steps=200)
