"""The actor-learner runtime: supervisor, learner and actor processes, sync mode.

Processes (``runtime.mode = "async"``):
  supervisor (the caller of ``train``): owns every shared-memory segment,
    starts the children, drains their small messages into the run directory,
    evaluates published params, checks stop conditions, restarts crashed
    actors, stops everything.
  learner (one per agent): samples replay, runs the jitted train_step (fused
    ``learner.updates_per_call`` at a time with ``lax.scan``; on the GPU when
    there is one), publishes params, epsilon and step to its ParamStore, and
    writes the checkpoints.
  actors (``actors.num``): step ``actors.envs_per_actor`` environments with
    the newest snapshot (one integer read per step to notice a new version)
    and write n-step transitions to their partition of the agent's replay.

Bulk data stays in shared memory; a pipe from each child carries its episode
returns, learner metrics and errors. With ``runtime.learner_cpus``, the
learner runs on CPUs of its own and everything else on the rest.
``runtime.mode = "sync"`` interleaves the same Actor and Learner objects in
this process: deterministic for a seed.

Failures: a crashed actor is restarted up to ``actors.max_restarts`` times;
a learner exception or a non-finite loss, gradient or state stops the run
(``stopped_because = "error"``) without overwriting the last good
checkpoint; children whose supervisor died exit and unlink the segments.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import multiprocessing as mp
import os
import queue as queue_lib
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from jaxrl.config import RunConfig, config_to_dict, save_config
from jaxrl.logger import MetricsLogger, ProgressDisplay, plot_learning_curve, write_summary
from jaxrl.replay import SharedReplay
from jaxrl.shm import ParamStore, SharedBlock, check_free_space, check_memory_ordering, unlink_orphaned

_POLL_S = 0.0005      # back-off of a process waiting on the rate limiter or the supervisor
CHECKPOINT_DIR = "checkpoints"
ERRORS_FILE = "errors.log"


_jax_role: str | None = None   # the role configure_jax set this process's JAX up for


def configure_jax(role: str, compilation_cache: str | None = None) -> None:
  """Per-process JAX setup, before the first computation. Actors, the
  supervisor and sync mode ("actor", "supervisor") stay on one CPU thread
  and off any accelerator; the learner takes the default backend (the GPU
  when there is one). With ``compilation_cache`` (a directory), compiled
  programs persist across runs.

  Each process sets JAX up for its own role only: the environment that the
  processes it starts inherit is left as it was. The backend settings are
  made once per process (JAX reads them when it creates its first client);
  later calls only update the compilation cache.
  """
  global _jax_role
  import jax  # pylint: disable=import-outside-toplevel
  if compilation_cache is not None:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(compilation_cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  if _jax_role is not None:
    return
  _jax_role = role
  if role == "learner":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # read by this process only
    return
  import threadpoolctl  # pylint: disable=import-outside-toplevel
  threadpoolctl.threadpool_limits(1)   # numpy's BLAS: the numpy forward pass at E >= 16
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  flags = os.environ.get("XLA_FLAGS")
  os.environ["XLA_FLAGS"] = f"{flags or ''} --xla_cpu_multi_thread_eigen=false".strip()
  try:
    jax.devices("cpu")   # creates the CPU client, which reads XLA_FLAGS now and never again
  finally:
    if flags is None:
      del os.environ["XLA_FLAGS"]
    else:
      os.environ["XLA_FLAGS"] = flags


def env_spaces(cfg: RunConfig) -> tuple[tuple[int, ...], np.dtype, int]:
  """(obs_shape, obs_dtype, num_actions) of cfg.env; raises EnvError if jaxrl can't serve it."""
  from jaxrl.actor import make_vec_env  # pylint: disable=import-outside-toplevel
  envs = make_vec_env(cfg.env, 1)
  space = envs.single_observation_space
  spaces = (tuple(space.shape), np.dtype(space.dtype), int(envs.single_action_space.n))
  envs.close()
  return spaces


def _make_agent(cfg: RunConfig):
  from jaxrl.learner import make_agent  # pylint: disable=import-outside-toplevel
  obs_shape, _, num_actions = env_spaces(cfg)
  return make_agent(cfg.agent, obs_shape, num_actions)


def _initial_state(agent, seed: int):
  """agent.init(PRNGKey(seed)), jitted: one compile instead of one per op."""
  import jax  # pylint: disable=import-outside-toplevel
  return jax.jit(agent.init)(jax.random.PRNGKey(seed))


def _seed(cfg: RunConfig, *keys: int) -> int:
  """A uint32 seed for one stream of the run (actor envs, replay sampling,
  evaluation), distinct per ``keys`` and reproducible for ``cfg.seed``."""
  return int(np.random.SeedSequence([cfg.seed, *keys]).generate_state(1)[0])


