"""The run itself, written once for every backend, and ``train``.

``preflight`` makes every check a run can fail before it writes anything and
computes the environment's spaces, once per run; ``Run`` keeps the run
directory, counters, stop conditions, evaluation and summary; ``train``
builds the Run and hands it to the backend of ``runtime.backend`` and
``runtime.mode`` (sync: ``runtime.sync``; async, local or Ray:
``runtime.supervisor``), which runs the acting and learning loops and
returns when the run stops; the run then ends with an evaluation of its
final checkpoint, the same for every backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxrl import wandb_log
from jaxrl.config import RunConfig
from jaxrl.config_file import config_to_dict, save_config
from jaxrl.envs import LearnerSpace
from jaxrl.logger import MetricsLogger, ProgressDisplay, plot_learning_curve, write_summary
from jaxrl.runtime.builders import (check_replays, configure_jax, describe_error, learner_spaces, make_agents,
                                    make_env_set, seed, state_templates)
from jaxrl.runtime.learning import CHECKPOINT_DIR, replay_contents, warn_on_stderr
from jaxrl.shm import remove_dead_segments, segment_pid

ERRORS_FILE = "errors.log"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _backend(cfg: RunConfig):
  """The backend module of ``runtime.backend`` and ``runtime.mode``:
  ``preflight(cfg, spaces)`` and ``run(cfg, run, interrupted, resume) ->
  dict`` (extra summary fields)."""
  import importlib  # pylint: disable=import-outside-toplevel
  if cfg.runtime.backend == "ray":
    return importlib.import_module("jaxrl.runtime.ray_backend")
  return importlib.import_module({"sync": "jaxrl.runtime.sync", "async": "jaxrl.runtime.supervisor"}[cfg.runtime.mode])


@dataclasses.dataclass
class Resume:
  """What ``train`` resumes from: the checkpoint and the counters in it, and
  the replay's contents if it saved them (until ``take_replay``)."""
  checkpoint: Path
  counters: dict[str, int]
  replay: dict[str, dict[str, np.ndarray]] | None   # learner id -> its replay's contents, if saved

  def take_replay(self) -> dict[str, dict[str, np.ndarray]] | None:
    """The replay's contents, forgotten here: once copied into shared memory
    they are not kept a second time for the whole run."""
    contents, self.replay = self.replay, None
    return contents


def load_resume(cfg: RunConfig, run_dir: str | os.PathLike, spaces: dict[str, LearnerSpace] | None = None,
                checkpoint: str | os.PathLike | None = None) -> Resume:
  """Checks that ``checkpoint`` (default: ``run_dir``'s newest intact
  checkpoint; newer, corrupt ones are said in one line on stderr) restores
  into ``cfg``'s learners (of ``spaces``, made here when not given).

  Sets this process's JAX up as the supervisor's first (``configure_jax``):
  reading a checkpoint must not start JAX with its defaults (on a GPU host,
  the GPU with its default preallocation).

  Raises:
    CheckpointError: no checkpoint, no intact one (or ``checkpoint``
      corrupt), or one of another agent.
  """
  configure_jax("supervisor", cfg.runtime.compilation_cache)
  from jaxrl import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
  templates = state_templates(make_agents(cfg, spaces))

  def read(path: Path) -> Resume:
    _, counters, _ = ckpt.restore_checkpoint(path, templates)
    return Resume(path, {k: int(counters[k]) for k in ("env_steps", "episodes", "learner_steps")},
                  replay_contents(ckpt.load_extra_arrays(path)))

  if checkpoint is not None:
    return read(Path(checkpoint))
  directory = Path(run_dir) / CHECKPOINT_DIR
  if ckpt.latest_checkpoint(directory) is None:
    raise ckpt.CheckpointError(f"{directory}: no checkpoint to resume from")
  return ckpt.newest_intact(directory, read, warn_on_stderr)[1]


def preflight(cfg: RunConfig) -> dict[str, LearnerSpace]:
  """Every check a run can fail before it writes anything: the environment
  (``envs.EnvError``), and what the backend needs (for shared memory,
  ``shm.SharedMemoryError``); returns the learners' spaces, which the run
  passes down rather than making the environment again. Sets this process's
  JAX up as the supervisor's. Removes the shared-memory segments of killed
  runs first (``shm.remove_dead_segments``), with a line on stderr. With
  ``wandb.project`` set, a missing wandb package is a ``ConfigError``."""
  wandb_log.check_installed(cfg.wandb)
  removed = remove_dead_segments()
  if removed:
    pids = sorted({segment_pid(name) for name in removed})
    print(f"jaxrl: removed {len(removed)} shared-memory segments left in /dev/shm by killed runs "
          f"(pids {', '.join(map(str, pids))})", file=sys.stderr)
  configure_jax("supervisor", cfg.runtime.compilation_cache)
  spaces = learner_spaces(cfg)
  check_replays(cfg, spaces)
  _backend(cfg).preflight(cfg, spaces)
  return spaces


