"""Acting: ``ActingLoop``, an actor's loop body, the same in every backend.

Each ``step`` takes every learner's newest policy there is, steps the
actor's environments (each agent acting with its learner's policy), inserts
each learner's transitions into its replay writer once every learner's rate
limiter allows, and hands on the real env steps taken and the episodes that
ended. Where the policies come from and where the counts and episodes go
are the backend's (callbacks).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from jaxrl.actor import Actor, Episode
from jaxrl.replay import ReplayWriter

# (params, epsilon, learner step) of a policy snapshot.
Policy = tuple[Any, float, int]


class ActingLoop:
  """One actor's loop body.

  Args:
    actor: the Actor.
    writers: learner id -> the actor's writer into that learner's replay.
    newest_policies: () -> learner id -> the newest Policy, for the learners
      whose policy changed since the last call.
    learner_steps: () -> learner id -> the learner's newest step (for the
      policy lag).
    record: (env_steps, episodes) -> None, called after each insert with the
      real env steps of that actor step and the Episodes that ended in it.
  """

  def __init__(self, actor: Actor, writers: Mapping[str, ReplayWriter],
               newest_policies: Callable[[], Mapping[str, Policy]],
               learner_steps: Callable[[], Mapping[str, int]], record: Callable[[int, list[Episode]], None]):
    self.actor, self._writers = actor, writers
    self._newest_policies, self._learner_steps, self._record = newest_policies, learner_steps, record
    self._pending = None   # the ActorStep whose transitions wait for room in replay

  def step(self) -> bool:
    """One actor step into replay; False, having done nothing, while a rate
    limiter holds back the last step's transitions (the backend waits, or
    lets the learners run, and calls again)."""
    if self._pending is None:
      for lid, policy in self._newest_policies().items():
        self.actor.set_policy(lid, *policy)
      self._pending = self.actor.step(self._learner_steps())
    transitions, episodes, env_steps = self._pending
    if not all(self._writers[lid].can_insert(len(t["action"])) for lid, t in transitions.items()):
      return False
    for lid, t in transitions.items():
      self._writers[lid].add(t)
    self._pending = None
    self._record(env_steps, episodes)
    return True


def episode_record(episode: Episode, actor_id: int) -> dict:
  """The metrics record of one agent's finished training episode."""
  return {"episode_return": episode.episode_return, "episode_length": episode.length,
          "policy_lag": episode.policy_lag, "agent_id": episode.agent_id, "actor_id": actor_id}
