"""One run directory, one live run: jaxrl.run_dir's lock across processes,
and jaxrl-train refusing a live run's directory."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from jaxrl.config import ConfigError
from jaxrl.run_dir import LOCK_FILE, RunDirError, lock_run_dir
from runs import CARTPOLE, records, start_cli, train_cli, wait_for

_HOLD = """
import sys, time
from jaxrl.run_dir import lock_run_dir
lock = lock_run_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_process_cannot_lock_until_the_holder_dies(tmp_path):
  run_dir = tmp_path / "run"
  holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == "locked\n"
    with pytest.raises(RunDirError) as info:
      lock_run_dir(run_dir)
    assert isinstance(info.value, ConfigError)   # the CLI's exit status 2
    assert str(info.value) == f"run_dir: {run_dir} is in use by another live run (pid {holder.pid})"
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
  with lock_run_dir(run_dir) as lock:   # the kernel released the killed holder's lock
    assert (run_dir / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert not lock.created
  assert (run_dir / LOCK_FILE).exists()   # not the lock's directory to remove


def test_release_removes_only_a_directory_it_made_that_stayed_empty(tmp_path):
  with lock_run_dir(tmp_path / "a" / "unused") as lock:
    assert lock.created
  assert not (tmp_path / "a" / "unused").exists() and (tmp_path / "a").exists()
  with lock_run_dir(tmp_path / "used"):
    (tmp_path / "used" / "config.yaml").write_text("seed: 0\n")
  assert sorted(p.name for p in (tmp_path / "used").iterdir()) == [LOCK_FILE, "config.yaml"]
  (tmp_path / "old").mkdir()
  lock = lock_run_dir(tmp_path / "old")
  lock.release()
  lock.release()
  assert (tmp_path / "old").is_dir()


def test_a_run_dir_that_cannot_be_created_is_a_one_line_error(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(RunDirError, match=rf"^run_dir: cannot create {tmp_path}/file/run \(Not a directory\)$"):
    lock_run_dir(tmp_path / "file" / "run")


@contextlib.contextmanager
def _no_new_files(directory):
  """``directory`` takes no new file, though its lock file stays writable:
  read-only for an ordinary user, immutable (chattr +i) for root."""
  if os.geteuid() != 0:
    directory.chmod(0o555)
    try:
      yield
    finally:
      directory.chmod(0o755)
    return
  if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(directory)], check=False).returncode:
    pytest.skip("root, and this file system takes no immutable flag")
  try:
    yield
  finally:
    subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_a_run_dir_that_takes_no_new_file_is_a_one_line_error_before_anything_starts(tmp_path):
  """Its lock file can be written (an earlier run left it), its run's files
  cannot: jaxrl-train says so in one line, exit status 2, before the run
  starts, and leaves the directory as it was."""
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  (run_dir / LOCK_FILE).write_text("")
  with _no_new_files(run_dir):
    reason = "Operation not permitted" if os.geteuid() == 0 else "Permission denied"
    with pytest.raises(RunDirError, match=rf"^run_dir: cannot write in {run_dir} \({reason}\)$"):
      lock_run_dir(run_dir)
    proc = train_cli(CARTPOLE, f"run_dir={run_dir}", "runtime.mode=sync", "stop.env_steps=500", timeout=60)
  assert proc.returncode == 2 and proc.stdout_text == "", proc.stderr
  assert proc.stderr.splitlines() == [f"jaxrl-train: error: run_dir: cannot write in {run_dir} ({reason})"]
  assert [p.name for p in run_dir.iterdir()] == [LOCK_FILE]


def test_jaxrl_train_refuses_a_live_runs_directory(tmp_path):
  """A --resume of a live run, and a new run in its directory: exit status 2,
  one line, nothing touched; the live run goes on and stops normally."""
  run_dir = tmp_path / "run"
  first = start_cli(CARTPOLE, f"run_dir={run_dir}", "runtime.mode=sync", "stop.env_steps=10_000_000",
                    "stop.eval_return=null", "runtime.progress=false")
  try:
    wait_for(lambda: first.poll() is not None or records(run_dir), what="the first run's metrics")
    assert first.poll() is None, first.communicate()[1]
    for args in (["--resume", str(run_dir)], [CARTPOLE, f"run_dir={run_dir}"]):
      second = train_cli(*args, timeout=60)
      lines = second.stderr.strip().splitlines()
      assert second.returncode == 2 and len(lines) == 1, second.stderr
      assert lines[0] == f"jaxrl-train: error: run_dir: {run_dir} is in use by another live run (pid {first.pid})"
    seen = len(records(run_dir))
    wait_for(lambda: first.poll() is not None or len(records(run_dir)) > seen, what="more records")
    assert first.poll() is None
    times = [r["time"] for r in records(run_dir)]
    assert times == sorted(times)
  finally:
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=60)
  assert first.returncode == 0, stderr
  assert json.loads((run_dir / "summary.json").read_text())["env_steps"] > 0
  assert list((run_dir / "checkpoints").iterdir())
