"""The runtime end to end: real processes, the CLI, the run directory."""

import contextlib
import json
import os
import platform
import threading
import time

import jax
import numpy as np
import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxrl import runtime
from jaxrl.runtime import supervisor
from jaxrl.config_file import load_config
from jaxrl.logger import read_metrics
from jaxrl.shm import SharedMemoryError
from runs import CARTPOLE, ROOT, SHORT, records, segments_of, train_cli


def test_sync_run_writes_the_run_directory(tmp_path):
  run_dir = tmp_path / "run"
  proc = train_cli(CARTPOLE, "runtime.mode=sync", "stop.env_steps=3000", f"run_dir={run_dir}", *SHORT)
  assert proc.returncode == 0, proc.stderr
  for name in ("config.yaml", "metrics.jsonl", "summary.json", "learning_curve.png"):
    assert (run_dir / name).stat().st_size > 0, name
  assert list(run_dir.glob("events.out.tfevents.*"))
  assert load_config(run_dir / "config.yaml").stop.env_steps == 3000   # the resolved config
  records = read_metrics(run_dir)
  assert all({"time", "env_steps", "learner_steps"} <= set(r) for r in records)
  episodes = [r for r in records if "episode_return" in r]
  assert episodes and all(r["agent_id"] == "agent_0" and r["episode_return"] > 0 for r in episodes)
  assert [r["env_steps"] for r in records] == sorted(r["env_steps"] for r in records)
  evals = [r for r in records if "eval_return" in r]
  assert evals and all(r["eval_return/agent_0"] == r["eval_return"] and r["eval_capped"] == 0 for r in evals)
  learner = [r for r in records if "loss" in r]
  assert learner and all(r["learner_steps"] > 0 and r["learner_id"] == "agent_0" for r in learner)
  # A readable curve: a learner record every runtime.log_interval_learner_steps at least.
  cfg = load_config(run_dir / "config.yaml")
  assert len(learner) >= max(r["learner_steps"] for r in learner) // cfg.runtime.log_interval_learner_steps
  # Rates in every learner record; epsilon and learning_rate of the record's learner step.
  (agent,) = runtime.make_agents(cfg).values()
  for r in learner:
    assert r["sps"] > 0 and r["updates_per_s"] > 0
    assert r["train_steps"] == r["learner_steps"]   # one learner: its steps are the run's
    assert r["epsilon"] == pytest.approx(float(agent.epsilon_schedule(r["train_steps"])))
    assert r["learning_rate"] == pytest.approx(float(agent.learning_rate_schedule(r["train_steps"])))
  busy = [(r["acting_seconds"], r["learning_seconds"]) for r in records if "episode_return" in r or "eval_return" in r]
  for column in zip(*busy):   # running totals, up to each record
    assert list(column) == sorted(column) and column[-1] > 0
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["stopped_because"] == "env_steps"
  assert summary["env_steps"] >= 3000 and summary["learner_steps"] > 0
  assert {"eval_return", "wall_seconds"} <= set(summary)


