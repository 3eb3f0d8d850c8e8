"""The actor-learner runtime: supervisor, learner and actor processes, sync mode.

Processes (``runtime.mode = "async"``):
  supervisor (the caller of ``train``): owns every shared-memory segment,
    starts the children, drains their small messages into the run directory,
    evaluates published params, checks stop conditions, stops everything.
  learner (one per agent): samples replay, runs the jitted train_step (fused
    ``learner.updates_per_call`` at a time with ``lax.scan``; on the GPU when
    there is one) and publishes params, epsilon and step to its ParamStore.
  actors (``actors.num``): step ``actors.envs_per_actor`` environments with
    the newest snapshot (one integer read per step to notice a new version)
    and write n-step transitions to their partition of the agent's replay.

Bulk data stays in shared memory; a multiprocessing queue carries episode
returns and learner metrics. ``runtime.mode = "sync"`` interleaves the same
Actor and Learner objects in this process: deterministic for a seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import queue as queue_lib
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxrl.config import RunConfig, save_config
from jaxrl.logger import MetricsLogger, ProgressDisplay, plot_learning_curve, write_summary
from jaxrl.replay import SharedReplay
from jaxrl.shm import ParamStore, SharedBlock

_POLL_S = 0.0005  # back-off of a process waiting on the rate limiter or the supervisor


def _configure_jax(role: str) -> None:
  """Per-process JAX setup, before the first computation. Actors and the
  supervisor stay on one CPU thread and off any accelerator; the learner
  takes the default backend (the GPU when there is one)."""
  import jax  # pylint: disable=import-outside-toplevel
  if role == "learner":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  else:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_cpu_enable_async_dispatch", False)


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


class Learner:
  """Samples replay, applies fused train_steps, publishes params.

  ``update`` runs ``learner.updates_per_call`` train_steps in one jitted
  ``lax.scan`` dispatch; JAX's async dispatch lets the next batch be sampled
  and transferred while the device computes. Metrics stay on the device
  until ``report`` averages them.
  """

  def __init__(self, cfg: RunConfig, agent, replay: SharedReplay, state, seed: int, publish):
    import jax  # pylint: disable=import-outside-toplevel
    self._jax = jax
    self.agent, self.replay, self.state = agent, replay, state
    self._publish = publish
    self._batch = cfg.learner.batch_size
    self._fused = cfg.learner.updates_per_call
    self._publish_interval = cfg.learner.publish_interval
    self._rng = np.random.default_rng(seed)

    def fused_steps(state, batches):
      return jax.lax.scan(agent.train_step, state, batches)
    self._update = jax.jit(fused_steps)
    self.steps = int(state.step)
    self._pending: list[Any] = []   # device metrics not yet reported
    self._lags: list[float] = []
    self.publish()

  def publish(self) -> None:
    self._publish(self.state)
    self._published_at = self.steps

  def can_update(self) -> bool:
    return self.replay.can_sample(self._batch * self._fused)

  def update(self) -> None:
    batch, policy_step = self.replay.sample(self._batch * self._fused, self._rng)
    batches = self._jax.tree.map(lambda x: x.reshape(self._fused, self._batch, *x.shape[1:]), batch)
    self._lags.append(float(self.steps - policy_step.mean()))
    self.state, metrics = self._update(self.state, batches)
    self._pending.append(metrics)
    self.steps += self._fused
    if self.steps - self._published_at >= self._publish_interval:
      self.publish()

  def report(self) -> dict[str, float]:
    """Means of the metrics since the last report, and ``sample_age``: learner
    steps between the params that acted and the learner step that sampled."""
    if not self._pending:
      return {}
    metrics = self._jax.device_get(self._pending)
    out = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
    out["sample_age"] = float(np.mean(self._lags))
    self._pending, self._lags = [], []
    return out


def _publisher(store: ParamStore):
  def publish(state) -> None:
    store.publish(state.params, epsilon=float(state.epsilon), step=int(state.step))
  return publish


# --- Child processes -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Shared:
  """Picklable handles a child attaches to."""
  control: Any          # BlockHandle: stop flag and counters
  params: Any           # ParamStoreHandle of agent 0
  replay: Any           # ReplayHandle of agent 0


def _watch_parent(parent_pid: int, control: dict) -> bool:
  """True when the run should stop: stop flag set, or the supervisor died."""
  return bool(control["stop"][0]) or os.getppid() != parent_pid


def _episode_record(episode, actor_id: int) -> dict:
  return {"episode_return": episode.episode_return, "episode_length": episode.length,
          "policy_lag": episode.policy_lag, "agent_id": 0, "actor_id": actor_id}


def _actor_seed(cfg: RunConfig, actor_id: int) -> int:
  return cfg.seed * 1000 + 17 * (actor_id + 1)


@contextlib.contextmanager
def _child(role: str, shared: _Shared, messages):
  """Sets up a child process and attaches (control, store, replay); detaches on exit."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the supervisor's to handle.
  _configure_jax(role)
  messages.cancel_join_thread()
  control = SharedBlock.attach(shared.control)
  store = ParamStore.attach(shared.params)
  replay = SharedReplay.attach(shared.replay)
  try:
    yield control, store, replay
  finally:
    replay.close()
    store.close()
    control.close()


