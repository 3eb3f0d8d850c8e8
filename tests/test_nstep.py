"""Tests of jaxrl.nstep: n-step transitions from vector-env steps."""

from __future__ import annotations

import gymnasium as gym
from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from jaxrl.nstep import NStepAccumulator

F32 = np.float32


def drive(acc, steps):
  """Feeds (obs, action, reward, terminated, truncated, next_obs) steps, obs as [E] scalars.

  Returns every emitted transition as (obs, action, reward, discount, next_obs,
  policy_step); policy_step is 100 + the step's index.
  """
  out = []
  for t, (obs, action, reward, terminated, truncated, next_obs) in enumerate(steps):
    got = acc.step(np.asarray(obs, F32)[:, None], action, reward, terminated, truncated,
                   np.asarray(next_obs, F32)[:, None], 100 + t)
    out += zip(got["obs"][:, 0].tolist(), got["action"].tolist(), got["reward"].tolist(),
               got["discount"].tolist(), got["next_obs"][:, 0].tolist(),
               got["policy_step"].tolist())
  return sorted(out)


def test_one_step():
  acc = NStepAccumulator(num_envs=1, n_step=1, gamma=0.5, obs_shape=(1,), obs_dtype=F32)
  steps = [([1], [7], [1.0], [0], [0], [2]), ([2], [8], [2.0], [0], [0], [3]),
           ([3], [9], [3.0], [0], [0], [4])]
  assert drive(acc, steps) == [(1, 7, 1.0, 0.5, 2, 100), (2, 8, 2.0, 0.5, 3, 101),
                               (3, 9, 3.0, 0.5, 4, 102)]


def test_three_step():
  acc = NStepAccumulator(num_envs=1, n_step=3, gamma=0.5, obs_shape=(1,), obs_dtype=F32)
  steps = [([t], [t], [t + 1.0], [0], [0], [t + 1]) for t in range(5)]
  # Rewards 1..5: 1 + 2/2 + 3/4 = 2.75, 2 + 3/2 + 4/4 = 4.5, 3 + 4/2 + 5/4 = 6.25.
  assert drive(acc, steps) == [(0, 0, 2.75, 0.125, 3, 100), (1, 1, 4.5, 0.125, 4, 101),
                               (2, 2, 6.25, 0.125, 5, 102)]


@pytest.mark.parametrize("terminated, discounts", [(1, (0.0, 0.0)), (0, (0.25, 0.5))])
def test_episode_end_flushes_open_windows(terminated, discounts):
  """Episode ends at step 1 of a 3-step window: both open windows are emitted, shortened."""
  acc = NStepAccumulator(num_envs=1, n_step=3, gamma=0.5, obs_shape=(1,), obs_dtype=F32)
  steps = [([0], [0], [1.0], [0], [0], [1]),
           ([1], [1], [2.0], [terminated], [1 - terminated], [2]),  # 2: the real final obs.
           ([2], [9], [0.0], [0], [0], [50]),  # Autoreset step: 50 is the reset obs.
           ([50], [3], [4.0], [0], [0], [51]),
           ([51], [4], [4.0], [0], [0], [52]),
           ([52], [5], [4.0], [0], [0], [53])]
  d1, d2 = discounts
  assert drive(acc, steps) == [(0, 0, 2.0, d1, 2, 100), (1, 1, 2.0, d2, 2, 101),
                               (50, 3, 7.0, 0.125, 53, 103)]