def _actor_seed(cfg: RunConfig, actor_id: int, env_steps: int) -> int:
  """Seed of actor ``actor_id`` started when the run had ``env_steps``: a
  restarted or resumed actor does not replay the episodes of its first life."""
  return _seed(cfg, 1, actor_id, env_steps)


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


class NonFiniteError(RuntimeError):
  """The learner produced a non-finite loss, gradient or state."""


class Learner:
  """Samples replay, applies fused train_steps, publishes params.

  ``update`` runs ``learner.updates_per_call`` train_steps in one jitted
  ``lax.scan`` dispatch; JAX's async dispatch lets the next batch be sampled
  and transferred while the device computes, up to ``_MAX_IN_FLIGHT`` calls
  ahead of it: a bound on how stale a publish can be and on how far the
  samples counted by the rate limiter run ahead of the updates made. The same
  dispatch adds each step's metrics to device-side totals, which ``report``
  reads once (and checks are finite): a read per update would cost the loop a
  tenth of its rate.
  """

  _MAX_IN_FLIGHT = 2

  def __init__(self, cfg: RunConfig, agent, replay: SharedReplay, state, publish):
    import jax  # pylint: disable=import-outside-toplevel
    self._jax = jax
    self.agent, self.replay, self.state = agent, replay, state
    self._publish = publish
    self._batch = cfg.learner.batch_size
    self._fused = cfg.learner.updates_per_call
    self._publish_interval = cfg.learner.publish_interval
    self._report_seconds = cfg.runtime.log_interval_seconds
    self._report_steps = cfg.runtime.log_interval_learner_steps
    self.steps = int(state.step)
    self._rng = np.random.default_rng(_seed(cfg, 2, self.steps))

    def fused_steps(state, batches, totals):
      state, metrics = jax.lax.scan(agent.train_step, state, batches)
      return state, jax.tree.map(lambda total, m: total + m.sum(0), totals, metrics)
    self._update = jax.jit(fused_steps)
    padding = self._fused_batches(replay.padding_batch(self._batch * self._fused))
    _, metric_shapes = jax.eval_shape(agent.train_step, state, jax.tree.map(lambda x: x[0], padding))
    self._zeros = jax.tree.map(lambda m: jax.numpy.zeros(m.shape, m.dtype), metric_shapes)
    # Metric sums since learner step `_reported_at` (reported at `_reported_time`),
    # and the learner steps between acting and sampling, summed over valid samples.
    self._totals, self._reported_at, self._reported_time = self._zeros, self.steps, time.monotonic()
    self._age_sum, self._age_count = 0.0, 0
    self._in_flight: collections.deque = collections.deque()   # step outputs of dispatched calls
    self._publish(state)
    self._published_at = self.steps
    self._outgoing = None   # a state being copied to the host for its publish
    # Compile while the actors fill replay: the update is pure, so a padding
    # batch compiles it without touching the state.
    self._update(state, padding, self._zeros)

  def can_update(self) -> bool:
    return self.replay.can_sample(self._batch * self._fused)

  def update(self) -> None:
    """Samples and dispatches one fused update, and publishes without waiting
    for the device: once a publish is due, the state computed by then starts
    its copy to the host, and it is published at the first later call that
    finds the copy complete. The device never idles for a publish, at the cost
    of at most ``_MAX_IN_FLIGHT`` calls of policy lag."""
    batch, policy_step = self.replay.sample(self._batch * self._fused, self._rng)
    valid = batch.valid > 0   # an invalid row's policy_step is 0, not an age
    self._age_sum += float((self.steps - policy_step[valid]).sum())
    self._age_count += int(valid.sum())
    if self._outgoing is None and self.steps - self._published_at >= self._publish_interval:
      self._outgoing = self.state
      for leaf in self._jax.tree.leaves((self.state.params, self.state.epsilon, self.state.step)):
        leaf.copy_to_host_async()
    self.state, self._totals = self._update(self.state, self._fused_batches(batch), self._totals)
    self.steps += self._fused
    self._in_flight.append(self.state.step)
    if len(self._in_flight) > self._MAX_IN_FLIGHT:
      self._in_flight.popleft().block_until_ready()
    # One computation's outputs are ready together: its step stands for all.
    if self._outgoing is not None and self._outgoing.step.is_ready():
      self._publish(self._outgoing)
      self._published_at, self._outgoing = int(self._outgoing.step), None

  def _fused_batches(self, batch):
    """[F * B, ...] -> [F, B, ...]: one batch per fused update."""
    return self._jax.tree.map(lambda x: x.reshape(self._fused, self._batch, *x.shape[1:]), batch)

  def report_due(self) -> bool:
    """Whether ``runtime.log_interval_seconds`` or ``log_interval_learner_steps``
    have passed since the last report."""
    return (self.steps - self._reported_at >= self._report_steps
            or time.monotonic() - self._reported_time >= self._report_seconds)

  def report(self) -> dict[str, float]:
    """A learner record: the means of ``train_step``'s metrics since the
    last report, except ``epsilon`` and ``learning_rate``, which are their
    values at the record's ``learner_steps``; ``sample_age``, learner steps
    between the params that acted and the learner step that sampled (valid
    samples only); ``updates_per_s`` since the last report. Empty if there
    was no update since.

    Raises:
      NonFiniteError: a loss or gradient norm since the last report was not
        finite (a non-finite term makes its total non-finite).
    """
    totalled, now = self.steps - self._reported_at, time.monotonic()
    if not totalled:
      return {}
    totals = self._jax.device_get(self._totals)
    for key in ("loss", "grad_norm"):
      if not np.isfinite(totals[key]):
        raise NonFiniteError(f"non-finite {key} ({totals[key]}) before learner step {self.steps}")
    out = {k: float(v) / totalled for k, v in totals.items()}
    out.update(learner_steps=self.steps, epsilon=float(self.state.epsilon),
               learning_rate=float(self.agent.learning_rate_schedule(self.state.step)),
               updates_per_s=totalled / max(now - self._reported_time, 1e-9))
    if self._age_count:
      out["sample_age"] = self._age_sum / self._age_count
    self._totals, self._reported_at, self._reported_time = self._zeros, self.steps, now
    self._age_sum, self._age_count = 0.0, 0
    return out


