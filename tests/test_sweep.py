"""jaxrl-sweep: a grid of configs x seeds as ordinary runs under one directory,
finished runs skipped, cut ones resumed, bad input refused up front."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import psutil
import pytest

from jaxrl import sweep
from jaxrl.config_file import load_config, save_config
from jaxrl.logger import read_metrics
from runs import CARTPOLE, ENV, ROOT, records, wait_for

SWEEP = [sys.executable, str(ROOT / "scripts" / "sweep.py")]
# Tiny sync runs: a few seconds each, ending on stop.env_steps with an evaluation.
TINY = ["runtime.mode=sync", "stop.env_steps=600", "stop.eval_return=null", "replay.min_size=64",
        "learner.batch_size=32", "eval.interval=50", "eval.episodes=1", "runtime.progress=false"]


def summary_of(run_dir):
  return json.loads((run_dir / "summary.json").read_text())


def most_at_once(summaries) -> int:
  """The most runs that were going at one time, from their launch times and wall seconds."""
  events = sorted([(s["launch_time"], 1) for s in summaries] +
                  [(s["launch_time"] + s["wall_seconds"], -1) for s in summaries])
  going = most = 0
  for _, change in events:
    going += change
    most = max(most, going)
  return most


def test_a_grid_is_ordinary_runs_two_at_once_and_a_second_sweep_starts_nothing(tmp_path, capsys):
  args = [CARTPOLE, "agent.learning_rate=0.001,0.0003", "--seeds", "0", "1", *TINY, "--parallel", "2",
          "--dir", str(tmp_path)]
  assert sweep.main(args) == 0
  out = capsys.readouterr().out
  runs = {f"agent.learning_rate={lr}/seed{seed}": (lr, seed) for lr in ("0.001", "0.0003") for seed in (0, 1)}
  assert {str(p.parent.relative_to(tmp_path)) for p in tmp_path.rglob("summary.json")} == set(runs)
  for name, (lr, seed) in runs.items():
    run_dir = tmp_path / name
    # What jaxrl-train CONFIG key=v ... seed=S run_dir=... makes.
    assert load_config(run_dir / "config.yaml") == load_config(
        CARTPOLE, [f"agent.learning_rate={lr}", *TINY, f"seed={seed}", f"run_dir={run_dir}"])
    summary = summary_of(run_dir)
    assert summary["stopped_because"] == "env_steps", summary
    evals = [r for r in read_metrics(run_dir) if "eval_return" in r]
    assert summary["eval_return"] == evals[-1]["eval_return"]
    assert f"start {name}\n" in out and f"done {name}: env_steps: eval_return {summary['eval_return']}," in out
  assert most_at_once([summary_of(tmp_path / name) for name in runs]) == 2

  mtimes = {name: (tmp_path / name / "metrics.jsonl").stat().st_mtime_ns for name in runs}
  assert sweep.main(args) == 0
  out = capsys.readouterr().out
  assert "4 finished, 0 to resume, 0 to start" in out
  assert "jaxrl-sweep: start " not in out and "jaxrl-sweep: resume " not in out, out
  assert all(f"skip {name}: finished (env_steps: eval_return" in out for name in runs), out
  assert mtimes == {name: (tmp_path / name / "metrics.jsonl").stat().st_mtime_ns for name in runs}


def test_ctrl_c_cuts_the_runs_and_the_same_command_resumes_them(tmp_path):
  """SIGINT to the sweep reaches its run, which checkpoints and exits; no
  process is left; the same command resumes the run (its records go on)."""
  # Long enough (6,000 env steps) that the run cannot end before the SIGINT sent at its first record.
  command = [*SWEEP, CARTPOLE, "--dir", str(tmp_path), "runtime.mode=sync", "stop.env_steps=6000",
             "stop.eval_return=null", "replay.min_size=64", "learner.batch_size=32", "eval.interval=50",
             "eval.episodes=1", "runtime.progress=false"]
  run_dir = tmp_path / "cartpole_dqn" / "seed0"
  proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
  try:
    wait_for(lambda: proc.poll() is not None or records(run_dir), what="the run's first record")
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children and proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 130, err
  assert "cut cartpole_dqn/seed0: SIGINT" in out, out
  assert not psutil.wait_procs(children, timeout=5)[1]
  assert summary_of(run_dir)["stopped_because"] == "SIGINT"
  assert list((run_dir / "checkpoints").glob("*.ckpt"))
  cut = read_metrics(run_dir)

  again = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=120)
  assert again.returncode == 0, again.stderr
  assert "resume cartpole_dqn/seed0\n" in again.stdout and "done cartpole_dqn/seed0: env_steps:" in again.stdout
  assert summary_of(run_dir)["stopped_because"] == "env_steps"
  resumed = read_metrics(run_dir)
  assert resumed[:10] == cut[:10]   # the same run, not a new one
  steps = [r["env_steps"] for r in resumed]
  assert steps == sorted(steps) and steps[-1] > cut[-1]["env_steps"]


@pytest.mark.parametrize("args, message", [
    (["agent.no_such_key=1,2"], "agent.no_such_key: unknown key"),
    (["agent.learning_rate=0.001,-1"], "agent.learning_rate: must be a finite number > 0, got -1.0"),
    (["agent.learning_rate=0.001,"], "bad override 'agent.learning_rate=0.001,': an empty value"),
    (["agent.learning_rate=1e-3", "agent.learning_rate=1e-4"], "agent.learning_rate: given twice"),
    (["seed=1,2"], "seed: set by the sweep (use --seeds)"),
    (["--seeds", "0", "-3"], "--seeds: must be in [0, 2**32 - 1], got -3"),
    (["--seeds", "1", "1"], "--seeds: a seed given twice"),
    (["--seeds", "one"], "argument --seeds: expected integers"),
    (["--parallel", "0"], "--parallel must be >= 1, got 0"),
])
def test_bad_grid_input_is_one_line_and_exit_2_before_anything_is_made(tmp_path, capsys, args, message):
  sweep_dir = tmp_path / "sweep"
  try:
    status = sweep.main([CARTPOLE, *args, *TINY, "--dir", str(sweep_dir)])
  except SystemExit as e:   # argparse's own errors
    status = e.code
  err = capsys.readouterr().err
  assert status == 2 and len(err.splitlines()) == 1, err
  assert err.startswith(f"jaxrl-sweep: error: {message}"), err
  assert not sweep_dir.exists()


def test_an_unknown_config_is_one_line_and_exit_2(tmp_path, capsys):
  assert sweep.main(["no_such_config", "--dir", str(tmp_path / "sweep")]) == 2
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and err.startswith("jaxrl-sweep: error: no_such_config: no such config file")
  assert not (tmp_path / "sweep").exists()


def test_a_run_dir_of_another_config_is_refused_before_anything_starts(tmp_path, capsys):
  run_dir = tmp_path / "cartpole_dqn" / "seed0"
  run_dir.mkdir(parents=True)
  save_config(load_config(CARTPOLE, [*TINY, "agent.learning_rate=0.5", f"run_dir={run_dir}"]), run_dir / "config.yaml")
  assert sweep.main([CARTPOLE, *TINY, "--dir", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"jaxrl-sweep: error: {run_dir} holds a run of another config (agent.learning_rate: 0.5 "
                        "there, 0.001 here)"), err
  assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]


def test_a_run_with_records_and_no_checkpoint_is_not_restarted(tmp_path, capsys):
  """It cannot be resumed, and starting it again would mix two runs' records."""
  run_dir = tmp_path / "cartpole_dqn" / "seed0"
  run_dir.mkdir(parents=True)
  save_config(load_config(CARTPOLE, [*TINY, f"run_dir={run_dir}"]), run_dir / "config.yaml")
  (run_dir / "metrics.jsonl").write_text('{"time": 1.0, "env_steps": 8, "learner_steps": 0}\n')
  assert sweep.main([CARTPOLE, *TINY, "--dir", str(tmp_path)]) == 1
  out = capsys.readouterr().out
  assert f"failed cartpole_dqn/seed0: records but no checkpoint to resume from; remove {run_dir}" in out
  assert "jaxrl-sweep: start " not in out and not (run_dir / "summary.json").exists()