def _actor_main(actor_id: int, cfg: RunConfig, shared: _Shared, messages, parent_pid: int) -> None:
  with _child("actor", shared, messages) as (control, store, replay):
    from jaxrl.actor import Actor, make_vec_env  # pylint: disable=import-outside-toplevel
    writer = replay.writer(actor_id)
    envs = make_vec_env(cfg.env, cfg.actors.envs_per_actor)
    actor = Actor(_make_agent(cfg), envs, seed=_actor_seed(cfg, actor_id),
                  n_step=cfg.replay.n_step, gamma=cfg.replay.gamma)
    arrays = control.arrays
    while store.latest_version() == 0:
      if _watch_parent(parent_pid, arrays):
        return
      time.sleep(_POLL_S)
    version = 0
    while not _watch_parent(parent_pid, arrays):
      if store.latest_version() != version:
        snap = store.read()
        actor.set_policy(snap.params, snap.epsilon, snap.step)
        version = snap.version
      transitions, episodes = actor.step(int(arrays["learner_steps"][0]))
      n = len(transitions["action"])
      while not writer.can_insert(n) and not _watch_parent(parent_pid, arrays):
        time.sleep(_POLL_S)
      writer.add(transitions)
      arrays["env_steps"][actor_id] += actor.num_envs
      for episode in episodes:
        messages.put(("episode", _episode_record(episode, actor_id)))
    envs.close()


def _learner_main(cfg: RunConfig, shared: _Shared, messages, parent_pid: int) -> None:
  with _child("learner", shared, messages) as (control, store, replay):
    try:
      _learn(cfg, control.arrays, store, replay, messages, parent_pid)
    except Exception as e:  # the supervisor stops the run with this reason
      messages.put(("error", f"learner: {type(e).__name__}: {e}"))
      raise


def _learn(cfg: RunConfig, arrays: dict, store: ParamStore, replay: SharedReplay, messages,
           parent_pid: int) -> None:
  """The learner process's loop: update when the rate limiter allows, report metrics."""
  import jax  # pylint: disable=import-outside-toplevel
  agent = _make_agent(cfg)
  state = agent.init(jax.random.PRNGKey(cfg.seed))
  learner = Learner(cfg, agent, replay, state, seed=cfg.seed + 1, publish=_publisher(store))
  last_report = time.monotonic()
  while not _watch_parent(parent_pid, arrays):
    if learner.can_update():
      learner.update()
      arrays["learner_steps"][0] = learner.steps
    else:
      time.sleep(_POLL_S)
    if time.monotonic() - last_report >= cfg.runtime.log_interval_seconds:
      interval, last_report = time.monotonic() - last_report, time.monotonic()
      steps_before = arrays["reported_steps"][0]
      report = learner.report()
      if report:
        report["updates_per_s"] = (learner.steps - steps_before) / interval
        arrays["reported_steps"][0] = learner.steps
        messages.put(("learner", {"agent_id": 0, **report}))


# --- The supervisor -------------------------------------------------------------


