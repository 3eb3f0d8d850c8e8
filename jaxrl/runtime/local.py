"""Processes on this machine: the learner and actor processes, and the
supervisor's handle on each.

The supervisor (``runtime.supervisor``) owns every shared-memory segment
and starts the children here:
  learner (``learner_main``): runs the LearningLoop (on the GPU when there
    is one), publishes params, epsilon and step to the ParamStores, writes
    the checkpoints, and says when its final checkpoint is written.
  actors (``actor_main``, ``actors.num`` of them, each serving every
    learner): run the ActingLoop over ``actors.envs_per_actor``
    environments with the newest snapshots, into their partition of each
    learner's replay.

Bulk data stays in shared memory; a pipe from each child (``Outbox`` ->
``ProcessChild``) carries its records, a batch per actor step, and its
errors. The control block holds the stop flag and the counters.

Signals: the supervisor alone handles SIGINT and SIGTERM, including the
ones a terminal or a batch system sends to the whole process group. A child
is started with both blocked (``signals_held``: the supervisor's thread
that starts it blocks them, without changing their disposition, and the
child inherits its mask); the child ignores them and only then unblocks
(``ignore_signals``), so a signal that came meanwhile is discarded, not
fatal. The supervisor's own handler is never set aside, so no signal is
lost while a child starts.

Orphans: children whose supervisor died exit, and the learner then unlinks
the segments. This module does not import the logger: actor processes
import it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import queue as queue_lib
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxrl.config import RunConfig
from jaxrl.envs import LearnerSpace
from jaxrl.replay import SharedReplay
from jaxrl.runtime.acting import ActingLoop, episode_record
from jaxrl.runtime.builders import (configure_jax, describe_error, learner_stream, make_actor, make_agents,
                                    restored_states)
from jaxrl.runtime.learning import Checkpointer, Learner, LearningLoop
from jaxrl.shm import ParamStore, SharedBlock, SnapshotReader, unlink_orphaned

POLL_S = 0.0005      # back-off of a process waiting on the rate limiter or the supervisor
SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})

# A run stops in two phases, so that the learner's final checkpoint counts
# every env step: the actors first, then the learner.
STOP_ACTORS, STOP_ALL = 1, 2
_ORPHAN_CHECK_S = 0.05   # how often a child looks whether its supervisor is alive
_KILL_WAIT_S = 10.0      # how long a SIGKILLed child may take to end


def control_specs(num_actors: int, num_learners: int) -> dict:
  """The control block: ``stop`` (0 = run, STOP_ACTORS, STOP_ALL); per-actor
  ``env_steps`` and ``episodes`` since launch; counts ``restored`` from a
  checkpoint (env steps, episodes); each learner's ``learner_steps`` (in
  learner order)."""
  return {"stop": ((1,), "int64"), "env_steps": ((num_actors,), "int64"),
          "episodes": ((num_actors,), "int64"), "restored": ((2,), "int64"),
          "learner_steps": ((num_learners,), "int64")}


def counters(arrays: dict) -> dict[str, int]:
  """The run's env_steps, episodes and learner_steps from the control block."""
  return {"env_steps": int(arrays["restored"][0] + arrays["env_steps"].sum()),
          "episodes": int(arrays["restored"][1] + arrays["episodes"].sum()),
          "learner_steps": int(arrays["learner_steps"].sum())}


@dataclasses.dataclass(frozen=True)
class Shared:
  """What a child process needs: picklable segment handles, the learners'
  spaces (computed once per run) and the run's files."""
  control: Any          # BlockHandle of the control block (control_specs)
  params: dict[str, Any]    # learner id -> its ParamStoreHandle
  replays: dict[str, Any]   # learner id -> its ReplayHandle
  spaces: dict[str, LearnerSpace]
  run_dir: Path
  checkpoint: Path | None   # checkpoint the learner resumes from
  compilation_cache: str | None
  placement: tuple[set[int], set[int]] | None   # cpu_placement: the learner's CPUs, the others'


