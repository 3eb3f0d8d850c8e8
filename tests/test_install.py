"""The install (design section 10): a core that trains CartPole without any
extra's package, one extra per workload (``dev`` all of them and the test
tools), and the configs shipped in the package, found by name from any
directory."""

import json
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from jaxrl import cli
from jaxrl.config_file import SHIPPED_CONFIGS
from runs import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]
WORKLOADS = {"mpe", "minatar", "atari", "ray", "wandb", "video", "gpu", "plot"}
TEST_TOOLS = {"pytest", "pytest-timeout", "pytest-xdist", "hypothesis", "psutil"}
# The module each extra's requirement brings (gymnasium[classic-control]: pygame, which renders classic control).
MODULES = {"pettingzoo": "pettingzoo", "mpe2": "mpe2", "minatar": "minatar", "ale-py": "ale_py", "ray[tune]": "ray",
           "wandb": "wandb", "rliable": "rliable", "pandas": "pandas", "imageio": "imageio", "imageio-ffmpeg": "imageio_ffmpeg",
           "gymnasium[classic-control]": "pygame"}
# A tiny CartPole run: a few learner steps, one short evaluation.
TINY = ["runtime.mode=sync", "stop.env_steps=200", "stop.eval_return=null", "replay.min_size=100",
        "learner.batch_size=32", "eval.interval=20", "eval.episodes=1", "runtime.progress=false"]


def requirement_name(requirement: str) -> str:
  """``"ray[tune]>=2.40"`` -> ``"ray[tune]"``."""
  return re.match(r"[\w.\-]+(?:\[[\w,\-]+\])?", requirement).group(0)


def extras_modules() -> list[str]:
  """The modules of every workload extra but gpu (which is jax itself)."""
  return sorted({MODULES[requirement_name(r)] for extra in WORKLOADS - {"gpu"} for r in EXTRAS[extra]})


def without_extras(code: str, cwd: Path, modules=None) -> subprocess.CompletedProcess:
  """Runs python ``code`` in a fresh interpreter in ``cwd`` in which importing
  any of ``modules`` (default: every extra's) fails, as if not installed."""
  modules = extras_modules() if modules is None else modules
  block = f"import sys\nfor m in {modules!r}: sys.modules[m] = None\n"
  return subprocess.run([sys.executable, "-c", block + code], cwd=cwd, capture_output=True, text=True, timeout=300,
                        check=False)


def test_the_extras_are_the_workloads_and_dev_is_all_of_them_and_the_test_tools():
  assert set(EXTRAS) == WORKLOADS | {"dev"}
  self_reference = [r for r in EXTRAS["dev"] if r.startswith(f"{PROJECT['name']}[")]
  assert len(self_reference) == 1, "dev names the workload extras, it does not repeat their packages"
  assert set(re.fullmatch(r"\w+\[([\w,]+)\]", self_reference[0]).group(1).split(",")) == WORKLOADS - {"gpu"}
  assert {requirement_name(r) for r in EXTRAS["dev"]} - {self_reference[0]} == TEST_TOOLS
  core = {requirement_name(r) for r in PROJECT["dependencies"]}
  assert not core & {requirement_name(r) for extra in WORKLOADS for r in EXTRAS[extra]} - {"jax[cuda12]"}
  assert "tensorboard" in core   # the README's `tensorboard --logdir runs` after `pip install -e .`


def test_configs_is_a_symlink_into_the_package():
  """One copy: the repository's configs/ is the package's jaxrl/configs."""
  link = ROOT / "configs"
  assert link.is_symlink() and os.readlink(link) == "jaxrl/configs"
  assert link.resolve() == SHIPPED_CONFIGS == ROOT / "jaxrl" / "configs"
  assert len(list(SHIPPED_CONFIGS.glob("*.yaml"))) >= 10