class Run:
  """The run itself, the same for every backend: its directory (config,
  metrics, errors, summary), counters, stop conditions and evaluation.

  ``spaces`` and ``agents`` are the learners' (``preflight``, ``make_agents``).
  """

  def __init__(self, cfg: RunConfig, run_dir: Path, launch_time: float, resume: Resume | None,
               spaces: dict[str, LearnerSpace]):
    self.cfg, self.run_dir, self.launch_time = cfg, run_dir, launch_time
    self.spaces, self.agents = spaces, make_agents(cfg, spaces)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    counters = resume.counters if resume else {}
    agent_ids = tuple(a for space in spaces.values() for a in space.agent_ids)
    self.wandb = wandb_log.start(cfg, run_dir)   # None without wandb.project
    self.logger = MetricsLogger(run_dir, launch_time, resume=resume is not None, config=config_to_dict(cfg),
                                agent_ids=agent_ids, resume_env_steps=counters.get("env_steps"),
                                scalars_to=None if self.wandb is None else self.wandb.log)
    self.progress = ProgressDisplay(cfg.runtime.progress, stop_env_steps=cfg.stop.env_steps,
                                    stop_seconds=cfg.stop.seconds)
    self.env_steps = counters.get("env_steps", 0)
    self.episodes = counters.get("episodes", 0)
    self.learner_steps = counters.get("learner_steps", 0)
    self.eval_return: float | None = None
    self.evaluated_at: int | None = None   # the run's learner steps at its last evaluation logged
    self.stopped_because: str | None = None
    self.error: str | None = None
    self.actor_restarts = 0
    self.killed: list[str] = []      # children killed because they did not stop in time
    self.abandoned: list[str] = []   # children that could not be killed (threads) and were left
    self.evaluator = Evaluator(cfg, self.agents, self.learner_steps)

  def set_counters(self, counters: dict[str, int]) -> None:
    """Takes env_steps, episodes and learner_steps (dict keys of those names)."""
    self.env_steps, self.episodes, self.learner_steps = (
        counters["env_steps"], counters["episodes"], counters["learner_steps"])

  def log(self, *records: dict) -> None:
    """Logs ``records`` at the run's counters, and shows them on the display.
    A write that fails (a full disk) is the run's error, said in one line."""
    counters = {"env_steps": int(self.env_steps), "learner_steps": int(self.learner_steps)}
    with self._metrics_written():
      logged = [self.logger.log({**counters, **record}) for record in records]
      self.progress.update(*logged)

  def flush_metrics_if_due(self) -> None:
    """Writes the records waiting for a second or more (``MetricsLogger.flush_if_due``)."""
    with self._metrics_written():
      self.logger.flush_if_due()

  @contextlib.contextmanager
  def _metrics_written(self):
    """Turns a failed metrics write into the run's error (the logger raises once, then drops records)."""
    try:
      yield
    except OSError as e:
      self._write_error(f"metrics: {type(e).__name__}: {e}")

  def evaluate_if_due(self, newest_params: Callable[[], tuple[Any, int] | None],
                      should_stop: Callable[[], bool] = lambda: False, **extra) -> bool:
    """Evaluates and logs the newest params (``newest_params() -> (params,
    learner step)``, None if there are none yet) when an evaluation is due
    at the run's ``learner_steps``; whether it did. ``should_stop``, asked
    at every evaluation step, abandons it."""
    if not self.evaluator.due(self.learner_steps):
      return False
    newest = newest_params()
    if newest is None:
      return False
    record = self.evaluator(*newest, self.learner_steps, should_stop)
    if record is not None:
      self.log_evaluation({**record, **extra})
    return True

  def log_evaluation(self, record: dict) -> None:
    """Logs an ``Evaluator`` record, takes its ``eval_return`` and schedules
    the next evaluation from the run's learner steps now: an evaluation that
    took longer than an interval is followed by one an interval later, so
    that each interval's records hold one evaluation at most."""
    self.eval_return, self.evaluated_at = record["eval_return"], self.learner_steps
    self.evaluator.schedule(self.learner_steps)
    self.log(record)

  def evaluate_at_end(self, should_stop: Callable[[], bool], **extra) -> None:
    """The run's last evaluation (``eval.at_end``), of its final
    checkpoint's params, once it has stopped at ``stop.env_steps`` or
    ``stop.seconds``: not after a signal (the run must stop within seconds,
    and an evaluation can take minutes), an error, or ``stop.eval_return``
    (the evaluation that met it was the last), nor a second time at the
    same learner step. ``should_stop`` (a signal meanwhile) abandons it; a
    failure is the run's error. ``extra`` goes into its record."""
    if (not self.cfg.eval.at_end or self.error is not None or self.evaluated_at == self.learner_steps
        or self.stopped_because not in ("env_steps", "seconds")):
      return
    from jaxrl import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
    try:
      states, _, _ = ckpt.restore_checkpoint(self.run_dir / CHECKPOINT_DIR, state_templates(self.agents))
      record = self.evaluator({lid: state.params for lid, state in states.items()},
                              sum(int(state.step) for state in states.values()), self.learner_steps, should_stop)
    except Exception as e:  # pylint: disable=broad-except
      reason, trace = describe_error(e)
      self.error = f"evaluation: {reason}"
      self.fail("evaluation", reason, trace)
      return
    if record is not None:
      self.log_evaluation({**record, **extra})

  def fail(self, process: str, reason: str, trace: str | None = None) -> None:
    """Records a failure: one line on stderr, the traceback in errors.log."""
    print(f"jaxrl: {process} failed: {reason}", file=sys.stderr, flush=True)
    try:
      with open(self.run_dir / ERRORS_FILE, "a") as f:
        f.write(f"[{self.logger.elapsed():.1f}s] {process}: {reason}\n{trace or ''}\n")
    except OSError:   # a full disk: the line above is all there is
      pass

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
    """Writes the summary (and, if that fails, says so in one line) and the
    learning curve, and gives both to W&B; closes the logger and the
    evaluator's environments."""
    self.progress.close()
    self.evaluator.close()
    summary = {"eval_return": self.eval_return, "env_steps": int(self.env_steps),
               "learner_steps": int(self.learner_steps), "episodes": int(self.episodes),
               "wall_seconds": self.logger.elapsed(), "launch_time": self.launch_time,
               "stopped_because": self.stopped_because or "interrupted",
               "actor_restarts": self.actor_restarts, "killed": self.killed, **extra}
    if self.abandoned:
      summary["abandoned"] = self.abandoned
    with self._metrics_written():
      self.logger.close()
    if self.error is not None:
      summary["error"] = self.error
    try:
      write_summary(self.run_dir, summary)
      plot_learning_curve(self.run_dir)
    except OSError as e:
      self._write_error(f"summary: {type(e).__name__}: {e}")
      summary.setdefault("error", self.error)
    if self.wandb is not None:
      self.wandb.finish()
    return summary

  def _write_error(self, reason: str) -> None:
    """A failure to write the run's own files: one line on stderr, and the
    run's error (the backend then stops the run as for any error)."""
    print(f"jaxrl: {reason}", file=sys.stderr, flush=True)
    self.error = self.error or reason


