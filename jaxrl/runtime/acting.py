"""Acting: ``ActingLoop``, an actor's loop body, the same in every backend.

Each ``step`` takes the newest policy if there is one, steps the actor's
environments, inserts the transitions into its replay writer once the rate
limiter allows, and hands on the real env steps taken and the episodes
that ended. Where the policy comes from and where the counts and episodes
go are the backend's (callbacks).
"""

from __future__ import annotations

from typing import Any, Callable

from jaxrl.actor import Actor, Episode
from jaxrl.replay import ReplayWriter

# (params, epsilon, learner step) of a policy snapshot.
Policy = tuple[Any, float, int]


class ActingLoop:
  """One actor's loop body.

  Args:
    actor: the Actor.
    writer: its replay writer.
    newest_policy: () -> the newest Policy if it changed since the last
      call, else None.
    learner_steps: () -> the learner's newest step (for the policy lag).
    record: (env_steps, episodes) -> None, called after each insert with the
      real env steps of that actor step and the Episodes that ended in it.
  """

  def __init__(self, actor: Actor, writer: ReplayWriter, newest_policy: Callable[[], Policy | None],
               learner_steps: Callable[[], int], record: Callable[[int, list[Episode]], None]):
    self.actor, self._writer = actor, writer
    self._newest_policy, self._learner_steps, self._record = newest_policy, learner_steps, record
    self._pending = None   # the ActorStep whose transitions wait for room in replay

  def step(self) -> bool:
    """One actor step into replay; False, having done nothing, while the
    rate limiter holds back the last step's transitions (the backend waits,
    or lets the learner run, and calls again)."""
    if self._pending is None:
      policy = self._newest_policy()
      if policy is not None:
        self.actor.set_policy(*policy)
      self._pending = self.actor.step(self._learner_steps())
    transitions, episodes, env_steps = self._pending
    if not self._writer.can_insert(len(transitions["action"])):
      return False
    self._writer.add(transitions)
    self._pending = None
    self._record(env_steps, episodes)
    return True


def episode_record(episode: Episode, actor_id: int, agent_id: str) -> dict:
  """The metrics record of a finished training episode."""
  return {"episode_return": episode.episode_return, "episode_length": episode.length,
          "policy_lag": episode.policy_lag, "agent_id": agent_id, "actor_id": actor_id}
