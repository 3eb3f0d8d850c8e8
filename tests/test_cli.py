"""Tests of jaxrl.cli's jaxrl-train front end: --help, early config errors, resume's config."""

from __future__ import annotations

import dataclasses
import re
import tomllib

import pytest

from jaxrl import cli
from jaxrl import config as C
from runs import CARTPOLE, ROOT, SHORT, train_cli

# Keeps a run short should a config mistake go unnoticed and start training.
QUICK = ["runtime.mode=sync", "stop.env_steps=500", *SHORT]


def test_help_lists_every_config_key_with_its_type_and_default(capsys):
  """Item 16."""
  with pytest.raises(SystemExit) as info:
    cli.main(["--help"])
  assert info.value.code == 0
  out = capsys.readouterr().out
  assert C.config_keys_help() in out
  def leaf_keys(prefix, hint):
    if not dataclasses.is_dataclass(hint):
      return [prefix]
    return [key for name, field in C._hints(hint).items() for key in leaf_keys(f"{prefix}.{name}", field)]
  keys = [key for section, hint in C._hints(C.RunConfig).items() for key in leaf_keys(section, hint)]
  assert "runtime.ray.address" in keys
  for key in keys:
    assert f"\n  {key}: " in out, key
  assert "\n  replay.capacity: int = 100000\n" in out
  assert "\n  seed: int = 0\n" in out


@pytest.mark.parametrize("overrides, message", [
    (["replay.min_size=600", "actors.num=2", "replay.capacity=1000"],
     "replay.min_size: must be <= replay.capacity // actors.num (1000 // 2 = 500), got 600"),   # item 14
    (["seed=4294967296"], "seed: must be an integer in [0, 2**32 - 1], got 4294967296"),         # item 15
    (["seed=18446744073709551616"], "seed: must be an integer in [0, 2**32 - 1]"),              # item 15
    (["env.imports=[no such]"], "env.imports: must be a list of module names"),                  # item 17
])
def test_config_mistake_is_exit_2_before_the_run_dir_exists(tmp_path, overrides, message):
  run_dir = tmp_path / "run"
  proc = train_cli(CARTPOLE, *QUICK, f"run_dir={run_dir}", *overrides, timeout=120)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert lines[0].startswith(f"jaxrl-train: error: {message}"), lines[0]
  assert not run_dir.exists()


def test_a_run_that_fails_before_training_removes_the_run_dir_it_made(tmp_path):
  """The run directory is made (and locked) before the checks that need
  JAX; a check failing removes it again when the run made it."""
  run_dir = tmp_path / "new" / "run"
  proc = train_cli(CARTPOLE, *QUICK, f"run_dir={run_dir}", "env.id=NoSuchEnv-v0", timeout=120)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert lines[0].startswith("jaxrl-train: error: env.id: cannot make 'NoSuchEnv-v0'"), lines[0]
  assert not run_dir.exists() and (tmp_path / "new").is_dir()


SAVED = C.load_config(CARTPOLE, ["stop.env_steps=3000", "stop.seconds=600", "stop.eval_return=475"])


@pytest.mark.parametrize("overrides, stop", [
    ([], SAVED.stop),
    (["agent.learning_rate=1e-3", "seed=7"], SAVED.stop),
    (["stop.env_steps=9000"], C.StopConfig(env_steps=9000)),
    (["stop.env_steps=1e4", "stop.seconds=60"], C.StopConfig(env_steps=10_000, seconds=60.0)),
    ([" stop.eval_return = 500"], C.StopConfig(eval_return=500.0)),
    (["stop={seconds: 5}"], C.StopConfig(seconds=5.0)),
    (["stop.eval_return=null"], C.StopConfig()),
])
def test_resume_config_takes_the_stop_conditions_from_the_overrides_when_any(overrides, stop):
  """Item 22: a stop override replaces the saved stop section (what it does
  not set is null), so a new stop.env_steps is not cut short by a saved
  stop.eval_return the run already met; other overrides apply as given."""
  cfg = cli.resume_config(SAVED, overrides)
  assert cfg.stop == stop
  others = [o for o in overrides if not o.strip().startswith("stop")]
  assert dataclasses.replace(cfg, stop=SAVED.stop) == C.apply_overrides(SAVED, others)


def test_resume_config_reports_a_bad_override_naming_the_key():
  with pytest.raises(C.ConfigError, match=r"^stop\.env_step: unknown key \(did you mean stop\.env_steps\?\)$"):
    cli.resume_config(SAVED, ["stop.env_step=10"])
  with pytest.raises(C.ConfigError, match=r"^stop\.eval_return: must be null while evaluation is off"):
    cli.resume_config(SAVED, ["eval.interval=0"])   # the saved eval_return stays


def test_dependencies_are_what_the_code_imports():
  """Item 26: every runtime dependency is imported by jaxrl/ or scripts/ (psutil,
  used by tests only, is a dev one), at a version that has what the code uses."""
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  floors = {re.match(r"[\w-]+", r).group(0): r for r in project["dependencies"]}
  sources = "\n".join(p.read_text() for d in ("jaxrl", "scripts") for p in (ROOT / d).rglob("*.py"))
  imported = set(re.findall(r"^\s*(?:import|from) (\w+)", sources, re.MULTILINE))
  # jaxlib: jax's backend, never imported by name; tensorboard: the command that shows tensorboardX's events.
  module = {"pyyaml": "yaml", "jaxlib": "jax", "tensorboard": "tensorboardX"}
  assert {name for name in floors if module.get(name, name) not in imported} == set()
  assert floors["optax"] == "optax>=0.2.5"   # optax.tree.norm (learner.py) is new in 0.2.5
  assert floors["gymnasium"] == "gymnasium>=1.1"   # gym.vector.AutoresetMode
  extras = project["optional-dependencies"]
  assert "psutil>=5.9" in extras["dev"]
  assert set(extras["video"]) == {"imageio>=2.28", "imageio-ffmpeg>=0.4.9", "gymnasium[classic-control]>=1.1"}
  assert project["scripts"] == {"jaxrl-train": "jaxrl.cli:main", "jaxrl-evaluate": "jaxrl.cli:evaluate_main",
                                "jaxrl-sweep": "jaxrl.sweep:main", "jaxrl-plot": "jaxrl.plot:main"}
