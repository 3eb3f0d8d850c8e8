"""Weights & Biases tracking of a run, beside TensorBoard (design section 10).

With ``wandb.project`` set, the process that owns the run's ``MetricsLogger``
(the supervisor; actors never import this module) mirrors each record's
TensorBoard scalars into a W&B run, with the same tags, against env steps as
TensorBoard has them: each row carries ``env_steps``, the x axis of every
chart (``define_metric``). The run's W&B config is the resolved config, its
name the run directory's name, its files under ``RUN_DIR/wandb``; at the end
``learning_curve.png`` is logged as an image and ``summary.json`` becomes the
W&B summary (and a summary ``error`` the W&B exit code 1).

W&B's own step (``_step``) only grows, one row at a time: a row's is its
``env_steps``, or the last row's + 1 where records share env steps (the
episodes that one poll of an actor's messages brings all carry its env
steps); records at the same env steps go in one row when no tag repeats.

Resume: the W&B run id is kept in ``RUN_DIR/wandb_run_id`` and a resumed run
continues that W&B run (``id=..., resume="allow"``). Online, W&B resumes
after the last step it holds (``Run.starting_step``): the records below it,
those between the checkpoint and the crash that metrics.jsonl and
TensorBoard drop and log again, are not sent again, and W&B keeps the ones
of the attempt that crashed. Offline, W&B does not resume: each attempt is
an offline run directory of its own with the same id, which ``wandb sync``
uploads in order of start time into the one W&B run.

``wandb`` is imported only inside the functions that need it: ``import
jaxrl`` and a run without ``wandb.project`` never import it. A W&B error
during a run is said in one line on stderr and turns tracking off; the run
goes on.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from jaxrl.atomic_file import replaced_atomically
from jaxrl.config import ConfigError, RunConfig, WandbConfig
from jaxrl.config_file import config_to_dict
from jaxrl.logger import CURVE_FILE, SUMMARY_FILE

RUN_ID_FILE = "wandb_run_id"
CURVE_KEY = "learning_curve"
STEP_KEY = "env_steps"   # the x axis of every W&B chart


def check_installed(cfg: WandbConfig) -> None:
  """Raises ConfigError (one line naming the extra) if ``cfg.project`` is set
  and wandb cannot be imported."""
  if cfg.project is None:
    return
  try:
    import wandb  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    reason = (str(e).splitlines() or [type(e).__name__])[0]
    raise ConfigError(f"wandb.project needs the wandb package ({reason}): pip install -e '.[wandb]'") from None


def _saved_run_id(run_dir: Path) -> str | None:
  """The W&B run id kept in ``run_dir`` (by a run resumed now), if any."""
  path = run_dir / RUN_ID_FILE
  return path.read_text().strip() if path.is_file() else None


def start(cfg: RunConfig, run_dir: Path) -> WandbRun | None:
  """The run's W&B run, started (or resumed, see the module); None without
  ``wandb.project``, or when W&B fails to start (said in one line)."""
  if cfg.wandb.project is None:
    return None
  tracker = WandbRun(run_dir)
  with tracker.guarded("start"):
    import wandb  # pylint: disable=import-outside-toplevel
    w = cfg.wandb
    saved_id = _saved_run_id(run_dir)
    tracker.run = wandb.init(project=w.project, entity=w.entity, group=w.group, tags=list(w.tags), mode=w.mode,
                             name=run_dir.resolve().name, dir=run_dir, id=saved_id, resume="allow",
                             config=config_to_dict(cfg), settings=wandb.Settings(console="off"))
    tracker.run.define_metric("*", step_metric=STEP_KEY)
    tracker.first_step = tracker.run.starting_step
    if saved_id is None:
      with replaced_atomically(run_dir / RUN_ID_FILE) as tmp:
        tmp.write_text(tracker.run.id + "\n")
  return tracker if tracker.run is not None else None


class WandbRun:
  """A started W&B run (``start``); ``log`` and ``finish`` do nothing once
  tracking is off (a W&B error).

  A row goes to W&B (one ``log`` call, ~0.3 ms of this process's time) when
  a record cannot join it: one of later env steps, or one repeating a tag."""

  def __init__(self, run_dir: Path):
    self.run_dir = run_dir
    self.run: Any = None          # wandb's Run; None once tracking is off
    self.first_step = 0           # a resumed run's first W&B step: records of fewer env steps are not sent
    self._step = -1               # the W&B step of the last row sent
    self._env_steps = 0           # the last record's env steps
    self._row: dict[str, Any] = {}   # the tags of the records waiting, all of ``_env_steps``

  @contextlib.contextmanager
  def guarded(self, what: str):
    """Turns an error of W&B in the block into one line on stderr, and tracking off."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  # W&B never takes the run down
      reason = (str(e).splitlines() or [""])[0]
      print(f"jaxrl: wandb: {what} failed, tracking turned off: {type(e).__name__}: {reason}", file=sys.stderr,
            flush=True)
      self.run = None

  def log(self, env_steps: int, scalars: dict[str, Any]) -> None:
    """Takes one record's scalars (tag -> value) at ``env_steps`` (never
    fewer than the last record's)."""
    if self.run is None or env_steps < self.first_step:
      return
    if env_steps != self._env_steps or not scalars.keys().isdisjoint(self._row):
      self._send()
    self._env_steps = env_steps
    self._row.update(scalars)

  def _send(self) -> None:
    """Sends the row waiting, at W&B step ``max(env_steps, last + 1)``."""
    row, self._row = self._row, {}
    if row and self.run is not None:
      self._step = max(self._env_steps, self._step + 1)
      with self.guarded("log"):
        self.run.log({**row, STEP_KEY: self._env_steps}, step=self._step)

  def finish(self) -> None:
    """Logs the learning curve and ``summary.json`` (those written), and finishes the W&B run."""
    if self.run is None:
      return
    with self.guarded("finish"):
      import wandb  # pylint: disable=import-outside-toplevel
      curve, summary_path = self.run_dir / CURVE_FILE, self.run_dir / SUMMARY_FILE
      summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
      if curve.is_file():
        self.log(max(self._env_steps, summary.get("env_steps", 0)), {CURVE_KEY: wandb.Image(str(curve))})
      self._send()
      if self.run is not None:
        self.run.summary.update(summary)
        self.run.finish(exit_code=1 if summary.get("error") else 0)
    self.run = None
