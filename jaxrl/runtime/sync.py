"""The one-thread backend (``runtime.mode: sync``): the acting and learning
loops interleaved in this process, deterministic for a seed.

Each round steps every actor once; an actor held back by the rate limiter
lets the learner update until it may insert. With a rate limit the learner
then updates for as long as the limiter allows; without one
(``replay.samples_per_insert: null``) it makes one fused update per actor
step once replay holds ``min_size``. Episode and eval records carry the
run's ``acting_seconds`` and ``learning_seconds`` so far (actor steps;
learner updates, blocked on).
"""

from __future__ import annotations

import time

from jaxrl.config import RunConfig
from jaxrl.runtime.acting import ActingLoop, episode_record
from jaxrl.runtime.builders import (AGENT_ID, describe_error, make_actor, make_agent, make_replay, replay_nbytes,
                                    restored_state)
from jaxrl.runtime.learning import Checkpointer, Learner, LearningLoop
from jaxrl.shm import check_free_space


def preflight(cfg: RunConfig) -> None:
  """Raises shm.SharedMemoryError if the replay would not fit in /dev/shm."""
  check_free_space(replay_nbytes(cfg), "this run's replay")


class _Published:
  """The learner's newest publish, for the actors of this thread: each
  ActingLoop takes it at its next step (``newest_policy``)."""

  def __init__(self):
    self.policy, self.version = None, 0

  def publish(self, state) -> None:
    self.policy, self.version = (state.params, float(state.epsilon), int(state.step)), self.version + 1

  def source(self):
    """A ``newest_policy`` callable for one ActingLoop."""
    taken = 0

    def newest_policy():
      nonlocal taken
      if taken == self.version:
        return None
      taken = self.version
      return self.policy
    return newest_policy


def run(cfg: RunConfig, run, interrupted, resume) -> dict:
  """Runs ``run`` to a stop condition in this thread; returns the busy seconds."""
  import jax  # pylint: disable=import-outside-toplevel
  agent = make_agent(cfg)
  replay = make_replay(cfg, resume and resume.replay)
  rate_limited = cfg.replay.samples_per_insert is not None
  acting = learning = 0.0

  def busy() -> dict[str, float]:
    return {"acting_seconds": acting, "learning_seconds": learning}

  try:
    published = _Published()
    learner = Learner(cfg, agent, replay, restored_state(agent, cfg, resume and resume.checkpoint),
                      published.publish)

    def counters():
      return {"env_steps": run.env_steps, "episodes": run.episodes, "learner_steps": learner.steps}

    def count(learner_steps: int) -> None:
      run.learner_steps = learner_steps

    learning_loop = LearningLoop(learner, Checkpointer(cfg, run.run_dir, replay), AGENT_ID, counters, count,
                                 run.log_learner)

    finished = []   # (actor_id, Episode) to log, outside the acting seconds

    def recorder(actor_id: int):
      def record(env_steps, episodes):
        run.env_steps += env_steps
        run.episodes += len(episodes)
        finished.extend((actor_id, episode) for episode in episodes)
      return record

    acting_loops = [ActingLoop(make_actor(cfg, agent, i, run.env_steps), replay.writer(i), published.source(),
                               lambda: learner.steps, recorder(i)) for i in range(cfg.actors.num)]

    def act(loop: ActingLoop) -> bool:
      nonlocal acting
      start = time.perf_counter()
      inserted = loop.step()
      acting += time.perf_counter() - start
      for actor_id, episode in finished:
        run.log({**episode_record(episode, actor_id, AGENT_ID), **busy()})
      finished.clear()
      return inserted

    def learn() -> bool:
      nonlocal learning
      start = time.perf_counter()
      updated = learning_loop.step()
      if updated:
        jax.block_until_ready(learner.state)
      learning += time.perf_counter() - start
      return updated

    try:
      while interrupted.signum is None and not run.check_stop():
        for loop in acting_loops:
          while not act(loop) and interrupted.signum is None:
            learn()   # the rate limiter holds the actor back until the learner samples
          if not rate_limited:
            learn()
        while rate_limited and interrupted.signum is None and learn():
          pass
        run.evaluate_if_due(lambda: (learner.state.params, learner.steps), **busy())
        learning_loop.housekeeping()
      learning_loop.finish()
    except Exception as e:  # pylint: disable=broad-except
      reason, trace = describe_error(e)
      run.error, run.stopped_because = reason, "error"
      run.fail("learner", reason, trace)
  finally:
    replay.close()
    replay.unlink()
  return busy()
