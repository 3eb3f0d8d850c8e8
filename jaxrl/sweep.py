"""``jaxrl-sweep`` / ``python scripts/sweep.py``: a grid of configs x seeds,
each an ordinary run, under one sweep directory.

  jaxrl-sweep CONFIG [--seeds 0 1 2] [key=v1,v2 ...] [--parallel N] [--dir DIR] [--ray ADDRESS]

CONFIG is a config file or a shipped config's name (``find_config``). Each
``key=v1,v2`` is a dotted override with the values to sweep (a comma inside
brackets, braces or quotes belongs to its value:
``agent.hidden_sizes=[64,64],[128,128]``); the grid is every combination of
the values, times every seed (``--seeds``, default: the config's ``seed``).
The run of a grid point and seed is what ``jaxrl-train CONFIG key=v ...
seed=S run_dir=DIR/<point>/seed<S>`` makes, where ``<point>`` is the point's
values of the keys given more than one value, as typed, ``key=value``
joined by commas (``%``-escaped where a character is not safe in a file
name, a comma or ``/`` in a value included), or the config's name when no
key has more than one (a key given one value applies to every run); its
output goes to ``DIR/<point>/seed<S>.log``. ``--dir`` defaults to
``runs/sweep-<config name>``, the same for every sweep of a config, so that
the same command run again finds its runs.

Everything is checked before any run starts: a bad key, value or seed, or a
run directory holding a run of another config, is one line on stderr and
exit status 2. Then the runs go ``--parallel`` at a time (default 1): a run
whose ``summary.json`` says it reached a stop condition is skipped, one
that was cut short (it has a checkpoint) is resumed (``jaxrl-train
--resume``), the others start. One line per run says what happened to it.

Ctrl-C (SIGINT or SIGTERM to this process) is passed to the runs, which
write a final checkpoint and summary and exit; no new run starts; a second
one is passed on too (the runs stop at once). The same command then goes
on where the sweep stopped. Exit status: 0 when every run finished, 1 when
one failed or could not be resumed, 130 when interrupted.

With ``--ray ADDRESS`` (``auto``, ``HOST:PORT``, or ``local`` for a Ray
instance started on this machine) the runs are trials of Ray Tune on that
cluster, each an ordinary local run on the node Ray places it on (its
``runtime.backend`` must be local), reporting its metrics records to Tune
as they are written (``tune.report``); Tune keeps its own files in
``DIR/tune``. DIR must be on a file system every node sees. ``--parallel``
then caps the trials running at once (default: as many as the cluster's
CPUs hold; a trial asks for a CPU per process of its run).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

from jaxrl.config import MAX_SEED, ConfigError, RunConfig
from jaxrl.config_file import config_to_dict, find_config, load_config
from jaxrl.logger import METRICS_FILE, SUMMARY_FILE
from jaxrl.run_dir import LOCK_FILE

PROG = "jaxrl-sweep"
STOP_CONDITIONS = ("env_steps", "seconds", "eval_return")   # a summary's stopped_because of a finished run
CHECKPOINT_DIR = "checkpoints"   # in a run directory, holding step_<N>.ckpt (runtime.learning's and
                                 # checkpoint's, which import JAX: the sweep does not)
MAX_NAME_BYTES = 255     # a file name's length on common file systems
_POLL_S = 0.2            # how often the local loop looks at its runs
STOP_FILE = ".stop"      # in the sweep directory while a Ray sweep is interrupted: the trials stop their runs
_NOT_COMPARED = ("run_dir", "runtime.compilation_cache")   # keys two runs of one grid point may differ in


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, exit 2, as for config errors
    self.exit(2, f"{self.prog}: error: {message}\n")


@dataclasses.dataclass(frozen=True, eq=False)
class SweepRun:
  """One run of the sweep.

  Attributes:
    name: ``<point>/seed<S>``, the run directory relative to the sweep's.
    overrides: the grid point's overrides and ``seed=S``, as given to jaxrl-train.
    run_dir: the run directory.
    config: the run's config (with ``run_dir``).
  """

  name: str
  overrides: tuple[str, ...]
  run_dir: Path
  config: RunConfig

  @property
  def log(self) -> Path:
    """The file the run's stdout and stderr go to, beside its directory."""
    return self.run_dir.with_name(f"{self.run_dir.name}.log")

  def state(self) -> str:
    """"finished" (its summary says it reached a stop condition), "cut" (not
    finished, with a checkpoint to resume from), "lost" (records but no
    checkpoint: it cannot be resumed) or "new"."""
    summary = _summary(self.run_dir)
    if summary is not None and summary.get("stopped_because") in STOP_CONDITIONS:
      return "finished"
    if any((self.run_dir / CHECKPOINT_DIR).glob("step_*.ckpt")):
      return "cut"
    return "lost" if (self.run_dir / METRICS_FILE).exists() else "new"

  def train_args(self, config_path: Path) -> list[str]:
    """jaxrl-train's arguments: resume the run if it was cut, else start it."""
    if self.state() == "cut":
      return ["--resume", str(self.run_dir)]
    return [str(config_path), *self.overrides, f"run_dir={self.run_dir}"]