class ChildControl:
  """A child's view of the run: the control block's arrays, and whether it
  should stop. A child stops when the supervisor asks (``arrays["stop"]``)
  or when the supervisor has died: ``multiprocessing.parent_process()``'s
  sentinel is a pipe whose write end only the supervisor holds, so it reads
  EOF once the supervisor is gone, whichever start method made the child
  (a forkserver child's parent process is the fork server). In the
  supervisor's own process (the Ray backend's driver threads) there is no
  parent to watch."""

  def __init__(self, block: SharedBlock):
    self.arrays = block.arrays
    self._supervisor = mp.parent_process()
    self._checked_at = -np.inf
    self._orphaned = False

  def orphaned(self) -> bool:
    """Whether the supervisor has died (looked up at most every _ORPHAN_CHECK_S)."""
    now = time.monotonic()
    if not self._orphaned and now - self._checked_at >= _ORPHAN_CHECK_S:
      self._checked_at = now
      self._orphaned = self._supervisor is not None and not self._supervisor.is_alive()
    return self._orphaned

  def should_stop(self, phase: int = STOP_ACTORS) -> bool:
    """True when this process should stop: the supervisor asked for ``phase``, or it died."""
    return bool(self.arrays["stop"][0] >= phase) or self.orphaned()


@contextlib.contextmanager
def signals_held():
  """Blocks SIGINT and SIGTERM in this thread for the block: what it starts
  (a child process, Ray's processes) is born with them blocked. Their
  disposition is left alone, so one that reaches this process meanwhile is
  handled by another thread or held until the end of the block."""
  signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def ignore_signals() -> None:
  """A child's first act: ignore SIGINT and SIGTERM (the supervisor stops
  it), then unblock them; one held since its birth is discarded."""
  for s in SIGNALS:
    signal.signal(s, signal.SIG_IGN)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


class Outbox:
  """A child's messages to the supervisor, over a pipe of its own.

  ``put`` never blocks: a daemon thread sends, so a busy supervisor only
  delays the messages. Unlike a multiprocessing.Queue, a pipe involves no
  named semaphore, so a SIGKILLed supervisor leaks nothing.
  """

  def __init__(self, connection):
    self._connection = connection
    self._pending: queue_lib.SimpleQueue = queue_lib.SimpleQueue()
    self._thread = threading.Thread(target=self._send_all, name="jaxrl-outbox", daemon=True)
    self._thread.start()

  def put(self, message: tuple[str, Any]) -> None:
    self._pending.put(message)

  def _send_all(self) -> None:
    while (message := self._pending.get()) is not None:
      try:
        self._connection.send(message)
      except OSError:   # the supervisor is gone
        return

  def close(self, flush: bool) -> None:
    """Sends what is pending first if ``flush`` (the supervisor must be reading)."""
    if flush:
      self._pending.put(None)
      self._thread.join()


class ProcessChild:
  """The supervisor's handle on one child process: started with signals
  held (see the module docstring), its messages read from its pipe a
  bounded number at a time, killed with SIGKILL."""

  def __init__(self, ctx, name: str, target, args: tuple):
    self.name = name
    receiver, sender = ctx.Pipe(duplex=False)
    self._process = ctx.Process(target=target, args=(*args, sender), name=f"jaxrl-{name.replace(' ', '-')}",
                                daemon=True)
    with signals_held():
      self._process.start()
    sender.close()
    self._connection, self._open = receiver, True

  def receive(self, limit: int) -> list[tuple[str, Any]]:
    """Up to ``limit`` of the messages the child has sent, without waiting."""
    messages = []
    try:
      while self._open and len(messages) < limit and self._connection.poll():
        messages.append(self._connection.recv())
    except (EOFError, OSError):   # it has exited and everything it sent has been read
      self._open = False
    return messages

  def alive(self) -> bool:
    return self._process.is_alive()

  def exit_reason(self) -> str:
    code = self._process.exitcode
    if code is not None and code < 0:
      return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"

  def kill(self) -> bool:
    """SIGKILL; whether it ended within ``_KILL_WAIT_S`` (not in an
    uninterruptible wait, as on a hung network disk)."""
    self._process.kill()
    self._process.join(timeout=_KILL_WAIT_S)
    return not self._process.is_alive()

  def close(self) -> None:
    """Reaps the ended process and closes the pipe."""
    self._process.join(timeout=_KILL_WAIT_S)
    self._connection.close()