class _Run:
  """Run-directory bookkeeping shared by sync and async mode."""

  def __init__(self, cfg: RunConfig, run_dir: Path, launch_time: float):
    self.cfg, self.run_dir, self.launch_time = cfg, run_dir, launch_time
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    self.logger = MetricsLogger(run_dir, launch_time)
    self.progress = ProgressDisplay(cfg.runtime.progress, stop_env_steps=cfg.stop.env_steps,
                                    stop_seconds=cfg.stop.seconds)
    self.env_steps = self.learner_steps = 0
    self.eval_return: float | None = None
    self.stopped_because: str | None = None

  def log(self, record: dict) -> None:
    record = self.logger.log({"env_steps": int(self.env_steps), "learner_steps": int(self.learner_steps),
                              **record})
    self.progress.update(record)

  def check_stop(self) -> bool:
    stop = self.cfg.stop
    if stop.env_steps is not None and self.env_steps >= stop.env_steps:
      self.stopped_because = "env_steps"
    elif stop.seconds is not None and time.time() - self.launch_time >= stop.seconds:
      self.stopped_because = "seconds"
    elif stop.eval_return is not None and self.eval_return is not None and self.eval_return >= stop.eval_return:
      self.stopped_because = "eval_return"
    return self.stopped_because is not None

  def finish(self, extra: dict | None = None) -> dict:
    self.progress.close()
    self.logger.close()
    summary = {"eval_return": self.eval_return, "env_steps": int(self.env_steps),
               "learner_steps": int(self.learner_steps),
               "wall_seconds": time.time() - self.launch_time,
               "stopped_because": self.stopped_because or "interrupted", **(extra or {})}
    write_summary(self.run_dir, summary)
    plot_learning_curve(self.run_dir)
    return summary