def _summary(run_dir: Path) -> dict | None:
  try:
    return json.loads((run_dir / SUMMARY_FILE).read_text())
  except (OSError, ValueError):
    return None


def split_values(text: str) -> list[str]:
  """The comma-separated values of ``text``; commas inside brackets, braces
  or quotes belong to a value: ``"1,[2,3],'a,b'"`` -> ``["1", "[2,3]", "'a,b'"]``."""
  values, start, depth, quote = [], 0, 0, None
  for i, char in enumerate(text):
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "[{":
      depth += 1
    elif char in "]}":
      depth -= 1
    elif char == "," and depth == 0:
      values.append(text[start:i])
      start = i + 1
  return [*values, text[start:]]


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
  """``key=v1,v2`` items as (key, values), in the order given.

  Raises:
    ConfigError: an item that is not ``key=values``, an empty value, a key
      given twice, or ``seed`` / ``run_dir`` (``--seeds``, ``--dir``).
  """
  grid = []
  for item in items:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
      raise ConfigError(f"bad override {item!r} (expected key=value or key=v1,v2,...)")
    if key in ("seed", "run_dir"):
      raise ConfigError(f"{key}: set by the sweep (use {'--seeds' if key == 'seed' else '--dir'})")
    if key in (k for k, _ in grid):
      raise ConfigError(f"{key}: given twice (list its values once: {key}=v1,v2)")
    values = [v.strip() for v in split_values(text)]
    if "" in values:
      raise ConfigError(f"bad override {item!r}: an empty value")
    grid.append((key, values))
  return grid


def point_name(point: list[tuple[str, str]], config_path: Path) -> str:
  """The directory name of a grid point, its swept ``(key, value)`` pairs:
  ``key=value`` joined by commas, ``%``-escaped (a comma or ``/`` in a value
  too); the config's name if nothing is swept.

  Raises:
    ConfigError: a name longer than ``MAX_NAME_BYTES``.
  """
  if not point:
    return config_path.stem
  name = ",".join(f"{urllib.parse.quote(k, safe='')}={urllib.parse.quote(v, safe='[]+')}" for k, v in point)
  if len(name.encode()) > MAX_NAME_BYTES:
    raise ConfigError(f"run name too long for a directory ({len(name.encode())} bytes > {MAX_NAME_BYTES}): {name}")
  return name


def plan(config_path: Path, grid: list[tuple[str, list[str]]], seeds: list[int], sweep_dir: Path) -> list[SweepRun]:
  """Every run of the sweep, its config built and checked.

  Raises:
    ConfigError: a bad override (naming the key), or a run directory that
      holds a run of another config.
  """
  runs = []
  for values in itertools.product(*(vs for _, vs in grid)):
    point = [(key, value) for (key, _), value in zip(grid, values)]
    swept = [(key, value) for (key, value), (_, choices) in zip(point, grid) if len(choices) > 1]
    directory = sweep_dir / point_name(swept, config_path)
    for seed in seeds:
      overrides = (*(f"{k}={v}" for k, v in point), f"seed={seed}")
      run_dir = directory / f"seed{seed}"
      cfg = load_config(config_path, [*overrides, f"run_dir={run_dir}"])
      run = SweepRun(f"{directory.name}/seed{seed}", overrides, run_dir, cfg)
      _check_same_config(run)
      runs.append(run)
  return runs


