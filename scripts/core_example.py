"""DQN on CartPole in one process through jaxrl's pure core API.

The research-code view of jaxrl: explicit LearnerState, a jitted pure
train_step, epsilon taken from the state. No processes, no shared memory.
``--dueling`` brings its own network: a dueling Q head.

  python scripts/core_example.py [--env-steps 60000] [--seed 0] [--dueling]
"""

import argparse
import time

import flax.linen as nn
import gymnasium as gym
import jax
import numpy as np

import jaxrl


class DuelingQ(nn.Module):
  """Dueling Q network (Wang et al. 2016): obs [B, D] -> V + A - mean_a A, [B, num_actions]."""
  num_actions: int

  @nn.compact
  def __call__(self, obs):
    x = nn.relu(nn.Dense(84)(nn.relu(nn.Dense(120)(obs))))
    value, advantage = nn.Dense(1)(x), nn.Dense(self.num_actions)(x)
    return value + advantage - advantage.mean(axis=-1, keepdims=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--env-steps", type=int, default=60_000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--dueling", action="store_true", help="a dueling Q network instead of the built-in MLP")
  args = parser.parse_args()

  num_envs, gamma, batch_size, capacity = 8, 0.99, 128, 50_000
  envs = gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="vector_entry_point")
  cfg = jaxrl.AgentConfig(hidden_sizes=(120, 84), learning_rate=1e-3, target_update_period=250,
                          epsilon_decay_steps=2_500, epsilon_end=0.02)
  num_actions = int(envs.single_action_space.n)
  network = DuelingQ(num_actions) if args.dueling else None
  agent = jaxrl.make_agent(cfg, envs.single_observation_space.shape, num_actions, network=network)
  state = agent.init(jax.random.PRNGKey(args.seed))
  train_step, act = jax.jit(agent.train_step), jax.jit(agent.act)

  # A plain ring buffer of 1-step transitions.
  buf = {k: np.zeros((capacity, *s), np.float32) for k, s in
         [("obs", (4,)), ("action", ()), ("reward", ()), ("discount", ()), ("next_obs", (4,))]}
  size = cursor = 0
  rng = np.random.default_rng(args.seed)
  key = jax.random.PRNGKey(args.seed + 1)
  obs, _ = envs.reset(seed=args.seed)
  just_reset = np.zeros(num_envs, bool)   # gymnasium's NEXT_STEP autoreset: skip the reset step.
  returns, episode_returns, start = np.zeros(num_envs), [], time.time()
  for env_step in range(0, args.env_steps, num_envs):
    key, act_key = jax.random.split(key)
    action = np.asarray(act(state.params, obs, state.epsilon, act_key))
    next_obs, reward, terminated, truncated, _ = envs.step(action)
    for i in np.flatnonzero(~just_reset):
      j = cursor
      buf["obs"][j], buf["action"][j], buf["reward"][j] = obs[i], action[i], reward[i]
      buf["discount"][j], buf["next_obs"][j] = gamma * (1.0 - terminated[i]), next_obs[i]
      cursor, size = (cursor + 1) % capacity, min(size + 1, capacity)
    returns += reward * ~just_reset
    for i in np.flatnonzero(terminated | truncated):
      episode_returns.append(returns[i])
      returns[i] = 0.0
    just_reset = terminated | truncated
    obs = next_obs
    if size >= 1_000:                     # one update per 8 env steps
      idx = rng.integers(size, size=batch_size)
      batch = jaxrl.Transition(buf["obs"][idx], buf["action"][idx].astype(np.int32), buf["reward"][idx],
                               buf["discount"][idx], buf["next_obs"][idx], np.ones(batch_size, np.float32))
      state, metrics = train_step(state, batch)
    if env_step % 5_000 < num_envs and episode_returns:
      print(f"env_steps {env_step:6d}  learner_steps {int(state.step):5d}  epsilon {float(state.epsilon):.3f}"
            f"  mean return (last 20) {np.mean(episode_returns[-20:]):6.1f}  {time.time() - start:5.1f}s")
  print(f"final mean return (last 20 episodes): {np.mean(episode_returns[-20:]):.1f}")


if __name__ == "__main__":
  main()