class _Evaluator:
  """Greedy evaluation every ``eval.interval`` learner steps on its own envs."""

  def __init__(self, cfg: RunConfig, agent):
    from jaxrl.actor import make_vec_env  # pylint: disable=import-outside-toplevel
    self.cfg, self.agent = cfg, agent
    self.envs = make_vec_env(cfg.env, cfg.eval.episodes) if cfg.eval.interval > 0 else None
    self.next_step = cfg.eval.interval
    self.count = 0

  def due(self, learner_steps: int) -> bool:
    return self.envs is not None and learner_steps >= self.next_step

  def __call__(self, params, learner_steps: int) -> float:
    from jaxrl.actor import evaluate  # pylint: disable=import-outside-toplevel
    self.count += 1
    self.next_step = (learner_steps // self.cfg.eval.interval + 1) * self.cfg.eval.interval
    return evaluate(self.agent, params, self.envs, self.cfg.eval.epsilon,
                    seed=self.cfg.seed * 1000 + 999 + self.count)


class _Interrupted:
  """SIGINT/SIGTERM set a flag that the supervisor's loop checks."""

  def __init__(self):
    self.signum: int | None = None
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

  def _handle(self, signum, _frame):
    if self.signum is not None:   # a second Ctrl-C: stop at once (cleanup still runs)
      raise KeyboardInterrupt
    self.signum = signum

  def restore(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def train(cfg: RunConfig, run_dir: str | os.PathLike, launch_time: float | None = None) -> dict:
  """Runs training to a stop condition; returns the summary (also in summary.json)."""
  launch_time = time.time() if launch_time is None else launch_time
  run = _Run(cfg, Path(run_dir), launch_time)
  interrupted = _Interrupted()
  try:
    if cfg.runtime.mode == "sync":
      extra = _train_sync(cfg, run, interrupted)
    else:
      extra = _train_async(cfg, run, interrupted)
  finally:
    interrupted.restore()
  if interrupted.signum is not None:
    run.stopped_because = signal.Signals(interrupted.signum).name
  return run.finish(extra)


def _train_sync(cfg: RunConfig, run: _Run, interrupted: _Interrupted) -> dict:
  """Actors and learner interleaved in this process; deterministic for a seed."""
  _configure_jax("actor")
  import jax  # pylint: disable=import-outside-toplevel
  from jaxrl.actor import Actor, make_vec_env  # pylint: disable=import-outside-toplevel
  obs_shape, obs_dtype, _ = env_spaces(cfg)
  agent = _make_agent(cfg)
  replay = SharedReplay.create(obs_shape, obs_dtype, cfg.replay.capacity, cfg.actors.num,
                               cfg.replay.min_size, cfg.replay.samples_per_insert, cfg.replay.rate_tolerance)
  acting = learning = 0.0
  try:
    actors = [Actor(agent, make_vec_env(cfg.env, cfg.actors.envs_per_actor),
                    seed=_actor_seed(cfg, i), n_step=cfg.replay.n_step, gamma=cfg.replay.gamma)
              for i in range(cfg.actors.num)]
    writers = [replay.writer(i) for i in range(cfg.actors.num)]

    def publish(state):
      for actor in actors:
        actor.set_policy(state.params, float(state.epsilon), int(state.step))

    learner = Learner(cfg, agent, replay, agent.init(jax.random.PRNGKey(cfg.seed)), cfg.seed + 1, publish)
    evaluator = _Evaluator(cfg, agent)
    last_report = time.monotonic()

    def learn():
      nonlocal learning
      start = time.perf_counter()
      learner.update()
      jax.block_until_ready(learner.state)
      learning += time.perf_counter() - start
      run.learner_steps = learner.steps

    while interrupted.signum is None and not run.check_stop():
      for i, (actor, writer) in enumerate(zip(actors, writers)):
        start = time.perf_counter()
        transitions, episodes = actor.step(learner.steps)
        acting += time.perf_counter() - start
        while not writer.can_insert(len(transitions["action"])):
          learn()
        writer.add(transitions)
        run.env_steps += actor.num_envs
        for episode in episodes:
          run.log(_episode_record(episode, i))
      while learner.can_update():
        learn()
      if evaluator.due(learner.steps):
        run.eval_return = evaluator(learner.state.params, learner.steps)
        run.log({"eval_return": run.eval_return, "agent_id": 0})
      if time.monotonic() - last_report >= cfg.runtime.log_interval_seconds:
        last_report = time.monotonic()
        report = learner.report()
        if report:
          run.log({"agent_id": 0, **report})
  finally:
    replay.close()
    replay.unlink()
  return {"acting_seconds": acting, "learning_seconds": learning}


def _train_async(cfg: RunConfig, run: _Run, interrupted: _Interrupted) -> dict:
  obs_shape, obs_dtype, _ = env_spaces(cfg)
  ctx = mp.get_context(cfg.runtime.start_method)
  owned: list[Any] = []
  children: list[Any] = []
  messages = ctx.Queue()
  try:
    control = SharedBlock.create({"stop": ((1,), "int64"), "env_steps": ((cfg.actors.num,), "int64"),
                                  "learner_steps": ((1,), "int64"), "reported_steps": ((1,), "int64")})
    owned.append(control)
    replay = SharedReplay.create(obs_shape, obs_dtype, cfg.replay.capacity, cfg.actors.num,
                                 cfg.replay.min_size, cfg.replay.samples_per_insert, cfg.replay.rate_tolerance)
    owned.append(replay)
    # The store's template: the agent's param shapes (initialised on the CPU here).
    _configure_jax("supervisor")
    import jax  # pylint: disable=import-outside-toplevel
    agent = _make_agent(cfg)
    store = ParamStore.create(agent.init(jax.random.PRNGKey(0)).params)
    owned.append(store)
    shared = _Shared(control.handle, store.handle, replay.handle)
    parent = os.getpid()
    children.append(ctx.Process(target=_learner_main, args=(cfg, shared, messages, parent),
                                name="jaxrl-learner", daemon=True))
    for i in range(cfg.actors.num):
      children.append(ctx.Process(target=_actor_main, args=(i, cfg, shared, messages, parent),
                                  name=f"jaxrl-actor-{i}", daemon=True))
    for child in children:
      child.start()
    evaluator = _Evaluator(cfg, agent)
    arrays = control.arrays
    error = None
    while interrupted.signum is None and error is None:
      run.env_steps = int(arrays["env_steps"].sum())
      run.learner_steps = int(arrays["learner_steps"][0])
      try:
        while True:
          kind, payload = messages.get_nowait()
          if kind == "error":
            error = payload
          else:
            run.log(payload)
      except queue_lib.Empty:
        pass
      if run.check_stop():
        break
      dead = [c.name for c in children if not c.is_alive()]
      if dead and error is None:
        error = f"{', '.join(dead)} exited unexpectedly"
      if evaluator.due(run.learner_steps) and store.latest_version() > 0:
        snap = store.read()
        run.eval_return = evaluator(snap.params, snap.step)
        run.log({"eval_return": run.eval_return, "agent_id": 0, "eval_learner_steps": snap.step})
      else:
        time.sleep(0.02)
    if error is not None:
      run.stopped_because = "error"
      print(f"jaxrl: stopping: {error}", flush=True)
  finally:
    if owned:
      owned[0].arrays["stop"][0] = 1
    for child in children:
      child.join(timeout=5)
    for child in children:
      if child.is_alive():
        child.kill()
        child.join()
    messages.close()
    for segment in owned:
      segment.close()
      segment.unlink()
  return {}
