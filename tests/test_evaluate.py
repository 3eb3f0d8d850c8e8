"""Tests of jaxrl.load_run and jaxrl-evaluate / scripts/evaluate.py on a small real run."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import warnings

import chex
import jax
import numpy as np
import pytest

import jaxrl
from jaxrl import cli, runtime
from jaxrl.checkpoint import CheckpointError, latest_checkpoint, restore_checkpoint, save_checkpoint
from jaxrl.config import ConfigError, RunConfig
from jaxrl.config_file import load_config, save_config
from runs import CARTPOLE, ENV, ROOT, train_cli

EVALUATE = [sys.executable, str(ROOT / "scripts" / "evaluate.py")]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A short sync-mode CartPole run with two checkpoints (about 15 s)."""
  run_dir = tmp_path_factory.mktemp("evaluate") / "run"
  for env_steps in (2000, 3000):   # a resume adds a second checkpoint
    args = ["--resume", str(run_dir)] if run_dir.exists() else [CARTPOLE, f"run_dir={run_dir}"]
    proc = train_cli(*args, "runtime.mode=sync", f"stop.env_steps={env_steps}", "runtime.progress=false",
                     "replay.min_size=256", "learner.batch_size=32", "eval.interval=0", "stop.eval_return=null",
                     timeout=300)
    assert proc.returncode == 0, proc.stderr
  return run_dir


def template(agent):
  """The checkpoint's template: the run's one learner, "agent_0"."""
  return {"agent_0": agent.init(jax.random.PRNGKey(0))}


def test_load_run_restores_the_latest_checkpoint_exactly(run_dir):
  """Item 23."""
  run = jaxrl.load_run(run_dir)
  assert isinstance(run, jaxrl.SavedRun) and isinstance(run.config, RunConfig)
  assert run.config == load_config(run_dir / "config.yaml")
  latest = latest_checkpoint(run_dir / "checkpoints")
  assert run.checkpoint == latest
  assert list(run.learners) == ["agent_0"]
  agent, state = run.learners["agent_0"]
  assert (agent.obs_shape, agent.num_actions, agent.config) == ((4,), 2, run.config.agent)
  expected, counters, _ = restore_checkpoint(latest, template(agent))
  chex.assert_trees_all_equal(state, expected["agent_0"])
  assert run.counters == counters and counters["learner_steps"] == int(state.step) > 0


def test_load_run_restores_a_given_checkpoint(run_dir):
  """Item 23: checkpoint=PATH picks an older one; a directory means its latest."""
  first, latest = sorted((run_dir / "checkpoints").glob("step_*.ckpt"))[-2:]
  run = jaxrl.load_run(run_dir, checkpoint=first)
  agent, state = run.learners["agent_0"]
  assert run.checkpoint == first
  chex.assert_trees_all_equal(state, restore_checkpoint(first, template(agent))[0]["agent_0"])
  assert int(state.step) < int(jaxrl.load_run(run_dir).learners["agent_0"][1].step)
  assert jaxrl.load_run(run_dir, checkpoint=str(run_dir / "checkpoints")).checkpoint == latest


def test_learner_of_maps_the_gymnasium_agent_to_its_learner(run_dir):
  """Item 23: a gymnasium env's one agent "agent_0" has its own learner "agent_0"."""
  run = jaxrl.load_run(run_dir)
  assert run.learner_of("agent_0") == "agent_0"
  assert run.agents == {"agent_0": "agent_0"}
  with pytest.raises(KeyError, match="'agent_1' is not an agent of this run"):
    run.learner_of("agent_1")