def test_sync_mode_is_deterministic(tmp_path):
  def run(name):
    cfg = load_config(CARTPOLE, ["runtime.mode=sync", "stop.env_steps=2500", *SHORT])
    summary = runtime.train(cfg, tmp_path / name)
    clocks = {"time", "acting_seconds", "learning_seconds"}
    records = [{k: v for k, v in r.items() if k not in clocks} for r in read_metrics(tmp_path / name)
               if "episode_return" in r or "eval_return" in r]
    return records, {k: summary[k] for k in ("env_steps", "learner_steps", "eval_return")}
  first, second = run("a"), run("b")
  assert len(first[0]) > 10
  assert first == second


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_async_run_reports_progress_and_leaks_nothing(tmp_path, start_method):
  run_dir = tmp_path / "run"
  proc = train_cli(CARTPOLE, "stop.env_steps=6000", f"run_dir={run_dir}", "actors.num=2",
                   f"runtime.start_method={start_method}", *SHORT)
  assert proc.returncode == 0, proc.stderr
  assert "resource_tracker" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
  records = read_metrics(run_dir)
  episodes = [r for r in records if "episode_return" in r]
  assert {r["actor_id"] for r in episodes} == {0, 1}
  # Actors act with fresh params: a publish every publish_interval learner steps,
  # copied to the host at most _MAX_IN_FLIGHT fused calls later, read at the actor's next step.
  cfg = load_config(run_dir / "config.yaml")
  bound = cfg.learner.publish_interval + (runtime.Learner._MAX_IN_FLIGHT + 2) * cfg.learner.updates_per_call
  lags = [r["policy_lag"] for r in episodes]
  assert all(lag >= 0 for lag in lags) and max(lags) <= 2 * bound, (bound, sorted(lags)[-5:])
  learner = [r for r in records if "loss" in r]
  assert learner and all(r["updates_per_s"] > 0 and r["sps"] >= 0 for r in learner[1:])
  assert max(r["learner_steps"] for r in records) > 0
  # One evaluation per eval.interval learner steps, though the params evaluated may be older;
  # the last record is the run's final evaluation (eval.at_end), of its final checkpoint.
  evals = [r["learner_steps"] // cfg.eval.interval for r in records[:-1] if "eval_return" in r]
  assert evals and len(set(evals)) == len(evals), evals
  assert "eval_return" in records[-1]
  assert not segments_of(proc.pid)


@given(available=st.sets(st.integers(0, 255), min_size=1, max_size=64), learner_cpus=st.integers(1, 70))
def test_cpu_placement_gives_the_learner_the_first_cpus_and_the_rest_to_the_others(available, learner_cpus):
  placement = runtime.cpu_placement(available, learner_cpus)
  if len(available) <= learner_cpus:
    assert placement is None
  else:
    learner, others = placement
    assert learner | others == available and not learner & others
    assert len(learner) == learner_cpus and max(learner) < min(others)


def test_learner_cpus_that_leave_none_for_the_actors_is_a_note_not_a_pin(capsys):
  available = os.sched_getaffinity(0)
  cfg = load_config(CARTPOLE, [f"runtime.learner_cpus={len(available)}"])
  assert supervisor._async_placement(cfg) is None   # pylint: disable=protected-access
  assert f"would leave none of the {len(available)} CPUs" in capsys.readouterr().err


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs 2 CPUs")
def test_async_learner_runs_on_its_own_cpus_and_train_restores_the_callers(tmp_path):
  """An in-process async run: while it learns, the learner process is on the
  first CPU and the supervisor (this process) and the actor on the rest;
  afterwards this process's CPU set is what it was."""
  before = os.sched_getaffinity(0)
  learner_cpus, others = runtime.cpu_placement(before, 1)
  seen, supervisor = {}, []

  def watch():   # the CPU sets of the supervisor and its children, until learning has started
    while "supervisor" not in seen:
      children = [c for c in psutil.Process().children() if c.is_running()]
      for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
          if "spawn_main" in " ".join(child.cmdline()):
            seen[child.pid] = set(child.cpu_affinity())
      if len(seen) == 2:   # learner and actor started: the supervisor is placed too while they live
        supervisor.append(set(psutil.Process().cpu_affinity()))   # its main thread's
      if any("loss" in r for r in records(tmp_path / "run")):
        seen["supervisor"] = supervisor
      time.sleep(0.05)

  watcher = threading.Thread(target=watch, daemon=True)
  watcher.start()
  cfg = load_config(CARTPOLE, ["stop.env_steps=6000", "runtime.learner_cpus=1", *SHORT])
  runtime.train(cfg, tmp_path / "run")
  watcher.join(timeout=5)
  assert os.sched_getaffinity(0) == before
  assert others in seen.pop("supervisor")   # while its children ran (the run may end before a record is read)
  assert [cpus for _, cpus in sorted(seen.items())] == [learner_cpus, others]   # learner, actor: start order


@pytest.mark.parametrize("args,message", [
    ([CARTPOLE, "agent.lerning_rate=1e-3"], "agent.lerning_rate: unknown key (did you mean agent.learning_rate?)"),
    ([CARTPOLE, "learner.batch_size=abc"], "learner.batch_size"),
    ([CARTPOLE, "agent.learning_rate=-1"], "agent.learning_rate"),
    ([CARTPOLE, "env.id=NoSuchEnv-v0"], "env.id"),
    ([CARTPOLE, "env.id=Pendulum-v1"], "Discrete actions"),
    (["no/such/config.yaml"], "no/such/config.yaml"),
    ([CARTPOLE, "env.kwargs.vector_kwargs={autoreset_mode: SameStep}"], "NextStep mode"),
    ([CARTPOLE, "actors.num=4", "replay.capacity=1000", "replay.min_size=500"], "replay.min_size"),
])
def test_bad_input_is_a_one_line_error(tmp_path, args, message):
  proc = train_cli(*args, f"run_dir={tmp_path / 'run'}" if len(args) > 1 else "seed=0", timeout=60)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], proc.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config,target,env_steps,overrides", [
    ("cartpole_dqn", 475, 100_000, ()), ("cartpole_iqn", 475, 100_000, ()),
    ("cartpole_dqn", 475, 100_000, ("replay.prioritized=true", "agent.dueling=true")),
    ("acrobot_dqn", -100, 150_000, ()),
    pytest.param("acrobot_iqn", -100, 150_000, (), marks=pytest.mark.slow)])   # IQN and Acrobot: covered above
def test_config_reaches_its_target(tmp_path, config, target, env_steps, overrides):
  """End-to-end learning with each shipped config (and prioritized replay with
  the actors' priorities and a dueling head): sync mode (deterministic), the
  issue's env-step budgets, stopping on the greedy evaluation."""
  cfg = load_config(ROOT / "configs" / f"{config}.yaml",
                    ["runtime.mode=sync", f"stop.env_steps={env_steps}", f"stop.eval_return={target}",
                     "runtime.progress=false", *overrides])
  summary = runtime.train(cfg, tmp_path / "run")
  assert summary["stopped_because"] == "eval_return", summary
  assert summary["eval_return"] >= target


