"""``Transition``: the batch type the learner trains on and the replay serves.

Plain data (a NamedTuple of arrays, so a JAX pytree) in a module of its own,
importing nothing: the core (``jaxrl.learner``) and the replay both use it,
and neither imports the other.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Transition(NamedTuple):
  """A batch of (n-step) transitions, batched on axis 0 (size B).

  A NamedTuple is a JAX pytree; numpy arrays are accepted everywhere.

  Attributes:
    obs: [B, *obs_shape] observation the action was taken in.
    action: int32 [B].
    reward: float32 [B], discounted sum of the k rewards of the transition.
    discount: float32 [B], factor on the bootstrap value: gamma**k, or 0
      where the episode terminated (not where it was truncated).
    next_obs: [B, *obs_shape] observation k steps later (the real final
      observation when the episode ended).
    valid: float32 [B], 1.0 for real samples, 0.0 for padding (and for
      rows ``SharedReplay.sample`` found torn).
    weight: float32 [B], the importance weight of each sample in the loss
      (prioritized replay's correction; ones where replay is uniform).
      None, the default, means ones: a batch built without it trains as
      with ones.
  """

  obs: Any
  action: Any
  reward: Any
  discount: Any
  next_obs: Any
  valid: Any
  weight: Any = None