def test_list_configs_lists_every_shipped_config_with_its_description(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  assert cli.main(["--list-configs"]) == 0
  lines = capsys.readouterr().out.splitlines()
  paths = sorted(SHIPPED_CONFIGS.glob("*.yaml"))
  assert [line.split()[0] for line in lines] == [path.stem for path in paths]
  for line, path in zip(lines, paths):
    description = path.read_text().splitlines()[0].removeprefix("# ")
    assert description and line.split(maxsplit=1)[1] == description


@pytest.mark.parametrize("name", ["no_such_config", "configs/cartpole_dqn.yaml"])
def test_an_unknown_config_is_one_line_naming_the_shipped_ones(tmp_path, monkeypatch, capsys, name):
  """From another directory, a path relative to the repository is no config either."""
  monkeypatch.chdir(tmp_path)
  assert cli.main([name, "stop.env_steps=10"]) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1
  assert err[0].startswith(f"jaxrl-train: error: {name}: no such config file, and not a shipped config")
  assert "cartpole_dqn, cartpole_iqn" in err[0]
  assert not (tmp_path / "runs").exists()


def test_a_shipped_config_trains_by_name_from_any_directory_without_any_extras_package(tmp_path):
  """The core: ``jaxrl-train cartpole_dqn`` in an empty directory trains in
  runs/cartpole_dqn-<time>, and ``jaxrl-evaluate`` evaluates it, importing no
  extra's package (each import of one fails here)."""
  code = (f"import glob\nfrom jaxrl.cli import main, evaluate_main\n"
          f"assert main(['cartpole_dqn', *{TINY!r}]) == 0\n"
          f"assert evaluate_main([*glob.glob('runs/*'), '--episodes', '1']) == 0\n")
  proc = without_extras(code, tmp_path)
  assert proc.returncode == 0, proc.stderr
  (run_dir,) = (tmp_path / "runs").iterdir()
  assert re.fullmatch(r"cartpole_dqn-\d{8}-\d{6}", run_dir.name)
  assert "id: CartPole-v1" in (run_dir / "config.yaml").read_text()
  assert json.loads(proc.stdout.splitlines()[-1])["episodes"] == 1


# Each: the module missing, the CLI's arguments, the extra its one-line error names.
MISSING = [
    ("minatar", ["minatar_dqn"], "minatar"),
    ("ale_py", ["atari100k_drq"], "atari"),
    ("mpe2", ["mpe_spread_dqn"], "mpe"),
    ("pettingzoo", ["mpe_speaker_listener_dqn"], "mpe"),
    ("ray", ["cartpole_dqn", "runtime.backend=ray"], "ray"),
    ("wandb", ["cartpole_dqn", "wandb.project=jaxrl"], "wandb"),
    ("imageio", ["--evaluate", "nowhere", "--video", "video"], "video"),
    ("pygame", ["--evaluate", "nowhere", "--video", "video"], "video"),
]


def test_a_missing_extra_is_one_line_naming_it(tmp_path):
  """In one fresh interpreter (whose gymnasium registry has no ALE or MinAtar
  id yet), each case with its module missing."""
  code = f"""
import contextlib, io, json
from jaxrl.cli import main, evaluate_main
results = []
for i, (module, args, _) in enumerate({MISSING!r}):
  sys.modules[module] = None
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = evaluate_main(args[1:]) if args[0] == '--evaluate' else main([*args, f'run_dir=run{{i}}'])
  del sys.modules[module]
  results.append([code, err.getvalue().splitlines()])
print(json.dumps(results))
"""
  proc = without_extras(code, tmp_path, modules=[])
  assert proc.returncode == 0, proc.stderr
  for (module, _, extra), (code, err) in zip(MISSING, json.loads(proc.stdout.splitlines()[-1])):
    assert code == 2 and len(err) == 1, (module, err)
    assert re.fullmatch(rf"jaxrl-(train|evaluate): error: .*\b{module.replace('_', '-')}\b.*"
                        rf"pip install -e '\.\[{extra}\]'", err[0]), err[0]
  assert not list(tmp_path.iterdir())   # no run directory left of a run that never started


def test_the_wheel_ships_the_configs_and_trains_from_them(tmp_path):
  """A wheel built from the package's sources holds every config, and, its
  package installed alone, trains a shipped config by name from another
  directory (the project's dependencies are this environment's)."""
  source = tmp_path / "source"
  for name in ("pyproject.toml", "README.md"):
    (source / name).parent.mkdir(exist_ok=True)
    shutil.copy(ROOT / name, source / name)
  shutil.copytree(ROOT / "jaxrl", source / "jaxrl", ignore=shutil.ignore_patterns("__pycache__"))
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
  subprocess.run([*pip, "wheel", "--no-deps", str(source), "-w", str(tmp_path / "wheel")], check=True,
                 capture_output=True, timeout=300)
  (wheel,) = (tmp_path / "wheel").glob("jaxrl-*.whl")
  subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(tmp_path / "site"), str(wheel)],
                 check=True, capture_output=True, timeout=300)
  site = tmp_path / "site"
  assert sorted(p.name for p in (site / "jaxrl" / "configs").iterdir()) == sorted(
      p.name for p in SHIPPED_CONFIGS.glob("*.yaml"))
  work = tmp_path / "work"
  work.mkdir()
  env = {**os.environ, "PYTHONPATH": str(site)}
  where = subprocess.run([sys.executable, "-c", "import jaxrl; print(jaxrl.__file__)"], cwd=work, env=env,
                         capture_output=True, text=True, check=True).stdout
  assert Path(where.strip()).is_relative_to(site)   # the wheel's package, not this checkout's
  proc = subprocess.run([str(site / "bin" / "jaxrl-train"), "cartpole_dqn", "run_dir=run", *TINY], cwd=work,
                        capture_output=True, text=True, timeout=300, check=False, env=env)
  assert proc.returncode == 0, proc.stderr
  saved = (work / "run" / "config.yaml").read_text()
  assert "id: CartPole-v1" in saved and "env_steps: 200" in saved