def test_load_run_of_a_bad_directory_is_a_one_line_checkpoint_error(run_dir, tmp_path):
  """Item 23."""
  def message(*args):
    with pytest.raises(CheckpointError) as info:
      jaxrl.load_run(*args)
    assert "\n" not in str(info.value)
    return str(info.value)

  assert message(tmp_path / "nowhere") == f"{tmp_path / 'nowhere'}: not a run directory (no config.yaml)"
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.yaml").write_text((run_dir / "config.yaml").read_text())
  assert message(empty) == f"{empty / 'checkpoints'}: no such checkpoint directory"
  (empty / "checkpoints").mkdir()
  assert message(empty) == f"{empty / 'checkpoints'}: no checkpoint in this directory"
  (empty / "config.yaml").write_text("agent: {lerning_rate: 0.1}\n")
  with pytest.raises(ConfigError, match=rf"^{re.escape(str(empty))}/config.yaml: agent.lerning_rate: unknown key"):
    jaxrl.load_run(empty)
  bad = tmp_path / "step_000000001.ckpt"
  bad.write_bytes(b"not a zip file")
  assert message(run_dir, bad).startswith(f"{bad}: corrupt checkpoint")
  assert message(run_dir, tmp_path / "missing.ckpt") == f"{tmp_path / 'missing.ckpt'}: no such checkpoint"


def test_evaluate_script_prints_one_json_line(run_dir):
  """Item 23: greedy episodes of the saved policy; stdout is one JSON line."""
  proc = subprocess.run(EVALUATE + [str(run_dir), "--episodes", "3"], capture_output=True, text=True,
                        cwd=ROOT, env=ENV, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert len(lines) == 1, proc.stdout
  result = json.loads(lines[0])
  run = jaxrl.load_run(run_dir)
  assert set(result) == {"eval_return", "eval_return/agent_0", "episodes", "eval_capped", "checkpoint",
                         "learner_steps"}
  assert result["eval_capped"] == 0   # CartPole has a time limit of its own
  assert result["episodes"] == 3
  assert result["checkpoint"] == str(run.checkpoint)
  assert result["learner_steps"] == run.counters["learner_steps"]
  assert result["eval_return"] == result["eval_return/agent_0"] >= 8   # CartPole: at least 8 steps


def evaluate(capsys, *args):
  """``evaluate_main(args)`` in this process: (exit status, stdout lines, stderr lines)."""
  try:
    code = cli.evaluate_main([str(a) for a in args])
  except SystemExit as e:   # argparse's errors
    code = e.code
  out, err = capsys.readouterr()
  return code, out.splitlines(), err.splitlines()


def test_evaluate_is_deterministic_for_a_seed_and_takes_epsilon(run_dir, capsys):
  runs = [json.loads(evaluate(capsys, run_dir, "--episodes", 2, "--seed", seed)[1][0]) for seed in (5, 5)]
  assert runs[0] == runs[1]
  code, out, _ = evaluate(capsys, run_dir, "--episodes", 2, "--epsilon", 1.0, "--checkpoint",
                          sorted((run_dir / "checkpoints").glob("step_*.ckpt"))[0])
  assert code == 0 and json.loads(out[0])["episodes"] == 2


@pytest.mark.parametrize("ffmpeg", [True, False], ids=["mp4", "gif"])
def test_video_writes_the_first_episode(run_dir, tmp_path, capsys, monkeypatch, ffmpeg):
  """Item 23: --video DIR writes DIR/episode.mp4 (imageio-ffmpeg) or DIR/episode.gif."""
  if not ffmpeg:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)   # as if not installed
  code, out, err = evaluate(capsys, run_dir, "--episodes", 1, "--video", tmp_path / "video")
  assert (code, len(out), err) == (0, 1, []), err
  result = json.loads(out[0])
  path = tmp_path / "video" / ("episode.mp4" if ffmpeg else "episode.gif")
  assert result["video"] == str(path)
  assert path.stat().st_size > 1000
  assert [p.name for p in (tmp_path / "video").iterdir()] == [path.name]


