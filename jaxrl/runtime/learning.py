"""Learning: the ``Learner`` of fused updates and the ``LearningLoop``.

``LearningLoop`` is the learner's loop body, the same in every backend: an
update whenever the rate limiter allows, a metrics record when one is due,
a checkpoint when one is due and once more at the end. A backend calls
``step`` (and ``housekeeping``) for as long as the run goes on, and
``checkpoint`` when it stops; how the records, counters, warnings and
progress travel is the backend's (callbacks).
"""

from __future__ import annotations

import collections
import functools
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from jaxrl.config import RunConfig
from jaxrl.config_file import config_to_dict
from jaxrl.priorities import PrioritizedSampler, importance_exponent
from jaxrl.replay import SharedReplay
from jaxrl.runtime.builders import seed

CHECKPOINT_DIR = "checkpoints"
# LearningLoop.checkpoint's progress events: the final checkpoint has begun, it is on disk.
FINAL_CHECKPOINT_STARTED = "final_checkpoint_started"
FINAL_CHECKPOINT_WRITTEN = "final_checkpoint_written"


class NonFiniteError(RuntimeError):
  """The learner produced a non-finite loss, gradient or state."""


class Learner:
  """Samples its replay, applies fused train_steps, publishes params: one
  learner (``stream`` tells its sampling stream from other learners').

  ``update`` runs ``learner.updates_per_call`` train_steps in one jitted
  ``lax.scan`` dispatch; JAX's async dispatch lets the next batch be sampled
  and transferred while the device computes, up to ``_MAX_IN_FLIGHT`` calls
  ahead of it: a bound on how stale a publish can be and on how far the
  samples counted by the rate limiter run ahead of the updates made. The same
  dispatch adds each step's metrics to device-side totals, which ``report``
  reads once (and checks are finite): a read per update would cost the loop a
  tenth of its rate.

  With ``replay.prioritized``, a ``PrioritizedSampler`` draws each of the
  fused batches in proportion to priority**alpha, with importance weights of
  beta annealed over ``stop.env_steps``; a call's TD errors [F, B] come back
  with its state, and set the priorities of its samples when the loop
  waits for that call (at most ``_MAX_IN_FLIGHT`` calls later).
  """

  _MAX_IN_FLIGHT = 2

  def __init__(self, cfg: RunConfig, agent, replay: SharedReplay, state, publish, stream: tuple[int, ...] = ()):
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
    self._rng = np.random.default_rng(seed(cfg, 2, self.steps, *stream))   # stream: builders.learner_stream
    priorities = cfg.replay
    self._sampler = (PrioritizedSampler(replay, priorities.priority_exponent, priorities.priority_epsilon)
                     if priorities.prioritized else None)
    self._beta = functools.partial(importance_exponent, priorities.importance_exponent,
                                   horizon=cfg.stop.env_steps)

    def fused_steps(state, batches, totals):
      state, metrics = jax.lax.scan(agent.train_step, state, batches)
      td_error = metrics.pop("td_error")   # [F, B]: priorities, not totalled
      return state, jax.tree.map(lambda total, m: total + m.sum(0), totals, metrics), td_error
    self._update = jax.jit(fused_steps)
    padding = self._fused_batches(replay.padding_batch(self._batch * self._fused))
    _, metric_shapes = jax.eval_shape(agent.train_step, state, jax.tree.map(lambda x: x[0], padding))
    metric_shapes.pop("td_error")
    self._zeros = jax.tree.map(lambda m: jax.numpy.zeros(m.shape, m.dtype), metric_shapes)
    # Metric sums since learner step `_reported_at` (reported at `_reported_time`),
    # and the learner steps between acting and sampling, summed over valid samples.
    self._totals, self._reported_at, self._reported_time = self._zeros, self.steps, time.monotonic()
    self._age_sum, self._age_count = 0.0, 0
    # Of each dispatched call: its step, TD errors and, when prioritized, the [rows, versions] sampled.
    self._in_flight: collections.deque = collections.deque()
    self._publish(state)
    self._published_at = self.steps
    self._outgoing = None   # a state being copied to the host for its publish
    # Compile while the actors fill replay: the update is pure, so a padding
    # batch compiles it without touching the state.
    self._update(state, padding, self._zeros)

  def can_update(self) -> bool:
    return self.replay.can_sample(self._batch * self._fused)

  def update(self, env_steps: int = 0) -> None:
    """Samples and dispatches one fused update, and publishes without waiting
    for the device: once a publish is due, the state computed by then starts
    its copy to the host, and it is published at the first later call that
    finds the copy complete. The device never idles for a publish, at the cost
    of at most ``_MAX_IN_FLIGHT`` calls of policy lag. ``env_steps``, the
    run's so far, anneals prioritized replay's beta."""
    if self._sampler is None:
      batch, policy_step = self.replay.sample(self._batch * self._fused, self._rng)
      sampled = None
    else:
      batch, policy_step, *sampled = self._sampler.sample(self._batch, self._rng, self._beta(env_steps),
                                                          self._fused)
    valid = batch.valid > 0   # an invalid row's policy_step is 0, not an age
    self._age_sum += float((self.steps - policy_step[valid]).sum())
    self._age_count += int(valid.sum())
    if self._outgoing is None and self.steps - self._published_at >= self._publish_interval:
      self._outgoing = self.state
      for leaf in self._jax.tree.leaves((self.state.params, self.state.epsilon, self.state.step)):
        leaf.copy_to_host_async()
    self.state, self._totals, td_error = self._update(self.state, self._fused_batches(batch), self._totals)
    self.steps += self._fused
    if sampled is not None:
      td_error.copy_to_host_async()
    self._in_flight.append((self.state.step, td_error, sampled))
    if len(self._in_flight) > self._MAX_IN_FLIGHT:
      step, td_error, sampled = self._in_flight.popleft()
      step.block_until_ready()
      if sampled is not None:
        self._sampler.update(*sampled, np.asarray(td_error).reshape(-1))
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
    """A learner record: ``train_steps``, this learner's steps so far; the
    means of ``train_step``'s metrics since the last report, except
    ``epsilon`` and ``learning_rate``, which are their values at
    ``train_steps``; ``sample_age``, learner steps
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
    out.update(train_steps=self.steps, epsilon=float(self.state.epsilon),
               learning_rate=float(self.agent.learning_rate_schedule(self.state.step)),
               updates_per_s=totalled / max(now - self._reported_time, 1e-9))
    if self._age_count:
      out["sample_age"] = self._age_sum / self._age_count
    self._totals, self._reported_at, self._reported_time = self._zeros, self.steps, now
    self._age_sum, self._age_count = 0.0, 0
    return out


class Checkpointer:
  """Writes ``<run_dir>/checkpoints/step_<n>.ckpt`` (n: the learners' steps
  summed) every ``checkpoint.interval_seconds`` and on request, holding every
  learner's state (and with ``checkpoint.replay`` its replay, saved as
  ``replay.<learner_id>.<array>``). A state with a non-finite leaf is never
  written, so the last checkpoint stays a good one."""

  def __init__(self, cfg: RunConfig, run_dir: Path, replays: dict[str, SharedReplay]):
    self._cfg, self._directory, self._replays = cfg, run_dir / CHECKPOINT_DIR, replays
    self._config = config_to_dict(cfg)
    self.interval_seconds = cfg.checkpoint.interval_seconds
    self._last = time.monotonic()

  def due(self) -> bool:
    """Whether ``interval_seconds`` have passed since the last save began (or failed)."""
    return time.monotonic() - self._last >= self.interval_seconds

  def save(self, states: dict, counters: dict[str, int]) -> Path:
    import jax  # pylint: disable=import-outside-toplevel
    from jaxrl.checkpoint import save_checkpoint  # pylint: disable=import-outside-toplevel
    states = jax.device_get(states)
    for path, leaf in jax.tree_util.tree_leaves_with_path(states):
      if np.issubdtype(np.asarray(leaf).dtype, np.floating) and not np.isfinite(leaf).all():
        raise NonFiniteError(f"non-finite state{jax.tree_util.keystr(path)} at learner step "
                             f"{counters['learner_steps']}; last good checkpoint kept")
    extra = ({f"replay.{lid}.{k}": v for lid, replay in self._replays.items() for k, v in replay.contents().items()}
             if self._cfg.checkpoint.replay else None)
    self._last = time.monotonic()
    return save_checkpoint(self._directory, states, counters, self._config, self._cfg.checkpoint.keep, extra)


def replay_contents(extra: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]] | None:
  """Learner id -> its replay's contents, from a checkpoint's extra arrays
  (None if it saved no replay)."""
  contents: dict[str, dict[str, np.ndarray]] = {}
  for name, array in extra.items():
    if name.startswith("replay."):
      lid, _, key = name.removeprefix("replay.").rpartition(".")
      contents.setdefault(lid, {})[key] = array
  return contents or None


def warn_on_stderr(message: str) -> None:
  """Prints ``jaxrl: <message>`` as one line on stderr."""
  print(f"jaxrl: {message}", file=sys.stderr, flush=True)


class LearningLoop:
  """The learners' loop body, for the learners one process (or thread) runs.

  A learner record is its Learner's ``report`` with ``learner_id`` and
  ``sps``: the run's env steps per second since that learner's previous
  record (since the loop began, for its first), taken when it is made.

  A periodic checkpoint that fails to write (an ``OSError``: a full disk) is
  a ``warn`` line and is tried again ``checkpoint.interval_seconds`` later;
  the final one failing is an error. A state that is not finite is an error
  either way (``NonFiniteError``).

  Args:
    learners: learner id -> its Learner.
    checkpointer: writes the checkpoints of all of them.
    counters: () -> the run's counters (env_steps, episodes, learner_steps)
      saved with a checkpoint; env_steps is read at each step too.
    count: (learner_id, learner_steps) -> None, called after each update.
    emit: (record) -> None, takes each learner record.
    warn: (one line) -> None, takes each warning (default: on stderr).
    progress: (event) -> None, called with ``FINAL_CHECKPOINT_STARTED`` and
      ``FINAL_CHECKPOINT_WRITTEN`` by ``checkpoint``.
  """

  def __init__(self, learners: dict[str, Learner], checkpointer: Checkpointer,
               counters: Callable[[], dict[str, int]], count: Callable[[str, int], None],
               emit: Callable[[dict], None], warn: Callable[[str], None] = warn_on_stderr,
               progress: Callable[[str], None] = lambda event: None):
    self.learners, self._checkpointer = learners, checkpointer
    self._counters, self._count, self._emit = counters, count, emit
    self._warn, self._progress = warn, progress
    self._start: tuple[float, int] | None = None   # (time, env steps) when the loop began
    self._marks: dict[str, tuple[float, int]] = {}   # learner id -> (time, env steps) of its last record

  def step(self) -> bool:
    """One fused update of every learner the rate limiter allows; whether
    there was any."""
    env_steps = self._counters()["env_steps"]
    if self._start is None:
      self._start = (time.monotonic(), env_steps)
    updated = False
    for lid, learner in self.learners.items():
      if learner.can_update():
        learner.update(env_steps)
        self._count(lid, learner.steps)
        updated = True
    return updated

  def housekeeping(self) -> None:
    """The metrics records that are due, and a checkpoint if one is due
    (a failed write is a warning)."""
    for lid, learner in self.learners.items():
      if learner.report_due():
        self._report(lid)
    if self._checkpointer.due():
      self._report_all()
      try:
        self._save()
      except OSError as e:
        self._warn(f"learner: checkpoint not written ({' '.join(str(e).split())}); "
                   f"trying again in {self._checkpointer.interval_seconds:g} s")

  def checkpoint(self) -> Path:
    """The final checkpoint, as the run stops: ``progress`` hears when it
    begins and when it is on disk. Returns its path.

    Raises:
      OSError: it could not be written.
      NonFiniteError: a learner's state or metrics are not finite.
    """
    self._progress(FINAL_CHECKPOINT_STARTED)
    self._report_all()
    path = self._save()
    self._progress(FINAL_CHECKPOINT_WRITTEN)
    return path

  def _report_all(self) -> None:
    """Every learner's metrics record since its last: a checkpoint's records come before it."""
    for lid in self.learners:
      self._report(lid)

  def _save(self) -> Path:
    return self._checkpointer.save({lid: learner.state for lid, learner in self.learners.items()},
                                   self._counters())

  def _report(self, learner_id: str) -> None:
    metrics = self.learners[learner_id].report()
    if metrics:
      now, env_steps = time.monotonic(), self._counters()["env_steps"]
      then, before = self._marks.get(learner_id, self._start or (now, env_steps))
      self._marks[learner_id] = (now, env_steps)
      self._emit({"learner_id": learner_id, **metrics, "sps": (env_steps - before) / max(now - then, 1e-9)})
