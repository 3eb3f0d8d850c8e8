"""Fault injection: real processes, real signals, real files.

Each test breaks a run the way the world does (Ctrl-C, SIGKILL, a crashing
environment, non-finite numbers, a damaged checkpoint) and checks what must
survive: the checkpoints, the counters, the exit status and one-line
reason, and a machine with no process and no shared-memory segment left.
"""

import json
import os
import shutil
import signal
import time

import chex
import jax
import numpy as np
import psutil
import pytest

from jaxrl import runtime
from jaxrl.checkpoint import latest_checkpoint, restore_checkpoint
from jaxrl.config_file import load_config
from runs import (CARTPOLE, ROOT, SHORT, assert_clean_exit, records, segments_of, start_cli, train_cli,
                  wait_for, wait_until_learning, workers)

LONG = ["stop.env_steps=10_000_000", "stop.eval_return=null"]   # runs until stopped
NO_EVAL = ["eval.interval=0", "stop.eval_return=null"]   # faulty envs must fail in actors only


def checkpoint_state(path, cfg_path):
  """(The one learner's LearnerState, counters, config) saved at ``path``,
  restored against the run's config."""
  agents = runtime.make_agents(load_config(cfg_path))
  states, counters, config = restore_checkpoint(path, runtime.state_templates(agents))
  (state,) = states.values()
  return state, counters, config


def summary_of(run_dir):
  return json.loads((run_dir / "summary.json").read_text())


def learning_run(run_dir, *args, **kwargs):
  """A long async run, once it learns: (process, its descendants)."""
  proc = start_cli(CARTPOLE, f"run_dir={run_dir}", *LONG, *SHORT, "actors.num=2", *args, **kwargs)
  wait_until_learning(run_dir, proc)
  return proc, psutil.Process(proc.pid).children(recursive=True)


def assert_final_checkpoint(run_dir, stopped_because):
  """The run stopped for ``stopped_because`` and its last checkpoint holds all it learned."""
  summary = summary_of(run_dir)
  assert summary["stopped_because"] == stopped_because and summary["killed"] == []
  state, counters, _ = checkpoint_state(latest_checkpoint(run_dir / "checkpoints"), run_dir / "config.yaml")
  assert int(state.step) == counters["learner_steps"] == summary["learner_steps"] > 0
  assert counters["env_steps"] == summary["env_steps"]


def one_line_errors(stderr):
  lines = stderr.strip().splitlines()
  assert "Traceback" not in stderr, stderr
  return lines


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_writes_a_final_checkpoint_and_leaves_nothing(tmp_path, signum):
  run_dir = tmp_path / "run"
  proc, descendants = learning_run(run_dir)
  proc.send_signal(signum)
  sent = time.time()
  _, err = proc.communicate(timeout=30)
  assert time.time() - sent < 10   # the contract: stops within 10 seconds
  assert proc.returncode == 0, err
  assert_clean_exit(proc, descendants, err)
  assert_final_checkpoint(run_dir, signum.name)


@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_a_signal_to_the_whole_process_group_is_handled_by_the_supervisor(tmp_path, signum):
  """Ctrl-C in a terminal, or scancel / systemd / docker stop (SIGTERM to every
  process of the group): the children ignore it and the supervisor stops the run."""
  run_dir = tmp_path / "run"
  proc, descendants = learning_run(run_dir, new_session=True)
  os.killpg(proc.pid, signum)
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 0, err
  assert "Traceback" not in err, err
  assert_clean_exit(proc, descendants, err)
  assert_final_checkpoint(run_dir, signum.name)


@pytest.mark.parametrize("signum, children", [(signal.SIGINT, 0), (signal.SIGINT, 1), (signal.SIGTERM, 2),
                                               pytest.param(signal.SIGINT, 3, marks=pytest.mark.slow)],
                         ids=["sigint-before-the-learner", "sigint-starting-actor-0", "sigterm-starting-actor-1",
                              "sigint-all-started"])
def test_a_group_signal_at_any_point_of_startup_stops_the_run_cleanly(tmp_path, signum, children):
  """A Ctrl-C (or a batch system's SIGTERM) to the whole process group as
  soon as the supervisor has started ``children`` children: while it starts
  the next one, or while they all still import. It is never lost: the run
  ends with a summary, exit 0, nothing left."""
  run_dir = tmp_path / "run"
  proc = start_cli(CARTPOLE, f"run_dir={run_dir}", *LONG, *SHORT, "actors.num=2", new_session=True)
  if children:
    wait_for(lambda: proc.poll() is not None or len(workers(proc)) >= children, timeout=60, what="the children",
             interval=0.002)
  else:
    wait_for(lambda: proc.poll() is not None or (run_dir / "config.yaml").exists(), timeout=60,
             what="the run directory", interval=0.002)
  descendants = psutil.Process(proc.pid).children(recursive=True)
  os.killpg(proc.pid, signum)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
  assert_clean_exit(proc, descendants, err)
  assert summary_of(run_dir)["stopped_because"] == signum.name


