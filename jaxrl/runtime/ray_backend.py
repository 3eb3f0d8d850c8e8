"""The Ray backend (``runtime.backend: ray``): actors anywhere in a Ray cluster.

This process is the Ray driver and runs the async supervisor
(``runtime.supervisor``) with its learner process and shared memory, on this
machine, so the learner takes this machine's GPU. Only the actors differ
(``RayActors``, the supervisor's ``Actors``):

  actor i: a Ray actor (``_RemoteActing``, ``runtime.ray.num_cpus_per_actor``
    CPUs, placed by Ray) steps the environments with its own Actor and
    returns the steps it took, a batch per call;
  its ``RayActorChild``, the supervisor's ``Child``, in this process: a
    thread that runs ``local.run_actor`` over a ``RemoteActor`` (an Actor
    whose ``step`` is the next batch of the remote one), inserting into the
    actor's replay partitions and counting as an actor process does, and
    queueing its records for the supervisor. At most ``_CALLS_IN_FLIGHT``
    calls are in flight per actor, so replay's rate limiter holds the remote
    actors back too. Nothing the thread waits for is waited for without a
    timeout that looks at the stop flag: an actor Ray cannot place (a
    restart after its node is lost, on a full cluster) never hangs the run.

Params, epsilon and step reach the actors as one versioned snapshot: the
``SnapshotBoard`` makes one ``ray.put`` per published version that some
actor asks for, and an actor fetches the object only when its version is
stale. ``policy_lag`` and ``sample_age`` are measured as locally (the
learner steps of a call are those when it was made).

Faults: an actor whose call fails (its process killed, its node gone, its
environment raising) ends its thread with an error; the supervisor restarts
it (a new Ray actor, placed by Ray) up to ``actors.max_restarts`` times. A
thread cannot be killed: one that does not end when asked is named in the
summary's ``abandoned``, never in ``killed``. A Ray instance the run started
(``runtime.ray.address: null``) is shut down at the end with every process
it started; a joined cluster is left running.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import queue as queue_lib
import signal
import socket
import threading
import time
import warnings
from typing import Any

import numpy as np

from jaxrl.actor import ActorStep
from jaxrl.config import ConfigError, RunConfig
from jaxrl.envs import LearnerSpace
from jaxrl.runtime import local, supervisor
from jaxrl.runtime.builders import configure_jax, describe_error, make_actor, make_agents
from jaxrl.shm import ParamStore, SnapshotReader

_CALLS_IN_FLIGHT = 2         # per actor: one acting while the other's steps travel or wait for replay
_CALL_SECONDS = 0.02         # a call acts this long at most (see _RemoteActing.steps)
_OBJECT_STORE_BYTES = 2**29  # object store of a Ray instance the run starts (snapshots and batches)
_ANSWER_S = 5.0              # how long preflight waits for a cluster's address to answer
_WAIT_S = 0.05               # how long a driver thread waits for Ray before it looks at the stop flag
_KILL_WAIT_S = 2.0           # how long ``kill`` waits for a driver thread to end
_NO_STEP = ActorStep({}, [], 0)


def _ray():
  """The ray module, or a one-line ConfigError naming the extra."""
  try:
    import ray  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError("runtime.backend: ray needs the ray package: pip install -e '.[ray]'") from None
  return ray


def _cpus_needed(cfg: RunConfig) -> float:
  return cfg.actors.num * cfg.runtime.ray.num_cpus_per_actor


def preflight(cfg: RunConfig, spaces: dict[str, LearnerSpace]) -> None:
  """The supervisor's checks, and Ray's: the package is installed; a
  cluster to join (``runtime.ray.address``) answers and has the CPUs for
  the actors. Raises ConfigError (one line)."""
  ray = _ray()
  supervisor.preflight(cfg, spaces)
  address = cfg.runtime.ray.address
  if address is None:
    return
  host, _, port = address.rpartition(":")
  if host:   # Ray would retry an address that does not answer for a minute and more
    try:
      socket.create_connection((host, int(port)), timeout=_ANSWER_S).close()
    except (OSError, ValueError) as e:
      raise ConfigError(f"runtime.ray.address: nothing answers at {address!r} ({e}); start the cluster "
                        "with `ray start --head`, or use null for a Ray instance of the run's own") from None
  try:
    with _connected(cfg):
      cpus = ray.cluster_resources().get("CPU", 0.0)
  except ConnectionError as e:
    raise ConfigError(f"runtime.ray.address: cannot join the Ray cluster at {address!r}: "
                      f"{' '.join(str(e).split())}") from None
  if cpus < _cpus_needed(cfg):
    raise ConfigError(f"runtime.ray.num_cpus_per_actor: {cfg.actors.num} actors of "
                      f"{cfg.runtime.ray.num_cpus_per_actor:g} CPUs need {_cpus_needed(cfg):g}; "
                      f"the cluster at {address!r} has {cpus:g}")


@contextlib.contextmanager
def _connected(cfg: RunConfig):
  """This process as the driver of a Ray instance: a new one on this machine
  (``runtime.ray.address: null``), stopped on exit with all its processes,
  or a running cluster, left running. Actors run with ``JAX_PLATFORMS=cpu``:
  Ray does not hide a GPU from an actor that asked for none. A new
  instance's processes inherit it from this process's environment during
  ``ray.init``; a cluster's workers get it as the job's runtime environment
  (which costs each worker's start about a second here)."""
  import logging  # pylint: disable=import-outside-toplevel
  ray = _ray()
  address = cfg.runtime.ray.address
  actor_env = {"JAX_PLATFORMS": "cpu"}
  if address is None:
    options = {"num_cpus": max(os.cpu_count() or 1, math.ceil(_cpus_needed(cfg))),
               "object_store_memory": _OBJECT_STORE_BYTES, "include_dashboard": False}
  else:
    options = {"runtime_env": {"env_vars": actor_env}}
  environ = {k: os.environ.get(k) for k in actor_env} if address is None else {}
  # Ray's processes are born with SIGINT and SIGTERM blocked, as the run's children are: a terminal's
  # Ctrl-C is the run's to handle (ray.shutdown stops them). Ray starts them by fork and exec, which
  # JAX's fork warning does not tell from a bare fork; and the line Ray logs that token authentication
  # is on (as it should be) is not the run's to print.
  logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
  # ray.init sets a SIGTERM handler of its own (sys.exit): the run's handlers stay.
  handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    with local.signals_held(), warnings.catch_warnings():
      warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
      os.environ.update({k: actor_env[k] for k in environ})
      try:   # "local": a new instance, even where RAY_ADDRESS or a `ray start` on this machine names one
        ray.init(address=address or "local", logging_level=logging.WARNING, log_to_driver=True, **options)
      finally:
        for k, value in environ.items():
          if value is None:
            del os.environ[k]
          else:
            os.environ[k] = value
        for s, handler in handlers.items():
          signal.signal(s, handler)
    yield
  finally:
    if ray.is_initialized():
      ray.shutdown()


def run(cfg: RunConfig, run, interrupted, resume) -> dict:
  """Runs ``run`` to a stop condition: the supervisor and its learner, with Ray actors."""
  return supervisor.run(cfg, run, interrupted, resume, actors=RayActors(cfg))


class RayActors:
  """The supervisor's ``Actors`` of the Ray backend: the session connects to
  Ray (while the learner process starts) and keeps the ``SnapshotBoard``;
  each actor is a ``RayActorChild``."""

  def __init__(self, cfg: RunConfig):
    self._cfg = cfg
    self._board: SnapshotBoard | None = None

  @contextlib.contextmanager
  def session(self, segments: supervisor.Segments):
    with _connected(self._cfg):
      self._board = SnapshotBoard(segments.stores)
      try:
        yield
      finally:
        self._board = None

  def start(self, actor_id: int, env_steps: int, segments: supervisor.Segments) -> "RayActorChild":
    return RayActorChild(self._cfg, actor_id, env_steps, self._board, segments)


class SnapshotBoard:
  """The newest params, epsilon and step of every learner as one Ray object,
  shared by the driver threads: ``newest`` puts a new object only when a
  learner has published since the last one."""

  def __init__(self, stores: dict[str, ParamStore]):
    self._lock = threading.Lock()
    self._snapshots = SnapshotReader(stores)
    self._newest: tuple[tuple[int, ...], Any] | None = None

  def newest(self) -> tuple[tuple[int, ...], Any] | None:
    """(versions, object ref of {learner id: (params, epsilon, step)}) of
    the newest publishes; None before every learner has published."""
    import ray  # pylint: disable=import-outside-toplevel
    with self._lock:
      if not self._snapshots.ready():
        return None
      if self._snapshots.changed() or self._newest is None:
        snaps = self._snapshots.newest()
        self._newest = (tuple(snap.version for snap in snaps.values()),
                        ray.put({lid: (snap.params, snap.epsilon, snap.step) for lid, snap in snaps.items()}))
      return self._newest


class _RemoteActing:
  """Actor ``actor_id``'s Actor, in a Ray worker (``ray.remote`` at use)."""

  def __init__(self, cfg: RunConfig, spaces: dict[str, LearnerSpace], actor_id: int, env_steps: int,
               driver_node: str, cpus: set[int] | None):
    import ray  # pylint: disable=import-outside-toplevel
    self.node_id = ray.get_runtime_context().get_node_id()
    if cpus is not None and self.node_id == driver_node:   # off the learner's CPUs (runtime.learner_cpus)
      os.sched_setaffinity(0, cpus)
    configure_jax("actor", cfg.runtime.compilation_cache)
    self._actor = make_actor(cfg, make_agents(cfg, spaces), actor_id, env_steps)
    self._version = None
    limit = cfg.replay.rate_tolerance if cfg.replay.samples_per_insert is not None else math.inf
    self._max_transitions = max(limit / 2, 1)   # a batch does not overrun the rate limiter's tolerance

  def node(self) -> tuple[str, str, int]:
    """(node id, node IP address, process id) of this actor."""
    import ray  # pylint: disable=import-outside-toplevel
    return self.node_id, ray.util.get_node_ip_address(), os.getpid()

  def steps(self, version: tuple[int, ...], snapshot: list, learner_steps: dict[str, int]) -> ActorStep:
    """Steps the environments for ``_CALL_SECONDS`` (at least once; fewer if
    a learner's transitions reach half the rate limiter's tolerance), with
    the snapshot ``snapshot[0]`` (fetched only if ``version`` is new to this
    actor); the steps' transitions, episodes and env steps, joined."""
    import ray  # pylint: disable=import-outside-toplevel
    if version != self._version:
      for lid, policy in ray.get(snapshot[0]).items():
        self._actor.set_policy(lid, *policy)
      self._version = version
    deadline = time.monotonic() + _CALL_SECONDS
    steps = []
    counts = collections.Counter()
    while not steps or (time.monotonic() < deadline and max(counts.values(), default=0) < self._max_transitions):
      step = self._actor.step(learner_steps)
      steps.append(step)
      counts.update({lid: len(t["action"]) for lid, t in step.transitions.items()})
    return _joined(steps)

def _joined(steps: list[ActorStep]) -> ActorStep:
  """Consecutive ActorSteps as one: transitions concatenated per learner and field."""
  transitions = {lid: {key: np.concatenate([s.transitions[lid][key] for s in steps]) for key in fields}
                 for lid, fields in steps[0].transitions.items()}
  return ActorStep(transitions, [e for s in steps for e in s.episodes], sum(s.env_steps for s in steps))


class RemoteActor:
  """An Actor whose environments step in a Ray actor: ``step`` is the next
  batch of steps the remote actor took, with the newest snapshot on the
  ``SnapshotBoard``, and keeps ``_CALLS_IN_FLIGHT`` calls going. A step
  with nothing in it means no batch yet (it waited ``_WAIT_S`` at most). It
  has no ``set_policy``: the ActingLoop over it gets no policies (the remote
  actor's come from the board). A failed call raises (RayActorError for a
  dead actor; the error raised in it otherwise)."""

  def __init__(self, cfg: RunConfig, spaces: dict[str, LearnerSpace], actor_id: int, env_steps: int,
               board: SnapshotBoard, cpus: set[int] | None):
    import ray  # pylint: disable=import-outside-toplevel
    self._ray, self._board = ray, board
    # SPREAD: the actors go to as many nodes as they can, as Ape-X's do.
    remote = ray.remote(_RemoteActing).options(num_cpus=cfg.runtime.ray.num_cpus_per_actor, max_restarts=0,
                                               scheduling_strategy="SPREAD")
    self.handle = remote.remote(cfg, spaces, actor_id, env_steps, ray.get_runtime_context().get_node_id(), cpus)
    self._calls: collections.deque = collections.deque()

  def step(self, learner_steps: dict[str, int]) -> ActorStep:
    while len(self._calls) < _CALLS_IN_FLIGHT:
      newest = self._board.newest()
      if newest is None:
        break
      version, ref = newest
      self._calls.append(self.handle.steps.remote(version, [ref], learner_steps))
    if not self._calls:
      time.sleep(_WAIT_S)
      return _NO_STEP
    ready, _ = self._ray.wait([self._calls[0]], timeout=_WAIT_S)
    if not ready:
      return _NO_STEP
    return self._ray.get(self._calls.popleft())

  def close(self) -> None:
    """Stops the remote actor, placed or not (no restart by Ray: the supervisor restarts)."""
    self._calls.clear()
    self._ray.kill(self.handle, no_restart=True)


class _DriverControl:
  """A driver thread's view of the run, as ``local.ChildControl`` is a
  process's: the control block's arrays, and whether to stop (the
  supervisor asked all actors, or ``kill`` asked this one)."""

  def __init__(self, arrays: dict):
    self.arrays = arrays
    self.killed = threading.Event()

  def should_stop(self) -> bool:
    return bool(self.arrays["stop"][0] >= local.STOP_ACTORS) or self.killed.is_set()


class RayActorChild:
  """Actor ``actor_id`` as the supervisor sees it (its ``Child``): a Ray
  actor and the thread here that drives it. Its messages go through a queue
  of this process. Once the remote actor has started, it logs where it runs:
  ``actor_node`` (Ray's node id), ``actor_address`` (the node's IP) and
  ``actor_pid``."""

  def __init__(self, cfg: RunConfig, actor_id: int, env_steps: int, board: SnapshotBoard,
               segments: supervisor.Segments):
    self.name = f"actor {actor_id}"
    self._messages: queue_lib.SimpleQueue = queue_lib.SimpleQueue()
    self._control = _DriverControl(segments.control.arrays)
    cpus = segments.shared.placement[1] if segments.shared.placement else None
    self._remote = RemoteActor(cfg, segments.shared.spaces, actor_id, env_steps, board, cpus)
    self._thread = threading.Thread(target=self._drive, args=(actor_id, segments.replays),
                                    name=f"jaxrl-ray-actor-{actor_id}", daemon=True)
    self._thread.start()

  def _drive(self, actor_id: int, replays: dict) -> None:
    import ray  # pylint: disable=import-outside-toplevel
    try:
      started = self._remote.handle.node.remote()
      while not ray.wait([started], timeout=_WAIT_S)[0]:   # Ray may not be able to place it (yet)
        if self._control.should_stop():
          return
      node_id, address, pid = ray.get(started)
      self._messages.put(("record", {"actor_id": actor_id, "actor_node": node_id, "actor_address": address,
                                     "actor_pid": pid}))
      local.run_actor(actor_id, self._remote, lambda: {}, self._control, replays, self._messages)
    except Exception as e:  # pylint: disable=broad-except
      reason, trace = describe_error(e)
      self._messages.put(("error", {"process": self.name, "reason": reason, "traceback": trace}))
    finally:
      with contextlib.suppress(Exception):   # Ray may be shut down already
        self._remote.close()

  def receive(self, limit: int) -> list[tuple[str, Any]]:
    messages = []
    try:
      while len(messages) < limit:
        messages.append(self._messages.get_nowait())
    except queue_lib.Empty:
      pass
    return messages

  def alive(self) -> bool:
    return self._thread.is_alive()

  def exit_reason(self) -> str:
    return "its driver thread ended"

  def kill(self) -> bool:
    """Stops the thread and kills the Ray actor; False if the thread is still running after ``_KILL_WAIT_S``."""
    import ray  # pylint: disable=import-outside-toplevel
    self._control.killed.set()
    self._thread.join(timeout=_KILL_WAIT_S)
    if self._thread.is_alive():   # stuck in a call to Ray: the remote actor goes at least
      ray.kill(self._remote.handle, no_restart=True)
    return not self._thread.is_alive()

  def close(self) -> None:
    """Nothing to release: the thread closed the remote actor as it ended."""
