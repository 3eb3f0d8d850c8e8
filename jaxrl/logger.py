"""Run logging: metrics.jsonl, TensorBoard, learning curve, live progress, summary.

Everything a run writes about itself into its run directory (design section
3), plus the terminal display. A metrics record is a flat dict of scalars
carrying ``env_steps`` and ``learner_steps``; the logger adds ``time``.
Records of one agent carry its ``agent_id``; a finished training episode is
a record with ``episode_return`` (and ``episode_length``).

This module does not import JAX: JAX scalars are read through
``np.asarray``.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich import console as rich_console
from rich import live as rich_live
from rich import progress as rich_progress
from rich import text as rich_text
import yaml
from tensorboardX import summary as tb_summary
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.record_writer import masked_crc32c

from jaxrl.atomic_file import replaced_atomically

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CURVE_FILE = "learning_curve.png"
SUMMARY_FIELDS = ("eval_return", "env_steps", "learner_steps", "wall_seconds", "stopped_because")
RETURN_WINDOW = 20  # episodes in the "recent return" mean, on screen and in the plot.

# TensorBoard tags of record fields, grouped as CleanRL's users know them.
# Other numeric fields go under misc/; identifiers and counters are not curves.
TB_TAGS = {
    "episode_return": "charts/episodic_return",
    "episode_length": "charts/episodic_length",
    "eval_return": "charts/eval_return",
    "eval_capped": "charts/eval_capped_episodes",
    "sps": "charts/SPS",
    "updates_per_s": "charts/updates_per_s",
    "epsilon": "charts/epsilon",
    "learning_rate": "charts/learning_rate",
    "policy_lag": "charts/policy_lag",
    "sample_age": "charts/sample_age",
    "actor_restarts": "charts/actor_restarts",
    "loss": "losses/td_loss",
    "q_mean": "losses/q_values",
    "grad_norm": "losses/grad_norm",
    "acting_seconds": "perf/acting_seconds",
    "learning_seconds": "perf/learning_seconds",
}
RECENT_RETURN_TAG = f"charts/episodic_return_mean{RETURN_WINDOW}"
_NOT_CURVES = {"time", "env_steps", "learner_steps", "train_steps", "eval_learner_steps", "agent_id", "actor_id",
               "learner_id"}


def _plain(key: str, value: Any) -> Any:
  """Returns ``value`` as a JSON-ready Python scalar.

  numpy and JAX scalars become int/float/bool; non-finite floats become None
  (JSON null); a list or tuple becomes a list of such values. Raises
  TypeError for arrays with more than one element.
  """
  if type(value) in (int, bool, str):   # the common cases, without numpy's cost
    return value
  if type(value) is float:
    return value if math.isfinite(value) else None
  if isinstance(value, (list, tuple)):
    return [_plain(key, v) for v in value]
  if value is not None and not isinstance(value, str):
    array = np.asarray(value)
    if array.ndim != 0:
      raise TypeError(f"{key} must be a scalar, got shape {array.shape}")
    value = array.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _plain_record(record: dict[str, Any]) -> dict[str, Any]:
  return {key: _plain(key, value) for key, value in record.items()}


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _complete_lines(data: bytes) -> list[bytes]:
  """Lines of ``data`` that end in a newline (a crash may leave a partial last one)."""
  return data.split(b"\n")[:-1]


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads ``run_dir/metrics.jsonl``; a trailing partial line is skipped."""
  data = (Path(run_dir) / METRICS_FILE).read_bytes()
  return [json.loads(line) for line in _complete_lines(data)]


def _write_all(fd: int, data: bytes) -> None:
  view = memoryview(data)
  while view:  # One write in practice; a short write is finished, not left half done.
    view = view[os.write(fd, view):]


def _tfrecord(event: Event) -> bytes:
  """``event`` framed as TensorBoard reads it (TFRecord): the length, its
  masked crc32c, the serialized event, its masked crc32c; little-endian."""
  data = event.SerializeToString()
  header = struct.pack("<Q", len(data))
  return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