def test_a_learner_that_does_not_stop_in_time_is_killed_and_the_summary_says_so(tmp_path):
  run_dir = tmp_path / "run"
  proc, descendants = learning_run(run_dir, "runtime.stop_timeout_seconds=3")
  workers(proc)[0].suspend()   # the learner: it can neither checkpoint nor exit
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 1, err
  assert_clean_exit(proc, descendants, err)
  summary = summary_of(run_dir)
  assert summary["stopped_because"] == "SIGTERM" and summary["killed"] == ["learner"]
  assert "did not write its final checkpoint within runtime.stop_timeout_seconds (3 s)" in summary["error"]
  assert one_line_errors(err)[-1].startswith("jaxrl-train: error: learner: did not write its final checkpoint"), err


def test_a_learner_slower_to_stop_than_any_fixed_grace_finishes_its_final_checkpoint(tmp_path):
  """Under load a learner can take longer than a fixed grace to write its
  final checkpoint (here: held still for 12 s once asked to stop). The run
  waits for it, up to runtime.stop_timeout_seconds, and a run that saved
  everything is a success."""
  run_dir = tmp_path / "run"
  proc, descendants = learning_run(run_dir)
  learner = workers(proc)[0]
  learner.suspend()
  proc.send_signal(signal.SIGTERM)
  time.sleep(12)
  learner.resume()
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err
  assert_clean_exit(proc, descendants, err)
  assert_final_checkpoint(run_dir, "SIGTERM")


def test_a_signal_during_a_long_evaluation_stops_the_run_within_seconds(tmp_path):
  """MinAtar Freeway's episodes are 2,500 steps; 512 of them, with an
  evaluation due at every learner step, take a minute or more per
  evaluation (none has finished when the signal comes: no evaluation record),
  so a supervisor that waited for it would take several times the 15 s
  allowed here, which leaves a loaded machine room for the final checkpoint."""
  run_dir = tmp_path / "run"
  proc = start_cli(str(ROOT / "configs" / "minatar_dqn.yaml"), f"run_dir={run_dir}", "env.id=MinAtar/Freeway-v1",
                   *LONG, "replay.min_size=256", "eval.interval=1", "eval.episodes=512", "runtime.progress=false",
                   "runtime.log_interval_seconds=0.5")
  wait_until_learning(run_dir, proc)
  time.sleep(2)   # well into an evaluation
  descendants = psutil.Process(proc.pid).children(recursive=True)
  proc.send_signal(signal.SIGINT)
  sent = time.time()
  _, err = proc.communicate(timeout=120)
  stopped_in = time.time() - sent
  assert proc.returncode == 0, err
  assert stopped_in < 15, stopped_in
  assert not [r for r in records(run_dir) if "eval_return" in r]   # the evaluation was abandoned, not finished
  assert_clean_exit(proc, descendants, err)
  assert_final_checkpoint(run_dir, "SIGINT")


def test_the_learner_gets_the_callers_environment_not_the_actors_jax_flags(tmp_path):
  """The supervisor sets XLA up for one CPU thread; the learner it starts
  afterwards must not inherit that (its matmuls would run single-threaded)."""
  flags = "--xla_cpu_enable_fast_math=false"
  proc, descendants = learning_run(tmp_path / "run", env={"XLA_FLAGS": flags})
  try:
    assert [p.environ().get("XLA_FLAGS") for p in workers(proc)] == [flags] * 3   # learner, actors
  finally:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
  assert_clean_exit(proc, descendants, err)


def test_forkserver_children_notice_a_killed_supervisor(tmp_path):
  """A forkserver child's parent is the fork server, not the supervisor: it
  must still notice the supervisor's death (and the learner unlink the segments)."""
  run_dir = tmp_path / "run"
  proc, descendants = learning_run(run_dir, "runtime.start_method=forkserver")
  proc.kill()
  proc.wait()
  gone, alive = psutil.wait_procs(descendants, timeout=10)
  assert not alive, alive
  assert not segments_of(proc.pid)
  state, counters, _ = checkpoint_state(run_dir / "checkpoints", run_dir / "config.yaml")
  assert int(state.step) == counters["learner_steps"] > 0


