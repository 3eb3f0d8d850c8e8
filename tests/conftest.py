"""Test-wide settings: silent rank promotion is an error, as in rlax's tests;
a test that fails while a training run it started is going does not leave
that run behind to slow the tests after it, nor its shared memory."""

import jax
import psutil
import pytest

from jaxrl.shm import remove_dead_segments

jax.config.update("jax_numpy_rank_promotion", "raise")


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
