"""The local-processes backend (``runtime.mode: async``).

Processes:
  supervisor (the caller of ``train``): owns every shared-memory segment,
    starts the children, drains their small messages into the run, evaluates
    published params, checks stop conditions, restarts crashed actors, stops
    everything.
  learner: runs the LearningLoop (on the GPU when there is one), publishes
    params, epsilon and step to the ParamStore, writes the checkpoints.
  actors (``actors.num``): run the ActingLoop over ``actors.envs_per_actor``
    environments with the newest snapshot (one integer read per step to
    notice a new version), into their partition of the replay.

Bulk data stays in shared memory; a pipe from each child carries its episode
records, learner records and errors. With ``runtime.learner_cpus``, the
learner runs on CPUs of its own and everything else on the rest.

Failures: a crashed actor is restarted up to ``actors.max_restarts`` times;
a learner exception or a non-finite loss, gradient or state stops the run
(``stopped_because = "error"``) without overwriting the last good
checkpoint; children whose supervisor died exit and unlink the segments.
The Ray backend (``runtime.ray_backend``) runs this supervisor and learner
with actors of its own (``run``'s ``actor_main`` and ``actor_child``).
This module does not import the logger: actor processes import it.
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
from jaxrl.replay import SharedReplay
from jaxrl.runtime.acting import ActingLoop, episode_record
from jaxrl.runtime.builders import (configure_jax, describe_error, learner_stream, make_actor, make_agents,
                                    make_replays, replay_nbytes, restored_states, state_templates)
from jaxrl.runtime.learning import Checkpointer, Learner, LearningLoop
from jaxrl.shm import (ParamStore, SharedBlock, check_free_space, check_memory_ordering,
                       unlink_orphaned)

_POLL_S = 0.0005      # back-off of a process waiting on the rate limiter or the supervisor
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def preflight(cfg: RunConfig) -> None:
  """Raises shm.SharedMemoryError on a CPU whose memory ordering the
  seqlocks do not support, or if the segments would not fit in /dev/shm."""
  check_memory_ordering()
  templates = state_templates(make_agents(cfg))
  stores = sum(ParamStore.nbytes(template.params) for template in templates.values())
  control = SharedBlock.nbytes(_control_specs(cfg.actors.num, len(templates)))
  check_free_space(replay_nbytes(cfg) + stores + control, "this run's replays and parameters")


def cpu_placement(available: set[int], learner_cpus: int) -> tuple[set[int], set[int]] | None:
  """(the learner's CPUs, the supervisor's and actors' CPUs) for
  ``runtime.learner_cpus``: the first ``learner_cpus`` of ``available``,
  and the rest; None if no CPU would be left for the rest.

  A learner confined to its own CPU loses less to its threads' handoffs:
  on this 2-core VM, a fused call of 8 DQN updates costs 0.59 ms of CPU on
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


def param_publisher(store: ParamStore):
  """A Learner ``publish`` callback that publishes to ``store``."""
  def publish(state) -> None:
    store.publish(state.params, epsilon=float(state.epsilon), step=int(state.step))
  return publish


@dataclasses.dataclass(frozen=True)
class _Shared:
  """What a child needs: picklable segment handles and the run's files."""
  control: Any          # BlockHandle: stop flag and counters (see _control_specs)
  params: dict[str, Any]    # learner id -> its ParamStoreHandle
  replays: dict[str, Any]   # learner id -> its ReplayHandle
  run_dir: Path
  checkpoint: Path | None   # checkpoint the learner resumes from
  compilation_cache: str | None
  placement: tuple[set[int], set[int]] | None   # cpu_placement: the learner's CPUs, the others'


def _control_specs(num_actors: int, num_learners: int) -> dict:
  """The control block: ``stop`` (0 = run, _STOP_ACTORS, _STOP_ALL); per-actor ``env_steps`` and
  ``episodes`` since launch; counts ``restored`` from a checkpoint (env
  steps, episodes); each learner's ``learner_steps`` (in learner order)."""
  return {"stop": ((1,), "int64"), "env_steps": ((num_actors,), "int64"),
          "episodes": ((num_actors,), "int64"), "restored": ((2,), "int64"),
          "learner_steps": ((num_learners,), "int64")}


def _counters(arrays: dict) -> dict[str, int]:
  """The run's env_steps, episodes and learner_steps from the control block."""
  return {"env_steps": int(arrays["restored"][0] + arrays["env_steps"].sum()),
          "episodes": int(arrays["restored"][1] + arrays["episodes"].sum()),
          "learner_steps": int(arrays["learner_steps"].sum())}


# A run stops in two phases, so that the learner's final checkpoint counts
# every env step: the actors first, then the learner.
_STOP_ACTORS, _STOP_ALL = 1, 2
_ORPHAN_CHECK_S = 0.05   # how often a child looks whether its supervisor is alive


class _ChildControl:
  """A child's view of the run: the control block's arrays, and whether it
  should stop. A child stops when the supervisor asks (``arrays["stop"]``)
  or when the supervisor has died: ``multiprocessing.parent_process()``'s
  sentinel is a pipe whose write end only the supervisor holds, so it reads
  EOF once the supervisor is gone, whichever start method made the child
  (a forkserver child's parent process is the fork server)."""

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

  def should_stop(self, phase: int = _STOP_ACTORS) -> bool:
    """True when this process should stop: the supervisor asked for ``phase``, or it died."""
    return bool(self.arrays["stop"][0] >= phase) or self.orphaned()


class _Outbox:
  """A child's messages to the supervisor, over a pipe of its own.

  ``put`` never blocks: a daemon thread sends, so a supervisor busy
  evaluating only delays the messages. Unlike a multiprocessing.Queue, a
  pipe involves no named semaphore, so a SIGKILLed supervisor leaks nothing.
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


def _inbox(connections: dict[str, Any]):
  """Yields the messages the children have sent so far (``connections``:
  process -> receiving end); forgets a connection its child closed."""
  from multiprocessing.connection import wait  # pylint: disable=import-outside-toplevel
  for connection in wait(list(connections.values()), timeout=0):
    try:
      while connection.poll():
        yield connection.recv()
    except (EOFError, OSError):
      for name in [k for k, c in connections.items() if c is connection]:
        del connections[name]
      connection.close()


@contextlib.contextmanager
def signals_ignored_by_children(signals: frozenset = frozenset(_SIGNALS)):
  """Processes started inside this block ignore ``signals`` (SIGINT and
  SIGTERM) from birth: an ignored disposition survives spawn's and the fork
  server's exec, so a Ctrl-C or a ``kill -TERM -PGID`` that reaches the
  whole process group while a child still imports is the supervisor's alone
  to handle. Signals to this process are held meanwhile and delivered on
  exit."""
  signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
  previous = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


@contextlib.contextmanager
def child_setup(role: str, process: str, shared: _Shared, connection, attach_params: bool = True):
  """Runs the body of child ``process`` (a process, or one of the Ray
  backend's driver threads): sets it up, attaches (control, store, replay),
  reports an exception as an "error" message (exit status 1, no traceback
  on the console), and detaches. ``attach_params=False`` leaves the
  ParamStores out (a child that reads its policies elsewhere). The learner
  of a dead supervisor also unlinks the segments."""
  signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)   # ignored since birth; the supervisor stops us
  if shared.placement is not None:   # before JAX sizes its thread pools
    os.sched_setaffinity(0, shared.placement[0 if role == "learner" else 1])
  outbox = _Outbox(connection)
  configure_jax(role, shared.compilation_cache)
  block = SharedBlock.attach(shared.control)
  control = _ChildControl(block)
  stores = {lid: ParamStore.attach(handle) for lid, handle in shared.params.items()} if attach_params else {}
  replays = {lid: SharedReplay.attach(handle) for lid, handle in shared.replays.items()}
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


def _actor_main(actor_id: int, cfg: RunConfig, shared: _Shared, env_steps: int, connection) -> None:
  """An actor process: its Actor steps the environments here, with the newest
  snapshots of the ParamStores."""
  with child_setup("actor", f"actor {actor_id}", shared, connection) as (control, stores, replays, outbox):
    actor = make_actor(cfg, make_agents(cfg), actor_id, env_steps)
    while not all(store.latest_version() for store in stores.values()):   # no policy to act with yet
      if control.should_stop():
        return
      time.sleep(_POLL_S)
    versions = dict.fromkeys(stores, 0)

    def newest_policies():
      new = {}
      for lid, store in stores.items():
        if store.latest_version() != versions[lid]:
          snap = store.read()
          versions[lid] = snap.version
          new[lid] = (snap.params, snap.epsilon, snap.step)
      return new
    try:
      act(actor_id, actor, newest_policies, control, replays, outbox)
    finally:
      actor.env_set.close()


def act(actor_id: int, actor, newest_policies, control: _ChildControl, replays: dict[str, SharedReplay],
        outbox: _Outbox) -> None:
  """Runs actor ``actor_id``'s ActingLoop into its replay partitions until
  the supervisor says stop, counting its env steps and episodes in the
  control block and sending its episode records. ``actor`` has the Actor's
  ``set_policy`` and ``step`` (another backend's may step elsewhere);
  ``newest_policies`` is the ActingLoop's."""
  arrays = control.arrays

  def learner_steps():
    return dict(zip(replays, arrays["learner_steps"].tolist()))

  def record(env_steps: int, episodes) -> None:
    arrays["env_steps"][actor_id] += env_steps
    arrays["episodes"][actor_id] += len(episodes)
    for episode in episodes:
      outbox.put(("episode", episode_record(episode, actor_id)))

  writers = {lid: replay.writer(actor_id) for lid, replay in replays.items()}
  loop = ActingLoop(actor, writers, newest_policies, learner_steps, record)
  while not control.should_stop():
    if not loop.step():
      time.sleep(_POLL_S)


def _learner_main(cfg: RunConfig, shared: _Shared, connection) -> None:
  """The learner process: the LearningLoop of every learner until the supervisor says stop."""
  with child_setup("learner", "learner", shared, connection) as (control, stores, replays, outbox):
    arrays = control.arrays
    agents = make_agents(cfg)
    states = restored_states(agents, cfg, shared.checkpoint)
    arrays["learner_steps"][:] = [int(state.step) for state in states.values()]   # before the first publish
    learners = {lid: Learner(cfg, agents[lid], replays[lid], states[lid], param_publisher(stores[lid]),
                             learner_stream(i)) for i, lid in enumerate(agents)}
    index = {lid: i for i, lid in enumerate(learners)}

    def count(learner_id: str, learner_steps: int) -> None:
      arrays["learner_steps"][index[learner_id]] = learner_steps

    loop = LearningLoop(learners, Checkpointer(cfg, shared.run_dir, replays), lambda: _counters(arrays), count,
                        lambda record: outbox.put(("learner", record)))
    while not control.should_stop(_STOP_ALL):
      if not loop.step():
        time.sleep(_POLL_S)
      loop.housekeeping()
    loop.checkpoint()


def _describe_exit(process) -> str:
  code = process.exitcode
  if code is not None and code < 0:
    return f"killed by {signal.Signals(-code).name}"
  return f"exited with status {code}"


_ACTORS_STOP_GRACE_S = 5.0    # seconds actors get to exit once asked to stop
_LEARNER_STOP_GRACE_S = 10.0  # seconds the learner gets to write its final checkpoint and exit,
_CHECKPOINT_BYTES_PER_S = 50e6   # plus this rate's time for a replay saved with it


def learner_stop_grace(cfg: RunConfig) -> float:
  """Seconds the learner gets to write its final checkpoint and exit: more
  when the checkpoint holds the replay (``checkpoint.replay``), at a
  conservative disk rate."""
  return _LEARNER_STOP_GRACE_S + (replay_nbytes(cfg) / _CHECKPOINT_BYTES_PER_S if cfg.checkpoint.replay else 0.0)


def run(cfg: RunConfig, run, interrupted, resume, actor_main=None, actor_child=None,
        actor_session=None) -> dict:
  """Runs ``run`` to a stop condition with a learner process and actor processes.

  Another backend keeps this supervisor, learner process and shared memory
  and brings its own actors: actor i runs ``actor_main(i, cfg, shared,
  env_steps, connection)`` (default: ``_actor_main``, acting here) in an
  ``actor_child(target=, args=, name=, daemon=)`` with the methods of a
  ``multiprocessing.Process`` that the supervisor uses (``start``,
  ``is_alive``, ``kill``, ``join``, ``exitcode``; default: a process of
  ``runtime.start_method``). ``actor_session()``, a context manager, is
  entered once the learner has started (its start-up overlaps the
  learner's) and left once every child has ended.
  """
  ctx = mp.get_context(cfg.runtime.start_method)
  owned: list[Any] = []
  session = contextlib.ExitStack()
  processes: dict[str, Any] = {}   # name -> its Process: "learner", "actor <i>"
  connections: dict[str, Any] = {}   # name -> receiving end of its pipe
  errors: dict[str, dict] = {}   # name -> its "error" message, until handled

  def drain() -> None:
    for kind, payload in _inbox(connections):
      if kind == "error":
        errors[payload["process"]] = payload
      else:   # an episode or learner record
        run.log(payload)

  def start(name: str, target, *args, kind=ctx.Process) -> None:
    receiver, sender = ctx.Pipe(duplex=False)
    child = kind(target=target, args=(*args, sender), name=f"jaxrl-{name.replace(' ', '-')}", daemon=True)
    with signals_ignored_by_children():
      child.start()
    sender.close()
    connections[name], processes[name] = receiver, child

  placement = _async_placement(cfg)   # its two sets make up this process's CPU set, restored at the end
  hurry = False
  learner_grace = learner_stop_grace(cfg)
  try:
    templates = state_templates(make_agents(cfg))
    control = SharedBlock.create(_control_specs(cfg.actors.num, len(templates)))
    owned.append(control)
    arrays = control.arrays
    arrays["restored"][:] = (run.env_steps, run.episodes)
    arrays["learner_steps"][0] = run.learner_steps   # the sum, until the learner process sets each
    replays = make_replays(cfg, resume and resume.replay)
    owned.extend(replays.values())
    stores = {}
    for lid, template in templates.items():
      stores[lid] = ParamStore.create(template.params)
      owned.append(stores[lid])
    shared = _Shared(control.handle, {lid: store.handle for lid, store in stores.items()},
                     {lid: replay.handle for lid, replay in replays.items()}, run.run_dir,
                     resume and resume.checkpoint, cfg.runtime.compilation_cache, placement)
    actor_names = [f"actor {i}" for i in range(cfg.actors.num)]

    def start_actor(i: int) -> None:
      start(actor_names[i], actor_main or _actor_main, i, cfg, shared, _counters(arrays)["env_steps"],
            kind=actor_child or ctx.Process)

    start("learner", _learner_main, cfg, shared)
    if actor_session is not None:
      session.enter_context(actor_session())
    for i in range(cfg.actors.num):
      start_actor(i)
    if placement:   # only now: the children's start-up (imports) runs on every CPU
      os.sched_setaffinity(0, placement[1])
    restarts = [0] * cfg.actors.num

    def newest_params():
      if not all(store.latest_version() for store in stores.values()):
        return None
      snaps = {lid: store.read() for lid, store in stores.items()}
      return {lid: snap.params for lid, snap in snaps.items()}, sum(snap.step for snap in snaps.values())
    while interrupted.signum is None:
      run.set_counters(_counters(arrays))
      drain()
      learner = processes["learner"]
      if not learner.is_alive():
        drain()   # its last message may have come after the drain above
        error = errors.pop("learner", None)
        reason = error["reason"] if error else f"exited unexpectedly ({_describe_exit(learner)})"
        run.error = f"learner: {reason}"
        run.fail("learner", reason, error and error["traceback"])
      for i, name in enumerate(actor_names):
        if processes[name].is_alive() or run.error is not None:
          continue
        drain()
        error = errors.pop(name, None)
        reason = error["reason"] if error else _describe_exit(processes[name])
        run.fail(name, reason, error and error["traceback"])
        if restarts[i] >= cfg.actors.max_restarts:
          run.error = f"{name}: {reason} (after {restarts[i]} restarts)"
          break
        restarts[i] += 1
        run.actor_restarts += 1
        run.log({"actor_restarts": run.actor_restarts, "actor_id": i})
        start_actor(i)
      if run.check_stop():
        break
      if not run.evaluate_if_due(newest_params):
        time.sleep(0.02)
  except KeyboardInterrupt:
    hurry = True
    raise
  finally:
    try:
      # Two phases, each with its own grace: the actors, then the learner.
      # A process still running at the end of its phase is killed, and named in the summary.
      phases = ((_STOP_ACTORS, [n for n in processes if n != "learner"], _ACTORS_STOP_GRACE_S),
                (_STOP_ALL, [n for n in processes if n == "learner"], learner_grace))
      for phase, names, grace in phases:
        if owned:
          owned[0].arrays["stop"][0] = phase
        deadline = time.monotonic() + (0 if hurry else grace)
        while any(processes[n].is_alive() for n in names) and time.monotonic() < deadline:
          drain()   # children flush their queued messages before they exit
          time.sleep(0.01)
        for name in names:
          if processes[name].is_alive():
            processes[name].kill()
            if not hurry:
              run.killed.append(name)
      drain()
    finally:
      # Nothing interrupts the rest: a late Ctrl-C must not leave a segment behind.
      signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
      try:
        for p in processes.values():
          if p.is_alive():
            p.kill()
          p.join()
        if owned:
          run.set_counters(_counters(owned[0].arrays))
        for connection in connections.values():
          connection.close()
        for segment in owned:
          segment.close()
          segment.unlink()
        if placement:
          os.sched_setaffinity(0, placement[0] | placement[1])
        session.close()
      finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
  error = errors.pop("learner", None)
  if error is not None and run.error is None:   # it failed saving the final checkpoint
    run.error = f"learner: {error['reason']}"
    run.stopped_because = "error"
    run.fail("learner", error["reason"], error["traceback"])
  if "learner" in run.killed and run.error is None:
    reason = (f"did not stop within {learner_grace:.0f} s and was killed; "
              "its final checkpoint may be missing")
    run.error = f"learner: {reason}"
    run.fail("learner", reason)
  return {}