def param_publisher(store: ParamStore):
  """A Learner ``publish`` callback that publishes to ``store``."""
  def publish(state) -> None:
    store.publish(state.params, epsilon=float(state.epsilon), step=int(state.step))
  return publish


class _Checkpointer:
  """Writes ``<run_dir>/checkpoints/step_<n>.ckpt`` every
  ``checkpoint.interval_seconds`` and on request. A state with a non-finite
  leaf is never written, so the last checkpoint stays a good one."""

  def __init__(self, cfg: RunConfig, run_dir: Path, replay: SharedReplay):
    self._cfg, self._directory, self._replay = cfg, run_dir / CHECKPOINT_DIR, replay
    self._config = config_to_dict(cfg)
    self._last = time.monotonic()

  def due(self) -> bool:
    return time.monotonic() - self._last >= self._cfg.checkpoint.interval_seconds

  def save(self, state, counters: dict[str, int]) -> Path:
    import jax  # pylint: disable=import-outside-toplevel
    from jaxrl.checkpoint import save_checkpoint  # pylint: disable=import-outside-toplevel
    state = jax.device_get(state)
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
      if np.issubdtype(np.asarray(leaf).dtype, np.floating) and not np.isfinite(leaf).all():
        raise NonFiniteError(f"non-finite state{jax.tree_util.keystr(path)} at learner step "
                             f"{counters['learner_steps']}; last good checkpoint kept")
    extra = ({f"replay.{k}": v for k, v in self._replay.contents().items()}
             if self._cfg.checkpoint.replay else None)
    self._last = time.monotonic()
    return save_checkpoint(self._directory, state, counters, self._config, self._cfg.checkpoint.keep, extra)


def _restored_state(agent, cfg: RunConfig, checkpoint: Path | None):
  """The learner's first state: fresh for ``cfg.seed``, or the checkpoint's."""
  state = _initial_state(agent, cfg.seed)
  if checkpoint is not None:
    from jaxrl.checkpoint import restore_checkpoint  # pylint: disable=import-outside-toplevel
    state, _, _ = restore_checkpoint(checkpoint, state)
  return state


# --- Child processes -----------------------------------------------------------


AGENT_ID = "agent_0"   # the one agent of a gymnasium env (design section 4)


@dataclasses.dataclass(frozen=True)
class _Shared:
  """What a child needs: picklable segment handles and the run's files."""
  control: Any          # BlockHandle: stop flag and counters (see _control_specs)
  params: Any           # ParamStoreHandle of the learner
  replay: Any           # ReplayHandle of the learner
  run_dir: Path
  checkpoint: Path | None   # checkpoint the learner resumes from
  compilation_cache: str | None
  placement: tuple[set[int], set[int]] | None   # cpu_placement: the learner's CPUs, the others'


def _control_specs(num_actors: int) -> dict:
  """The control block: ``stop`` (0 = run, _STOP_ACTORS, _STOP_ALL); per-actor ``env_steps`` and
  ``episodes`` since launch; counts ``restored`` from a checkpoint (env
  steps, episodes); the learner's ``learner_steps``."""
  return {"stop": ((1,), "int64"), "env_steps": ((num_actors,), "int64"),
          "episodes": ((num_actors,), "int64"), "restored": ((2,), "int64"),
          "learner_steps": ((1,), "int64")}


