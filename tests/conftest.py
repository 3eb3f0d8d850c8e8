"""Test-wide settings: silent rank promotion is an error, as in rlax's tests;
a test that fails while a training run it started is going does not leave
that run behind to slow the tests after it."""

import jax
import psutil
import pytest

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