def test_run_names_are_the_swept_values_escaped_and_configs_are_built(tmp_path):
  grid = sweep.parse_grid(["agent.hidden_sizes=[64,64],[32]", "env.id=CartPole-v1,'My/Env-v0'", "replay.n_step=3"])
  assert grid == [("agent.hidden_sizes", ["[64,64]", "[32]"]), ("env.id", ["CartPole-v1", "'My/Env-v0'"]),
                  ("replay.n_step", ["3"])]
  runs = sweep.plan(ROOT / "configs" / "cartpole_dqn.yaml", grid, [0, 7], tmp_path)
  names = [run.name for run in runs]
  assert names[:2] == ["agent.hidden_sizes=[64%2C64],env.id=CartPole-v1/seed0",
                       "agent.hidden_sizes=[64%2C64],env.id=CartPole-v1/seed7"]
  assert names[3] == "agent.hidden_sizes=[64%2C64],env.id=%27My%2FEnv-v0%27/seed7"
  assert len(set(names)) == len(runs) == 8
  last = runs[-1].config
  assert (last.agent.hidden_sizes, last.env.id, last.replay.n_step, last.seed) == ((32,), "My/Env-v0", 3, 7)
  assert last.run_dir == str(tmp_path / names[-1])
  assert not any(tmp_path.iterdir())   # planning makes nothing
  assert sweep.split_values("1,[2,3],{a: 4, b: 5},'x,y'") == ["1", "[2,3]", "{a: 4, b: 5}", "'x,y'"]


@pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")   # the cluster's processes
def test_with_ray_the_runs_are_tune_trials_that_report_their_records(tmp_path):
  pytest.importorskip("ray")
  from ray.cluster_utils import Cluster  # pylint: disable=import-outside-toplevel
  cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
  try:
    proc = subprocess.run([*SWEEP, CARTPOLE, "--seeds", "0", "1", *TINY, "--dir", str(tmp_path),
                           "--ray", cluster.address], capture_output=True, text=True, env=ENV, timeout=300)
  finally:
    cluster.shutdown()
  assert proc.returncode == 0, proc.stdout + proc.stderr
  for seed in (0, 1):
    run_dir = tmp_path / "cartpole_dqn" / f"seed{seed}"
    assert f"start cartpole_dqn/seed{seed} (ray)\n" in proc.stdout and f"done cartpole_dqn/seed{seed}: env_steps:" in proc.stdout
    assert load_config(run_dir / "config.yaml") == load_config(CARTPOLE, [*TINY, f"seed={seed}", f"run_dir={run_dir}"])
    assert summary_of(run_dir)["stopped_because"] == "env_steps"
    reported = [json.loads(line) for line in (tmp_path / "tune" / f"cartpole_dqn_seed{seed}" / "result.json").open()]
    evals = [(r["env_steps"], r["eval_return"]) for r in read_metrics(run_dir) if "eval_return" in r]
    assert [(r["env_steps"], r["eval_return"]) for r in reported if "eval_return" in r] == evals
    assert len(reported) == len(read_metrics(run_dir))   # every record, once
