"""Typed configuration.

Every config is a frozen dataclass whose docstring documents each field and
whose ``__post_init__`` validates it: an invalid value raises ``ValueError``
whose message starts with the field's name.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def check(ok: bool, field: str, requirement: str, value: Any) -> None:
  """Raises ``ValueError('<field> must be <requirement>, got <value>')`` unless ok."""
  if not ok:
    raise ValueError(f"{field} must be {requirement}, got {value!r}")


def _is_real(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def check_positive(field: str, value: Any, allow_zero: bool = False) -> None:
  bound = ">= 0" if allow_zero else "> 0"
  ok = _is_real(value) and (value >= 0 if allow_zero else value > 0)
  check(ok, field, f"a finite number {bound}", value)


def check_positive_int(field: str, value: Any, allow_zero: bool = False) -> None:
  bound = ">= 0" if allow_zero else ">= 1"
  ok = _is_int(value) and (value >= 0 if allow_zero else value >= 1)
  check(ok, field, f"an integer {bound}", value)


def check_unit_interval(field: str, value: Any, open_low: bool = False) -> None:
  ok = _is_real(value) and (0 < value if open_low else 0 <= value) and value <= 1
  check(ok, field, "in (0, 1]" if open_low else "in [0, 1]", value)


@dataclasses.dataclass(frozen=True)
class AgentConfig:
  """Hyperparameters of one DQN or IQN learner.

  Attributes:
    algo: "dqn" or "iqn".
    hidden_sizes: widths of the MLP torso's hidden layers (also the dense
      layers after the conv torso for image observations).
    learning_rate: Adam step size at learner step 0.
    lr_end: step size reached after ``lr_decay_steps`` learner steps, linearly;
      None keeps ``learning_rate`` constant.
    lr_decay_steps: learner steps of the linear decay (needed with lr_end).
    adam_eps: Adam's epsilon.
    max_grad_norm: global-norm gradient clipping threshold; None = off.
    double_q: bootstrap action from the online net (Double DQN) instead of
      the target net.
    huber_delta: Huber threshold of the DQN loss; None = 0.5 * td**2.
    target_update_period: target update every this many learner steps.
    target_tau: target <- tau * online + (1 - tau) * target; 1.0 = hard copy.
    epsilon_start, epsilon_end, epsilon_decay_steps: linear exploration
      schedule over learner steps, floored at epsilon_end.
    num_tau_samples: IQN N, quantile samples of the online net in the loss.
    num_tau_prime_samples: IQN N', quantile samples of the target in the loss.
    num_quantile_samples: IQN K, quantile samples for acting / q_values.
    quantile_embedding_dim: IQN cosine features of tau.
    kappa: IQN quantile Huber threshold (0 = plain quantile regression).
  """

  algo: str = "dqn"
  hidden_sizes: tuple[int, ...] = (120, 84)
  learning_rate: float = 2.5e-4
  lr_end: float | None = None
  lr_decay_steps: int = 0
  adam_eps: float = 1e-8
  max_grad_norm: float | None = 10.0
  double_q: bool = True
  huber_delta: float | None = 1.0
  target_update_period: int = 500
  target_tau: float = 1.0
  epsilon_start: float = 1.0
  epsilon_end: float = 0.05
  epsilon_decay_steps: int = 10_000
  num_tau_samples: int = 32
  num_tau_prime_samples: int = 32
  num_quantile_samples: int = 32
  quantile_embedding_dim: int = 64
  kappa: float = 1.0

  def __post_init__(self):
    check(self.algo in ("dqn", "iqn"), "algo", 'one of "dqn", "iqn"', self.algo)
    object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
    check(len(self.hidden_sizes) >= 1 and all(_is_int(h) and h >= 1 for h in self.hidden_sizes),
          "hidden_sizes", "a non-empty list of integers >= 1", self.hidden_sizes)
    check_positive("learning_rate", self.learning_rate)
    if self.lr_end is not None:
      check_positive("lr_end", self.lr_end, allow_zero=True)
      check_positive_int("lr_decay_steps", self.lr_decay_steps)
    else:
      check_positive_int("lr_decay_steps", self.lr_decay_steps, allow_zero=True)
    check_positive("adam_eps", self.adam_eps)
    if self.max_grad_norm is not None:
      check_positive("max_grad_norm", self.max_grad_norm)
    check(isinstance(self.double_q, bool), "double_q", "true or false", self.double_q)
    if self.huber_delta is not None:
      check_positive("huber_delta", self.huber_delta)
    check_positive_int("target_update_period", self.target_update_period)
    check_unit_interval("target_tau", self.target_tau, open_low=True)
    check_unit_interval("epsilon_start", self.epsilon_start)
    check_unit_interval("epsilon_end", self.epsilon_end)
    check(self.epsilon_end <= self.epsilon_start, "epsilon_end",
          f"<= epsilon_start ({self.epsilon_start})", self.epsilon_end)
    check_positive_int("epsilon_decay_steps", self.epsilon_decay_steps, allow_zero=True)
    check_positive_int("num_tau_samples", self.num_tau_samples)
    check_positive_int("num_tau_prime_samples", self.num_tau_prime_samples)
    check_positive_int("num_quantile_samples", self.num_quantile_samples)
    check_positive_int("quantile_embedding_dim", self.quantile_embedding_dim)
    check_positive("kappa", self.kappa, allow_zero=True)
