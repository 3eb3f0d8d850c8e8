"""Helpers for tests that run ``scripts/train.py`` as a real process."""

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from jaxrl.logger import read_metrics

ROOT = Path(__file__).resolve().parent.parent
TRAIN = [sys.executable, str(ROOT / "scripts" / "train.py")]
CARTPOLE = str(ROOT / "configs" / "cartpole_dqn.yaml")
# A small, quick run: learning starts early, evaluations are short, records frequent;
# it stops on stop.env_steps, not on solving CartPole.
SHORT = ["replay.min_size=256", "learner.batch_size=32", "eval.interval=50", "eval.episodes=2",
         "runtime.log_interval_seconds=0.5", "runtime.progress=false", "stop.eval_return=null"]
# Lets actor processes import tests/faulty_env.py through its gymnasium id.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}


def segments_of(pid):
  """Shared-memory segments created by process ``pid`` (named jaxrl_<pid>_...)."""
  return [p for p in os.listdir("/dev/shm") if p.startswith(f"jaxrl_{pid}_")]


def start_cli(*args, env=None, new_session=False):
  """Starts ``scripts/train.py args`` with stdout and stderr piped; ``env``
  adds to the environment; ``new_session`` makes it lead a process group of
  its own (its pid is the group id), as a shell job or a batch job is."""
  return subprocess.Popen(TRAIN + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT, env={**ENV, **(env or {})}, start_new_session=new_session)


def train_cli(*args, timeout=120, env=None):
  """Runs ``scripts/train.py args`` to the end; the process gets ``.stderr`` text."""
  proc = start_cli(*args, env=env)
  proc.stdout_text, proc.stderr = proc.communicate(timeout=timeout)
  return proc


def wait_for(predicate, timeout=90, what="condition", interval=0.1):
  deadline = time.time() + timeout
  while not predicate():
    if time.time() > deadline:
      raise TimeoutError(f"timed out waiting for {what}")
    time.sleep(interval)


def records(run_dir):
  path = Path(run_dir) / "metrics.jsonl"
  return read_metrics(run_dir) if path.exists() else []


def wait_until_learning(run_dir, proc):
  """Waits until the run has logged learner metrics (or the process ended)."""
  wait_for(lambda: proc.poll() is not None or any("loss" in r for r in records(run_dir)),
           what="learner metrics")
  assert proc.poll() is None, proc.communicate()[1]


def workers(proc):
  """The learner and actor processes of a supervisor, in start order (learner first)."""
  children = psutil.Process(proc.pid).children()
  return sorted((c for c in children if "spawn_main" in " ".join(c.cmdline())), key=lambda c: c.pid)


def assert_clean_exit(proc, descendants, stderr):
  """No descendant left running, no segment left, no leak warning."""
  gone, alive = psutil.wait_procs(descendants, timeout=5)
  assert not alive, alive
  assert not segments_of(proc.pid)
  assert "resource_tracker" not in stderr and "leaked" not in stderr, stderr