class MetricsLogger:
  """Appends metrics records to ``metrics.jsonl`` and a TensorBoard event file.

  Records wait in memory and go to each file with one ``write`` call once the
  oldest waiting one is ``flush_seconds`` old (at the next ``log`` or
  ``flush_if_due``), on ``flush`` and at ``close``: a record costs no system
  call of its own. A killed run loses the records that were waiting, but
  never leaves half a line except on a write error (resume cuts such a line
  away). A write that fails (a full disk) raises its ``OSError`` once, out of
  ``log``, ``flush``, ``flush_if_due`` or ``close``; the logger then writes
  nothing more (an append could glue a record onto a half-written one),
  drops what it is given, and still closes without raising. One thread logs.

  TensorBoard gets one event per record at global step ``env_steps``, its
  numeric fields tagged by ``TB_TAGS`` (``charts/episodic_return``,
  ``losses/td_loss``, ...; others under ``misc/``; ids and counters not at
  all), plus ``RECENT_RETURN_TAG``, the mean of each agent's last
  ``RETURN_WINDOW`` episode returns. With several ``agent_ids`` a tag ends
  in the record's ``/<agent_id>`` (or ``/<learner_id>``), and per-agent
  fields (``eval_return/<agent_id>``) get tags of their own; with one, the
  tags are those of a single-agent run. ``config`` (plain data), if given,
  is written once as text. The events are framed here rather than by
  tensorboardX's FileWriter, whose queue and writer thread cost a record
  more than the rest of ``log``.

  ``scalars_to``, if given, is called with ``(env_steps, {tag: value})`` of
  each record that has a curve, the scalars of its TensorBoard event (the
  run's W&B run: ``wandb_log.WandbRun.log``).

  ``time`` is seconds since ``launch_time``. With ``resume=True`` it
  continues from the last record kept instead, so that ``time`` counts the
  seconds the run has been running, across restarts, and stays monotonic.
  ``resume_env_steps`` (the checkpoint's env steps) drops the records a
  crashed run wrote after its checkpoint: metrics.jsonl is cut before its
  first record with more env steps, and the new event file starts with a
  TensorBoard purge (a ``SessionLog.START`` at step ``resume_env_steps + 1``)
  that hides the old events from that step on. Without ``resume``, an
  existing metrics.jsonl raises FileExistsError.
  """

  def __init__(self, run_dir: str | os.PathLike, launch_time: float, resume: bool = False,
               config: dict[str, Any] | None = None, agent_ids: tuple[str, ...] = (),
               resume_env_steps: int | None = None, flush_seconds: float = 1.0,
               scalars_to: Callable[[int, dict[str, float]], None] | None = None):
    self.run_dir = Path(run_dir)
    self._scalars_to = scalars_to
    self.run_dir.mkdir(parents=True, exist_ok=True)
    self.path = self.run_dir / METRICS_FILE
    self._launch_time = launch_time
    self._flush_seconds = flush_seconds
    self._time_offset = 0.0
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    if resume and self.path.exists():
      self._time_offset = self._cut(resume_env_steps)
    elif not resume:
      flags |= os.O_EXCL
    self._fds: tuple[int, ...] = (os.open(self.path, flags, 0o644),)
    # Named as tensorboardX names it, with microseconds: a resume in the same second gets a later file.
    events = self.run_dir / f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}"
    self._fds += (os.open(events, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644),)
    self._lines: list[bytes] = []    # waiting for metrics.jsonl
    self._events: list[bytes] = []   # waiting for the event file
    self._since: float | None = None   # time.monotonic() of the oldest waiting record
    self._add_event(file_version="brain.Event:2")
    if resume and resume_env_steps is not None:
      self._add_event(step=resume_env_steps + 1, session_log=SessionLog(status=SessionLog.START))
    self._several_agents = len(agent_ids) > 1
    self._returns: dict[Any, collections.deque] = collections.defaultdict(
        lambda: collections.deque(maxlen=RETURN_WINDOW))
    if config is not None:
      text = "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```"
      self._add_event(step=0, summary=tb_summary.text("config", text))

  def _cut(self, resume_env_steps: int | None) -> float:
    """Cuts a crashed run's partial last line, and with ``resume_env_steps``
    every record from the first with more env steps; returns the last kept
    record's time."""
    lines = _complete_lines(self.path.read_bytes())
    if resume_env_steps is not None:
      lines = list(itertools.takewhile(lambda line: json.loads(line)["env_steps"] <= resume_env_steps, lines))
    os.truncate(self.path, sum(len(line) + 1 for line in lines))
    return float(json.loads(lines[-1])["time"]) if lines else 0.0

  def elapsed(self) -> float:
    """The ``time`` (seconds) a record logged now gets."""
    return self._time_offset + time.time() - self._launch_time

  def log(self, record: dict[str, Any]) -> dict[str, Any]:
    """Takes one record, and writes the records waiting if they are due;
    returns it as written (with ``time``, plain scalars).

    ``record`` must hold ``env_steps`` and ``learner_steps`` (ints) and no
    ``time``; other values are scalars (Python, numpy or JAX) or strings.

    Raises:
      OSError: a write failed (once: see the class).
    """
    for key in ("env_steps", "learner_steps"):
      if key not in record:
        raise ValueError(f"metrics record needs {key}, got keys {sorted(record)}")
    if "time" in record:
      raise ValueError("metrics record must not set time; the logger adds it")
    line = {"time": self.elapsed(), **_plain_record(record)}
    for key in ("env_steps", "learner_steps"):
      if not isinstance(line[key], int) or isinstance(line[key], bool):
        raise ValueError(f"{key} must be an integer, got {record[key]!r}")
    self._lines.append((json.dumps(line, allow_nan=False, separators=(",", ":")) + "\n").encode())
    self._add_tensorboard(line)
    if self._since is None:
      self._since = time.monotonic()
    self.flush_if_due()
    return line

  def _add_event(self, **fields) -> None:
    self._events.append(_tfrecord(Event(wall_time=time.time(), **fields)))

  def _add_tensorboard(self, line: dict[str, Any]) -> None:
    """One event per record, holding its scalars: a quarter of the cost of
    an event per scalar, which an episode-per-record run pays per episode."""
    scalars = self._scalars(line)
    if scalars:
      values = [Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
      self._add_event(step=line["env_steps"], summary=Summary(value=values))
      if self._scalars_to is not None:
        self._scalars_to(line["env_steps"], scalars)

  def _scalars(self, line: dict[str, Any]) -> dict[str, float]:
    """A record's curves, tag -> value (see the class); takes in its ``episode_return``."""
    owner = line.get("agent_id", line.get("learner_id"))
    suffix = f"/{owner}" if self._several_agents and owner is not None else ""
    scalars = {}
    for key, value in line.items():
      if key in _NOT_CURVES or not _is_number(value):
        continue
      base, _, agent = key.partition("/")
      if agent and not self._several_agents:
        continue   # eval_return/<agent_id> of the one agent: eval_return itself
      scalars[TB_TAGS.get(base, f"misc/{base}") + (f"/{agent}" if agent else suffix)] = value
    if _is_number(line.get("episode_return")):
      recent = self._returns[owner]
      recent.append(line["episode_return"])
      scalars[RECENT_RETURN_TAG + suffix] = sum(recent) / len(recent)
    return scalars

  def flush_if_due(self) -> None:
    """``flush`` if the oldest waiting record is ``flush_seconds`` old."""
    if self._since is not None and time.monotonic() - self._since >= self._flush_seconds:
      self.flush()

  def flush(self) -> None:
    """Writes the records waiting, each file with one ``write`` call.

    Raises:
      OSError: a write failed (once: see the class).
    """
    waiting = (b"".join(self._lines), b"".join(self._events))
    self._lines, self._events, self._since = [], [], None
    if not self._fds:
      return
    try:
      for fd, data in zip(self._fds, waiting):
        _write_all(fd, data)
    except OSError:
      self._close_files()
      raise

  def _close_files(self) -> None:
    for fd in self._fds:
      os.close(fd)
    self._fds = ()

  def close(self) -> None:
    """Writes the records waiting and closes the files; later calls do nothing.

    Raises:
      OSError: that last write failed (the files are closed all the same).
    """
    try:
      self.flush()
    finally:
      self._close_files()

  def __enter__(self) -> MetricsLogger:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def trailing_mean(values: np.ndarray, window: int = RETURN_WINDOW) -> np.ndarray:
  """out[i] = mean(values[max(0, i - window + 1) : i + 1]); float64 [N] -> [N]."""
  sums = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
  end = np.arange(1, len(values) + 1)
  start = np.maximum(end - window, 0)
  return (sums[end] - sums[start]) / (end - start)


def plot_learning_curve(run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
  """Plots returns against env steps and against wall time; returns the PNG path.

  Training episodes are light points with their trailing mean over the last
  ``RETURN_WINDOW`` episodes; ``eval_return`` is a line with markers; one
  colour per ``agent_id``. Written atomically to ``out_path`` (default
  ``run_dir/learning_curve.png``).
  """
  from matplotlib.figure import Figure  # Lazy: matplotlib takes ~0.5 s to import.

  run_dir = Path(run_dir)
  out_path = Path(out_path) if out_path is not None else run_dir / CURVE_FILE
  records = read_metrics(run_dir)
  series: dict[tuple[str, Any], list[dict[str, Any]]] = collections.defaultdict(list)
  for record in records:
    for kind in ("episode_return", "eval_return"):
      if record.get(kind) is not None:
        series[kind, record.get("agent_id")].append(record)
  agents = sorted({agent for _, agent in series}, key=str)
  colours = {agent: f"C{i}" for i, agent in enumerate(agents)}

  fig = Figure(figsize=(12, 4.5), layout="constrained")
  fig.suptitle(run_dir.resolve().name)
  axes = fig.subplots(1, 2, sharey=True)
  for ax, x_key, x_label in zip(axes, ("env_steps", "time"), ("environment steps", "wall time (s)")):
    ax.set_xlabel(x_label)
    ax.grid(alpha=0.3)
    for (kind, agent), rows in sorted(series.items(), key=lambda item: (item[0][0], str(item[0][1]))):
      x = np.array([row[x_key] for row in rows], dtype=np.float64)
      y = np.array([row[kind] for row in rows], dtype=np.float64)
      name = "" if agent is None else f"{agent} "
      if kind == "episode_return":
        ax.scatter(x, y, s=4, alpha=0.25, color=colours[agent], linewidths=0)
        ax.plot(x, trailing_mean(y), color=colours[agent], label=f"{name}return (mean of last {RETURN_WINDOW})")
      else:
        team = "team " if agent is None and len(agents) > 2 else ""   # agents: each agent id, and None (eval)
        ax.plot(x, y, marker="o", markersize=4, linestyle="--", color=colours[agent], label=f"{name}{team}eval return")
    if not series:
      ax.text(0.5, 0.5, "no episodes or evaluations yet", transform=ax.transAxes, ha="center", va="center")
  axes[0].set_ylabel("return")
  if series:
    axes[0].legend(loc="best", fontsize="small")
  with replaced_atomically(out_path) as tmp:
    fig.savefig(tmp, format="png", dpi=100)
  return out_path


def write_summary(run_dir: str | os.PathLike, summary: dict[str, Any]) -> Path:
  """Writes ``run_dir/summary.json`` atomically; returns its path.

  ``summary`` must hold ``SUMMARY_FIELDS`` (``eval_return`` may be None when
  there was no evaluation); values are converted as in ``MetricsLogger.log``.
  """
  missing = [key for key in SUMMARY_FIELDS if key not in summary]
  if missing:
    raise ValueError(f"summary needs {missing}, got keys {sorted(summary)}")
  path = Path(run_dir) / SUMMARY_FILE
  text = json.dumps(_plain_record(summary), allow_nan=False, indent=2) + "\n"
  with replaced_atomically(path) as tmp:
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
  return path


class ProgressDisplay:
  """Live terminal status of a run.

  ``update(stats)`` takes metrics records (the same dicts given to
  ``MetricsLogger.log``, ``time`` optional): the display keeps the latest
  value of each field per ``agent_id`` (``learner_id`` in learner records)
  and the last ``RETURN_WINDOW`` episode returns per agent. On a terminal it is a rich progress bar with a
  status line, redrawn by rich; when stdout is not a terminal it prints a
  plain status line at most every ``plain_interval_s`` seconds, and once
  more on ``close()``. ``enabled=False`` prints nothing.
  """

  _FIELDS = (  # (label, field, format spec)
      ("sps", "sps", ",.0f"),
      ("upd/s", "updates_per_s", ",.1f"),
      ("return", "recent_return", ".1f"),
      ("eval", "eval_return", ".1f"),
      ("eps", "epsilon", ".3f"),
      ("lag", "policy_lag", ".1f"),
  )

  def __init__(self, enabled: bool, stop_env_steps: int | None = None, stop_seconds: float | None = None,
               plain_interval_s: float = 5.0):
    self._enabled = enabled
    self._stop_env_steps = stop_env_steps
    self._stop_seconds = stop_seconds
    self._plain_interval_s = plain_interval_s
    self._start = time.monotonic()
    self._last_print = -math.inf
    self._latest: dict[str, dict[Any, Any]] = collections.defaultdict(dict)
    self._returns: dict[Any, collections.deque] = collections.defaultdict(
        lambda: collections.deque(maxlen=RETURN_WINDOW))
    self._live = None
    if enabled and sys.stdout.isatty():
      self._bar = rich_progress.Progress(
          rich_progress.BarColumn(), rich_progress.TaskProgressColumn(), rich_progress.TimeElapsedColumn())
      known = stop_env_steps is not None or stop_seconds is not None
      self._task = self._bar.add_task("", total=1.0 if known else None)
      self._live = rich_live.Live(self._renderable(), refresh_per_second=4)
      self._live.start()

  def _renderable(self) -> rich_console.Group:
    """The progress bar over the status line (which wraps on narrow terminals)."""
    return rich_console.Group(self._bar, rich_text.Text(self.status_line()))

  def _elapsed(self) -> float:
    times = self._latest["time"]
    return max(times.values()) if times else time.monotonic() - self._start

  def _fraction(self) -> float | None:
    """Progress towards the first stop condition to be met, in [0, 1]; None if none set."""
    fractions = []
    if self._stop_env_steps is not None:
      fractions.append(max(self._latest["env_steps"].values(), default=0) / self._stop_env_steps)
    if self._stop_seconds is not None:
      fractions.append(self._elapsed() / self._stop_seconds)
    return min(max(fractions), 1.0) if fractions else None

  def status_line(self) -> str:
    """One line: env steps and the latest sps, updates/s, returns, epsilon, policy lag."""
    steps = f"steps {max(self._latest['env_steps'].values(), default=0):,.0f}"
    if self._stop_env_steps is not None:
      steps += f"/{self._stop_env_steps:,}"
    parts = [steps]
    for label, field, spec in self._FIELDS:
      per_agent = {k: v for k, v in self._latest[field].items() if v is not None}
      if len(per_agent) == 1:
        text = format(next(iter(per_agent.values())), spec)
      elif per_agent:
        text = " ".join(f"{agent}:{value:{spec}}" for agent, value in sorted(per_agent.items(), key=str))
      else:
        text = "-"
      parts.append(f"{label} {text}")
    return " | ".join(parts)

  def update(self, stats: dict[str, Any]) -> None:
    """Takes in one metrics record; redraws (terminal) or prints if due (plain)."""
    if not self._enabled:
      return
    stats = _plain_record(stats)
    agent = stats.get("agent_id", stats.get("learner_id"))   # whose values these are
    for key, value in stats.items():
      if key not in ("agent_id", "learner_id"):
        self._latest[key][agent] = value
    if stats.get("episode_return") is not None:
      self._returns[agent].append(stats["episode_return"])
      self._latest["recent_return"][agent] = float(np.mean(self._returns[agent]))
    if self._live is not None:
      self._bar.update(self._task, completed=self._fraction() or 0.0)
      self._live.update(self._renderable())
    elif time.monotonic() - self._last_print >= self._plain_interval_s:
      self._print_plain()

  def _print_plain(self) -> None:
    self._last_print = time.monotonic()
    fraction = self._fraction()
    head = f"[{self._elapsed():.0f}s" + ("" if fraction is None else f" {fraction:4.0%}") + "]"
    print(f"{head} {self.status_line()}", flush=True)

  def close(self) -> None:
    """Stops the live display (terminal) or prints a last status line (plain)."""
    if not self._enabled:
      return
    self._enabled = False
    if self._live is not None:
      self._live.stop()
    else:
      self._print_plain()