@pytest.mark.parametrize("prioritized", [False, True])
def test_actors_give_priorities_to_a_prioritized_replay(prioritized):
  """``replay.prioritized`` makes every backend's actors (``make_actor``) give
  each transition its first priority, finite and non-negative."""
  from jaxrl.runtime.builders import make_actor  # pylint: disable=import-outside-toplevel
  cfg = load_config(ROOT / "configs" / "cartpole_dqn.yaml", [f"replay.prioritized={str(prioritized).lower()}",
                                                             "replay.n_step=3"])
  agents = runtime.make_agents(cfg)
  actor = make_actor(cfg, agents, 0, 0)
  actor.set_policy("agent_0", agents["agent_0"].init(jax.random.PRNGKey(0)).params, 0.5, 0)
  transitions = [actor.step({"agent_0": 0}).transitions["agent_0"] for _ in range(10)]
  assert all(("priority" in t) == prioritized for t in transitions)
  if prioritized:
    priority = np.concatenate([t["priority"] for t in transitions])
    assert len(priority) > 0 and np.isfinite(priority).all() and (priority >= 0).all()
  actor.env_set.close()


def test_without_a_rate_limit_sync_mode_updates_once_per_actor_step(tmp_path):
  cfg = load_config(CARTPOLE, ["runtime.mode=sync", "replay.samples_per_insert=null", "stop.env_steps=3000",
                               *SHORT])
  summary = runtime.train(cfg, tmp_path / "run")
  assert summary["stopped_because"] == "env_steps"
  actor_steps = summary["env_steps"] / cfg.actors.envs_per_actor   # at least; autoreset steps are no env steps
  calls = summary["learner_steps"] / cfg.learner.updates_per_call
  assert calls == int(calls) and actor_steps - 100 <= calls <= actor_steps + 10


def test_preflight_refuses_async_mode_off_x86_64_and_lets_sync_run(monkeypatch, tmp_path):
  monkeypatch.setattr(platform, "machine", lambda: "aarch64")
  with pytest.raises(SharedMemoryError, match="aarch64"):
    runtime.train(load_config(CARTPOLE, [*SHORT]), tmp_path / "run")
  assert not (tmp_path / "run").exists()
  runtime.preflight(load_config(CARTPOLE, ["runtime.mode=sync"]))


def test_a_run_larger_than_dev_shm_is_a_one_line_error_before_anything_is_written(tmp_path):
  stat = os.statvfs("/dev/shm")
  capacity = stat.f_bavail * stat.f_frsize // 30   # CartPole's replay takes 60 bytes a slot
  proc = train_cli(CARTPOLE, f"run_dir={tmp_path / 'run'}", f"replay.capacity={capacity}", timeout=60)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "--shm-size" in lines[0] and "replay.capacity" in lines[0], proc.stderr
  assert not (tmp_path / "run").exists()


def test_a_full_disk_while_logging_ends_the_run_with_one_line_and_a_summary(tmp_path, monkeypatch, capsys):
  """metrics.jsonl cannot be written (ENOSPC) in the supervisor of an async
  run: one line on stderr, the run stops as for any error (its learner's
  final checkpoint included), the error in summary.json, nothing left."""
  import errno  # pylint: disable=import-outside-toplevel
  from jaxrl import logger  # pylint: disable=import-outside-toplevel

  def full(fd, data):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(logger, "_write_all", full)   # this process's logger; the children are spawned
  run_dir = tmp_path / "run"
  cfg = load_config(CARTPOLE, [f"run_dir={run_dir}", "stop.env_steps=10_000_000", *SHORT])
  summary = runtime.train(cfg, run_dir)
  assert summary["stopped_because"] == "error" and "No space left on device" in summary["error"]
  assert json.loads((run_dir / "summary.json").read_text())["error"] == summary["error"]
  lines = capsys.readouterr().err.strip().splitlines()
  assert [line for line in lines if "No space left" in line] == [f"jaxrl: {summary['error']}"], lines
  assert summary["error"].startswith("metrics: OSError: [Errno 28]") and summary["killed"] == []
  assert not segments_of(os.getpid())


def test_a_run_reads_the_environments_spaces_once(tmp_path, monkeypatch):
  """preflight computes the learners' spaces and the run passes them down:
  the environment is not made again just to read them."""
  from jaxrl.runtime import builders  # pylint: disable=import-outside-toplevel
  calls = []

  def counted(*args):
    calls.append(args)
    return real(*args)
  real = builders.env_learner_spaces
  monkeypatch.setattr(builders, "env_learner_spaces", counted)
  cfg = load_config(CARTPOLE, ["runtime.mode=sync", "stop.env_steps=600", *SHORT])
  runtime.train(cfg, tmp_path / "run")
  assert len(calls) == 1
