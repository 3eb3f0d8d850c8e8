"""jaxrl-plot: tables of final returns over seeds (mean, IQM, stratified-bootstrap
CIs by rliable), human-normalised Atari aggregates, figures, and the inputs
it reads (run directories, sweeps, benchmark learning files)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats

from jaxrl import plot
from jaxrl.config_file import load_config, save_config
from runs import ROOT

pytest.importorskip("rliable.library")
# Committed benchmark files that later runs do not change: DQN's, and IQN's
# with its earlier, deeper head.
MINATAR = sorted([*(ROOT / "benchmarks" / "minatar").glob("*_dqn_seed[0-9].json"),   # plain DQN, no tags
                  *(ROOT / "benchmarks" / "minatar" / "iqn_deeper_head").glob("*_seed*.json")])


def make_run(run_dir, final_return, seed=0, env_id="CartPole-v1", finished=True, episodes=(10.0, 20.0, 30.0)):
  """A run directory as jaxrl-train leaves it, written by hand: evaluations at
  100 and 200 env steps (the last ``final_return``), ``episodes`` before them."""
  run_dir.mkdir(parents=True)
  save_config(load_config(None, [f"env.id={env_id}", f"seed={seed}", f"run_dir={run_dir}"]), run_dir / "config.yaml")
  records = [{"time": 0.1 * i, "env_steps": 20 * (i + 1), "learner_steps": 0, "episode_return": r,
              "agent_id": "agent_0"} for i, r in enumerate(episodes)]
  records += [{"time": 1.0, "env_steps": 100, "learner_steps": 10, "eval_return": final_return / 2},
              {"time": 2.0, "env_steps": 200, "learner_steps": 20, "eval_return": final_return}]
  (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  summary = {"eval_return": final_return, "env_steps": 200, "learner_steps": 20, "wall_seconds": 2.0,
             "stopped_because": "env_steps" if finished else "SIGINT"}
  (run_dir / "summary.json").write_text(json.dumps(summary))


def row_of(rows, game, config):
  (row,) = [r for r in rows if r["game"] == game and r["config"] == config]
  return row


def test_a_sweeps_table_is_mean_and_iqm_over_seeds_with_seeded_bootstrap_intervals(tmp_path, capsys):
  finals = {"lr=0.1": [1.0, 2.5, 3.25, 4.0, 100.0], "lr=0.01": [5.0, 7.0]}
  for label, returns in finals.items():
    for seed, final in enumerate(returns):
      make_run(tmp_path / "sweep" / label / f"seed{seed}", final, seed)
  make_run(tmp_path / "sweep" / "lr=0.01" / "seed9", 1e6, seed=9, finished=False)   # cut short: counted, said
  (tmp_path / "sweep" / "lr=0.01" / "seed9" / "summary.json").unlink()
  out = tmp_path / "out"
  assert plot.main([str(tmp_path / "sweep"), "--out", str(out), "--reps", "5000"]) == 0
  stdout, stderr = capsys.readouterr()
  written = json.loads((out / "results.json").read_text())
  rows = written["rows"]
  assert (written["reps"], written["seed"], written["inputs"]) == (5000, 0, [str(tmp_path / "sweep")])
  assert (out / "results.md").read_text() == stdout
  assert "1 runs have not finished" in stderr and "seed9" in stderr

  row = row_of(rows, "CartPole-v1", "lr=0.1")
  assert row["seeds"] == [0, 1, 2, 3, 4] and row["final_returns"] == finals["lr=0.1"]
  assert row["mean"] == pytest.approx(22.15) and row["iqm"] == pytest.approx(3.25)   # by hand: mean of 2.5, 3.25, 4
  assert row["iqm"] == pytest.approx(scipy.stats.trim_mean(finals["lr=0.1"], 0.25))
  lo, hi = row["mean_ci"]
  assert 1.0 <= lo < 22.15 < hi <= 100.0 and row["iqm_ci"][0] <= 3.25 <= row["iqm_ci"][1]
  # Against an independent percentile bootstrap of the mean over seeds.
  resampled = np.random.default_rng(1).choice(finals["lr=0.1"], size=(20_000, 5)).mean(axis=1)
  assert np.allclose([lo, hi], np.percentile(resampled, [2.5, 97.5]), atol=3.0)
  assert row["train_return"] == pytest.approx(20.0)   # the mean of its 3 training episodes
  assert "| CartPole-v1 | lr=0.1 | 5 (0, 1, 2, 3, 4) | 200 | 22.1 [" in stdout

  cut = row_of(rows, "CartPole-v1", "lr=0.01")
  assert cut["unfinished"] == 1 and cut["final_returns"] == [5.0, 7.0, 1e6]
  assert "3 (0, 1, 9), 1 unfinished" in stdout

  np.random.seed(123)   # rliable's stratified bootstrap draws from numpy's global generator
  again = plot.table(plot.find_runs([str(tmp_path / "sweep")]), reps=5000, seed=0)
  assert again == rows   # seeded: the same intervals every time
  assert np.random.randint(1 << 30) == np.random.RandomState(123).randint(1 << 30)   # and left as it was

  png = (out / "CartPole-v1.png").read_bytes()
  assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_one_seed_has_no_interval_and_labels_can_be_given(tmp_path, capsys):
  make_run(tmp_path / "a" / "seed0", 7.0)
  (row,) = plot.table(plot.find_runs([str(tmp_path)]), reps=100, seed=0)
  assert (row["config"], row["mean"], row["iqm"], row["mean_ci"], row["iqm_ci"]) == ("a", 7.0, 7.0, None, None)
  assert "| 7.0 | 7.0 |" in plot.markdown([row])
  make_run(tmp_path / "b" / "seed0", 9.0)
  assert plot.main([str(tmp_path / "a"), str(tmp_path / "b" / "seed0"), "--label", "dqn", "--label", "iqn"]) == 0
  assert "| CartPole-v1 | dqn | 1 (0) | 200 | 7.0 |" in capsys.readouterr().out
  assert (tmp_path / "results.md").exists()   # the inputs' common directory


def test_atari_games_are_human_normalised_over_games_and_common_seeds(tmp_path):
  random_pong, human_pong = plot.ATARI_RANDOM_HUMAN["Pong"]
  assert (random_pong, human_pong) == (-20.7, 14.6) and plot.ATARI_RANDOM_HUMAN["Breakout"] == (1.7, 30.5)
  assert len(plot.ATARI_RANDOM_HUMAN) == 26
  finals = {("Pong", 0): -3.05, ("Pong", 1): 14.6, ("Pong", 2): 0.0, ("Breakout", 0): 1.7, ("Breakout", 1): 30.5}
  for (game, seed), final in finals.items():
    make_run(tmp_path / "drq" / f"{game}_s{seed}", final, seed, env_id=f"ALE/{game}-v5")
  rows = plot.table(plot.find_runs([str(tmp_path)]), reps=2000, seed=0)
  assert [(r["game"], r["config"]) for r in rows] == [
      ("Breakout", "drq"), ("Pong", "drq"), ("Atari: 2 games, human-normalised", "drq")]
  atari = rows[-1]
  # By hand: seeds 0 and 1 (Pong's seed 2 has no Breakout run); Pong 0.5, 1.0; Breakout 0.0, 1.0.
  assert atari["games"] == ["Breakout", "Pong"] and atari["seeds"] == [0, 1]
  assert np.allclose(atari["final_returns"], [[0.0, 0.5], [1.0, 1.0]])
  assert atari["mean"] == pytest.approx(0.625) and atari["iqm"] == pytest.approx(0.75)
  assert atari["mean_ci"][0] <= 0.625 <= atari["mean_ci"][1]


def test_benchmark_files_group_by_game_and_algorithm_with_the_tag(tmp_path):
  def learning_file(name, seeds, config=None):
    runs = [{"seed": s, "curve": [{"env_steps": 1000, "eval_return": 1.0 + s}, {"env_steps": 2000, "eval_return": 2.0 + s}],
             "train_curve": [{"env_steps": 500, "return_mean100": 0.5}], "last100_train_return": 0.75,
             "last_eval_return": 2.0 + s, "env_steps": 2000} for s in seeds]
    (tmp_path / name).write_text(json.dumps({"args": {"config": config}, "sections": {"learning": {"runs": runs}}}))
    return str(tmp_path / name)

  files = [learning_file("breakout_dqn_seed0.json", [0]), learning_file("breakout_dqn_seed1.json", [1]),
           learning_file("breakout_iqn_seed0_per_dueling.json", [0]), learning_file("space_invaders_iqn_seed3.json", [3]),
           learning_file("mpe_spread_learning.json", [0, 1, 2], config=str(ROOT / "configs" / "mpe_spread_dqn.yaml")),
           learning_file("gone_learning.json", [4], config="/no/such/dir/gone_dqn.yaml")]
  runs = plot.find_runs(files)
  groups = {}
  for run in runs:
    groups.setdefault((run.game, run.label), []).append(run.seed)
  assert groups == {("breakout", "dqn"): [0, 1], ("breakout", "iqn_per_dueling"): [0],
                    ("space_invaders", "iqn"): [3], ("mpe2.simple_spread_v3", "mpe_spread_dqn"): [0, 1, 2],
                    ("gone_learning", "gone_dqn"): [4]}   # the config's game, else the file's name
  assert all(run.final_return == 2.0 + run.seed and run.final_train_return == 0.75 for run in runs)
  relabelled = plot.find_runs(files[:2], labels=["x", "y"])
  assert [(r.game, r.label) for r in relabelled] == [("breakout", "x"), ("breakout", "y")]


def test_the_minatar_benchmark_files_make_a_figure_per_game_and_the_table(tmp_path, capsys):
  assert plot.main([*map(str, MINATAR), "--out", str(tmp_path), "--reps", "200"]) == 0
  stdout = capsys.readouterr().out
  games = {"asterix", "breakout", "freeway", "seaquest", "space_invaders"}
  assert {p.stem for p in tmp_path.glob("*.png")} == games
  rows = json.loads((tmp_path / "results.json").read_text())["rows"]
  assert {(r["game"], r["config"]): r["seeds"] for r in rows if r["game"] == "asterix"} == {
      ("asterix", "dqn"): [0, 1], ("asterix", "iqn"): [0], ("asterix", "iqn_5m"): [0]}
  asterix_dqn = row_of(rows, "asterix", "dqn")
  # Each run's last eval_return, and the mean of its last 100 training returns, as the files have them.
  files = [json.loads((ROOT / "benchmarks" / "minatar" / f"asterix_dqn_seed{s}.json").read_text()) for s in (0, 1)]
  (first,), (second,) = (f["sections"]["learning"]["runs"] for f in files)
  assert asterix_dqn["final_returns"] == [first["last_eval_return"], second["last_eval_return"]]
  assert asterix_dqn["train_return"] == pytest.approx((first["last100_train_return"] + second["last100_train_return"]) / 2)
  assert asterix_dqn["reference"] == 17 and "| asterix | dqn | 2 (0, 1) | 5.0M |" in stdout
  # At the shortest asterix run's end (2M frames): the DQN runs' training returns there.
  shortest = min(r["env_steps"][0] for r in rows if r["game"] == "asterix")
  at = [[p["return_mean100"] for p in run["train_curve"] if p["env_steps"] <= shortest][-1] for run in (first, second)]
  assert asterix_dqn["at_env_steps"] == {"env_steps": shortest, "train_return": pytest.approx(np.mean(at))}
  assert row_of(rows, "asterix", "iqn")["at_env_steps"]["train_return"] == row_of(rows, "asterix", "iqn")["train_return"]
  # Again, with the table it wrote among the inputs (as DIR/*.json is after a first run): the same table.
  assert plot.main([*map(str, MINATAR), str(tmp_path / "results.json"), "--out", str(tmp_path), "--reps", "200"]) == 0
  assert capsys.readouterr().out == stdout


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file or directory"),
    (lambda p: p.mkdir(), "holds no run directory"),
    (lambda p: p.write_text("{}"), "not a run directory, nor a benchmark file"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, make, message):
  make(tmp_path / "input")
  assert plot.main([str(tmp_path / "input"), "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and err.startswith(f"jaxrl-plot: error: {tmp_path / 'input'}: {message}"), err
  assert not (tmp_path / "out").exists()