def test_sync_without_a_rate_limit_stops_on_a_signal(tmp_path):
  run_dir = tmp_path / "run"
  proc = start_cli(CARTPOLE, f"run_dir={run_dir}", *LONG, *SHORT, "runtime.mode=sync",
                   "replay.samples_per_insert=null")
  wait_until_learning(run_dir, proc)
  proc.send_signal(signal.SIGTERM)
  sent = time.time()
  _, err = proc.communicate(timeout=30)
  assert time.time() - sent < 10 and proc.returncode == 0, err
  assert not segments_of(proc.pid)
  assert_final_checkpoint(run_dir, "SIGTERM")


def test_resume_sets_jax_up_before_it_reads_the_checkpoint(tmp_path):
  """JAX_PLATFORMS=cuda on a machine without CUDA: a supervisor that starts
  JAX before configuring it for the CPU fails to start the CUDA backend."""
  run_dir = tmp_path / "run"
  cuda = {"JAX_PLATFORMS": "cuda"}
  first = train_cli(CARTPOLE, f"run_dir={run_dir}", "runtime.mode=sync", "stop.env_steps=1000", *SHORT, env=cuda)
  assert first.returncode == 0, first.stderr
  more = train_cli("--resume", str(run_dir), "stop.env_steps=2000", env=cuda)
  assert more.returncode == 0, more.stderr
  assert summary_of(run_dir)["env_steps"] >= 2000


def test_second_sigint_stops_at_once_and_leaves_no_segment(tmp_path):
  run_dir = tmp_path / "run"
  proc, descendants = learning_run(run_dir)
  proc.send_signal(signal.SIGINT)
  time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 130, err
  assert one_line_errors(err) == [
      "jaxrl-train: interrupted twice: stopped at once, without a final checkpoint or summary"]
  assert_clean_exit(proc, descendants, err)


def test_supervisor_killed_children_exit_and_unlink(tmp_path):
  run_dir = tmp_path / "run"
  proc, descendants = learning_run(run_dir)
  assert len(workers(proc)) == 3   # learner and two actors
  proc.kill()
  proc.wait()
  gone, alive = psutil.wait_procs(descendants, timeout=5)   # the contract: within 5 seconds
  assert not alive, alive
  err = proc.stderr.read()
  assert_clean_exit(proc, descendants, err)
  assert "Traceback" not in err, err
  # The orphaned learner saved what it had.
  state, counters, _ = checkpoint_state(run_dir / "checkpoints", run_dir / "config.yaml")
  assert int(state.step) == counters["learner_steps"] > 0


def test_segments_of_a_killed_process_group_are_removed_by_the_next_run(tmp_path):
  """SIGKILL to the whole group (supervisor, children, resource tracker)
  leaves the segments; the next run removes them and says so."""
  proc, descendants = learning_run(tmp_path / "killed", new_session=True)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  psutil.wait_procs(descendants, timeout=5)
  left = segments_of(proc.pid)
  assert left
  later = train_cli(CARTPOLE, f"run_dir={tmp_path / 'later'}", "runtime.mode=sync", "stop.env_steps=300", *SHORT)
  assert later.returncode == 0, later.stderr
  assert not segments_of(proc.pid)
  (line,) = [line for line in later.stderr.splitlines() if line.startswith("jaxrl: removed ")]
  assert "shared-memory segments left in /dev/shm by killed runs (pids " in line and str(proc.pid) in line


def test_actor_killed_is_restarted_and_the_run_goes_on(tmp_path):
  """With the config's rate limit: the restarted actor gets its share of
  the room each learner call makes."""
  run_dir = tmp_path / "run"
  proc, descendants = learning_run(run_dir)
  workers(proc)[2].kill()   # actor 1
  wait_for(lambda: any("actor_restarts" in r for r in records(run_dir)), what="a restart record")
  restart = next(i for i, r in enumerate(records(run_dir)) if "actor_restarts" in r)
  wait_for(lambda: any(r.get("actor_id") == 1 and "episode_return" in r for r in records(run_dir)[restart:]),
           what="an episode of the restarted actor")
  descendants += psutil.Process(proc.pid).children(recursive=True)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 0, err
  assert one_line_errors(err)[:1] == ["jaxrl: actor 1 failed: killed by SIGKILL"]
  assert records(run_dir)[restart]["actor_restarts"] == 1
  assert summary_of(run_dir)["actor_restarts"] == 1
  assert_clean_exit(proc, descendants, err)