def _counters(arrays: dict) -> dict[str, int]:
  """The run's env_steps, episodes and learner_steps from the control block."""
  return {"env_steps": int(arrays["restored"][0] + arrays["env_steps"].sum()),
          "episodes": int(arrays["restored"][1] + arrays["episodes"].sum()),
          "learner_steps": int(arrays["learner_steps"][0])}


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


def _episode_record(episode, actor_id: int) -> dict:
  return {"episode_return": episode.episode_return, "episode_length": episode.length,
          "policy_lag": episode.policy_lag, "agent_id": AGENT_ID, "actor_id": actor_id}


def _error_message(process: str, error: BaseException) -> tuple[str, dict]:
  reason = " ".join(f"{type(error).__name__}: {error}".split())
  return ("error", {"process": process, "reason": reason, "traceback": traceback.format_exc()})


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


_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def _signals_ignored_by_children():
  """Processes started inside this block ignore SIGINT and SIGTERM from
  birth: an ignored disposition survives spawn's and the fork server's
  exec, so a Ctrl-C or a ``kill -TERM -PGID`` that reaches the whole process
  group while a child still imports is the supervisor's alone to handle.
  Signals to this process are held meanwhile and delivered on exit."""
  signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
  previous = {s: signal.signal(s, signal.SIG_IGN) for s in _SIGNALS}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


@contextlib.contextmanager
def _child(role: str, process: str, shared: _Shared, connection):
  """Runs the body of child ``process``: sets it up, attaches (control,
  store, replay), reports an exception as an "error" message (exit status 1,
  no traceback on the console), and detaches. The learner of a dead
  supervisor also unlinks the segments."""
  signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)   # ignored since birth; the supervisor stops us
  if shared.placement is not None:   # before JAX sizes its thread pools
    os.sched_setaffinity(0, shared.placement[0 if role == "learner" else 1])
  outbox = _Outbox(connection)
  configure_jax(role, shared.compilation_cache)
  block = SharedBlock.attach(shared.control)
  control = _ChildControl(block)
  store = ParamStore.attach(shared.params)
  replay = SharedReplay.attach(shared.replay)
  failed = False
  try:
    yield control, store, replay, outbox
  except Exception as e:  # pylint: disable=broad-except
    outbox.put(_error_message(process, e))
    failed = True
  finally:
    replay.close()
    store.close()
    block.close()
    orphaned = control.orphaned()
    outbox.close(flush=not orphaned)
    if orphaned and role == "learner":
      for handle in (shared.control, shared.params.block, shared.replay.block):
        unlink_orphaned(handle)
  if failed:
    sys.exit(1)


def _actor_main(actor_id: int, cfg: RunConfig, shared: _Shared, seed: int, connection) -> None:
  with _child("actor", f"actor {actor_id}", shared, connection) as (control, store, replay, outbox):
    from jaxrl.actor import Actor, make_vec_env  # pylint: disable=import-outside-toplevel
    writer = replay.writer(actor_id)
    envs = make_vec_env(cfg.env, cfg.actors.envs_per_actor)
    actor = Actor(_make_agent(cfg), envs, seed=seed, n_step=cfg.replay.n_step, gamma=cfg.replay.gamma)
    arrays = control.arrays
    while store.latest_version() == 0:
      if control.should_stop():
        return
      time.sleep(_POLL_S)
    version = 0
    while not control.should_stop():
      if store.latest_version() != version:
        snap = store.read()
        actor.set_policy(snap.params, snap.epsilon, snap.step)
        version = snap.version
      transitions, episodes, env_steps = actor.step(int(arrays["learner_steps"][0]))
      n = len(transitions["action"])
      while not writer.can_insert(n) and not control.should_stop():
        time.sleep(_POLL_S)
      writer.add(transitions)
      arrays["env_steps"][actor_id] += env_steps
      arrays["episodes"][actor_id] += len(episodes)
      for episode in episodes:
        outbox.put(("episode", _episode_record(episode, actor_id)))
    envs.close()


def _learner_main(cfg: RunConfig, shared: _Shared, connection) -> None:
  """The learner process's loop: update when the rate limiter allows, report
  metrics, checkpoint periodically and once more when the run stops."""
  with _child("learner", "learner", shared, connection) as (control, store, replay, outbox):
    arrays = control.arrays
    agent = _make_agent(cfg)
    learner = Learner(cfg, agent, replay, _restored_state(agent, cfg, shared.checkpoint), param_publisher(store))
    checkpointer = _Checkpointer(cfg, shared.run_dir, replay)

    def report() -> None:
      metrics = learner.report()
      if metrics:
        outbox.put(("learner", {"learner_id": AGENT_ID, **metrics}))

    while not control.should_stop(_STOP_ALL):
      if learner.can_update():
        learner.update()
        arrays["learner_steps"][0] = learner.steps
      else:
        time.sleep(_POLL_S)
      if learner.report_due():
        report()
      if checkpointer.due():
        report()
        checkpointer.save(learner.state, _counters(arrays))
    report()
    checkpointer.save(learner.state, _counters(arrays))