def _check_same_config(run: SweepRun) -> None:
  """Raises a ConfigError if ``run``'s directory holds a run of another config."""
  try:
    saved = load_config(run.run_dir / "config.yaml")
  except ConfigError:
    if (run.run_dir / "config.yaml").exists():
      raise
    return
  theirs, ours = _flat(config_to_dict(saved)), _flat(config_to_dict(run.config))
  for key in sorted(theirs.keys() | ours.keys()):
    if key not in _NOT_COMPARED and theirs.get(key) != ours.get(key):
      raise ConfigError(f"{run.run_dir} holds a run of another config ({key}: {json.dumps(theirs.get(key))} "
                        f"there, {json.dumps(ours.get(key))} here); sweep into another --dir")


def _flat(tree: dict, prefix: str = "") -> dict:
  """Nested config data as {dotted key: value}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _say(message: str) -> None:
  print(f"{PROG}: {message}", flush=True)


def _ending(run: SweepRun, returncode: int | None = None) -> str:
  """How ``run`` ended: its summary's stop reason, final eval_return, env
  steps and seconds, and for a failure the last line of its log."""
  summary = _summary(run.run_dir) or {}
  parts = [f"{summary.get('stopped_because', 'no summary')}: eval_return {summary.get('eval_return')}, "
           f"env_steps {summary.get('env_steps')}, {summary.get('wall_seconds', 0):.1f}s"]
  if returncode:
    lines = run.log.read_text(errors="replace").strip().splitlines() if run.log.exists() else []
    how = f"exit status {returncode}" if returncode > 0 else f"ended by {signal.Signals(-returncode).name}"
    parts.append(how + (f": {lines[-1]}" if lines else "") + f" (log: {run.log})")
  return "; ".join(parts)


def _start(run: SweepRun, config_path: Path) -> subprocess.Popen:
  """Starts ``run``'s jaxrl-train in a session of its own (so that a Ctrl-C
  at the terminal reaches it once, through this process), its output
  appended to its log."""
  resuming = run.state() == "cut"
  run.log.parent.mkdir(parents=True, exist_ok=True)
  with open(run.log, "a", encoding="utf-8") as log:
    log.write(f"\n=== {PROG} {time.strftime('%Y-%m-%d %H:%M:%S')}: {'resume' if resuming else 'start'}\n")
    log.flush()
    proc = subprocess.Popen([sys.executable, "-m", "jaxrl.cli", *run.train_args(config_path)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  _say(f"{'resume' if resuming else 'start'} {run.name}")
  return proc


class _Signals:
  """SIGINT and SIGTERM to the sweep: recorded, and passed to every run in
  ``procs`` still going; the handlers before are put back by ``restore``."""

  def __init__(self):
    self.received: list[int] = []
    self.procs: list[subprocess.Popen] = []
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

  def _handle(self, signum, _frame):
    self.received.append(signum)
    for proc in self.procs:
      if proc.poll() is None:
        proc.send_signal(signum)

  def restore(self) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def run_local(runs: list[SweepRun], config_path: Path, parallel: int) -> int:
  """Runs ``runs`` (none finished) ``parallel`` at a time; the exit status."""
  signals, failed = _Signals(), 0
  pending, going = list(runs), {}
  try:
    while pending or going:
      while pending and len(going) < parallel and not signals.received:
        run = pending.pop(0)
        going[run] = _start(run, config_path)
        signals.procs.append(going[run])
      time.sleep(_POLL_S)
      for run, proc in list(going.items()):
        if proc.poll() is None:
          continue
        del going[run]
        signals.procs.remove(proc)
        finished = run.state() == "finished"
        failed += not finished and not signals.received
        _say(f"{'done' if finished else 'cut' if signals.received else 'failed'} {run.name}: "
             f"{_ending(run, None if finished else proc.returncode)}")
      if signals.received and not going:
        break
  finally:
    signals.restore()
  if signals.received:
    _say(f"interrupted: {len(pending)} runs not started; run the same command again to go on")
    return 130
  return 1 if failed else 0


def _trial_resources(cfg: RunConfig) -> dict[str, float]:
  """CPUs a run takes: one in sync mode, else the supervisor and learner's and an actor's each."""
  return {"CPU": 1.0 if cfg.runtime.mode == "sync" else 1.0 + cfg.actors.num}


def tune_trial(config: dict) -> None:
  """A Ray Tune trial, the run ``config["run"]`` (``run_ray``'s dict): runs
  jaxrl-train with its ``args`` as a process on this node and
  ``tune.report``s the numeric fields of each record the run adds to its
  metrics.jsonl, as they are written. Once the sweep's ``stop_file`` exists
  (a Ctrl-C to the sweep) the run gets a SIGINT (a final checkpoint and
  summary); a trial that finds it there starts nothing. Raises
  RuntimeError if the run failed."""
  from ray import tune  # pylint: disable=import-outside-toplevel
  config = config["run"]
  run_dir, log, stop_file = Path(config["run_dir"]), Path(config["log"]), Path(config["stop_file"])
  if stop_file.exists():
    return
  metrics = run_dir / METRICS_FILE
  offset = metrics.stat().st_size if metrics.exists() else 0   # a resumed run reports its new records
  with open(log, "a", encoding="utf-8") as out:
    out.write(f"\n=== {PROG} {time.strftime('%Y-%m-%d %H:%M:%S')} (ray): {config['args'][0]}\n")
    out.flush()
    proc = subprocess.Popen([sys.executable, "-m", "jaxrl.cli", *config["args"]], stdin=subprocess.DEVNULL,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
  interrupted = False

  def stop_if_asked():
    nonlocal interrupted
    if not interrupted and proc.poll() is None and stop_file.exists():
      proc.send_signal(signal.SIGINT)
      interrupted = True

  try:
    while True:
      ended = proc.poll() is not None
      stop_if_asked()
      size = metrics.stat().st_size if metrics.exists() else 0
      offset = min(offset, size)   # resume cuts the records after its checkpoint
      if size > offset:
        with open(metrics, "rb") as f:
          f.seek(offset)
          data = f.read(size - offset)
        complete = data[:data.rfind(b"\n") + 1]
        offset += len(complete)
        for line in complete.splitlines():
          record = json.loads(line)
          tune.report({k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
          stop_if_asked()
      if ended:
        break
      time.sleep(_POLL_S)
  finally:   # Tune ending this thread (it stops trials by raising in tune.report) stops the run too
    if proc.poll() is None:
      proc.send_signal(signal.SIGINT)
      proc.wait()
  summary = _summary(run_dir) or {}
  if proc.returncode != 0 and not interrupted:
    raise RuntimeError(f"{config['name']}: {summary.get('stopped_because', 'no summary')}, "
                       f"exit status {proc.returncode} (log: {log})")


def run_ray(runs: list[SweepRun], config_path: Path, parallel: int | None, address: str, sweep_dir: Path) -> int:
  """Runs ``runs`` (none finished) as Ray Tune trials on the cluster at
  ``address``; the exit status. A Ctrl-C makes the trials stop their runs
  (``tune_trial``) and, once none is going, Tune stop; a second one stops
  at once (Ray ends the runs' processes)."""
  os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")   # with verbose=0: no tables; the runs' lines say it
  os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"    # the sweep's own, below
  import ray  # pylint: disable=import-outside-toplevel
  from ray import tune  # pylint: disable=import-outside-toplevel
  from ray.tune.execution.placement_groups import PlacementGroupFactory  # pylint: disable=import-outside-toplevel
  stop_file = sweep_dir / STOP_FILE
  stop_file.unlink(missing_ok=True)
  by_name = {run.name: run for run in runs}
  trials = [{"name": run.name, "args": run.train_args(config_path.resolve()), "run_dir": str(run.run_dir.resolve()),
             "log": str(run.log.resolve()), "stop_file": str(stop_file.resolve()),
             "resources": _trial_resources(run.config)} for run in runs]
  for run in runs:
    run.log.parent.mkdir(parents=True, exist_ok=True)
  interrupted: list[int] = []

  def on_signal(signum, _frame):
    if interrupted:
      raise KeyboardInterrupt
    interrupted.append(signum)
    stop_file.touch()

  class Lines(tune.Callback):
    """One line per trial as it starts (unless interrupted: then it starts
    nothing) and ends (``ended``: those that Tune stopped, at the end)."""

    def __init__(self):
      self.going: list[SweepRun] = []

    def on_trial_start(self, iteration, trials, trial, **info):
      if not interrupted:
        run = by_name[trial.config["run"]["name"]]
        self.going.append(run)
        _say(f"{'resume' if run.state() == 'cut' else 'start'} {run.name} (ray)")

    def on_trial_complete(self, iteration, trials, trial, **info):
      self.ended(by_name[trial.config["run"]["name"]])

    def on_trial_error(self, iteration, trials, trial, **info):
      self.ended(by_name[trial.config["run"]["name"]], failed=True)

    def ended(self, run: SweepRun, failed: bool = False) -> None:
      if run in self.going:
        self.going.remove(run)
        state = run.state()
        _say(f"{'done' if state == 'finished' else 'failed' if failed else 'cut'} {run.name}: "
             f"{_ending(run, 1 if failed else None)}")

  class Interrupted(tune.Stopper):
    """Stops the experiment once interrupted and no run is going (the trials not started yet)."""

    def __call__(self, trial_id, result):
      return False

    def stop_all(self):
      return bool(interrupted) and not any(_locked(run.run_dir) for run in runs)

  lines = Lines()
  previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    ray.init(address=None if address == "local" else address, logging_level="ERROR", log_to_driver=False,
             include_dashboard=False if address == "local" else None)
    tuner = tune.Tuner(
        tune.with_resources(tune_trial, lambda config: PlacementGroupFactory([config["run"]["resources"]])),
        param_space={"run": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(max_concurrent_trials=parallel,
                                    trial_name_creator=lambda trial: trial.config["run"]["name"],
                                    trial_dirname_creator=lambda trial: trial.config["run"]["name"].replace("/", "_")),
        run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir.resolve()), verbose=0,
                                  callbacks=[lines], stop=Interrupted()))
    results = tuner.fit()
    for run in list(lines.going):
      lines.ended(run)
  except KeyboardInterrupt:
    _say("interrupted twice: the runs were stopped at once")
    return 130
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    ray.shutdown()
    stop_file.unlink(missing_ok=True)
  if interrupted:
    _say("interrupted; run the same command again to go on")
    return 130
  return 1 if results.errors else 0


def _locked(run_dir: Path) -> bool:
  """Whether a live run holds ``run_dir``'s lock (``jaxrl.run_dir``)."""
  try:
    fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
  except OSError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return False
  except BlockingIOError:
    return True
  finally:
    os.close(fd)


def main(argv: list[str] | None = None) -> int:
  parser = _Parser(prog=PROG, description="Run a grid of configs x seeds, each an ordinary jaxrl run, under one\n"
                   "directory; the same command again skips finished runs and resumes cut ones.",
                   epilog=__doc__.split("\n\n", 2)[2].replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("config", help="config file, or a shipped config's name")
  parser.add_argument("grid", nargs="*", metavar="key=v1,v2",
                      help="dotted overrides with the values to sweep, e.g. agent.learning_rate=1e-3,3e-4")
  parser.add_argument("--seeds", type=_seeds, metavar="S [S ...]", help="seeds of every grid point "
                      "(default: the config's seed)")
  parser.add_argument("--parallel", type=int, metavar="N",
                      help="runs at once (default 1; with --ray, as many as the cluster holds)")
  parser.add_argument("--dir", metavar="DIR", help="the sweep directory (default runs/sweep-<config name>)")
  parser.add_argument("--ray", metavar="ADDRESS", help="run the runs as Ray Tune trials on the cluster at "
                      "ADDRESS (auto, HOST:PORT, or local)")
  args = parser.parse_intermixed_args(_grouped_seeds(sys.argv[1:] if argv is None else argv))
  if args.parallel is not None and args.parallel < 1:
    parser.error(f"--parallel must be >= 1, got {args.parallel}")
  try:
    config_path = find_config(args.config)
    seeds = args.seeds if args.seeds is not None else [load_config(config_path).seed]
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad or len(set(seeds)) < len(seeds):
      raise ConfigError(f"--seeds: {'must be in [0, 2**32 - 1], got ' + str(bad[0]) if bad else 'a seed given twice'}")
    sweep_dir = Path(args.dir or f"runs/sweep-{config_path.stem}")
    runs = plan(config_path, parse_grid(args.grid), seeds, sweep_dir)
    if args.ray is not None:
      _check_ray(runs)
  except ConfigError as e:
    return _fail(str(e))
  states = {run: run.state() for run in runs}
  counts = {state: sum(s == state for s in states.values()) for state in ("finished", "cut", "new", "lost")}
  _say(f"{len(runs)} runs in {sweep_dir}: {counts['finished']} finished, {counts['cut']} to resume, "
       f"{counts['new']} to start" + (f", {counts['lost']} that cannot be resumed" if counts["lost"] else ""))
  for run, state in states.items():
    if state == "finished":
      _say(f"skip {run.name}: finished ({_ending(run)})")
    elif state == "lost":
      _say(f"failed {run.name}: records but no checkpoint to resume from; remove {run.run_dir} to run it again")
  todo = [run for run, state in states.items() if state in ("cut", "new")]
  if args.ray is not None:
    status = run_ray(todo, config_path, args.parallel, args.ray, sweep_dir) if todo else 0
  else:
    status = run_local(todo, config_path, args.parallel or 1)
  if status == 0 and counts["lost"]:
    status = 1
  if status != 130:
    _say(f"{sum(run.state() == 'finished' for run in runs)} of {len(runs)} runs finished in {sweep_dir} "
         f"(jaxrl-plot {sweep_dir})")
  return status


def _grouped_seeds(argv: list[str]) -> list[str]:
  """``argv`` with ``--seeds`` and the integers after it as one ``--seeds=S S ...``
  (argparse would take a ``key=v1,v2`` after the seeds for a seed)."""
  out, i = [], 0
  while i < len(argv):
    if argv[i] != "--seeds":
      out.append(argv[i])
      i += 1
      continue
    j = i + 1
    while j < len(argv) and re.fullmatch(r"[+-]?[0-9]+", argv[j]):
      j += 1
    out.append("--seeds=" + " ".join(argv[i + 1:j]))
    i = j
  return out


def _seeds(text: str) -> list[int]:
  """``--seeds``' value: integers apart by spaces or commas."""
  try:
    seeds = [int(s) for s in text.replace(",", " ").split()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected integers, e.g. --seeds 0 1 2, got {text!r}") from None
  if not seeds:
    raise argparse.ArgumentTypeError("expected integers, e.g. --seeds 0 1 2")
  return seeds


def _check_ray(runs: list[SweepRun]) -> None:
  """Raises a ConfigError if Ray Tune is missing or a run is not a local-backend run."""
  try:
    import ray.tune  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise ConfigError("--ray needs Ray Tune: pip install -e '.[ray]'") from None
  for run in runs:
    if run.config.runtime.backend != "local":
      raise ConfigError("runtime.backend: must be local with --ray (each trial is a local run on one node), "
                        f"got {run.config.runtime.backend!r}")


def _fail(message: str) -> int:
  print(f"{PROG}: error: {message}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