def test_vector_autoreset_never_spans_episodes():
  """Two envs, n=2, gamma=0.5: env 0 terminates at step 1, env 1 is truncated at step 2.

  env 0: 1 -> 2 -> 3 (terminal); autoreset returns 11; 11 -> 12 -> 13.
  env 1: 21 -> 22 -> 23 -> 24 (truncated); autoreset returns 31; 31 -> 32.
  """
  acc = NStepAccumulator(num_envs=2, n_step=2, gamma=0.5, obs_shape=(1,), obs_dtype=F32)
  steps = [([1, 21], [0, 10], [1.0, 1.0], [0, 0], [0, 0], [2, 22]),
           ([2, 22], [1, 11], [2.0, 1.0], [1, 0], [0, 0], [3, 23]),
           ([3, 23], [2, 12], [0.0, 1.0], [0, 0], [0, 1], [11, 24]),
           ([11, 24], [3, 13], [3.0, 0.0], [0, 0], [0, 0], [12, 31]),
           ([12, 31], [4, 14], [4.0, 5.0], [0, 0], [0, 0], [13, 32])]
  assert drive(acc, steps) == sorted([
      (1, 0, 2.0, 0.0, 3, 100), (2, 1, 2.0, 0.0, 3, 101),  # Terminated: discount 0.
      (21, 10, 1.5, 0.25, 23, 100),  # Full 2-step window.
      (22, 11, 1.5, 0.25, 24, 101), (23, 12, 1.0, 0.5, 24, 102),  # Truncated: bootstrap from 24.
      (11, 3, 5.0, 0.25, 13, 103)])  # Starts at the reset obs; nothing ends at 11 or 31.


@pytest.mark.parametrize("mode", ["vector_entry_point", "sync"])
def test_cartpole_transitions_are_real_n_step_successors(mode):
  num_envs, n, gamma = 4, 3, 0.9
  env = gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode=mode,
                     max_episode_steps=15)
  acc = NStepAccumulator(num_envs, n, gamma, (4,), F32)
  rng = np.random.default_rng(0)
  obs, _ = env.reset(seed=0)
  # Per env, its episodes: observations (the last one real final), the step
  # each action was taken at, and how the episode ended.
  episodes = [[{"obs": [o], "t": [], "terminated": False, "ended": False}] for o in obs]
  transitions, ended = [], np.zeros(num_envs, bool)
  for t in range(150):
    action = rng.integers(0, 2, num_envs)
    next_obs, reward, terminated, truncated, _ = env.step(action)
    out = acc.step(obs, action, reward, terminated, truncated, next_obs, t)
    transitions += [dict(zip(out, row)) for row in zip(*out.values())]
    for i in range(num_envs):
      if ended[i]:  # Gymnasium's NEXT_STEP autoreset: the action was ignored.
        assert reward[i] == 0 and not terminated[i] and not truncated[i]
        episodes[i].append({"obs": [next_obs[i]], "t": [], "terminated": False, "ended": False})
      else:
        episode = episodes[i][-1]
        episode["obs"].append(next_obs[i])
        episode["t"].append(t)
        episode["terminated"], episode["ended"] = terminated[i], terminated[i] or truncated[i]
    ended, obs = terminated | truncated, next_obs
  env.close()

  flat = [(i, e) for i in range(num_envs) for e in range(len(episodes[i]))]
  assert any(episodes[i][e]["terminated"] for i, e in flat)
  assert any(episodes[i][e]["ended"] and not episodes[i][e]["terminated"] for i, e in flat)
  where = {episodes[i][e]["obs"][j].tobytes(): (i, e, j)
           for i, e in flat for j in range(len(episodes[i][e]["t"]))}
  assert len(where) == sum(len(episodes[i][e]["t"]) for i, e in flat)  # Observations are unique.

  starts = []
  for tr in transitions:
    i, e, j = where[tr["obs"].tobytes()]  # KeyError: obs is not one an action was taken in.
    episode = episodes[i][e]
    last = len(episode["t"])  # Index of the episode's latest observation.
    k = n if j + n <= last else last - j
    assert k == n or episode["ended"]
    np.testing.assert_array_equal(tr["next_obs"], episode["obs"][j + k])
    np.testing.assert_allclose(tr["reward"], sum(gamma**u for u in range(k)), rtol=1e-6)
    terminal = episode["terminated"] and j + k == last
    np.testing.assert_allclose(tr["discount"], 0.0 if terminal else gamma**k, rtol=1e-6)
    assert tr["policy_step"] == episode["t"][j]
    starts.append((i, e, j))
  expected = [(i, e, j) for i, e in flat
              for j in range(len(episodes[i][e]["t"]) - (0 if episodes[i][e]["ended"] else n - 1))]
  assert sorted(starts) == expected  # Exactly one transition per step, once its window closed.