# --- The supervisor -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Resume:
  """What ``train`` resumes from: the checkpoint and the counters in it."""
  checkpoint: Path
  counters: dict[str, int]
  replay: dict[str, np.ndarray] | None   # replay contents, if the checkpoint has them


def load_resume(cfg: RunConfig, run_dir: str | os.PathLike) -> Resume:
  """Checks that ``run_dir``'s latest checkpoint restores into ``cfg``'s agent.

  Sets this process's JAX up as the supervisor's first (``configure_jax``):
  reading a checkpoint must not start JAX with its defaults (on a GPU host,
  the GPU with its default preallocation).

  Raises:
    CheckpointError: no checkpoint, a corrupt one, or one of another agent.
  """
  configure_jax("supervisor", cfg.runtime.compilation_cache)
  import jax  # pylint: disable=import-outside-toplevel
  from jaxrl import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
  directory = Path(run_dir) / CHECKPOINT_DIR
  path = ckpt.latest_checkpoint(directory)
  if path is None:
    raise ckpt.CheckpointError(f"{directory}: no checkpoint to resume from")
  agent = _make_agent(cfg)
  _, counters, _ = ckpt.restore_checkpoint(path, jax.eval_shape(agent.init, jax.random.PRNGKey(0)))
  extra = ckpt.load_extra_arrays(path)
  replay = {k.removeprefix("replay."): v for k, v in extra.items() if k.startswith("replay.")}
  return Resume(path, {k: int(counters[k]) for k in ("env_steps", "episodes", "learner_steps")},
                replay or None)


def _shared_memory_bytes(cfg: RunConfig) -> int:
  """Bytes of /dev/shm the run's segments take: the replay, and in async
  mode the ParamStore and the control block too."""
  import jax  # pylint: disable=import-outside-toplevel
  obs_shape, obs_dtype, _ = env_spaces(cfg)
  total = SharedReplay.nbytes(obs_shape, obs_dtype, cfg.replay.capacity, cfg.actors.num)
  if cfg.runtime.mode == "async":
    template = jax.eval_shape(_make_agent(cfg).init, jax.random.PRNGKey(0)).params
    total += ParamStore.nbytes(template) + SharedBlock.nbytes(_control_specs(cfg.actors.num))
  return total


def preflight(cfg: RunConfig) -> None:
  """Every check a run can fail before it writes anything: the environment
  (``actor.EnvError``), and for the shared-memory segments this CPU's memory
  ordering (async mode) and the free space in /dev/shm
  (``shm.SharedMemoryError``). Sets this process's JAX up as the
  supervisor's."""
  configure_jax("supervisor", cfg.runtime.compilation_cache)
  env_spaces(cfg)
  if cfg.runtime.mode == "async":
    check_memory_ordering()
  check_free_space(_shared_memory_bytes(cfg), "this run's replay and parameters")


