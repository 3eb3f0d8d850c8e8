"""``jaxrl-plot`` / ``python scripts/plot.py``: learning curves and a table of
final returns over seeds, from run directories, sweeps and benchmark files.

  jaxrl-plot INPUT [INPUT ...] [--label L ...] [--out DIR] [--reps N] [--seed S]

An INPUT is a run directory (one with config.yaml and metrics.jsonl), any
directory holding run directories (a sweep's, searched recursively), or a
learning file of ``scripts/benchmark.py --sections learning`` (each of its
``sections.learning.runs``). Runs are grouped by game and config:

- a run directory's game is its ``env.id`` (``Pong`` for ``ALE/Pong-v5``,
  MinAtar's own name, ``space_invaders``, for ``MinAtar/SpaceInvaders-v1``),
  its config label the name of the directory above it (a sweep's grid
  point), its seed the config's;
- a benchmark file named ``<game>_<algo>_seed<S>[_<tag>].json`` is a run of
  ``<game>`` with label ``<algo>[_<tag>]``; another one's runs have the
  name of its ``args.config`` for label and that config's game (the file's
  name if the config cannot be read);
- ``--label L``, once per INPUT, gives the runs under each INPUT, in order,
  the label L instead.

A run's final return is its last ``eval_return``. For each game and config
the table has the mean and the interquartile mean (IQM) of the final
returns over seeds, each with a 95% stratified-bootstrap confidence interval
(``rliable``; Agarwal et al. 2021, ``--reps`` resamples, seeded by
``--seed``), the mean over seeds of the mean return of the last 100
training episodes, where the runs of a game end at different env steps the
same at the shortest one's end (a comparison at equal env steps), and a
published reference where there is one (``MINATAR_DQN_5M``). Over the Atari
games of a config (``ATARI_RANDOM_HUMAN``'s) the table adds the mean and IQM
of human-normalised final returns, ``(score - random) / (human - random)``,
over games and the seeds every game has.

Writes to ``--out`` (default: the inputs' common directory) a figure per
game, ``<game>.png`` (the mean over seeds of the greedy evaluation return and
of the training return, mean of the last 100 episodes, against env steps,
each with a 95% bootstrap band, a colour per config), ``results.md`` (the
table, also printed) and ``results.json`` (its numbers, under ``rows``, with
the inputs and the bootstrap's ``reps`` and ``seed``). Needs the ``plot``
extra (rliable). Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from jaxrl.atomic_file import replaced_atomically
from jaxrl.config import ConfigError
from jaxrl.logger import METRICS_FILE, SUMMARY_FILE, read_metrics, trailing_mean
from jaxrl.sweep import STOP_CONDITIONS

PROG = "jaxrl-plot"
TRAIN_WINDOW = 100   # training episodes in a run directory's training-return mean, as scripts/benchmark.py's
CURVE_POINTS = 200   # points of a mean curve over seeds
EQUAL_STEPS_TOLERANCE = 0.01   # runs within this fraction of each other's env steps have equal lengths
                               # (a run stops at the first env step past its stop.env_steps, a few after)
_BENCHMARK_NAME = re.compile(r"(?P<game>.+)_(?P<algo>[^_]+)_seed(?P<seed>[0-9]+)(?:_(?P<tag>.+))?")

# Atari 100k's 26 games: (random, human) scores. Random: Mnih et al. 2015 (the DQN Nature paper), Extended
# Data Table 2; human: the professional tester's scores as in Wang et al. 2016 (dueling DQN); the table used
# by Atari 100k's papers (Kaiser et al. 2020; Agarwal et al. 2021, DrQ(eps), rliable's data).
ATARI_RANDOM_HUMAN = {
    "Alien": (227.8, 7127.7), "Amidar": (5.8, 1719.5), "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3), "BankHeist": (14.2, 753.1), "BattleZone": (2360.0, 37187.5),
    "Boxing": (0.1, 12.1), "Breakout": (1.7, 30.5), "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4), "DemonAttack": (152.1, 1971.0), "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7), "Gopher": (257.6, 2412.5), "Hero": (1027.0, 30826.4),
    "Jamesbond": (29.0, 302.8), "Kangaroo": (52.0, 3035.0), "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3), "MsPacman": (307.3, 6951.6), "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3), "Qbert": (163.9, 13455.0), "RoadRunner": (11.5, 7845.0),
    "Seaquest": (68.4, 42054.7), "UpNDown": (533.4, 11693.2),
}
# MinAtar's DQN after 5M frames (Young & Tian 2019, the MinAtar paper's learning curves).
MINATAR_DQN_5M = {"asterix": 17, "breakout": 10, "freeway": 50, "seaquest": 20, "space_invaders": 43}


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, exit 2, as for config errors
    self.exit(2, f"{self.prog}: error: {message}\n")


@dataclasses.dataclass
class Run:
  """One training run, as the table and figures need it.

  Attributes:
    game: what it was trained on (see the module docstring).
    label: its config's name.
    seed: its seed.
    evals: float64 [E, 2]: env steps and eval_return of each evaluation.
    train: float64 [T, 2]: env steps and the mean return of the last 100
      training episodes; None when not known.
    final_train_return: the training return where it ended (or is); None when not known.
    env_steps: the env steps it ended at (or has reached).
    finished: whether it reached a stop condition.
    source: where it was read from.
  """

  game: str
  label: str
  seed: int
  evals: np.ndarray
  train: np.ndarray | None
  final_train_return: float | None
  env_steps: int
  finished: bool
  source: str

  @property
  def final_return(self) -> float:
    return float(self.evals[-1, 1])

  def train_return_at(self, env_steps: float) -> float | None:
    """The training return at ``env_steps``: the final one if the run ended
    there, else that of the last point before; None if not known."""
    if self.env_steps <= env_steps * (1 + EQUAL_STEPS_TOLERANCE) or self.train is None:
      return self.final_train_return
    upto = self.train[self.train[:, 0] <= env_steps]
    return float(upto[-1, 1]) if len(upto) else None


def game_of(env_id: str) -> str:
  """``Pong`` for ``ALE/Pong-v5``, ``space_invaders`` for ``MinAtar/SpaceInvaders-v1``, else ``env_id``."""
  atari = re.fullmatch(r"ALE/(\w+)-v[0-9]+", env_id)
  if atari:
    return atari.group(1)
  minatar = re.fullmatch(r"MinAtar/(\w+)-v[0-9]+", env_id)
  if minatar:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", minatar.group(1)).lower()
  return env_id


def is_run_dir(path: Path) -> bool:
  return (path / "config.yaml").is_file() and (path / METRICS_FILE).is_file()


def read_run_dir(path: Path, label: str | None = None) -> Run | None:
  """The run in ``path``; None if it has no evaluation yet. Its training
  return is that of a single-agent run (a team's episodes are not matched up)."""
  config = yaml.safe_load((path / "config.yaml").read_text())
  records = read_metrics(path)
  evals = np.array([(r["env_steps"], r["eval_return"]) for r in records if r.get("eval_return") is not None],
                   np.float64).reshape(-1, 2)
  if not len(evals):
    return None
  episodes = [r for r in records if r.get("episode_return") is not None]
  train = None
  if episodes and len({r.get("agent_id") for r in episodes}) == 1:
    means = trailing_mean(np.array([r["episode_return"] for r in episodes], np.float64), TRAIN_WINDOW)
    train = np.stack([np.array([r["env_steps"] for r in episodes], np.float64), means], axis=1)
  try:
    summary = json.loads((path / SUMMARY_FILE).read_text())
  except (OSError, ValueError):
    summary = {}
  return Run(game=game_of(str(config["env"]["id"])), label=label or path.resolve().parent.name,
             seed=int(config.get("seed", 0)), evals=evals, train=train,
             final_train_return=None if train is None else float(train[-1, 1]),
             env_steps=int(summary.get("env_steps", records[-1]["env_steps"])),
             finished=summary.get("stopped_because") in STOP_CONDITIONS, source=str(path))


def read_benchmark(path: Path, label: str | None = None) -> list[Run]:
  """The learning runs of a ``scripts/benchmark.py --sections learning``
  file; none, with a note, from a ``results.json`` of jaxrl-plot's own (so
  that ``jaxrl-plot DIR/*.json`` can be run again).

  Raises:
    ConfigError: not such a file.
  """
  try:
    contents = json.loads(path.read_text())
    if isinstance(contents, dict) and contents.get("written_by") == PROG:
      print(f"{PROG}: note: {path} is a table of {PROG}'s; left out", file=sys.stderr)
      return []
    learning = contents["sections"]["learning"]["runs"]
  except (OSError, ValueError, KeyError, TypeError):
    raise ConfigError(f"{path}: not a run directory, nor a benchmark file with sections.learning.runs") from None
  name = _BENCHMARK_NAME.fullmatch(path.stem)
  if name:
    game, algo = name.group("game"), name.group("algo") + (f"_{name.group('tag')}" if name.group("tag") else "")
  else:
    config = contents.get("args", {}).get("config")
    game, algo = _env_of(config) or path.stem, Path(config).stem if config else path.stem
  runs = []
  for run in learning:
    evals = np.array([(p["env_steps"], p["eval_return"]) for p in run["curve"]], np.float64).reshape(-1, 2)
    train = (np.array([(p["env_steps"], p["return_mean100"]) for p in run["train_curve"]], np.float64)
             if run.get("train_curve") else None)
    if len(evals):
      runs.append(Run(game=game, label=label or algo, seed=int(run["seed"]), evals=evals, train=train,
                      final_train_return=run.get("last100_train_return"),
                      env_steps=int(run.get("env_steps", evals[-1, 0])), finished=True, source=str(path)))
  return runs


def _env_of(config: str | None) -> str | None:
  """The game of the config file ``config`` (``game_of`` its env.id); None if it cannot be read."""
  try:
    return game_of(str(yaml.safe_load(Path(config).read_text())["env"]["id"]))
  except (TypeError, OSError, ValueError, KeyError, yaml.YAMLError):
    return None


def find_runs(inputs: list[str], labels: list[str] | None = None) -> list[Run]:
  """Every run under ``inputs`` (see the module docstring), each run
  directory once; a note on stderr for run directories without an
  evaluation, which are left out.

  Raises:
    ConfigError: an input that does not exist, or holds no run.
  """
  runs, seen = [], set()
  for i, text in enumerate(inputs):
    path, label = Path(text), labels[i] if labels else None
    if path.is_file():
      runs += read_benchmark(path, label)
      continue
    if not path.is_dir():
      raise ConfigError(f"{text}: no such file or directory")
    run_dirs = [path] if is_run_dir(path) else sorted(p.parent for p in path.rglob(METRICS_FILE) if is_run_dir(p.parent))
    if not run_dirs:
      raise ConfigError(f"{text}: holds no run directory (config.yaml and {METRICS_FILE})")
    for run_dir in run_dirs:
      if run_dir.resolve() in seen:
        continue
      seen.add(run_dir.resolve())
      run = read_run_dir(run_dir, label)
      if run is None:
        print(f"{PROG}: note: {run_dir} has no evaluation yet; left out", file=sys.stderr)
      else:
        runs.append(run)
  return runs


def interval_estimates(scores: dict[str, np.ndarray], func: Callable[[np.ndarray], np.ndarray], reps: int,
                       seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """rliable's point estimates and 95% stratified-bootstrap intervals of
  ``func`` over ``scores`` ({name: [runs, tasks, ...]}), seeded. rliable's
  StratifiedBootstrap draws the runs from numpy's global generator (not from
  its ``random_state``): that is seeded here, and given back as it was."""
  from rliable import library as rly  # pylint: disable=import-outside-toplevel
  outer = np.random.get_state()
  np.random.seed(seed)
  try:
    with warnings.catch_warnings():   # arch's notice that its random_state, which rliable passes, will go
      warnings.filterwarnings("ignore", "random_state is deprecated", FutureWarning)
      return rly.get_interval_estimates(scores, func, reps=reps, random_state=np.random.RandomState(seed))
  finally:
    np.random.set_state(outer)


def _mean_and_iqm(scores: np.ndarray) -> np.ndarray:
  """[runs, tasks] -> [mean, IQM] (rliable's aggregates)."""
  from rliable import metrics  # pylint: disable=import-outside-toplevel
  return np.array([metrics.aggregate_mean(scores), metrics.aggregate_iqm(scores)])


def _row(game: str, label: str, runs: list[Run], scores: np.ndarray, point: np.ndarray,
         interval: np.ndarray) -> dict:
  """A table row: ``scores`` [runs, tasks], ``point`` [mean, IQM], ``interval``
  [2, 2] (no interval, None, from one run)."""
  one = len(scores) < 2
  return {"game": game, "config": label, "seeds": sorted({r.seed for r in runs}), "runs": len(scores),
          "unfinished": sum(not r.finished for r in runs),
          "env_steps": [min(r.env_steps for r in runs), max(r.env_steps for r in runs)],
          "final_returns": scores.tolist(), "mean": float(point[0]), "mean_ci": None if one else interval[:, 0].tolist(),
          "iqm": float(point[1]), "iqm_ci": None if one else interval[:, 1].tolist()}


def table(runs: list[Run], reps: int, seed: int) -> list[dict]:
  """The table's rows (see the module docstring): one per game and config,
  sorted, then one per config over its Atari games, human-normalised."""
  groups: dict[tuple[str, str], list[Run]] = {}
  for run in sorted(runs, key=lambda r: (r.game, r.label, r.seed)):
    groups.setdefault((run.game, run.label), []).append(run)
  rows = []
  for game in sorted({g for g, _ in groups}):
    mine = {label: group for (g, label), group in groups.items() if g == game}
    scores = {label: np.array([[r.final_return] for r in group]) for label, group in mine.items()}
    points, intervals = interval_estimates(scores, _mean_and_iqm, reps, seed)
    ends = [r.env_steps for group in mine.values() for r in group]
    shortest = min(ends) if max(ends) > min(ends) * (1 + EQUAL_STEPS_TOLERANCE) else None
    for label, group in mine.items():
      row = _row(game, label, group, scores[label][:, 0], points[label], intervals[label])
      train = [r.final_train_return for r in group]
      row["train_return"] = None if None in train else float(np.mean(train))
      if shortest is not None:
        at = [r.train_return_at(shortest) for r in group]
        row["at_env_steps"] = {"env_steps": shortest, "train_return": None if None in at else float(np.mean(at))}
      row["reference"] = MINATAR_DQN_5M.get(game)
      rows.append(row)
  return rows + _atari_rows(groups, reps, seed)


def _atari_rows(groups: dict[tuple[str, str], list[Run]], reps: int, seed: int) -> list[dict]:
  """A row per config with runs of Atari games: the human-normalised final
  returns over those games and the seeds all of them have."""
  rows = []
  for label in sorted({label for game, label in groups if game in ATARI_RANDOM_HUMAN}):
    games = sorted(game for game, theirs in groups if theirs == label and game in ATARI_RANDOM_HUMAN)
    seeds = sorted(set.intersection(*({r.seed for r in groups[game, label]} for game in games)))
    if not seeds:
      continue
    final = {(game, r.seed): r.final_return for game in games for r in groups[game, label]}
    scores = np.array([[(final[game, s] - ATARI_RANDOM_HUMAN[game][0]) /
                        (ATARI_RANDOM_HUMAN[game][1] - ATARI_RANDOM_HUMAN[game][0]) for game in games]
                       for s in seeds])
    points, intervals = interval_estimates({label: scores}, _mean_and_iqm, reps, seed)
    runs = [r for game in games for r in groups[game, label] if r.seed in seeds]
    row = _row(f"Atari: {len(games)} games, human-normalised", label, runs, scores, points[label], intervals[label])
    rows.append({**row, "games": games})
  return rows


def _number(x: float | None) -> str:
  return "-" if x is None else f"{x:.3g}" if abs(x) < 1 else f"{x:,.1f}"


def _estimate(point: float, interval: list[float] | None) -> str:
  return f"{_number(point)} [{_number(interval[0])}, {_number(interval[1])}]" if interval else _number(point)


def _steps(n: float) -> str:
  return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else f"{n:.0f}"


def markdown(rows: list[dict]) -> str:
  """The table as Markdown; the last two columns only where some row has them."""
  equal = any("at_env_steps" in row for row in rows)
  reference = any(row.get("reference") is not None for row in rows)
  head = ["game", "config", "runs (seeds)", "env steps", "final return: mean [95% CI]", "IQM [95% CI]",
          "training return (last 100)"]
  head += ["training return at equal env steps"] * equal + ["reference"] * reference
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    lo, hi = row["env_steps"]
    runs = f"{row['runs']} ({', '.join(map(str, row['seeds']))})"
    if row["unfinished"]:
      runs += f", {row['unfinished']} unfinished"
    steps = _steps(lo) if hi <= lo * (1 + EQUAL_STEPS_TOLERANCE) else f"{_steps(lo)}-{_steps(hi)}"
    cells = [row["game"], row["config"], runs, steps,
             _estimate(row["mean"], row["mean_ci"]), _estimate(row["iqm"], row["iqm_ci"]),
             _number(row.get("train_return"))]
    if equal:
      at = row.get("at_env_steps")
      cells.append(f"{_number(at['train_return'])} ({_steps(at['env_steps'])})" if at else "-")
    if reference:
      cells.append(_number(row.get("reference")))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _mean_curve(curves: list[np.ndarray], reps: int, seed: int,
                x: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The mean over runs of ``curves`` (each [N, 2]: x, y) at ``x`` (default:
  ``CURVE_POINTS`` points) where every run has data, and its 95% bootstrap
  band (runs resampled whole): (x, mean, [2, points]). One curve is itself,
  unbanded."""
  if len(curves) == 1:
    (curve,) = curves
    return curve[:, 0], curve[:, 1], np.stack([curve[:, 1], curve[:, 1]])
  lo, hi = max(c[0, 0] for c in curves), min(c[-1, 0] for c in curves)
  x = np.linspace(lo, hi, CURVE_POINTS) if x is None else x[(x >= lo) & (x <= hi)]
  ys = np.stack([np.interp(x, c[:, 0], c[:, 1]) for c in curves])[:, None, :]   # [runs, 1 task, points]
  points, intervals = interval_estimates({"curve": ys}, lambda s: np.mean(s, axis=(0, 1)), reps, seed)
  return x, points["curve"], intervals["curve"]


def figure(game: str, runs: list[Run], reps: int, seed: int):
  """The figure of one game: per config, the mean over seeds of the greedy
  evaluation return (dotted, a point at each evaluation of its first seed)
  and of the training return (solid), with 95% bootstrap bands, where every
  seed has data; each seed's training return faint, as far as it goes."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(7, 4.2), dpi=100, layout="constrained")
  ax = fig.add_subplot()
  longest = max(r.env_steps for r in runs)
  scale, unit = (1e6, " (millions)") if longest >= 1e6 else (1e3, " (thousands)") if longest >= 1e4 else (1.0, "")
  for i, label in enumerate(sorted({r.label for r in runs})):
    mine = [r for r in runs if r.label == label]
    name = f"{label} ({len(mine)} seed{'s' * (len(mine) > 1)})"
    trains = [r.train for r in mine]
    if all(c is not None and len(c) > 1 for c in trains):
      x, mean, band = _mean_curve(trains, reps, seed)
      ax.plot(x / scale, mean, color=f"C{i}", label=f"{name}: training, mean of last {TRAIN_WINDOW}")
      ax.fill_between(x / scale, band[0], band[1], color=f"C{i}", alpha=0.15, linewidth=0)
      for curve in trains if len(trains) > 1 else ():
        ax.plot(curve[:, 0] / scale, curve[:, 1], color=f"C{i}", alpha=0.3, linewidth=0.6)
    x, mean, band = _mean_curve([r.evals for r in mine], reps, seed, x=mine[0].evals[:, 0])
    ax.plot(x / scale, mean, color=f"C{i}", linestyle=":", marker="o", markersize=3, label=f"{name}: greedy eval")
    ax.fill_between(x / scale, band[0], band[1], color=f"C{i}", alpha=0.1, linewidth=0)
  if game in MINATAR_DQN_5M:
    ax.axhline(MINATAR_DQN_5M[game], color="black", linewidth=0.8, linestyle="--", label="MinAtar paper's DQN, 5M frames")
  ax.set_xlabel(f"env steps{unit}")
  ax.set_ylabel("return")
  ax.set_title(f"{game}: mean over seeds, 95% bootstrap bands")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6)
  return fig


def _write(path: Path, write: Callable[[str], None]) -> None:
  with replaced_atomically(path) as tmp:
    write(tmp)


def main(argv: list[str] | None = None) -> int:
  parser = _Parser(prog=PROG, description="Learning curves (mean over seeds, 95% bootstrap bands) and a table of final\n"
                   "returns (mean, IQM, 95% stratified-bootstrap CIs) of runs, sweeps and benchmark files.",
                   epilog=__doc__.split("\n\n", 2)[2].replace("``", ""),
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("inputs", nargs="+", metavar="INPUT", help="run or sweep directory, or benchmark JSON file")
  parser.add_argument("--label", action="append", dest="labels", metavar="L",
                      help="the config label of the runs of an INPUT: once per INPUT, in order")
  parser.add_argument("--out", metavar="DIR", help="where the figures and results.{md,json} go "
                      "(default: the inputs' common directory)")
  parser.add_argument("--reps", type=int, default=2000, metavar="N", help="bootstrap resamples (default 2000)")
  parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the bootstrap (default 0)")
  args = parser.parse_args(argv)
  if args.labels is not None and len(args.labels) != len(args.inputs):
    parser.error(f"--label: once per INPUT ({len(args.inputs)}), got {len(args.labels)}")
  if args.reps < 1:
    parser.error(f"--reps must be >= 1, got {args.reps}")
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    from rliable import library  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return _fail("needs matplotlib and rliable: pip install -e '.[plot]'")
  except TypeError as e:   # arch < 8 (rliable 1.2 pins it) on pandas 3
    return _fail(f"rliable cannot be imported ({e}): its arch < 8 needs pandas < 3: pip install 'pandas<3'")
  matplotlib.use("Agg")
  try:
    runs = find_runs(args.inputs, args.labels)
  except ConfigError as e:
    return _fail(str(e))
  unfinished = [r.source for r in runs if not r.finished]
  if unfinished:
    print(f"{PROG}: note: {len(unfinished)} runs have not finished (their last evaluation counts): "
          f"{', '.join(unfinished)}", file=sys.stderr)
  out = Path(args.out or os.path.commonpath([str(Path(p).resolve() if Path(p).is_dir() else Path(p).resolve().parent)
                                             for p in args.inputs]))
  out.mkdir(parents=True, exist_ok=True)
  rows = table(runs, args.reps, args.seed)
  text = markdown(rows)
  _write(out / "results.md", lambda tmp: Path(tmp).write_text(text + "\n"))
  written = {"written_by": PROG, "inputs": args.inputs, "reps": args.reps, "seed": args.seed, "rows": rows}
  _write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(written, indent=1) + "\n"))
  for game in sorted({r.game for r in runs}):
    fig = figure(game, [r for r in runs if r.game == game], args.reps, args.seed)
    name = re.sub(r"[^\w.+-]", "_", game)
    _write(out / f"{name}.png", lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
  print(text, flush=True)
  print(f"{PROG}: wrote {out}/results.md, results.json and a figure per game", file=sys.stderr)
  return 0


def _fail(message: str) -> int:
  print(f"{PROG}: error: {message}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
