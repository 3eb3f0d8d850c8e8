"""What users meet at the edges of a run: every run ends with an evaluation,
a run says what it does from its first second, a corrupt newest checkpoint
does not block a resume, and a custom network of the wrong shape is told
what its algorithm expects."""

from __future__ import annotations

import json
import shutil

import flax.linen as nn
import jax
import pytest

import jaxrl
from jaxrl import cli, runtime
from jaxrl.checkpoint import latest_checkpoint
from jaxrl.config_file import load_config
from jaxrl.logger import read_metrics
from runs import CARTPOLE, SHORT, records, start_cli, train_cli

# A sync run without periodic evaluations (eval.interval beyond its learner steps).
NO_PERIODIC_EVAL = ["runtime.mode=sync", "stop.env_steps=1500", *SHORT, "eval.interval=1_000_000"]


def summary_of(run_dir):
  return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("at_end", [True, False])
def test_a_run_ends_with_an_evaluation_of_its_final_checkpoint_unless_told_not_to(tmp_path, at_end):
  cfg = load_config(CARTPOLE, [*NO_PERIODIC_EVAL, "eval.interval=0", f"eval.at_end={str(at_end).lower()}"])
  summary = runtime.train(cfg, tmp_path / "run")
  evaluations = [r for r in read_metrics(tmp_path / "run") if "eval_return" in r]
  if not at_end:
    assert evaluations == [] and summary["eval_return"] is None
    return
  (last,) = evaluations
  assert read_metrics(tmp_path / "run")[-1] == last
  final = latest_checkpoint(tmp_path / "run" / "checkpoints")
  assert last["eval_learner_steps"] == last["learner_steps"] == summary["learner_steps"] > 0
  assert final.name == f"step_{summary['learner_steps']:09d}.ckpt"
  assert summary["eval_return"] == last["eval_return"] >= 8   # CartPole: at least 8 steps an episode
  assert {"acting_seconds", "learning_seconds"} <= set(last)   # sync's eval records carry them


def test_the_final_evaluation_is_not_repeated_at_the_step_of_the_last(tmp_path):
  """A periodic evaluation at the run's last learner step is its last one;
  one at an earlier step is followed by the final one."""
  run_dir = tmp_path / "run"
  runtime.train(load_config(CARTPOLE, NO_PERIODIC_EVAL), run_dir)
  steps = read_metrics(run_dir)[-1]["learner_steps"]
  for interval, evaluated_at in ((steps, [steps]), (steps - 8, [steps - 8, steps])):
    shutil.rmtree(run_dir)   # the same run again (sync: deterministic), evaluated every `interval`
    summary = runtime.train(load_config(CARTPOLE, [*NO_PERIODIC_EVAL, f"eval.interval={interval}"]), run_dir)
    assert summary["learner_steps"] == steps
    assert [r["learner_steps"] for r in read_metrics(run_dir) if "eval_return" in r] == evaluated_at


def test_the_cli_says_at_once_what_it_starts_and_ends_with_one_rounded_line(tmp_path):
  """The first line comes before the run has written anything (imports,
  checks and compiling take seconds); then what the run does, its progress,
  and one final line with the final evaluation, rounded."""
  run_dir = tmp_path / "run"
  proc = start_cli(CARTPOLE, f"run_dir={run_dir}", *NO_PERIODIC_EVAL, "runtime.progress=true")
  first = proc.stdout.readline()
  assert first == f"jaxrl-train: starting CartPole-v1 in {run_dir}\n"
  assert not (run_dir / "metrics.jsonl").exists()
  rest, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr
  lines = rest.splitlines()
  assert lines[0] == "jaxrl: 1 learner and 1 actor x 8 envs (sync): compiling the learner, filling replay to 256..."
  progress, final = lines[1:-1], lines[-1]
  assert progress and all(line.startswith("[") and " steps " in line for line in progress)
  assert len(set(progress)) == len(progress)   # the last status line is printed once
  summary = summary_of(run_dir)
  eval_return = summary["eval_return"]
  assert eval_return is not None and f"  eval {cli_number(eval_return)}  " in progress[-1]
  assert final.startswith(f"jaxrl-train: env_steps: eval_return {cli_number(eval_return)}, "
                          f"env_steps {summary['env_steps']:,}, ")


def cli_number(value: float) -> str:
  """4 significant digits, as the CLI and the display round."""
  from jaxrl.logger import significant  # pylint: disable=import-outside-toplevel
  text = significant(value)
  assert len(text.replace("-", "").replace(".", "").lstrip("0")) <= 4
  return text