def test_video_prints_nothing_but_its_json_line(run_dir, tmp_path):
  """No pygame "XDG_RUNTIME_DIR is invalid" line from rendering CartPole,
  whatever the environment lacks (a server has no display nor runtime dir)."""
  env = {k: v for k, v in ENV.items() if k not in ("XDG_RUNTIME_DIR", "SDL_VIDEODRIVER", "DISPLAY")}
  proc = subprocess.run(EVALUATE + [str(run_dir), "--episodes", "1", "--video", str(tmp_path / "video")],
                        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False)
  assert proc.returncode == 0 and proc.stderr == "", proc.stderr
  assert json.loads(proc.stdout)["video"] == str(tmp_path / "video" / "episode.mp4")


def zero_states(agents):
  """Learner id -> a state of zeros of its agent's shapes (no computation)."""
  return jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), runtime.state_templates(agents))


def test_a_minatar_video_raises_no_render_warnings(tmp_path):
  """MinAtar declares no render fps and renders float frames, which the
  video takes care of: gymnasium's warnings about them are not shown."""
  pytest.importorskip("minatar")
  cfg = load_config(ROOT / "configs" / "minatar_dqn.yaml")
  agents = runtime.make_agents(cfg)
  (agent,), (state,) = agents.values(), zero_states(agents).values()
  params = state.params
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    path = cli._record_episode(cfg.env, agent, params, tmp_path, 0.0, 0, max_steps=5)
  assert path.stat().st_size > 0
  assert [str(w.message) for w in caught if "gymnasium" in w.filename] == []


def test_video_of_a_pettingzoo_run_is_refused_in_one_line(tmp_path, capsys):
  pytest.importorskip("mpe2")
  cfg = load_config(ROOT / "configs" / "mpe_spread_dqn.yaml")
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  save_config(cfg, run_dir / "config.yaml")
  save_checkpoint(run_dir / "checkpoints", zero_states(runtime.make_agents(cfg)),
                  {"env_steps": 0, "episodes": 0, "learner_steps": 0}, {}, keep=1)
  code, out, err = evaluate(capsys, run_dir, "--episodes", 1, "--video", tmp_path / "video")
  assert (code, out) == (2, [])
  assert err == ["jaxrl-evaluate: error: --video records gymnasium and Atari environments only; "
                 "mpe2.simple_spread_v3 is a PettingZoo environment"]
  assert not (tmp_path / "video").exists()


def test_video_without_imageio_names_the_extra(run_dir, tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "imageio", None)
  code, out, err = evaluate(capsys, run_dir, "--video", tmp_path / "video")
  assert (code, out) == (2, [])
  assert err == ["jaxrl-evaluate: error: --video needs imageio: pip install -e '.[video]'"]


@pytest.mark.parametrize("args, message", [
    (["{tmp}/nowhere"], "{tmp}/nowhere: not a run directory (no config.yaml)"),
    (["{run}", "--checkpoint", "{tmp}/missing.ckpt"], "{tmp}/missing.ckpt: no such checkpoint"),
    (["{run}", "--checkpoint", "{run}/config.yaml"], "{run}/config.yaml: corrupt checkpoint"),
    (["{run}", "--episodes", "0"], "--episodes must be >= 1, got 0"),
    (["{run}", "--epsilon", "1.5"], "--epsilon must be in [0, 1], got 1.5"),
    (["{run}", "--seed", "4294967296"], "--seed must be in [0, 2**32 - 1], got 4294967296"),
    (["{run}", "--episodes", "x"], "argument --episodes: invalid int value: 'x'"),
])
def test_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, capsys, args, message):
  """Item 23."""
  code, out, err = evaluate(capsys, *(a.format(run=run_dir, tmp=tmp_path) for a in args))
  assert (code, out, len(err)) == (2, [], 1), err
  assert err[0].startswith(f"jaxrl-evaluate: error: {message.format(run=run_dir, tmp=tmp_path)}"), err


def test_console_script_is_declared():
  scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
  assert scripts["jaxrl-evaluate"] == "jaxrl.cli:evaluate_main"
  assert scripts["jaxrl-train"] == "jaxrl.cli:main"