def test_actor_exceptions_restart_up_to_max_restarts_then_abort(tmp_path):
  run_dir = tmp_path / "run"
  proc = train_cli(CARTPOLE, f"run_dir={run_dir}", *LONG, *SHORT, "env.id=faulty_env:FaultyCartPole-v0",
                   "env.kwargs={raise_after: 200}", "actors.num=1", "actors.max_restarts=1", *NO_EVAL)
  assert proc.returncode == 1, proc.stderr
  failure = "jaxrl: actor 0 failed: RuntimeError: injected failure after 200 steps"
  lines = one_line_errors(proc.stderr)
  assert lines == [failure, failure, "jaxrl-train: error: actor 0: RuntimeError: injected failure "
                                     "after 200 steps (after 1 restarts)"], proc.stderr
  summary = summary_of(run_dir)
  assert summary["stopped_because"] == "error" and summary["actor_restarts"] == 1
  assert (run_dir / "errors.log").read_text().count("Traceback") == 2
  assert not segments_of(proc.pid)


@pytest.mark.parametrize("fault,reason", [
    # NaN observations from an env step on: the loss becomes NaN.
    (["env.id=faulty_env:FaultyCartPole-v0", "env.kwargs={nan_after: 1500}", *NO_EVAL,
      "checkpoint.interval_seconds=0.2"], "learner: NonFiniteError: non-finite loss"),
])
def test_learner_failure_stops_with_exit_1_and_a_usable_checkpoint(tmp_path, fault, reason):
  run_dir = tmp_path / "run"
  proc = start_cli(CARTPOLE, f"run_dir={run_dir}", *LONG, *SHORT, "actors.num=1", *fault)
  wait_for(lambda: proc.poll() is not None or psutil.Process(proc.pid).children(), what="children")
  descendants = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
  _, err = proc.communicate(timeout=90)
  assert proc.returncode == 1, err
  lines = one_line_errors(err)
  assert lines[-1].startswith(f"jaxrl-train: error: {reason}"), err
  assert summary_of(run_dir)["stopped_because"] == "error"
  assert "Traceback" in (run_dir / "errors.log").read_text()
  assert_clean_exit(proc, descendants, err)
  state, counters, _ = checkpoint_state(run_dir / "checkpoints", run_dir / "config.yaml")
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state) if leaf.dtype.kind == "f")
  assert counters["learner_steps"] < summary_of(run_dir)["learner_steps"]   # checkpoints before the NaNs


def test_checkpoints_that_cannot_be_written_are_retried_and_only_the_final_one_is_an_error(tmp_path):
  """A periodic checkpoint that fails is a warning and the run goes on
  learning; the final one failing is the run's error (exit 1)."""
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  (run_dir / "checkpoints").write_text("not a directory")
  proc, descendants = learning_run(run_dir, "actors.num=1", "checkpoint.interval_seconds=0.2")
  before = sum("loss" in r for r in records(run_dir))
  wait_for(lambda: sum("loss" in r for r in records(run_dir)) > before + 2, what="learning after failed checkpoints")
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 1, err
  lines = one_line_errors(err)
  assert any(line.startswith("jaxrl: learner: checkpoint not written (") for line in lines), err
  assert lines[-1].startswith("jaxrl-train: error: learner: FileExistsError"), err
  assert summary_of(run_dir)["stopped_because"] == "error" and "FileExistsError" in summary_of(run_dir)["error"]
  assert_clean_exit(proc, descendants, err)


def test_resume_restores_the_state_bit_for_bit_and_continues(tmp_path):
  run_dir = tmp_path / "run"
  first = train_cli(CARTPOLE, f"run_dir={run_dir}", "stop.env_steps=3000", *SHORT)
  assert first.returncode == 0, first.stderr
  saved = latest_checkpoint(run_dir / "checkpoints")
  original = tmp_path / "original.ckpt"
  shutil.copy(saved, original)
  before = summary_of(run_dir)
  n_records = len(records(run_dir))

  # Resumed with its stop condition already met, the run stops before learning
  # anything: its final checkpoint is the restored state, written again.
  again = train_cli("--resume", str(run_dir))
  assert again.returncode == 0, again.stderr
  assert latest_checkpoint(run_dir / "checkpoints") == saved
  restored, restored_counters, _ = checkpoint_state(saved, run_dir / "config.yaml")
  state, counters, _ = checkpoint_state(original, run_dir / "config.yaml")
  chex.assert_trees_all_equal(restored, state)   # params, target, opt_state, epsilon, step, rng
  assert restored_counters == counters

  # A new stop condition as an override: the counters and metrics go on.
  more = train_cli("--resume", str(run_dir), "stop.env_steps=9000")
  assert more.returncode == 0, more.stderr
  after = summary_of(run_dir)
  assert after["env_steps"] >= 9000 and after["learner_steps"] > before["learner_steps"]
  assert after["episodes"] > before["episodes"]
  new = records(run_dir)[n_records:]
  assert new and min(r["env_steps"] for r in new) >= before["env_steps"]
  times = [r["time"] for r in records(run_dir)]
  assert times == sorted(times)
  assert load_config(run_dir / "config.yaml").stop.env_steps == 9000


