"""Test-wide settings: silent rank promotion is an error, as in rlax's tests;
every run the tests start, in this process or in a subprocess, caches its
XLA programs in this session's own directory, not the user's (so the tests
take as long whether that one is warm or not); a test that fails while a
training run it started is going does not leave that run behind to slow the
tests after it, nor its shared memory."""

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