def reference_n_step(ends, rewards, n, gamma, active=None):
  """The n-step transitions of each step, computed one env and one window at a time.

  ends[t][i]: 0 running, 1 truncated, 2 terminated, 3 both; obs of env i at
  step t is t * 100 + i, next_obs -(t * 100 + i) - 1, action i, policy step t.
  active[t][i] False (None: all True): env i did not act at step t, which
  drops its open windows, and its next active step starts afresh.
  Returns per step the (obs, action, reward, discount, next_obs, policy_step)
  rows, ordered by env, then by start step.
  """
  num_envs = len(ends[0])
  out = [[] for _ in ends]
  for i in range(num_envs):
    windows, skip = [], False  # windows: [start step, discounted return, length]
    for t, (end, reward) in enumerate(zip((e[i] for e in ends), (r[i] for r in rewards))):
      if active is not None and not active[t][i]:
        windows, skip = [], False
        continue
      if skip:  # Autoreset step: no transition starts or ends here.
        skip = False
        continue
      windows.append([t, 0.0, 0])
      for window in windows:
        window[1] += gamma ** window[2] * reward
        window[2] += 1
      if end:
        emitted, windows, skip = windows, [], True
      elif len(windows) == n:
        emitted, windows = windows[:1], windows[1:]
      else:
        emitted = []
      for start, ret, k in emitted:
        discount = 0.0 if end >= 2 else gamma ** k
        out[t].append((start * 100 + i, i, ret, discount, -(t * 100 + i) - 1, start))
  return out


def draw_steps(data, num_envs, steps, inactive=False):
  """Random ``ends`` (0 running, 1 truncated, 2 terminated, 3 both), integer
  ``rewards`` and ``active`` flags (all True unless ``inactive``), each
  [steps][num_envs] lists, for ``reference_n_step``."""
  grid = lambda values: data.draw(st.lists(st.lists(values, min_size=num_envs, max_size=num_envs),
                                           min_size=steps, max_size=steps))
  ends, rewards = grid(st.sampled_from([0, 0, 0, 1, 2, 3])), grid(st.integers(-3, 3))
  active = grid(st.sampled_from([True, True, True, False])) if inactive else [[True] * num_envs] * steps
  return ends, rewards, active


@settings(max_examples=80, deadline=None)
@given(data=st.data(), num_envs=st.integers(1, 4), n=st.integers(1, 4), gamma=st.floats(0.0, 1.0),
       steps=st.integers(1, 25))
def test_n_step_matches_a_per_env_reference(data, num_envs, n, gamma, steps):
  ends, rewards, _ = draw_steps(data, num_envs, steps)
  acc = NStepAccumulator(num_envs, n, gamma, (2,), F32)
  expected = reference_n_step(ends, rewards, n, gamma)
  for t, (end, reward) in enumerate(zip(np.array(ends), np.array(rewards, float))):
    ids = t * 100 + np.arange(num_envs)
    obs = np.repeat(ids[:, None], 2, 1)
    got = acc.step(obs, np.arange(num_envs), reward, end >= 2, end % 2 == 1, -obs - 1, t)
    ids = list(zip(got["obs"][:, 0], got["action"], got["next_obs"][:, 0], got["policy_step"]))
    assert ids == [(e[0], e[1], e[4], e[5]) for e in expected[t]]
    np.testing.assert_allclose(np.column_stack([got["reward"], got["discount"]]),
                               np.reshape([e[2:4] for e in expected[t]], (-1, 2)), rtol=1e-6, atol=1e-6)


@settings(max_examples=80, deadline=None)
@given(data=st.data(), num_envs=st.integers(1, 4), n=st.integers(1, 4), gamma=st.floats(0.0, 1.0),
       steps=st.integers(1, 25))