@contextlib.contextmanager
def child_setup(role: str, process: str, shared: Shared, connection):
  """Runs the body of child process ``process``: sets it up, attaches
  (control, stores, replays), reports an exception as an "error" message
  (exit status 1, no traceback on the console), and detaches. The learner
  of a dead supervisor also unlinks the segments."""
  ignore_signals()
  if shared.placement is not None:   # before JAX sizes its thread pools
    os.sched_setaffinity(0, shared.placement[0 if role == "learner" else 1])
  outbox = Outbox(connection)
  configure_jax(role, shared.compilation_cache)
  try:   # the supervisor may have stopped, and unlinked them, while this process started
    block = SharedBlock.attach(shared.control)
    stores = {lid: ParamStore.attach(handle) for lid, handle in shared.params.items()}
    replays = {lid: SharedReplay.attach(handle) for lid, handle in shared.replays.items()}
  except FileNotFoundError:
    outbox.close(flush=False)
    sys.exit(0)
  control = ChildControl(block)
  failed = False
  try:
    yield control, stores, replays, outbox
  except Exception as e:  # pylint: disable=broad-except
    reason, trace = describe_error(e)
    outbox.put(("error", {"process": process, "reason": reason, "traceback": trace}))
    failed = True
  finally:
    for segment in [*replays.values(), *stores.values(), block]:
      segment.close()
    orphaned = control.orphaned()
    outbox.close(flush=not orphaned)
    if orphaned and role == "learner":
      for handle in [shared.control, *(h.block for h in shared.params.values()),
                     *(h.block for h in shared.replays.values())]:
        unlink_orphaned(handle)
  if failed:
    sys.exit(1)


def actor_main(actor_id: int, cfg: RunConfig, shared: Shared, env_steps: int, connection) -> None:
  """An actor process: its Actor steps the environments here, with the newest
  snapshots of the ParamStores."""
  with child_setup("actor", f"actor {actor_id}", shared, connection) as (control, stores, replays, outbox):
    actor = make_actor(cfg, make_agents(cfg, shared.spaces), actor_id, env_steps)
    try:
      snapshots = SnapshotReader(stores)
      while not snapshots.ready():   # no policy to act with yet
        if control.should_stop():
          return
        time.sleep(POLL_S)

      def newest_policies():
        return {lid: (snap.params, snap.epsilon, snap.step) for lid, snap in snapshots.changed().items()}
      run_actor(actor_id, actor, newest_policies, control, replays, outbox)
    finally:
      actor.env_set.close()


def run_actor(actor_id: int, actor, newest_policies, control: ChildControl, replays: dict[str, SharedReplay],
              outbox) -> None:
  """Runs actor ``actor_id``'s ActingLoop into its replay partitions until
  the supervisor says stop, counting its env steps and episodes in the
  control block and sending its episode records, one "episodes" message per
  actor step that ended any. ``actor`` has the Actor's ``set_policy`` and
  ``step`` (the Ray backend's steps elsewhere); ``newest_policies`` is the
  ActingLoop's; ``outbox`` has ``put``."""
  arrays = control.arrays

  def learner_steps():
    return dict(zip(replays, arrays["learner_steps"].tolist()))

  def record(env_steps: int, episodes) -> None:
    arrays["env_steps"][actor_id] += env_steps
    arrays["episodes"][actor_id] += len(episodes)
    if episodes:
      outbox.put(("episodes", [episode_record(episode, actor_id) for episode in episodes]))

  writers = {lid: replay.writer(actor_id) for lid, replay in replays.items()}
  loop = ActingLoop(actor, writers, newest_policies, learner_steps, record)
  while not control.should_stop():
    if not loop.step():
      time.sleep(POLL_S)


def learner_main(cfg: RunConfig, shared: Shared, connection) -> None:
  """The learner process: the LearningLoop of every learner until the
  supervisor says stop, then the final checkpoint, whose start and end it
  sends as "progress" messages."""
  with child_setup("learner", "learner", shared, connection) as (control, stores, replays, outbox):
    arrays = control.arrays
    agents = make_agents(cfg, shared.spaces)
    states = restored_states(agents, cfg, shared.checkpoint)
    arrays["learner_steps"][:] = [int(state.step) for state in states.values()]   # before the first publish
    learners = {lid: Learner(cfg, agents[lid], replays[lid], states[lid], param_publisher(stores[lid]),
                             learner_stream(i)) for i, lid in enumerate(agents)}
    index = {lid: i for i, lid in enumerate(learners)}

    def count(learner_id: str, learner_steps: int) -> None:
      arrays["learner_steps"][index[learner_id]] = learner_steps

    loop = LearningLoop(learners, Checkpointer(cfg, shared.run_dir, replays), lambda: counters(arrays), count,
                        lambda record: outbox.put(("learner", record)),
                        progress=lambda event: outbox.put(("progress", event)))
    while not control.should_stop(STOP_ALL):
      if not loop.step():
        time.sleep(POLL_S)
      loop.housekeeping()
    loop.checkpoint()


def param_publisher(store: ParamStore):
  """A Learner ``publish`` callback that publishes to ``store``."""
  def publish(state) -> None:
    store.publish(state.params, epsilon=float(state.epsilon), step=int(state.step))
  return publish