class _Run:
  """Run-directory bookkeeping shared by sync and async mode."""

  def __init__(self, cfg: RunConfig, run_dir: Path, launch_time: float, resume: Resume | None):
    self.cfg, self.run_dir, self.launch_time = cfg, run_dir, launch_time
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    self.logger = MetricsLogger(run_dir, launch_time, resume=resume is not None, config=config_to_dict(cfg))
    self.progress = ProgressDisplay(cfg.runtime.progress, stop_env_steps=cfg.stop.env_steps,
                                    stop_seconds=cfg.stop.seconds)
    counters = resume.counters if resume else {}
    self.env_steps = counters.get("env_steps", 0)
    self.episodes = counters.get("episodes", 0)
    self.learner_steps = counters.get("learner_steps", 0)
    self.eval_return: float | None = None
    self.stopped_because: str | None = None
    self.error: str | None = None
    self.actor_restarts = 0
    self.killed: list[str] = []   # processes killed because they did not stop in time
    self._rate_mark = (time.monotonic(), self.env_steps)   # when the last learner record was logged

  def set_counters(self, counters: dict[str, int]) -> None:
    """Takes env_steps, episodes and learner_steps from ``_counters``."""
    self.env_steps, self.episodes, self.learner_steps = (
        counters["env_steps"], counters["episodes"], counters["learner_steps"])

  def log(self, record: dict) -> None:
    record = self.logger.log({"env_steps": int(self.env_steps), "learner_steps": int(self.learner_steps),
                              **record})
    self.progress.update(record)

  def log_learner(self, record: dict) -> None:
    """Logs a learner's ``Learner.report`` with the run's ``sps``: env steps
    per second since the previous learner record."""
    now, (then, env_steps) = time.monotonic(), self._rate_mark
    self._rate_mark = (now, self.env_steps)
    self.log({**record, "sps": (self.env_steps - env_steps) / max(now - then, 1e-9)})

  def fail(self, process: str, reason: str, trace: str | None = None) -> None:
    """Records a failure: one line on stderr, the traceback in errors.log."""
    print(f"jaxrl: {process} failed: {reason}", file=sys.stderr, flush=True)
    with open(self.run_dir / ERRORS_FILE, "a") as f:
      f.write(f"[{self.logger.elapsed():.1f}s] {process}: {reason}\n{trace or ''}\n")

  def check_stop(self) -> bool:
    stop = self.cfg.stop
    if self.error is not None:
      self.stopped_because = "error"
    elif stop.env_steps is not None and self.env_steps >= stop.env_steps:
      self.stopped_because = "env_steps"
    elif stop.seconds is not None and self.logger.elapsed() >= stop.seconds:
      self.stopped_because = "seconds"
    elif stop.eval_return is not None and self.eval_return is not None and self.eval_return >= stop.eval_return:
      self.stopped_because = "eval_return"
    return self.stopped_because is not None

  def finish(self, extra: dict) -> dict:
    self.progress.close()
    summary = {"eval_return": self.eval_return, "env_steps": int(self.env_steps),
               "learner_steps": int(self.learner_steps), "episodes": int(self.episodes),
               "wall_seconds": self.logger.elapsed(), "launch_time": self.launch_time,
               "stopped_because": self.stopped_because or "interrupted",
               "actor_restarts": self.actor_restarts, "killed": self.killed, **extra}
    if self.error is not None:
      summary["error"] = self.error
    self.logger.close()
    write_summary(self.run_dir, summary)
    plot_learning_curve(self.run_dir)
    return summary


