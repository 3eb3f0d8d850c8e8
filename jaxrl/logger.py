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


def learning_curve_figure(run_dir: str | os.PathLike):
  """The learning curve of ``run_dir``'s metrics.jsonl, a matplotlib Figure
  of 2 x 2 axes: training returns (top; each agent's episodes as light
  points and their trailing mean over the last ``RETURN_WINDOW``, one colour
  per agent) and greedy evaluation returns (bottom; the team's
  ``eval_return``, the sum over agents), against env steps (left) and wall
  time (right)."""
  from matplotlib.figure import Figure  # Lazy: matplotlib takes ~0.5 s to import.

  run_dir = Path(run_dir)
  episodes: dict[Any, list[dict[str, Any]]] = collections.defaultdict(list)
  evaluations = []
  for record in read_metrics(run_dir):
    if record.get("episode_return") is not None:
      episodes[record.get("agent_id")].append(record)
    elif record.get("eval_return") is not None:
      evaluations.append(record)
  agents = sorted(episodes, key=str)
  several = len(agents) > 1 or sum(key.startswith("eval_return/") for key in (evaluations or [{}])[-1]) > 1

  fig = Figure(figsize=(12, 8), layout="constrained")
  fig.suptitle(run_dir.resolve().name)
  axes = fig.subplots(2, 2, sharex="col")
  for column, (x_key, x_label) in enumerate((("env_steps", "environment steps"), ("time", "wall time (s)"))):
    train_ax, eval_ax = axes[:, column]
    for i, agent in enumerate(agents):
      rows = episodes[agent]
      x = np.array([row[x_key] for row in rows], dtype=np.float64)
      y = np.array([row["episode_return"] for row in rows], dtype=np.float64)
      name = f"{agent}: " if len(agents) > 1 else ""
      train_ax.scatter(x, y, s=4, alpha=0.25, color=f"C{i}", linewidths=0,
                       label="_nolegend_" if name else "episodes")
      train_ax.plot(x, trailing_mean(y), color=f"C{i}", label=f"{name}mean of last {RETURN_WINDOW}")
    if evaluations:
      x = np.array([row[x_key] for row in evaluations], dtype=np.float64)
      y = np.array([row["eval_return"] for row in evaluations], dtype=np.float64)
      eval_ax.plot(x, y, marker="o", markersize=4, color="k",
                   label="team (sum over agents)" if several else "mean of the evaluation episodes")
    train_ax.set_ylabel("training return")
    eval_ax.set_ylabel("greedy evaluation return")
    eval_ax.set_xlabel(x_label)
    for ax, present, what in ((train_ax, agents, "no training episode"), (eval_ax, evaluations, "no evaluation")):
      ax.grid(alpha=0.3)
      if present:
        ax.legend(loc="best", fontsize="small")
      else:
        ax.text(0.5, 0.5, f"{what} yet", transform=ax.transAxes, ha="center", va="center")
  return fig


