"""The supervisor of an async run (``runtime.mode: async``), top-down.

``run`` builds a ``Supervisor`` and calls ``Supervisor.supervise``:

  start     the shared memory (control block, a replay and a ParamStore per
            learner), the learner process, then the actors;
  loop      poll (a bounded number of messages from each child), watch the
            learner, restart dead actors, check the stop conditions, evaluate
            (in a thread of its own, so that nothing here waits for it);
  stop      the actors first, then the learner, which is waited for while it
            works towards its final checkpoint, up to
            ``runtime.stop_timeout_seconds``;
  close     kill what is left, unlink the shared memory.

What an actor is to the supervisor is ``Child``: its messages, whether it
is alive, why it ended, kill. Local actors are processes
(``local.ProcessChild``); the Ray backend brings Ray actors
(``ray_backend.RayActors``) through the same ``Actors`` interface. The
learner is always a process on this machine.

A second SIGINT/SIGTERM raises KeyboardInterrupt wherever the supervisor
is; ``close`` still kills every child and unlinks every segment.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
import threading
import time
from typing import Any, Protocol

from jaxrl.config import RunConfig
from jaxrl.envs import LearnerSpace
from jaxrl.runtime import local
from jaxrl.runtime.builders import describe_error, make_agents, make_replays, replay_nbytes, state_templates
from jaxrl.runtime.learning import FINAL_CHECKPOINT_WRITTEN
from jaxrl.shm import (ParamStore, SharedBlock, SnapshotReader, check_free_space, check_memory_ordering)

MESSAGES_PER_POLL = 64   # read from each child per poll: a flood of records cannot starve the loop
_IDLE_S = 0.02           # the loop's sleep when no child had anything to say
_ACTORS_STOP_S = 5.0     # the most seconds actors get to exit once asked to stop
_EXIT_AFTER_CHECKPOINT_S = 10.0   # a learner that wrote its final checkpoint gets this long to exit
_EVALUATION_STOP_S = 5.0   # the most seconds an abandoned evaluation gets to notice


class Child(Protocol):
  """What the supervisor knows of a process or Ray actor it started."""
  name: str

  def receive(self, limit: int) -> list[tuple[str, Any]]:
    """Up to ``limit`` of the messages it has sent, without waiting."""

  def alive(self) -> bool: ...

  def exit_reason(self) -> str:
    """Why it ended ("killed by SIGKILL", "exited with status 1", ...)."""

  def kill(self) -> bool:
    """Ends it at once; whether it did (a thread cannot be killed)."""

  def close(self) -> None:
    """Releases what is left of it, once it has ended."""


class Actors(Protocol):
  """A backend's actors: ``session`` is entered once the learner has started
  and left once every child has ended; ``start`` starts actor ``actor_id``
  of a run at ``env_steps``."""

  def session(self, segments: "Segments") -> contextlib.AbstractContextManager: ...

  def start(self, actor_id: int, env_steps: int, segments: "Segments") -> Child: ...


def preflight(cfg: RunConfig, spaces: dict[str, LearnerSpace]) -> None:
  """Raises shm.SharedMemoryError on a CPU whose memory ordering the
  seqlocks do not support, or if the segments would not fit in /dev/shm."""
  check_memory_ordering()
  templates = state_templates(make_agents(cfg, spaces))
  stores = sum(ParamStore.nbytes(template.params) for template in templates.values())
  control = SharedBlock.nbytes(local.control_specs(cfg.actors.num, len(templates)))
  check_free_space(replay_nbytes(cfg, spaces) + stores + control, "this run's replays and parameters")


def run(cfg: RunConfig, run, interrupted, resume, actors: Actors | None = None) -> dict:
  """Runs ``run`` to a stop condition with a learner process and ``actors``
  (default: processes on this machine)."""
  ctx = mp.get_context(cfg.runtime.start_method)
  Supervisor(cfg, run, interrupted, resume, actors or LocalActors(cfg, ctx), ctx).supervise()
  return {}


class LocalActors:
  """Actors as processes on this machine (``local.actor_main``)."""

  def __init__(self, cfg: RunConfig, ctx):
    self._cfg, self._ctx = cfg, ctx

  def session(self, segments: "Segments") -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()

  def start(self, actor_id: int, env_steps: int, segments: "Segments") -> Child:
    return local.ProcessChild(self._ctx, f"actor {actor_id}", local.actor_main,
                              (actor_id, self._cfg, segments.shared, env_steps))


class Segments:
  """The run's shared memory, owned by the supervisor: the control block,
  each learner's replay and ParamStore, and their handles for the children
  (``shared``). ``close`` closes and unlinks them all."""

  def __init__(self, cfg: RunConfig, run, resume, placement):
    self._owned: list[Any] = []
    try:
      templates = state_templates(run.agents)
      self.control = self._own(SharedBlock.create(local.control_specs(cfg.actors.num, len(templates))))
      arrays = self.control.arrays
      arrays["restored"][:] = (run.env_steps, run.episodes)
      arrays["learner_steps"][0] = run.learner_steps   # the sum, until the learner process sets each
      self.replays = make_replays(cfg, run.spaces, resume and resume.take_replay())
      self._owned.extend(self.replays.values())
      self.stores = {lid: self._own(ParamStore.create(template.params)) for lid, template in templates.items()}
    except BaseException:
      self.close()
      raise
    self.shared = local.Shared(self.control.handle, {lid: store.handle for lid, store in self.stores.items()},
                               {lid: replay.handle for lid, replay in self.replays.items()}, run.spaces,
                               run.run_dir, resume and resume.checkpoint, cfg.runtime.compilation_cache, placement)

  def _own(self, segment):
    self._owned.append(segment)
    return segment

  def counters(self) -> dict[str, int]:
    return local.counters(self.control.arrays)

  def ask_to_stop(self, phase: int) -> None:
    self.control.arrays["stop"][0] = phase

  def close(self, unmap: bool = True) -> None:
    """Unlinks every segment, and unmaps it unless ``unmap`` is False (a
    thread of this process may still write to it)."""
    for segment in self._owned:
      if unmap:
        segment.close()
      segment.unlink()
    self._owned = []


class BackgroundEvaluation:
  """The run's evaluations, each in a thread of its own: ``poll`` logs a
  finished one and starts the next when one is due; ``abandon`` asks the
  running one to stop, waits for it (a few env steps) and logs it if it
  had finished."""

  def __init__(self, run, snapshots: SnapshotReader):
    self._run, self._snapshots = run, snapshots
    self._thread: threading.Thread | None = None
    self._outcome: tuple[str, Any] | None = None   # ("record", dict | None) or ("error", (reason, traceback))
    self._stopping = False

  def poll(self) -> None:
    """Logs a finished evaluation (a failed one is the run's error); starts a due one."""
    self._collect()
    run = self._run
    if self._thread is not None or self._stopping or not run.evaluator.due(run.learner_steps):
      return
    newest = self._snapshots.newest()
    if newest is None:
      return
    params = {lid: snap.params for lid, snap in newest.items()}
    step = sum(snap.step for snap in newest.values())
    self._outcome = None
    self._thread = threading.Thread(target=self._evaluate, args=(params, step, run.learner_steps),
                                    name="jaxrl-evaluation", daemon=True)
    self._thread.start()

  def _evaluate(self, params: dict, step: int, learner_steps: int) -> None:
    try:
      self._outcome = ("record", self._run.evaluator(params, step, learner_steps, lambda: self._stopping))
    except BaseException as e:  # pylint: disable=broad-except
      self._outcome = ("error", describe_error(e))

  def _collect(self) -> None:
    """Logs the outcome of an evaluation thread that has ended."""
    if self._thread is None or self._thread.is_alive():
      return
    self._thread, (kind, value) = None, self._outcome
    if kind == "error":
      self._run.error = self._run.error or f"evaluation: {value[0]}"
      self._run.fail("evaluation", *value)
    elif value is not None:
      self._run.log_evaluation(value)

  def abandon(self) -> None:
    if not self._stopping and self._thread is not None:
      self._stopping = True
      self._thread.join(timeout=_EVALUATION_STOP_S)
    self._stopping = True
    self._collect()


class Supervisor:
  """An async run's supervisor (see the module docstring for its phases)."""

  def __init__(self, cfg: RunConfig, run, interrupted, resume, actors: Actors, ctx):
    self.cfg, self.run, self.interrupted, self.resume = cfg, run, interrupted, resume
    self.actors, self.ctx = actors, ctx
    self.placement = _async_placement(cfg)   # its two sets make up this process's CPU set, restored at the end
    self.segments: Segments | None = None
    self.learner: Child | None = None
    self.actor_children: dict[int, Child] = {}
    self.restarts = [0] * cfg.actors.num
    self.errors: dict[str, dict] = {}   # child name -> its "error" message, until handled
    self.final_checkpoint_at: float | None = None   # when the learner said its final checkpoint was written
    self.session = contextlib.ExitStack()
    self.evaluation: BackgroundEvaluation | None = None

  def supervise(self) -> None:
    """start, loop, stop; close whatever happens (a second signal included)."""
    try:
      self.start()
      while self.interrupted.signum is None and not self.should_stop():
        if not self.poll():
          time.sleep(_IDLE_S)
        self.evaluation.poll()
      self.stop()
    finally:
      self.close()
    self.report_learner_failure()

  # ---------------------------------------------------------------- start

  def start(self) -> None:
    """The shared memory, the learner, the actors' session, the actors. A
    second signal waits until what it started is in hand (``deferred``)."""
    with self.interrupted.deferred():
      self.segments = Segments(self.cfg, self.run, self.resume, self.placement)
    self.evaluation = BackgroundEvaluation(self.run, SnapshotReader(self.segments.stores))
    with self.interrupted.deferred():
      self.learner = local.ProcessChild(self.ctx, "learner", local.learner_main, (self.cfg, self.segments.shared))
    with self.interrupted.deferred():
      self.session.enter_context(self.actors.session(self.segments))   # Ray starts while the learner starts
    for actor_id in range(self.cfg.actors.num):
      self.start_actor(actor_id)
    if self.placement:   # only now: the children's start-up (imports) runs on every CPU
      os.sched_setaffinity(0, self.placement[1])

  def start_actor(self, actor_id: int) -> None:
    with self.interrupted.deferred():
      self.actor_children[actor_id] = self.actors.start(actor_id, self.segments.counters()["env_steps"],
                                                        self.segments)

  # ---------------------------------------------------------------- loop

  def children(self) -> list[Child]:
    return [child for child in [self.learner, *self.actor_children.values()] if child is not None]

  def poll(self) -> bool:
    """Takes the counters and up to MESSAGES_PER_POLL messages of each child
    into the run; whether there were any."""
    self.run.set_counters(self.segments.counters())
    received = False
    for child in self.children():
      messages = child.receive(MESSAGES_PER_POLL)
      received |= bool(messages)
      for kind, payload in messages:
        self.handle(kind, payload)
    self.run.flush_metrics_if_due()
    return received

  def handle(self, kind: str, payload: Any) -> None:
    """One message of a child."""
    if kind == "error":
      self.errors[payload["process"]] = payload
    elif kind == "episodes":
      self.run.log(*payload)
    elif kind == "progress":
      if payload == FINAL_CHECKPOINT_WRITTEN:
        self.final_checkpoint_at = time.monotonic()
    else:   # a learner record, or a record of where an actor runs
      self.run.log(payload)

  def should_stop(self) -> bool:
    """Watches the learner and the actors (restarting dead ones), then the stop conditions."""
    if not self.learner.alive():
      reason = self.reason_of_end(self.learner, "exited unexpectedly ({})")
      self.run.error = f"learner: {reason}"
    for actor_id, child in self.actor_children.items():
      if self.run.error is None and not child.alive():
        self.restart(actor_id, child)
    return self.run.check_stop()

  def reason_of_end(self, child: Child, unexplained: str = "{}") -> str:
    """Why ``child`` ended: its error message (read to the end), else how it exited; logged as its failure."""
    for kind, payload in child.receive(sys.maxsize):
      self.handle(kind, payload)
    error = self.errors.pop(child.name, None)
    reason = error["reason"] if error else unexplained.format(child.exit_reason())
    self.run.fail(child.name, reason, error and error["traceback"])
    return reason

  def restart(self, actor_id: int, child: Child) -> None:
    """Restarts a dead actor, or fails the run after ``actors.max_restarts``."""
    reason = self.reason_of_end(child)
    child.close()
    if self.restarts[actor_id] >= self.cfg.actors.max_restarts:
      self.run.error = f"{child.name}: {reason} (after {self.restarts[actor_id]} restarts)"
      return
    self.restarts[actor_id] += 1
    self.run.actor_restarts += 1
    self.run.log({"actor_restarts": self.run.actor_restarts, "actor_id": actor_id})
    self.start_actor(actor_id)

  # ---------------------------------------------------------------- stop

  def stop(self) -> None:
    """The actors, then the learner, each phase waiting on progress."""
    self.evaluation.abandon()
    self.stop_actors()
    self.stop_learner()
    self.poll()

  def stop_actors(self) -> None:
    """Asks the actors to stop; kills those still running after
    ``_ACTORS_STOP_S`` (they hold nothing the run needs)."""
    self.segments.ask_to_stop(local.STOP_ACTORS)
    deadline = time.monotonic() + min(_ACTORS_STOP_S, self.cfg.runtime.stop_timeout_seconds)
    actors = list(self.actor_children.values())
    while any(child.alive() for child in actors) and time.monotonic() < deadline:
      if not self.poll():   # children flush their messages before they exit
        time.sleep(0.01)
    for child in actors:
      if child.alive():
        self.kill(child)

  def stop_learner(self) -> None:
    """Asks the learner to stop and waits while it works towards its final
    checkpoint, up to ``runtime.stop_timeout_seconds``; once that is written
    it is done, and if it does not exit it is killed without harm."""
    self.segments.ask_to_stop(local.STOP_ALL)
    timeout = self.cfg.runtime.stop_timeout_seconds
    deadline = time.monotonic() + timeout
    while self.learner.alive():
      if not self.poll():
        time.sleep(0.01)
      if self.final_checkpoint_at is not None:
        if time.monotonic() - self.final_checkpoint_at > _EXIT_AFTER_CHECKPOINT_S:
          self.kill(self.learner)
      elif time.monotonic() > deadline:
        self.kill(self.learner)
        if self.run.error is None:
          reason = (f"did not write its final checkpoint within runtime.stop_timeout_seconds ({timeout:g} s) "
                    "and was killed; the newest checkpoint is an earlier one")
          self.run.error = f"learner: {reason}"
          self.run.fail("learner", reason)

  def kill(self, child: Child) -> None:
    """Kills a child that did not stop in time; the summary names it
    (``killed``, or ``abandoned`` for one that cannot be killed)."""
    if child.name not in self.run.abandoned:
      (self.run.killed if child.kill() else self.run.abandoned).append(child.name)

  def report_learner_failure(self) -> None:
    """A learner that ended without its final checkpoint, in a run with no
    error yet: its error message (its final checkpoint failed), or how it
    exited."""
    if self.learner is None or self.final_checkpoint_at is not None or self.run.error is not None:
      return
    reason = self.reason_of_end(self.learner, "{} before its final checkpoint")
    self.run.error, self.run.stopped_because = f"learner: {reason}", "error"

  def close(self) -> None:
    """Kills every child still running, stops the actors' session and
    unlinks the shared memory. A second signal waits until it is done
    (``deferred``), so that a late Ctrl-C leaves no segment behind. Shared
    memory that an abandoned thread may still touch stays mapped."""
    with self.interrupted.deferred():
      if self.segments is not None:
        self.segments.ask_to_stop(local.STOP_ALL)   # what is still running exits by itself
      if self.evaluation is not None:
        self.evaluation.abandon()
      for child in self.children():
        if child.alive():
          self.kill(child)
        for kind, payload in child.receive(sys.maxsize):
          self.handle(kind, payload)
        child.close()
      if self.placement:
        os.sched_setaffinity(0, self.placement[0] | self.placement[1])
      self.session.close()
      if self.segments is not None:
        self.run.set_counters(self.segments.counters())
        self.segments.close(unmap=not self.run.abandoned)


def cpu_placement(available: set[int], learner_cpus: int) -> tuple[set[int], set[int]] | None:
  """(the learner's CPUs, the supervisor's and actors' CPUs) for
  ``runtime.learner_cpus``: the first ``learner_cpus`` of ``available``,
  and the rest; None if no CPU would be left for the rest.

  A learner confined to its own CPU loses less to its threads' handoffs:
  on a 2-core VM, a fused call of 8 DQN updates costs 0.59 ms of CPU on
  one core against 0.77 ms spread over two.
  """
  cpus = sorted(available)
  if len(cpus) <= learner_cpus:
    return None
  return set(cpus[:learner_cpus]), set(cpus[learner_cpus:])


def _async_placement(cfg: RunConfig) -> tuple[set[int], set[int]] | None:
  """``cpu_placement`` of the CPUs this process may use, or None (no
  pinning): not asked for, or not possible (with a note on stderr)."""
  wanted = cfg.runtime.learner_cpus
  if wanted is None:
    return None
  if not hasattr(os, "sched_setaffinity"):
    print("jaxrl: runtime.learner_cpus: this platform cannot pin processes to CPUs; not pinning",
          file=sys.stderr)
    return None
  available = os.sched_getaffinity(0)
  placement = cpu_placement(available, wanted)
  if placement is None:
    print(f"jaxrl: runtime.learner_cpus={wanted} would leave none of the {len(available)} CPUs "
          "for the actors; not pinning", file=sys.stderr)
  return placement
