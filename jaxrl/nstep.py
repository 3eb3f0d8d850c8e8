"""N-step transitions from the steps of a gymnasium vector env, made in
actor processes and written to replay (``jaxrl.replay``).

Numpy only (no jax): actor processes import this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxrl.config import check_positive_int, check_unit_interval


class NStepAccumulator:
  """Turns the steps of a gymnasium vector env into n-step transitions.

  Numpy only; one per actor. ``step`` takes one vector-env step of all
  ``num_envs`` environments and returns the transitions it completed. A
  transition that starts at step t and spans k <= n_step steps has
  ``reward = sum_{i<k} gamma**i r_{t+i}``, ``next_obs`` = the observation
  after step t+k-1, and ``discount = gamma**k``, or 0 if the episode
  terminated at step t+k-1. A window that reaches n_step steps is emitted
  at once; when an episode terminates or is truncated, every open window of
  that env is emitted with its shorter horizon (after truncation,
  ``next_obs`` is the real final observation, so the learner bootstraps
  from it).

  Gymnasium 1.x vector envs autoreset in ``AutoresetMode.NEXT_STEP`` mode:
  the step after env i ended ignores its action and returns the reset
  observation with reward 0. The accumulator remembers which envs ended and
  drops their next step, so no transition spans an episode boundary; the
  caller passes every step as it comes. Slots of an ``EnvSet`` (``jaxrl.envs``)
  also pass ``active``: an inactive slot (an agent already done, or its env
  copy resetting) is treated like an autoreset step.

  Cost: a step is a fixed number of numpy calls, whatever n_step and however
  many episodes end. The last n_step steps live in ring buffers; each env is
  a small state machine whose transitions, and every window's ring position,
  return weights and discount, are tables built once.
  """

  def __init__(self, num_envs: int, n_step: int, gamma: float, obs_shape: tuple[int, ...],
               obs_dtype: Any):
    check_positive_int("num_envs", num_envs)
    check_positive_int("n_step", n_step)
    check_unit_interval("gamma", gamma)
    self.n_step = n_step
    self.obs_dtype = np.dtype(obs_dtype)
    n, e = n_step, num_envs
    # Ring buffers: step t's inputs of env i at flat index (t % n) * num_envs + i.
    self._obs = np.zeros((n * e, *obs_shape), self.obs_dtype)
    self._action = np.zeros(n * e, np.int32)
    self._policy_step = np.zeros(n * e, np.int64)
    self._value = np.full(n * e, np.nan, np.float32)
    self._reward = np.zeros((n, e), np.float64)  # [t % n, i]
    self._row = 0  # Step count mod n.
    # Env i's state s: 0 <= s < n windows open, or s = n when this step is
    # its autoreset. A step's code is 2 * s + done; self._code holds 2 * s.
    # Windows are addressed by position p = n - 1 - age (age: steps since the
    # window began, 0 = this step), oldest first. Tables:
    #   _emit[code, p]: bool [2n + 2, n], emit window p this step;
    #   _next_code[code]: int [2n + 2], 2 * the state after this step;
    #   _start[row, p]: int [n, n], flat ring index of window p's start, env 0;
    #   _weights[row, s, r]: float64 [n, n, n], for the window that began at
    #     ring row s: gamma**j on ring row r = s + j (mod n), for j <= its age;
    #   _discount[p]: float32 [n], gamma**(age + 1) (0 where terminated).
    state, done = np.repeat(np.arange(n + 1), 2)[:, None], np.tile([False, True], n + 1)[:, None]
    age = np.arange(n)[::-1]
    live, num_open = state < n, state + 1  # Windows open this step, this one's included.
    self._emit = live & np.where(done, age < num_open, (age == n - 1) & (num_open == n))
    self._next_code = 2 * np.where(live, np.where(done, n, np.minimum(num_open, n - 1)), 0)[:, 0]
    self._code = np.zeros(e, np.int64)
    ring = np.arange(n)
    self._start = (ring[:, None] - age) % n * e
    lag = (ring - ring[:, None]) % n  # [s, r]: steps from ring row s to ring row r.
    self._weights = np.where(lag <= lag.T[:, :, None], float(gamma) ** lag, 0.0)
    self._discount = (float(gamma) ** (age + 1)).astype(np.float32)
    # Steady: every env has n - 1 windows open, so unless one ends this step,
    # each emits its oldest window: (env, position, flat ring index) [num_envs].
    self._steady = False
    self._every_env, self._oldest = np.arange(e), np.zeros(e, np.int64)
    self._oldest_start = self._start[:, :1] + np.arange(e)

  def step(self, obs, action, reward, terminated, truncated, next_obs,
           policy_step, active=None, cut=None, value=None, next_value=None) -> dict[str, np.ndarray]:
    """Adds one vector-env step; returns the transitions it completed.

    Args:
      obs: [E, *obs_shape] observations the actions were taken in.
      action: int [E] actions.
      reward: float [E] rewards of this step.
      terminated, truncated: bool [E], as returned by ``env.step``.
      next_obs: [E, *obs_shape] observations ``env.step`` returned.
      policy_step: int scalar or [E], the learner step of the params that
        chose the actions.
      active: bool [E] or None (all active): an env with False here did not
        act this step; its inputs are ignored, it completes no transition,
        and its next active step starts afresh (as after an autoreset step).
      cut: bool [E] or None: the env's episode goes on after this step, but
        no transition spans it: its windows are emitted as if it terminated
        (discount 0), and the next step opens a new one (a lost life with
        ``env.terminal_on_life_loss``). Ignored where the episode ended.
      value, next_value: float [E] or None, given at every step or at none:
        the actor's Q(obs, action) and max_a Q(next_obs, a). With them each
        transition gets ``priority``, its n-step TD error under the actor's
        values (Ape-X): ``|reward + discount * max_a Q(next_obs, a) -
        Q(obs, action)|``, float32 [N] (a terminal's ``discount`` is 0: no
        bootstrap; a truncation's is not).

    Returns:
      A dict with the keys of ``jaxrl.replay.FIELDS``: obs and next_obs
      [N, *obs_shape] (obs_dtype), action int32 [N], reward and discount
      float32 [N], policy_step int64 [N] (that of the transition's first
      action), and with ``next_value`` ``priority`` float32 [N], for the
      N >= 0 transitions completed, ordered by env, then by start step.
    """
    row, num_envs = self._row, len(self._code)
    ring = slice(row * num_envs, (row + 1) * num_envs)
    self._obs[ring] = obs
    self._action[ring] = action
    self._policy_step[ring] = policy_step
    if value is not None:
      self._value[ring] = value
    self._reward[row] = reward
    terminated = np.asarray(terminated, bool)
    done = terminated | np.asarray(truncated, bool)
    goes_on = None
    if cut is not None and np.any(cut):
      goes_on = np.asarray(cut, bool) & ~done
      terminated, done = terminated | goes_on, done | goes_on
    any_done = np.count_nonzero(done)
    if active is not None:
      inactive = ~np.asarray(active, bool)
      if inactive.any():
        self._code[inactive] = 2 * self.n_step  # The autoreset state: no window, none opens.
        self._reward[row, inactive] = 0.0  # Weighted 0 by later windows, but NaN * 0 is NaN.
        self._steady = False
    if self._steady and not any_done:
      env, position, flat = self._every_env, self._oldest, self._oldest_start[row]
    else:
      code = self._code + done
      env, position = np.nonzero(self._emit.take(code, axis=0))
      flat = self._start[row].take(position) + env
      self._code = self._next_code.take(code)
      if goes_on is not None:
        self._code[goes_on] = 0  # No window open, and the next step is not an autoreset.
      self._steady = not any_done and len(env) == num_envs
    returns = self._weights[row] @ self._reward  # [n, E]: the return of every window, by its start.
    discount = self._discount.take(position)
    if any_done:
      discount[terminated.take(env)] = 0.0
    reward = returns.take(flat).astype(np.float32)
    out = {
        "obs": self._obs.take(flat, axis=0),
        "action": self._action.take(flat),
        "reward": reward,
        "discount": discount,
        "next_obs": np.asarray(next_obs, self.obs_dtype).take(env, axis=0),
        "policy_step": self._policy_step.take(flat),
    }
    if next_value is not None:  # In place: float32 [N], one new array.
      td = np.asarray(next_value, np.float32).take(env)
      td *= discount
      td += reward
      td -= self._value.take(flat)
      out["priority"] = np.abs(td, out=td)
    self._row = (row + 1) % self.n_step
    return out
