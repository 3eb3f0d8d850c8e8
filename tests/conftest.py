"""Test-wide settings: silent rank promotion is an error, as in rlax's tests;
every run the tests start, in this process or in a subprocess, caches its
XLA programs in this session's own directory, not the user's (so the tests
take as long whether that one is warm or not); a test that fails while a
training run it started is going does not leave that run behind to slow the
tests after it, nor its shared memory.

The default run is spread over two pytest-xdist workers (``-n 2 --dist
loadgroup`` in pyproject.toml): the modules that start training runs, Ray
clusters, or remove or count the segments of dead processes share the
xdist group "runs", which one worker runs one test at a time (every run
removes the segments of killed runs as it starts, which tests of that
cleanup watch for; Ray clusters share the machine's ports), while the other
takes the in-process tests beside them. ``-n 0`` runs everything in one
process."""

import os
import tempfile

import jax
import psutil
import pytest

from jaxrl.shm import remove_dead_segments

jax.config.update("jax_numpy_rank_promotion", "raise")

# Set before any test module is collected (some build their configs then);
# subprocesses inherit it. Removed when the session's interpreter exits.
_COMPILATION_CACHE = tempfile.TemporaryDirectory(prefix="jaxrl-tests-xla-")
os.environ["JAXRL_COMPILATION_CACHE"] = _COMPILATION_CACHE.name


RUN_MODULES = {"test_atari", "test_cli", "test_evaluate", "test_faults", "test_install", "test_minatar",
               "test_multi_agent", "test_ray", "test_rough_edges", "test_run_dir", "test_runtime", "test_shm",
               "test_supervisor", "test_sweep", "test_wandb"}


def pytest_itemcollected(item):
  if item.module.__name__ in RUN_MODULES:   # before any collection_modifyitems: xdist's reads the groups
    item.add_marker(pytest.mark.xdist_group("runs"))


@pytest.fixture(autouse=True)
def no_training_run_left_behind():
  yield
  for child in psutil.Process().children():
    try:
      if "train.py" not in " ".join(child.cmdline()):
        continue
      family = [child, *child.children(recursive=True)]
    except psutil.NoSuchProcess:
      continue
    for process in family:
      process.kill()
    psutil.wait_procs(family, timeout=10)
    remove_dead_segments()
