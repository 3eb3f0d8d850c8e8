"""The one-thread backend (``runtime.mode: sync``): the acting and learning
loops interleaved in this process, deterministic for a seed.

Each round steps every actor once; an actor held back by a rate limiter
lets the learners update until it may insert. With a rate limit the
learners then update for as long as the limiters allow; without one
(``replay.samples_per_insert: null``) each makes one fused update per actor
step once its replay holds ``min_size``. Episode and eval records carry the
run's ``acting_seconds`` and ``learning_seconds`` so far (actor steps with
their inserts; learner updates, blocked on).
"""

from __future__ import annotations

import time

from jaxrl.config import RunConfig
from jaxrl.envs import LearnerSpace
from jaxrl.runtime.acting import ActingLoop, episode_record
from jaxrl.runtime.builders import describe_error, learner_stream, make_actor, make_replays, replay_nbytes, restored_states
from jaxrl.runtime.learning import Checkpointer, Learner, LearningLoop
from jaxrl.shm import check_free_space


def preflight(cfg: RunConfig, spaces: dict[str, LearnerSpace]) -> None:
  """Raises shm.SharedMemoryError if the replays would not fit in /dev/shm."""
  check_free_space(replay_nbytes(cfg, spaces), "this run's replay")


class _Published:
  """The learners' newest publishes, for the actors of this thread: each
  ActingLoop takes the new ones at its next step (``newest_policies``)."""

  def __init__(self):
    self.policies, self.versions = {}, {}

  def publisher(self, learner_id: str):
    """The ``publish`` callback of one Learner."""
    def publish(state) -> None:
      self.policies[learner_id] = (state.params, float(state.epsilon), int(state.step))
      self.versions[learner_id] = self.versions.get(learner_id, 0) + 1
    return publish

  def source(self):
    """A ``newest_policies`` callable for one ActingLoop."""
    taken: dict[str, int] = {}

    def newest_policies():
      new = {lid: self.policies[lid] for lid, version in self.versions.items() if taken.get(lid) != version}
      taken.update(self.versions)
      return new
    return newest_policies


def run(cfg: RunConfig, run, interrupted, resume) -> dict:
  """Runs ``run`` to a stop condition in this thread; returns the busy seconds."""
  import jax  # pylint: disable=import-outside-toplevel
  agents = run.agents
  replays = make_replays(cfg, run.spaces, resume and resume.take_replay())
  acting_loops: list[ActingLoop] = []
  rate_limited = cfg.replay.samples_per_insert is not None
  acting = learning = 0.0

  def busy() -> dict[str, float]:
    return {"acting_seconds": acting, "learning_seconds": learning}

  try:
    published = _Published()
    states = restored_states(agents, cfg, resume and resume.checkpoint)
    learners = {lid: Learner(cfg, agents[lid], replays[lid], states[lid], published.publisher(lid), learner_stream(i))
                for i, lid in enumerate(agents)}

    def learner_steps() -> dict[str, int]:
      return {lid: learner.steps for lid, learner in learners.items()}

    def counters():
      return {"env_steps": run.env_steps, "episodes": run.episodes, "learner_steps": run.learner_steps}

    def count(_learner_id: str, _steps: int) -> None:
      run.learner_steps = sum(learner.steps for learner in learners.values())

    learning_loop = LearningLoop(learners, Checkpointer(cfg, run.run_dir, replays), counters, count,
                                 run.log)
    finished = []   # (actor_id, Episode) to log, outside the acting seconds

    def recorder(actor_id: int):
      def record(env_steps, episodes):
        run.env_steps += env_steps
        run.episodes += len(episodes)
        finished.extend((actor_id, episode) for episode in episodes)
      return record

    acting_loops.extend(ActingLoop(make_actor(cfg, agents, i, run.env_steps),
                                   {lid: replay.writer(i) for lid, replay in replays.items()},
                                   published.source(), learner_steps, recorder(i)) for i in range(cfg.actors.num))

    def act(loop: ActingLoop) -> bool:
      nonlocal acting
      start = time.perf_counter()
      inserted = loop.step()
      acting += time.perf_counter() - start
      run.log(*({**episode_record(episode, actor_id), **busy()} for actor_id, episode in finished))
      finished.clear()
      return inserted

    def learn() -> bool:
      nonlocal learning
      start = time.perf_counter()
      updated = learning_loop.step()
      if updated:
        jax.block_until_ready([learner.state for learner in learners.values()])
      learning += time.perf_counter() - start
      return updated

    def newest_params():
      return ({lid: learner.state.params for lid, learner in learners.items()},
              sum(learner.steps for learner in learners.values()))

    try:
      while interrupted.signum is None and not run.check_stop():
        for loop in acting_loops:
          while not act(loop) and interrupted.signum is None:
            learn()   # a rate limiter holds the actor back until its learner samples
          if not rate_limited:
            learn()
        while rate_limited and interrupted.signum is None and learn():
          pass
        run.evaluate_if_due(newest_params, lambda: interrupted.signum is not None, **busy())
        learning_loop.housekeeping()
      learning_loop.checkpoint()
    except Exception as e:  # pylint: disable=broad-except
      reason, trace = describe_error(e)
      run.error, run.stopped_because = reason, "error"
      run.fail("learner", reason, trace)
  finally:
    for loop in acting_loops:
      loop.actor.env_set.close()
    for replay in replays.values():
      replay.close()
      replay.unlink()
  return busy()