def test_n_step_with_inactive_steps_matches_a_per_env_reference(data, num_envs, n, gamma, steps):
  """Slots of an EnvSet: an inactive step (inputs garbage, done flags
  included) emits nothing and closes the slot's open windows unemitted."""
  ends, rewards, active = draw_steps(data, num_envs, steps, inactive=True)
  acc = NStepAccumulator(num_envs, n, gamma, (2,), F32)
  expected = reference_n_step(ends, rewards, n, gamma, active)
  for t, (end, reward, on) in enumerate(zip(np.array(ends), np.array(rewards, float), np.array(active))):
    ids = t * 100 + np.arange(num_envs)
    obs = np.repeat(ids[:, None], 2, 1)
    reward[~on] = np.nan  # Ignored, as are the other inputs of an inactive slot.
    action = np.where(on, np.arange(num_envs), -1)
    got = acc.step(np.where(on[:, None], obs, -7), action, reward, end >= 2, end % 2 == 1, -obs - 1, t,
                   active=on)
    ids = list(zip(got["obs"][:, 0], got["action"], got["next_obs"][:, 0], got["policy_step"]))
    assert ids == [(e[0], e[1], e[4], e[5]) for e in expected[t]]
    np.testing.assert_allclose(np.column_stack([got["reward"], got["discount"]]),
                               np.reshape([e[2:4] for e in expected[t]], (-1, 2)), rtol=1e-6, atol=1e-6)


@settings(max_examples=80, deadline=None)
@given(data=st.data(), num_envs=st.integers(1, 4), n=st.integers(1, 4), gamma=st.floats(0.0, 1.0),
       steps=st.integers(1, 25))
def test_priority_is_the_n_step_td_error_of_the_values_given(data, num_envs, n, gamma, steps):
  """With value Q(s_t, a_t) = t + 0.5 i and next_value max Q(s_{t+1}) = -3 t - i
  given at step t, a window from step s to step t gets |R + discount * next_value(t)
  - value(s)|: no bootstrap past a termination, one past a truncation."""
  ends, rewards, active = draw_steps(data, num_envs, steps, inactive=True)
  acc = NStepAccumulator(num_envs, n, gamma, (1,), F32)
  expected = reference_n_step(ends, rewards, n, gamma, active)
  envs = np.arange(num_envs)
  for t, (end, reward, on) in enumerate(zip(np.array(ends), np.array(rewards, float), np.array(active))):
    obs = (t * 100 + envs)[:, None]
    got = acc.step(obs, envs, reward, end >= 2, end % 2 == 1, -obs - 1, t, active=on,
                   value=t + 0.5 * envs, next_value=-3.0 * t - envs)
    want = [abs(ret + discount * (-3.0 * t - i) - (start + 0.5 * i))
            for _, i, ret, discount, _, start in expected[t]]
    assert got["priority"].dtype == F32
    np.testing.assert_allclose(got["priority"], np.reshape(want, -1), rtol=1e-5, atol=1e-4)


def test_without_values_there_is_no_priority():
  acc = NStepAccumulator(2, 1, 0.9, (1,), F32)
  got = acc.step(np.zeros((2, 1)), np.zeros(2, int), np.ones(2), np.zeros(2, bool), np.zeros(2, bool),
                 np.ones((2, 1)), 0)
  assert "priority" not in got and len(got["action"]) == 2


def test_all_active_is_the_same_as_no_active_mask():
  """Passing active all True changes nothing (the CartPole-like steady path included)."""
  rng = np.random.default_rng(0)
  plain, masked = (NStepAccumulator(3, 3, 0.9, (2,), F32) for _ in range(2))
  for t in range(60):
    obs, next_obs = rng.normal(size=(2, 3, 2))
    args = (obs, rng.integers(0, 4, 3), rng.normal(size=3), rng.random(3) < 0.05, rng.random(3) < 0.05,
            next_obs, t)
    want, got = plain.step(*args), masked.step(*args, active=np.ones(3, bool))
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize("field, args", [("num_envs", (0, 3, 0.5)), ("n_step", (1, 0, 0.5)),
                                         ("gamma", (1, 3, 1.5))])
def test_invalid_arguments_name_the_field(field, args):
  with pytest.raises(ValueError, match=f"^{field}"):
    NStepAccumulator(*args, (3,), F32)
