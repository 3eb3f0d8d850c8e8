"""The layout rules of design section 7: what must never import what."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jaxrl"


def imported_modules(path: Path) -> set[str]:
  """Every module a source file imports, at module level or inside functions."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


def importing(modules: list[str]) -> set[str]:
  """sys.modules of a fresh interpreter after importing ``modules``."""
  code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint('\\n'.join(sys.modules))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  return set(out.split())


def top(name: str) -> str:
  return name.split(".")[0]


@pytest.mark.parametrize("module", ["config", "networks", "losses", "learner"])
def test_the_core_imports_nothing_of_the_runtime(module):
  forbidden = ("jaxrl.runtime", "jaxrl.shm", "jaxrl.replay", "jaxrl.actor", "jaxrl.envs", "jaxrl.logger",
               "jaxrl.checkpoint", "multiprocessing", "ray")
  found = {name for name in imported_modules(PACKAGE / f"{module}.py") if name.startswith(forbidden)}
  assert not found, f"jaxrl/{module}.py imports {sorted(found)}"


def test_replay_and_shared_memory_import_no_jax_and_no_runtime():
  loaded = importing(["jaxrl.replay", "jaxrl.frame_replay", "jaxrl.priorities", "jaxrl.nstep", "jaxrl.shm"])
  assert not {top(m) for m in loaded} & {"jax", "jaxlib", "flax", "optax"}
  assert not [m for m in loaded if m.startswith("jaxrl.runtime")]


@pytest.mark.parametrize("module", ["acting", "learning"])
def test_the_loops_know_nothing_of_processes_signals_shared_memory_or_ray(module):
  names = imported_modules(PACKAGE / "runtime" / f"{module}.py")
  forbidden = {"multiprocessing", "signal", "threading", "subprocess", "jaxrl.shm", "ray", "jaxrl.runtime.local",
               "jaxrl.runtime.sync", "jaxrl.runtime.ray_backend"}
  assert not {n for n in names if top(n) in forbidden or n in forbidden}


@pytest.mark.parametrize("backend", ["jaxrl.runtime.local", "jaxrl.runtime.ray_backend"])
def test_an_actor_process_imports_no_logger_tensorboard_or_plotting(backend):
  """What a spawned actor or a Ray actor's worker imports: its backend's
  module and what the actor builds."""
  loaded = importing([backend, "jaxrl.runtime.acting", "jaxrl.runtime.builders", "jaxrl.actor",
                      "jaxrl.learner", "jaxrl.replay", "jaxrl.shm"])
  assert not {m for m in loaded if m == "jaxrl.logger" or top(m) in {"tensorboardX", "matplotlib", "wandb"}}


def test_only_the_ray_backend_imports_ray():
  """And jaxrl-sweep, whose --ray runs are Ray Tune trials."""
  found = [path for path in PACKAGE.rglob("*.py")
           if path.name not in ("ray_backend.py", "sweep.py") and {n for n in imported_modules(path) if top(n) == "ray"}]
  assert not found


def test_the_config_schema_is_apart_from_yaml():
  """The schema imports no yaml; reading and writing YAML, overrides and
  --help are config_file's, still importable from config."""
  assert "yaml" not in {top(m) for m in importing(["jaxrl.config"])}
  from jaxrl import config, config_file  # pylint: disable=import-outside-toplevel
  assert config_file.load_config.__module__ == "jaxrl.config_file"
  assert config.load_config is config_file.load_config


def test_making_environments_imports_nothing_of_the_actor():
  found = {name for name in imported_modules(PACKAGE / "envs.py") if name.startswith("jaxrl.actor")}
  assert not found, f"jaxrl/envs.py imports {sorted(found)}"


def test_local_and_ray_actors_are_both_the_supervisors_child():
  """What an actor is to the supervisor is one small interface (design
  section 7), which a process and a Ray actor each implement."""
  from jaxrl.runtime import local, supervisor  # pylint: disable=import-outside-toplevel
  interface = {name for name in vars(supervisor.Child) if not name.startswith("_")}
  assert interface == {"receive", "alive", "exit_reason", "kill", "close"}
  assert interface <= set(vars(local.ProcessChild))
  source = (PACKAGE / "runtime" / "ray_backend.py").read_text()
  for name in interface:
    assert f"  def {name}(self" in source.split("class RayActorChild", 1)[1]