def plot_learning_curve(run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
  """Writes ``learning_curve_figure(run_dir)`` as a PNG, atomically, to
  ``out_path`` (default ``run_dir/learning_curve.png``); returns its path."""
  out_path = Path(out_path) if out_path is not None else Path(run_dir) / CURVE_FILE
  fig = learning_curve_figure(run_dir)
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


def significant(value: float, digits: int = 4) -> str:
  """``value`` to ``digits`` significant digits, without an exponent or
  trailing zeros: -62.89295633957305 -> "-62.89", 475.0 -> "475",
  0.0102 -> "0.0102"; from 10**digits on, whole and with thousands
  separators (123,457)."""
  if not math.isfinite(value):
    return str(value)
  if value == 0:
    return "0"
  decimals = max(digits - 1 - math.floor(math.log10(abs(value))), 0)
  text = f"{value:,.{decimals}f}"
  return text.rstrip("0").rstrip(".") if "." in text else text


def _count(n: float) -> str:
  """A count, short: 7,839; 99,999; 123k; 1.25M."""
  if n < 100_000:
    return f"{n:,.0f}"
  if n < 999_500:   # below what rounds to 1,000k
    return significant(n / 1e3, 3) + "k"
  return significant(n / 1e6, 3) + "M"


def _duration(seconds: float) -> str:
  """45s, 20m34s, 3h05m."""
  seconds = int(seconds)
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class ProgressDisplay:
  """Live terminal status of a run: one line of at most about 100
  characters, e.g.

    [1m52s 37%] steps 74,392/200k  sps 663  upd/s 166.2  return 40.9  eval 247.6  eps 0.71  lag 22.7

  The percentage is that of the stop condition nearest to being met, and
  the counter beside it is that condition's: ``steps N/stop.env_steps``, or
  the elapsed time over ``stop.seconds`` (``[7m30s/20m00s 37%]``).

  ``update(*records)`` takes metrics records (the same dicts given to
  ``MetricsLogger.log``, ``time`` optional): the display keeps the latest
  value of each field per ``agent_id`` (``learner_id`` in learner records)
  and the last ``RETURN_WINDOW`` episode returns per agent. With several
  agents each field is still one number: ``return`` is the team's (the sum
  of the agents' recent returns, as ``eval`` is the team's evaluation
  return), ``upd/s`` the learners' sum, the others their mean. Returns
  and updates/s have 4 significant digits, epsilon and lag 3.

  On a terminal it is a rich progress bar over the status line, redrawn by
  rich; when stdout is not a terminal it prints the status line at most
  every ``plain_interval_s`` seconds, and on ``close()`` once more if
  anything came in since it last printed. ``note(text)`` says what the run
  is doing before its first record (a plain line, or the status line until
  then). ``enabled=False`` prints nothing.
  """

  _FIELDS = (  # (label, field, format, several agents' values -> one)
      ("sps", "sps", "{:,.0f}".format, np.mean),
      ("upd/s", "updates_per_s", significant, np.sum),
      ("return", "recent_return", significant, np.sum),
      ("eval", "eval_return", significant, np.sum),
      ("eps", "epsilon", lambda x: significant(x, 3), np.mean),
      ("lag", "policy_lag", lambda x: significant(x, 3), np.mean),
  )

  def __init__(self, enabled: bool, stop_env_steps: int | None = None, stop_seconds: float | None = None,
               plain_interval_s: float = 5.0):
    self._enabled = enabled
    self._stop_env_steps = stop_env_steps
    self._stop_seconds = stop_seconds
    self._plain_interval_s = plain_interval_s
    self._start = time.monotonic()
    self._last_print = -math.inf
    self._unprinted = False   # records came in since the last plain line
    self._seen = False        # any record came in
    self._note: str | None = None
    # field -> agent -> its latest value; "recent_return": its last RETURN_WINDOW episode returns.
    self._latest: dict[str, dict[Any, Any]] = collections.defaultdict(dict)
    self._live = None
    if enabled and sys.stdout.isatty():
      self._bar = rich_progress.Progress(rich_progress.BarColumn())
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

  def _env_steps(self) -> int:
    return max(self._latest["env_steps"].values(), default=0)

  def _progress(self) -> tuple[str, float] | None:
    """("env_steps" or "seconds", its fraction in [0, 1]) of the stop
    condition nearest to being met; None if neither is set."""
    fractions = []
    if self._stop_env_steps is not None:
      fractions.append((self._env_steps() / self._stop_env_steps, "env_steps"))
    if self._stop_seconds is not None:
      fractions.append((self._elapsed() / self._stop_seconds, "seconds"))
    if not fractions:
      return None
    fraction, condition = max(fractions)
    return condition, min(fraction, 1.0)

  def status_line(self) -> str:
    """One line: elapsed time and progress, env steps, and the latest sps,
    updates/s, returns, epsilon, policy lag (or the note, before any record)."""
    if self._note is not None and not self._seen:
      return self._note
    progress = self._progress()
    clock = _duration(self._elapsed())
    steps = f"steps {_count(self._env_steps())}"
    if progress is None:
      head = f"[{clock}]"
    elif progress[0] == "seconds":
      head = f"[{clock}/{_duration(self._stop_seconds)} {progress[1]:.0%}]"
    else:
      head = f"[{clock} {progress[1]:.0%}]"
      steps += f"/{_count(self._stop_env_steps)}"
    parts = [steps]
    for label, field, show, combine in self._FIELDS:
      # np.mean: recent_return's values are each agent's recent episodes, averaged when shown.
      values = [float(np.mean(v)) for v in self._latest[field].values() if v is not None]
      parts.append(f"{label} {show(float(combine(values))) if values else '-'}")
    return f"{head} " + "  ".join(parts)

  def note(self, text: str) -> None:
    """Says what the run is doing before its first record: a plain line now,
    or (terminal) the status line until the first record."""
    if not self._enabled:
      return
    self._note = text
    if self._live is not None:
      self._live.update(self._renderable(), refresh=True)
    else:
      print(text, flush=True)

  def update(self, *records: dict[str, Any]) -> None:
    """Takes in metrics records; redraws (terminal) or prints if due (plain)."""
    if not self._enabled or not records:
      return
    for stats in records:
      stats = _plain_record(stats)
      agent = stats.get("agent_id", stats.get("learner_id"))   # whose values these are
      for key, value in stats.items():
        if key not in ("agent_id", "learner_id"):
          self._latest[key][agent] = value
      if stats.get("episode_return") is not None:
        recent = self._latest["recent_return"]
        recent.setdefault(agent, collections.deque(maxlen=RETURN_WINDOW)).append(stats["episode_return"])
    self._unprinted = self._seen = True
    if self._live is not None:
      progress = self._progress()
      self._bar.update(self._task, completed=0.0 if progress is None else progress[1])
      self._live.update(self._renderable())
    elif time.monotonic() - self._last_print >= self._plain_interval_s:
      self._print_plain()

  def _print_plain(self) -> None:
    self._last_print, self._unprinted = time.monotonic(), False
    print(self.status_line(), flush=True)

  def close(self) -> None:
    """Stops the live display (terminal), or prints a last status line if
    records came in since the last one (plain)."""
    if not self._enabled:
      return
    self._enabled = False
    if self._live is not None:
      self._live.stop()
    elif self._unprinted:
      self._print_plain()