class Evaluator:
  """Greedy evaluation every ``eval.interval`` learner steps (summed over
  learners) on ``eval.episodes`` env copies of its own, made at once when
  there are periodic evaluations and at the first evaluation otherwise (the
  run's last, ``eval.at_end``). An env without a time limit of its own has
  its evaluation episodes cut at ``eval.max_episode_steps``."""

  def __init__(self, cfg: RunConfig, agents: dict, learner_steps: int):
    self.cfg, self.agents = cfg, agents
    self.envs = self.max_steps = None
    if cfg.eval.interval > 0:
      self._make_envs()
    self.schedule(learner_steps)

  def _make_envs(self) -> None:
    from jaxrl.envs import has_time_limit  # pylint: disable=import-outside-toplevel
    self.envs = make_env_set(self.cfg.env, self.cfg.agents, self.cfg.eval.episodes)
    self.max_steps = None if has_time_limit(self.envs) else self.cfg.eval.max_episode_steps

  def schedule(self, learner_steps: int) -> None:
    """The next evaluation is due at the first multiple of ``eval.interval``
    after ``learner_steps`` (the run's, when the last one was logged)."""
    if self.cfg.eval.interval > 0:
      self.next_step = (learner_steps // self.cfg.eval.interval + 1) * self.cfg.eval.interval

  def due(self, learner_steps: int) -> bool:
    return self.cfg.eval.interval > 0 and learner_steps >= self.next_step

  def __call__(self, params: dict, params_step: int, learner_steps: int,
               should_stop: Callable[[], bool] = lambda: False) -> dict[str, float] | None:
    """An evaluation record of ``params`` (learner id -> params, of learner
    step ``params_step``) at the run's ``learner_steps``: ``eval_return``
    (the team return), ``eval_return/<agent_id>`` of each agent,
    ``eval_capped``, the episodes cut at the step cap, and
    ``eval_learner_steps``; None if ``should_stop()`` abandoned it."""
    from jaxrl.actor import evaluate  # pylint: disable=import-outside-toplevel
    if self.envs is None:
      self._make_envs()
    result = evaluate(self.agents, params, self.envs, self.cfg.eval.epsilon,
                      seed=seed(self.cfg, 3, learner_steps), max_steps=self.max_steps, should_stop=should_stop)
    if result is None:
      return None
    return {"eval_return": result.mean_return,
            **{f"eval_return/{agent_id}": value for agent_id, value in result.agent_returns.items()},
            "eval_capped": result.capped, "eval_learner_steps": params_step}

  def close(self) -> None:
    if self.envs is not None:
      self.envs.close()


class Interrupted:
  """SIGINT/SIGTERM set a flag that the backend's loop checks; a second one
  raises KeyboardInterrupt, which stops the run at once. Installed before
  anything of the run starts, so that no signal finds Python's default."""

  def __init__(self):
    self.signum: int | None = None
    self._deferring = self._second = False
    self._previous = {s: signal.signal(s, self._handle) for s in _SIGNALS}

  def _handle(self, signum, _frame):
    if self.signum is None:
      self.signum = signum
    elif self._deferring:
      self._second = True
    else:
      raise KeyboardInterrupt

  @contextlib.contextmanager
  def deferred(self):
    """A second signal during the block raises KeyboardInterrupt only at its
    end, so that what the block starts or releases is in hand, whatever
    thread the kernel gave the signal to."""
    outer = self._deferring
    self._deferring = True
    try:
      yield
    finally:
      self._deferring = outer
    if self._second and not outer:
      self._second = False
      raise KeyboardInterrupt

  def restore(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def _starting(cfg: RunConfig, spaces: dict[str, LearnerSpace]) -> str:
  """What a run does before its first record, in one line."""
  def count(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n > 1 else ''}"
  backend = ", ray" if cfg.runtime.backend == "ray" else ""
  learners = count(len(spaces), "learner")
  return (f"jaxrl: {learners} and {count(cfg.actors.num, 'actor')} x {cfg.actors.envs_per_actor} envs "
          f"({cfg.runtime.mode}{backend}): compiling the {learners.partition(' ')[2]}, "
          f"filling replay to {cfg.replay.min_size:,}...")


def train(cfg: RunConfig, run_dir: str | os.PathLike, launch_time: float | None = None,
          resume: Resume | None = None, spaces: dict[str, LearnerSpace] | None = None,
          interrupted: Interrupted | None = None) -> dict:
  """Runs training to a stop condition; returns the summary (also in summary.json).

  Runs ``preflight`` first unless its ``spaces`` are given: a run that
  cannot start fails before it writes anything. With ``resume`` (from
  ``load_resume``), the learner state, counters, metrics.jsonl and (if
  saved) replay continue from the checkpoint. Once the backend has
  stopped, the run ends with an evaluation of its final checkpoint
  (``Run.evaluate_at_end``). A SIGINT/SIGTERM (from ``interrupted``'s
  installation on, made here when not given) stops the run with a final
  checkpoint and summary, without that evaluation; a second one raises
  KeyboardInterrupt after killing the children and unlinking the segments,
  without a final checkpoint or summary.
  """
  launch_time = time.time() if launch_time is None else launch_time
  owned = interrupted is None
  interrupted = interrupted or Interrupted()
  try:
    spaces = spaces or preflight(cfg)
    run = Run(cfg, Path(run_dir), launch_time, resume, spaces)
    run.progress.note(_starting(cfg, spaces))
    try:
      extra = _backend(cfg).run(cfg, run, interrupted, resume)
    except OSError as e:   # the run's own files: a full disk, say
      run.error, run.stopped_because, extra = f"{type(e).__name__}: {e}", "error", {}
      run.fail("supervisor", run.error)
    run.evaluate_at_end(lambda: interrupted.signum is not None, **extra)
  finally:
    if owned:
      interrupted.restore()
  if interrupted.signum is not None and run.stopped_because is None:
    run.stopped_because = signal.Signals(interrupted.signum).name
  return run.finish(extra)