def test_an_async_run_ends_with_an_evaluation(tmp_path):
  run_dir = tmp_path / "run"
  proc = train_cli(CARTPOLE, f"run_dir={run_dir}", "stop.env_steps=2000", *SHORT, "eval.interval=1_000_000",
                   timeout=300)
  assert proc.returncode == 0, proc.stderr
  summary = summary_of(run_dir)
  last = records(run_dir)[-1]
  assert summary["eval_return"] == last["eval_return"] is not None
  assert last["eval_learner_steps"] == summary["learner_steps"] > 0


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
  """A sync CartPole run with checkpoints at two learner steps (a resume adds the second)."""
  run_dir = tmp_path_factory.mktemp("resume") / "run"
  cfg = load_config(CARTPOLE, ["runtime.mode=sync", "stop.env_steps=1000", *SHORT, "eval.interval=0",
                               "eval.at_end=false"])
  runtime.train(cfg, run_dir)
  cfg = cli.resume_config(load_config(run_dir / "config.yaml"), ["stop.env_steps=2000"])
  runtime.train(cfg, run_dir, resume=runtime.load_resume(cfg, run_dir))
  return run_dir


def copy_of(run_dir, tmp_path):
  shutil.copytree(run_dir, tmp_path / "run")
  older, newer = sorted((tmp_path / "run" / "checkpoints").glob("step_*.ckpt"))
  return tmp_path / "run", older, newer


def checkpoint_env_steps(path):
  with __import__("zipfile").ZipFile(path) as archive:
    return json.loads(archive.read("meta.json"))["counters"]["env_steps"]


def test_resume_falls_back_on_the_newest_intact_checkpoint(two_checkpoints, tmp_path):
  run_dir, older, newer = copy_of(two_checkpoints, tmp_path)
  bounds = checkpoint_env_steps(older), checkpoint_env_steps(newer)
  newer.write_bytes(newer.read_bytes()[:1000])
  proc = train_cli("--resume", str(run_dir), "stop.env_steps=1500")
  assert proc.returncode == 0, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"jaxrl: {newer}: corrupt checkpoint ("), proc.stderr
  assert lines[0].endswith(f"; using the newest intact checkpoint, {older}")
  steps = [r["env_steps"] for r in records(run_dir)]
  assert steps == sorted(steps)   # the records past the older checkpoint were dropped
  assert bounds[0] < summary_of(run_dir)["env_steps"] < bounds[1]
  assert not newer.exists()   # a checkpoint of an earlier step abandoned its timeline


def test_resume_from_a_chosen_checkpoint(two_checkpoints, tmp_path):
  run_dir, older, newer = copy_of(two_checkpoints, tmp_path)
  bounds = checkpoint_env_steps(older), checkpoint_env_steps(newer)
  kept = [r for r in records(run_dir) if r["env_steps"] <= bounds[0]]
  proc = train_cli("--resume", str(run_dir), "--checkpoint", str(older), "stop.env_steps=1500")
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr == ""
  assert records(run_dir)[:len(kept)] == kept
  resumed = records(run_dir)[len(kept):]
  assert resumed and min(r["env_steps"] for r in resumed) > bounds[0]
  assert bounds[0] < summary_of(run_dir)["env_steps"] < bounds[1]


def test_checkpoint_without_resume_is_a_usage_error(capsys):
  with pytest.raises(SystemExit) as info:
    cli.main([CARTPOLE, "--checkpoint", "x.ckpt"])
  assert info.value.code == 2
  assert capsys.readouterr().err == "jaxrl-train: error: --checkpoint needs --resume RUN_DIR\n"


def test_load_run_falls_back_on_the_newest_intact_checkpoint(two_checkpoints, tmp_path, capfd):
  run_dir, older, newer = copy_of(two_checkpoints, tmp_path)
  newer.write_bytes(b"")
  run = jaxrl.load_run(run_dir)
  assert run.checkpoint == older
  assert capfd.readouterr().err == (f"jaxrl: {newer}: corrupt checkpoint (BadZipFile: File is not a zip file); "
                                    f"using the newest intact checkpoint, {older}\n")
  assert jaxrl.load_run(run_dir, checkpoint=older).checkpoint == older


class _QuantileShaped(nn.Module):
  """A Q-network whose output has a quantile axis: [B, 1, A]."""

  @nn.compact
  def __call__(self, obs):
    return nn.Dense(2)(obs)[:, None, :]


def test_dqn_network_of_the_wrong_shape_is_told_what_dqn_expects():
  agent = jaxrl.make_agent(jaxrl.AgentConfig(algo="dqn"), (4,), 2, network=_QuantileShaped())
  with pytest.raises(ValueError) as info:
    agent.init(jax.random.PRNGKey(0))
  assert str(info.value) == ("network: expected a DQN network, obs [B, *obs_shape] -> Q [B, A] with A = 2 actions; "
                             "got output shape (2, 1, 2) for B = 2")