def test_resume_with_replay_learns_without_refilling(tmp_path):
  """With checkpoint.replay the resumed learner samples at once; without, it
  waits for replay.min_size new transitions."""
  learner_steps = {}
  short = [*SHORT, "replay.n_step=1"]   # one insert per env step
  cfg = load_config(CARTPOLE, short)
  updates_per_env_step = cfg.replay.samples_per_insert / cfg.learner.batch_size
  for with_replay in (True, False):
    run_dir = tmp_path / f"replay_{with_replay}"
    first = train_cli(CARTPOLE, f"run_dir={run_dir}", "runtime.mode=sync", "stop.env_steps=2000",
                      f"checkpoint.replay={str(with_replay).lower()}", *short)
    assert first.returncode == 0, first.stderr
    before = summary_of(run_dir)["learner_steps"]
    more = train_cli("--resume", str(run_dir), "stop.env_steps=2200")   # fewer than min_size (256)
    assert more.returncode == 0, more.stderr
    learner_steps[with_replay] = summary_of(run_dir)["learner_steps"] - before
  assert learner_steps == {True: pytest.approx(200 * updates_per_env_step, abs=2 * cfg.learner.updates_per_call),
                           False: 0}


@pytest.mark.parametrize("damage,message", [
    ("no_checkpoint", "no checkpoint to resume from"),
    ("truncated", "corrupt checkpoint"),
    ("no_run", "is not a run directory"),
])
def test_bad_resume_is_a_one_line_error_that_changes_nothing(tmp_path, damage, message):
  run_dir = tmp_path / "run"
  first = train_cli(CARTPOLE, f"run_dir={run_dir}", "runtime.mode=sync", "stop.env_steps=500", *SHORT)
  assert first.returncode == 0, first.stderr
  checkpoint = latest_checkpoint(run_dir / "checkpoints")
  if damage == "no_checkpoint":
    checkpoint.unlink()
  elif damage == "truncated":
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
  def files():   # but the lock, which holds the pid of its last holder
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
  before = files()
  proc = train_cli("--resume", str(run_dir if damage != "no_run" else tmp_path / "nowhere"))
  assert proc.returncode == 2
  lines = one_line_errors(proc.stderr)
  assert len(lines) == 1 and message in lines[0], proc.stderr
  assert files() == before


def test_dict_observations_are_a_one_line_error(tmp_path):
  proc = train_cli(CARTPOLE, f"run_dir={tmp_path / 'run'}", "env.id=faulty_env:DictObservation-v0")
  assert proc.returncode == 2
  lines = one_line_errors(proc.stderr)
  assert len(lines) == 1 and "Box of rank 1 or 3" in lines[0], proc.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.slow   # the default run resumes after signals and with replay; this adds a SIGKILL's records
def test_resume_after_a_crash_drops_the_records_past_the_checkpoint(tmp_path):
  """A run killed whole (SIGKILL to its group) after records past its last
  checkpoint; resumed, its metrics.jsonl never has env_steps go backwards."""
  run_dir = tmp_path / "run"
  proc, descendants = learning_run(run_dir, "checkpoint.interval_seconds=4", new_session=True)
  wait_for(lambda: (run_dir / "checkpoints").is_dir() and latest_checkpoint(run_dir / "checkpoints"),
           what="a checkpoint")
  _, saved, _ = checkpoint_state(latest_checkpoint(run_dir / "checkpoints"), run_dir / "config.yaml")
  wait_for(lambda: records(run_dir)[-1]["env_steps"] > saved["env_steps"] + 500, what="records past it")
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  psutil.wait_procs(descendants, timeout=10)
  _, saved, _ = checkpoint_state(latest_checkpoint(run_dir / "checkpoints"), run_dir / "config.yaml")
  assert records(run_dir)[-1]["env_steps"] > saved["env_steps"]   # records past the last checkpoint
  more = train_cli("--resume", str(run_dir), f"stop.env_steps={saved['env_steps'] + 1000}", "runtime.mode=sync")
  assert more.returncode == 0, more.stderr
  steps = [r["env_steps"] for r in records(run_dir)]
  assert steps == sorted(steps) and steps[-1] >= saved["env_steps"] + 1000