class _Evaluator:
  """Greedy evaluation every ``eval.interval`` learner steps on its own envs.
  An env without a time limit of its own has its evaluation episodes cut at
  ``eval.max_episode_steps``."""

  def __init__(self, cfg: RunConfig, agent, learner_steps: int):
    from jaxrl.actor import has_time_limit, make_vec_env  # pylint: disable=import-outside-toplevel
    self.cfg, self.agent = cfg, agent
    self.envs = make_vec_env(cfg.env, cfg.eval.episodes) if cfg.eval.interval > 0 else None
    self.max_steps = None if self.envs is None or has_time_limit(self.envs) else cfg.eval.max_episode_steps
    self._schedule(learner_steps)

  def _schedule(self, learner_steps: int) -> None:
    if self.envs is not None:
      self.next_step = (learner_steps // self.cfg.eval.interval + 1) * self.cfg.eval.interval

  def due(self, learner_steps: int) -> bool:
    return self.envs is not None and learner_steps >= self.next_step

  def __call__(self, params, learner_steps: int) -> dict[str, float]:
    """An evaluation record: ``eval_return`` (the team return), the return
    of each agent, and ``eval_capped``, the episodes cut at the step cap."""
    from jaxrl.actor import evaluate  # pylint: disable=import-outside-toplevel
    self._schedule(learner_steps)
    result = evaluate(self.agent, params, self.envs, self.cfg.eval.epsilon,
                      seed=_seed(self.cfg, 3, learner_steps), max_steps=self.max_steps)
    return {"eval_return": result.mean_return, f"eval_return/{AGENT_ID}": result.mean_return,
            "eval_capped": result.capped}


class _Interrupted:
  """SIGINT/SIGTERM set a flag that the supervisor's loop checks; a second
  one raises KeyboardInterrupt, which stops the run at once."""

  def __init__(self):
    self.signum: int | None = None
    self._previous = {s: signal.signal(s, self._handle) for s in _SIGNALS}

  def _handle(self, signum, _frame):
    if self.signum is not None:
      raise KeyboardInterrupt
    self.signum = signum

  def restore(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def train(cfg: RunConfig, run_dir: str | os.PathLike, launch_time: float | None = None,
          resume: Resume | None = None) -> dict:
  """Runs training to a stop condition; returns the summary (also in summary.json).

  Runs ``preflight`` first: a run that cannot start fails before it writes
  anything. With ``resume`` (from ``load_resume``), the learner state,
  counters, metrics.jsonl and (if saved) replay continue from the
  checkpoint. A second SIGINT/SIGTERM raises KeyboardInterrupt after killing
  the children and unlinking the segments, without a final checkpoint or
  summary.
  """
  launch_time = time.time() if launch_time is None else launch_time
  preflight(cfg)
  run = _Run(cfg, Path(run_dir), launch_time, resume)
  interrupted = _Interrupted()
  try:
    if cfg.runtime.mode == "sync":
      extra = _train_sync(cfg, run, interrupted, resume)
    else:
      extra = _train_async(cfg, run, interrupted, resume)
  finally:
    interrupted.restore()
  if interrupted.signum is not None and run.stopped_because is None:
    run.stopped_because = signal.Signals(interrupted.signum).name
  return run.finish(extra)


def _make_replay(cfg: RunConfig, resume: Resume | None) -> SharedReplay:
  """The agent's replay, filled from the checkpoint when it holds a replay of this layout."""
  obs_shape, obs_dtype, _ = env_spaces(cfg)
  replay = SharedReplay.create(obs_shape, obs_dtype, cfg.replay.capacity, cfg.actors.num,
                               cfg.replay.min_size, cfg.replay.samples_per_insert, cfg.replay.rate_tolerance)
  if resume is not None and resume.replay is not None:
    try:
      replay.restore(resume.replay)
    except ValueError as e:
      print(f"jaxrl: replay not restored, starting empty: {e}", file=sys.stderr)
  return replay


def _train_sync(cfg: RunConfig, run: _Run, interrupted: _Interrupted, resume: Resume | None) -> dict:
  """Actors and learner interleaved in this process; deterministic for a seed.

  With a rate limit, the learner updates whenever the limiter allows it;
  without one (``replay.samples_per_insert: null``), it makes one fused
  update per actor step once replay holds ``min_size``. Episode and eval
  records carry the run's ``acting_seconds`` and ``learning_seconds`` so far
  (actor steps; learner updates, blocked on)."""
  import jax  # pylint: disable=import-outside-toplevel
  from jaxrl.actor import Actor, make_vec_env  # pylint: disable=import-outside-toplevel
  agent = _make_agent(cfg)
  replay = _make_replay(cfg, resume)
  rate_limited = cfg.replay.samples_per_insert is not None
  acting = learning = 0.0
  try:
    actors = [Actor(agent, make_vec_env(cfg.env, cfg.actors.envs_per_actor),
                    seed=_actor_seed(cfg, i, run.env_steps), n_step=cfg.replay.n_step, gamma=cfg.replay.gamma)
              for i in range(cfg.actors.num)]
    writers = [replay.writer(i) for i in range(cfg.actors.num)]

    def publish(state):
      for actor in actors:
        actor.set_policy(state.params, float(state.epsilon), int(state.step))

    learner = Learner(cfg, agent, replay, _restored_state(agent, cfg, resume and resume.checkpoint), publish)
    checkpointer = _Checkpointer(cfg, run.run_dir, replay)
    evaluator = _Evaluator(cfg, agent, learner.steps)

    def counters():
      return {"env_steps": run.env_steps, "episodes": run.episodes, "learner_steps": learner.steps}

    def learn():
      nonlocal learning
      start = time.perf_counter()
      learner.update()
      jax.block_until_ready(learner.state)
      learning += time.perf_counter() - start
      run.learner_steps = learner.steps

    def report():
      metrics = learner.report()
      if metrics:
        run.log_learner({"learner_id": AGENT_ID, **metrics})

    def busy() -> dict[str, float]:
      return {"acting_seconds": acting, "learning_seconds": learning}

    try:
      while interrupted.signum is None and not run.check_stop():
        for i, (actor, writer) in enumerate(zip(actors, writers)):
          start = time.perf_counter()
          transitions, episodes, env_steps = actor.step(learner.steps)
          acting += time.perf_counter() - start
          while not writer.can_insert(len(transitions["action"])) and interrupted.signum is None:
            learn()
          writer.add(transitions)
          run.env_steps += env_steps
          run.episodes += len(episodes)
          for episode in episodes:
            run.log({**_episode_record(episode, i), **busy()})
          if not rate_limited and learner.can_update():
            learn()
        while rate_limited and learner.can_update() and interrupted.signum is None:
          learn()
        if evaluator.due(learner.steps):
          record = evaluator(learner.state.params, learner.steps)
          run.eval_return = record["eval_return"]
          run.log({**record, **busy()})
        if learner.report_due():
          report()
        if checkpointer.due():
          report()
          checkpointer.save(learner.state, counters())
      report()
      checkpointer.save(learner.state, counters())
    except Exception as e:  # pylint: disable=broad-except
      _, payload = _error_message("learner", e)
      run.error = payload["reason"]
      run.stopped_because = "error"
      run.fail("learner", payload["reason"], payload["traceback"])
  finally:
    replay.close()
    replay.unlink()
  return busy()


def _describe_exit(process) -> str:
  code = process.exitcode
  if code is not None and code < 0:
    return f"killed by {signal.Signals(-code).name}"
  return f"exited with status {code}"


_ACTORS_STOP_GRACE_S = 5.0    # seconds actors get to exit once asked to stop
_LEARNER_STOP_GRACE_S = 10.0  # seconds the learner gets to write its final checkpoint and exit,
_CHECKPOINT_BYTES_PER_S = 50e6   # plus this rate's time for a replay saved with it


def learner_stop_grace(cfg: RunConfig, replay_nbytes: int) -> float:
  """Seconds the learner gets to write its final checkpoint and exit: more
  when the checkpoint holds the replay (``checkpoint.replay``), at a
  conservative disk rate."""
  return _LEARNER_STOP_GRACE_S + (replay_nbytes / _CHECKPOINT_BYTES_PER_S if cfg.checkpoint.replay else 0.0)


def _train_async(cfg: RunConfig, run: _Run, interrupted: _Interrupted, resume: Resume | None) -> dict:
  ctx = mp.get_context(cfg.runtime.start_method)
  owned: list[Any] = []
  processes: dict[str, Any] = {}   # name -> its Process: "learner", "actor <i>"
  connections: dict[str, Any] = {}   # name -> receiving end of its pipe
  errors: dict[str, dict] = {}   # name -> its "error" message, until handled

  def drain() -> None:
    for kind, payload in _inbox(connections):
      if kind == "error":
        errors[payload["process"]] = payload
      elif kind == "learner":
        run.log_learner(payload)
      else:
        run.log(payload)

  def start(name: str, target, *args) -> None:
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=target, args=(*args, sender), name=f"jaxrl-{name.replace(' ', '-')}",
                        daemon=True)
    with _signals_ignored_by_children():
      child.start()
    sender.close()
    connections[name], processes[name] = receiver, child

  placement = _async_placement(cfg)   # its two sets make up this process's CPU set, restored at the end
  hurry = False
  replay_nbytes = 0
  try:
    control = SharedBlock.create(_control_specs(cfg.actors.num))
    owned.append(control)
    arrays = control.arrays
    arrays["restored"][:] = (run.env_steps, run.episodes)
    arrays["learner_steps"][0] = run.learner_steps
    replay = _make_replay(cfg, resume)
    owned.append(replay)
    replay_nbytes = SharedReplay.nbytes(*env_spaces(cfg)[:2], cfg.replay.capacity, cfg.actors.num)
    import jax  # pylint: disable=import-outside-toplevel
    agent = _make_agent(cfg)
    store = ParamStore.create(jax.eval_shape(agent.init, jax.random.PRNGKey(0)).params)
    owned.append(store)
    shared = _Shared(control.handle, store.handle, replay.handle, run.run_dir,
                     resume and resume.checkpoint, cfg.runtime.compilation_cache, placement)
    actor_names = [f"actor {i}" for i in range(cfg.actors.num)]

    def start_actor(i: int) -> None:
      start(actor_names[i], _actor_main, i, cfg, shared, _actor_seed(cfg, i, _counters(arrays)["env_steps"]))

    start("learner", _learner_main, cfg, shared)
    for i in range(cfg.actors.num):
      start_actor(i)
    if placement:   # only now: the children's start-up (imports) runs on every CPU
      os.sched_setaffinity(0, placement[1])
    restarts = [0] * cfg.actors.num
    evaluator = _Evaluator(cfg, agent, run.learner_steps)
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
        run.log({"actor_restarts": run.actor_restarts, "actor_id": i, "agent_id": AGENT_ID})
        start_actor(i)
      if run.check_stop():
        break
      if evaluator.due(run.learner_steps) and store.latest_version() > 0:
        snap = store.read()
        record = evaluator(snap.params, snap.step)
        run.eval_return = record["eval_return"]
        run.log({**record, "eval_learner_steps": snap.step})
      else:
        time.sleep(0.02)
  except KeyboardInterrupt:
    hurry = True
    raise
  finally:
    try:
      # Two phases, each with its own grace: the actors, then the learner.
      # A process still running at the end of its phase is killed, and named in the summary.
      phases = ((_STOP_ACTORS, [n for n in processes if n != "learner"], _ACTORS_STOP_GRACE_S),
                (_STOP_ALL, [n for n in processes if n == "learner"], learner_stop_grace(cfg, replay_nbytes)))
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
      finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
  error = errors.pop("learner", None)
  if error is not None and run.error is None:   # it failed saving the final checkpoint
    run.error = f"learner: {error['reason']}"
    run.stopped_because = "error"
    run.fail("learner", error["reason"], error["traceback"])
  if "learner" in run.killed and run.error is None:
    reason = (f"did not stop within {learner_stop_grace(cfg, replay_nbytes):.0f} s and was killed; "
              "its final checkpoint may be missing")
    run.error = f"learner: {reason}"
    run.fail("learner", reason)
  return {}
