"""Learning-curve figures and the README table of the MinAtar benchmarks.

  python scripts/plot_minatar.py [benchmarks/minatar]

Reads every ``<game>_<algo>_seed<k>[_<tag>].json`` there (written by
``scripts/benchmark.py --sections learning``), draws one figure per game,
``<game>.png``: the mean return of the last 100 training episodes and the
greedy eval returns against frames, one line per run, with the MinAtar
paper's DQN anchor; and prints the README's markdown table. A run's
``held_seconds``, where present, is time its processes were stopped (held
for a measurement that needed the machine) and is left out of its wall time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from matplotlib.figure import Figure

ANCHORS = {"asterix": 17, "breakout": 10, "freeway": 50, "seaquest": 20, "space_invaders": 43}  # DQN, 5M frames


def load_runs(folder: Path) -> dict[str, list[dict]]:
  """Game -> its runs, each with ``algo``, ``seed`` and ``tag`` added, from
  files named ``<game>_<algo>_seed<k>[_<tag>].json`` (a tag tells apart
  repeats of one seed, e.g. ``_5m`` for a longer rerun)."""
  games: dict[str, list[dict]] = {}
  for path in sorted(folder.glob("*_seed*.json")):
    game_algo, seed_tag = path.stem.rsplit("_seed", 1)
    game, algo = game_algo.rsplit("_", 1)
    seed, _, tag = seed_tag.partition("_")
    (run,) = json.loads(path.read_text())["sections"]["learning"]["runs"]
    games.setdefault(game, []).append({**run, "algo": algo, "seed": int(seed), "tag": tag})
  return games


def plot_game(game: str, runs: list[dict], out: Path) -> None:
  fig = Figure(figsize=(6, 3.6), dpi=100)
  ax = fig.add_subplot()
  colors = {"dqn": "tab:blue", "iqn": "tab:red"}
  for run in runs:
    label = f"{run['algo'].upper()} seed {run['seed']}" + (f" ({run['tag']})" if run["tag"] else "")
    train = run["train_curve"]
    ax.plot([p["env_steps"] / 1e6 for p in train], [p["return_mean100"] for p in train],
            color=colors[run["algo"]], alpha=0.9, label=f"{label}: training, mean of 100")
    ax.plot([p["env_steps"] / 1e6 for p in run["curve"]], [p["eval_return"] for p in run["curve"]],
            color=colors[run["algo"]], alpha=0.35, linestyle=":", label=f"{label}: greedy eval")
  ax.axhline(ANCHORS[game], color="black", linewidth=0.8, linestyle="--", label="MinAtar paper's DQN, 5M frames")
  ax.set_xlabel("frames (millions)")
  ax.set_ylabel("return")
  ax.set_title(f"MinAtar {game}")
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(out)


def train_return_at(run: dict, frames: int) -> str:
  """A run's mean of 100 training returns at ``frames``: its final one if it
  ended there (within 0.1%), else at its last curve point up to ``frames``;
  "-" if it ended before."""
  if run["env_steps"] < frames * 0.999:
    return "-"
  if run["env_steps"] <= frames * 1.001:
    return f"{run['last100_train_return']:.1f}"
  return f"{[p['return_mean100'] for p in run['train_curve'] if p['env_steps'] <= frames][-1]:.1f}"


def table(games: dict[str, list[dict]]) -> str:
  """The README table, a cell per run (" / " between runs); "DQN at IQN's
  frames" is each DQN run's training mean at each length the IQN runs of
  the game have ("; " between lengths), for DQN runs that went on longer."""
  rows = ["| game | DQN | IQN | DQN at IQN's frames | anchor (DQN) | frames | wall time |",
          "|---|---|---|---|---|---|---|"]
  for game in ANCHORS:
    runs = games.get(game, [])
    by_algo = {algo: sorted((r for r in runs if r["algo"] == algo), key=lambda r: (r["seed"], r["tag"]))
               for algo in ("dqn", "iqn")}
    cells = {algo: " / ".join(f"{r['last100_train_return']:.1f} ({r['last_eval_return']:.1f})" for r in mine)
             or "to come" for algo, mine in by_algo.items()}
    in_order = by_algo["dqn"] + by_algo["iqn"]
    frames = " / ".join(f"{r['env_steps'] / 1e6:.1f}M" for r in in_order) or "-"
    wall = " / ".join(f"{(r['wall_seconds'] - r.get('held_seconds', 0)) / 60:.0f} min" for r in in_order) or "-"
    lengths = sorted({round(r["env_steps"], -5) for r in by_algo["iqn"]})   # to 0.1M
    equal = "; ".join(" / ".join(train_return_at(r, n) for r in by_algo["dqn"]) + f" ({n / 1e6:.1f}M)"
                      for n in lengths) or "-"
    rows.append(f"| {game} | {cells['dqn']} | {cells['iqn']} | {equal} | {ANCHORS[game]} | {frames} | {wall} |")
  return "\n".join(rows)


def main() -> None:
  folder = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/minatar")
  games = load_runs(folder)
  for game, runs in games.items():
    plot_game(game, runs, folder / f"{game}.png")
  print(table(games))


if __name__ == "__main__":
  main()
