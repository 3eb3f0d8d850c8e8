"""The run itself, written once for every backend, and ``train``.

``preflight`` makes every check a run can fail before it writes anything;
``Run`` keeps the run directory, counters, stop conditions, evaluation and
summary; ``train`` builds the Run and hands it to the backend of
``runtime.backend`` and ``runtime.mode`` (sync: ``runtime.sync``; async:
``runtime.local``; ray: ``runtime.ray_backend``), which runs the acting and
learning loops and returns when the run stops.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxrl.config import RunConfig, config_to_dict, save_config
from jaxrl.logger import MetricsLogger, ProgressDisplay, plot_learning_curve, write_summary
from jaxrl.runtime.builders import configure_jax, learner_spaces, make_agents, make_env_set, seed, state_templates
from jaxrl.runtime.learning import CHECKPOINT_DIR, replay_contents
from jaxrl.shm import remove_dead_segments, segment_pid

ERRORS_FILE = "errors.log"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _backend(cfg: RunConfig):
  """The backend module of ``runtime.backend`` and ``runtime.mode``:
  ``preflight(cfg)`` and ``run(cfg, run, interrupted, resume) -> dict``
  (extra summary fields)."""
  import importlib  # pylint: disable=import-outside-toplevel
  if cfg.runtime.backend == "ray":
    return importlib.import_module("jaxrl.runtime.ray_backend")
  return importlib.import_module({"sync": "jaxrl.runtime.sync", "async": "jaxrl.runtime.local"}[cfg.runtime.mode])


@dataclasses.dataclass(frozen=True)
class Resume:
  """What ``train`` resumes from: the checkpoint and the counters in it."""
  checkpoint: Path
  counters: dict[str, int]
  replay: dict[str, dict[str, np.ndarray]] | None   # learner id -> its replay's contents, if saved


def load_resume(cfg: RunConfig, run_dir: str | os.PathLike) -> Resume:
  """Checks that ``run_dir``'s latest checkpoint restores into ``cfg``'s learners.

  Sets this process's JAX up as the supervisor's first (``configure_jax``):
  reading a checkpoint must not start JAX with its defaults (on a GPU host,
  the GPU with its default preallocation).

  Raises:
    CheckpointError: no checkpoint, a corrupt one, or one of another agent.
  """
  configure_jax("supervisor", cfg.runtime.compilation_cache)
  from jaxrl import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
  directory = Path(run_dir) / CHECKPOINT_DIR
  path = ckpt.latest_checkpoint(directory)
  if path is None:
    raise ckpt.CheckpointError(f"{directory}: no checkpoint to resume from")
  _, counters, _ = ckpt.restore_checkpoint(path, state_templates(make_agents(cfg)))
  return Resume(path, {k: int(counters[k]) for k in ("env_steps", "episodes", "learner_steps")},
                replay_contents(ckpt.load_extra_arrays(path)))


def preflight(cfg: RunConfig) -> None:
  """Every check a run can fail before it writes anything: the environment
  (``actor.EnvError``), and what the backend needs (for shared memory,
  ``shm.SharedMemoryError``). Sets this process's JAX up as the
  supervisor's. Removes the shared-memory segments of killed runs first
  (``shm.remove_dead_segments``), with a line on stderr."""
  removed = remove_dead_segments()
  if removed:
    pids = sorted({segment_pid(name) for name in removed})
    print(f"jaxrl: removed {len(removed)} shared-memory segments left in /dev/shm by killed runs "
          f"(pids {', '.join(map(str, pids))})", file=sys.stderr)
  configure_jax("supervisor", cfg.runtime.compilation_cache)
  learner_spaces(cfg)
  _backend(cfg).preflight(cfg)


class Run:
  """The run itself, the same for every backend: its directory (config,
  metrics, errors, summary), counters, stop conditions and evaluation."""

  def __init__(self, cfg: RunConfig, run_dir: Path, launch_time: float, resume: Resume | None, agents: dict):
    self.cfg, self.run_dir, self.launch_time = cfg, run_dir, launch_time
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    agent_ids = tuple(a for space in learner_spaces(cfg).values() for a in space.agent_ids)
    self.logger = MetricsLogger(run_dir, launch_time, resume=resume is not None, config=config_to_dict(cfg),
                                agent_ids=agent_ids)
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
    self._evaluator = Evaluator(cfg, agents, self.learner_steps)

  def set_counters(self, counters: dict[str, int]) -> None:
    """Takes env_steps, episodes and learner_steps from ``_counters``."""
    self.env_steps, self.episodes, self.learner_steps = (
        counters["env_steps"], counters["episodes"], counters["learner_steps"])

  def log(self, record: dict) -> None:
    record = self.logger.log({"env_steps": int(self.env_steps), "learner_steps": int(self.learner_steps),
                              **record})
    self.progress.update(record)

  def evaluate_if_due(self, newest_params: Callable[[], tuple[Any, int] | None], **extra) -> bool:
    """Evaluates and logs the newest params (``newest_params() -> (params,
    learner step)``, None if there are none yet) when an evaluation is due
    at the run's ``learner_steps``; whether it did. The record's
    ``eval_learner_steps`` is the step of the params evaluated."""
    if not self._evaluator.due(self.learner_steps):
      return False
    newest = newest_params()
    if newest is None:
      return False
    params, step = newest
    record = self._evaluator(params, self.learner_steps)
    self.eval_return = record["eval_return"]
    self.log({**record, "eval_learner_steps": step, **extra})
    return True

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


class Evaluator:
  """Greedy evaluation every ``eval.interval`` learner steps (summed over
  learners) on ``eval.episodes`` env copies of its own. An env without a
  time limit of its own has its evaluation episodes cut at
  ``eval.max_episode_steps``."""

  def __init__(self, cfg: RunConfig, agents: dict, learner_steps: int):
    from jaxrl.actor import has_time_limit  # pylint: disable=import-outside-toplevel
    self.cfg, self.agents = cfg, agents
    self.envs = make_env_set(cfg.env, cfg.agents, cfg.eval.episodes) if cfg.eval.interval > 0 else None
    self.max_steps = None if self.envs is None or has_time_limit(self.envs) else cfg.eval.max_episode_steps
    self._schedule(learner_steps)

  def _schedule(self, learner_steps: int) -> None:
    if self.envs is not None:
      self.next_step = (learner_steps // self.cfg.eval.interval + 1) * self.cfg.eval.interval

  def due(self, learner_steps: int) -> bool:
    return self.envs is not None and learner_steps >= self.next_step

  def __call__(self, params: dict, learner_steps: int) -> dict[str, float]:
    """An evaluation record of ``params`` (learner id -> params):
    ``eval_return`` (the team return), ``eval_return/<agent_id>`` of each
    agent, and ``eval_capped``, the episodes cut at the step cap."""
    from jaxrl.actor import evaluate  # pylint: disable=import-outside-toplevel
    self._schedule(learner_steps)
    result = evaluate(self.agents, params, self.envs, self.cfg.eval.epsilon,
                      seed=seed(self.cfg, 3, learner_steps), max_steps=self.max_steps)
    return {"eval_return": result.mean_return,
            **{f"eval_return/{agent_id}": value for agent_id, value in result.agent_returns.items()},
            "eval_capped": result.capped}


class Interrupted:
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
  run = Run(cfg, Path(run_dir), launch_time, resume, make_agents(cfg))
  interrupted = Interrupted()
  try:
    extra = _backend(cfg).run(cfg, run, interrupted, resume)
  finally:
    interrupted.restore()
  if interrupted.signum is not None and run.stopped_because is None:
    run.stopped_because = signal.Signals(interrupted.signum).name
  return run.finish(extra)
