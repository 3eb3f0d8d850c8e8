"""The Ray backend (``runtime.backend: ray``), through the CLI as users run it.

Ray is slow to start on 2 cores, so the runs here join one 2-node cluster
on this machine (``ray.cluster_utils.Cluster``: a head node and a worker
node) that the module starts once; the Ctrl-C test starts a Ray instance
of its own, as a run with ``runtime.ray.address: null`` does.
"""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from runs import (CARTPOLE, ROOT, SHORT, records, segments_of, start_cli, train_cli, wait_for,
                  wait_until_learning)

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402  pylint: disable=wrong-import-position

# JAX warns of the fork and exec that start the cluster's processes from this one.
pytestmark = pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")
SPREAD = str(ROOT / "configs" / "mpe_spread_dqn.yaml")
RAY = ["runtime.backend=ray", "runtime.learner_cpus=null"]


@pytest.fixture(scope="module")
def cluster():
  """A head node (2 CPUs) and a worker node (1 CPU) on this machine."""
  nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
  worker = nodes.add_node(num_cpus=1)
  nodes.wait_for_nodes()
  nodes.worker = worker
  yield nodes
  nodes.shutdown()


def joined(cluster):
  return [*RAY, f"runtime.ray.address={cluster.address}"]


def summary_of(run_dir):
  return json.loads((run_dir / "summary.json").read_text())


def actor_starts(run_dir):
  """The records of each Ray actor's start: actor_id, actor_node, actor_address, actor_pid."""
  return [r for r in records(run_dir) if "actor_node" in r]


def runs_jax_on_the_cpu(pid: int) -> bool:
  """Whether process ``pid`` has JAX_PLATFORMS=cpu in its environment."""
  with open(f"/proc/{pid}/environ", "rb") as f:
    return b"JAX_PLATFORMS=cpu" in f.read().split(b"\0")


def goes_on_then_stops(run_dir, proc) -> str:
  """Waits for 2,000 more env steps, then stops the run with SIGINT; its stderr."""
  restarted_at = records(run_dir)[-1]["env_steps"]
  wait_for(lambda: records(run_dir)[-1]["env_steps"] > restarted_at + 2000, what="env steps after the restart")
  proc.send_signal(signal.SIGINT)
  return proc.communicate(timeout=60)[1]


def test_cartpole_learns_through_ray(tmp_path, cluster):
  run_dir = tmp_path / "run"
  proc = train_cli(CARTPOLE, f"run_dir={run_dir}", *joined(cluster), "stop.env_steps=150_000",
                   "runtime.progress=false", timeout=300)
  assert proc.returncode == 0, proc.stderr
  summary = summary_of(run_dir)
  assert summary["stopped_because"] == "eval_return" and summary["eval_return"] >= 475, summary
  assert proc.stderr == "", proc.stderr   # Ray's own start-up lines stay out of the run's
  episodes = [r for r in records(run_dir) if "episode_return" in r]
  assert len(episodes) == summary["episodes"] and all(r["policy_lag"] >= 0 for r in episodes)
  assert sum(r["episode_length"] for r in episodes) <= summary["env_steps"]
  learner = [r for r in records(run_dir) if "sample_age" in r]
  assert learner and all(r["sample_age"] > 0 for r in learner[1:])
  assert len(actor_starts(run_dir)) == 1


@pytest.mark.slow   # resume is the same code in every backend; the default run resumes local runs
def test_resume_of_a_ray_run_continues_its_counters(tmp_path, cluster):
  run_dir = tmp_path / "run"
  first = train_cli(CARTPOLE, f"run_dir={run_dir}", *joined(cluster), *SHORT, "stop.env_steps=3000", timeout=180)
  assert first.returncode == 0, first.stderr
  before = summary_of(run_dir)
  more = train_cli("--resume", str(run_dir), "stop.env_steps=6000", timeout=180)
  assert more.returncode == 0, more.stderr
  after = summary_of(run_dir)
  assert after["env_steps"] >= 6000 > before["env_steps"] >= 3000
  assert after["learner_steps"] > before["learner_steps"] > 0
  assert len(actor_starts(run_dir)) == 2   # one actor in each life of the run


@pytest.mark.slow   # the default run has several agents locally and one through Ray
def test_several_agents_through_ray(tmp_path, cluster):
  run_dir = tmp_path / "run"
  proc = train_cli(SPREAD, f"run_dir={run_dir}", *joined(cluster), *SHORT, "stop.env_steps=4000",
                   "actors.num=1", "stop.seconds=null", timeout=180)
  assert proc.returncode == 0, proc.stderr
  agents = {r["agent_id"] for r in records(run_dir) if "episode_return" in r}
  assert agents == {"agent_0", "agent_1", "agent_2"}
  assert summary_of(run_dir)["env_steps"] >= 4000


@pytest.mark.slow   # the default run restarts a Ray actor whose node goes away, and a killed local one
def test_a_killed_ray_actor_process_is_restarted_and_the_run_goes_on(tmp_path, cluster):
  run_dir = tmp_path / "run"
  proc = start_cli(CARTPOLE, f"run_dir={run_dir}", *joined(cluster), *SHORT, "stop.env_steps=10_000_000",
                   "stop.seconds=null")
  try:
    wait_until_learning(run_dir, proc)
    (first,) = actor_starts(run_dir)
    assert runs_jax_on_the_cpu(first["actor_pid"])   # a cluster's worker: from the job's runtime environment
    os.kill(first["actor_pid"], signal.SIGKILL)
    wait_for(lambda: len(actor_starts(run_dir)) == 2, what="the restarted actor")
    err = goes_on_then_stops(run_dir, proc)
  finally:
    proc.kill()
  assert proc.returncode == 0, err
  summary = summary_of(run_dir)
  assert summary["actor_restarts"] == 1 and summary["stopped_because"] == "SIGINT"
  assert [r["actor_id"] for r in records(run_dir) if "actor_restarts" in r] == [0]
  assert "actor 0 failed" in err and "Traceback" not in err, err


def test_a_learner_failure_stops_a_ray_run_as_it_stops_a_local_one(tmp_path, cluster):
  """The learner cannot write its checkpoints: the periodic ones are
  warnings, the final one the run's error, exit 1 with the reason; and the
  run's Ray actor is gone from the cluster, which keeps running."""
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  (run_dir / "checkpoints").write_text("not a directory")
  proc = start_cli(CARTPOLE, f"run_dir={run_dir}", *joined(cluster), *SHORT, "stop.env_steps=10_000_000",
                   "stop.seconds=null", "checkpoint.interval_seconds=0.2")
  try:
    wait_until_learning(run_dir, proc)
    wait_for(lambda: actor_starts(run_dir), what="the actor's start")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 1, err
  assert err.strip().splitlines()[-1].startswith("jaxrl-train: error: learner: FileExistsError")
  assert "FileExistsError" in json.loads((run_dir / "summary.json").read_text())["error"]
  pids = [r["actor_pid"] for r in actor_starts(run_dir)]
  gone, alive = psutil.wait_procs([psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)], timeout=10)
  assert not alive, alive
  assert cluster.head_node.remaining_processes_alive()


def test_actors_run_on_both_nodes_and_one_whose_node_goes_away_is_restarted(tmp_path, cluster):
  """Two actors spread over the head and the worker node; removing the
  worker node restarts its actor on the head, and the run goes on."""
  run_dir = tmp_path / "run"
  proc = start_cli(CARTPOLE, f"run_dir={run_dir}", *joined(cluster), *SHORT, "actors.num=2",
                   "stop.env_steps=10_000_000", "stop.seconds=null")
  try:
    wait_until_learning(run_dir, proc)
    wait_for(lambda: len(actor_starts(run_dir)) == 2, what="both actors")
    nodes = {r["actor_id"]: r["actor_node"] for r in actor_starts(run_dir)}
    head, worker = cluster.head_node.node_id, cluster.worker.node_id
    assert sorted(nodes.values()) == sorted([head, worker])
    cluster.remove_node(cluster.worker)
    wait_for(lambda: len(actor_starts(run_dir)) == 3, timeout=120, what="the actor restarted on the head")
    moved = actor_starts(run_dir)[-1]
    assert moved["actor_id"] == [i for i, node in nodes.items() if node == worker][0]
    assert moved["actor_node"] == head
    err = goes_on_then_stops(run_dir, proc)
  finally:
    proc.kill()
    cluster.worker = cluster.add_node(num_cpus=1)
  assert proc.returncode == 0, err
  assert summary_of(run_dir)["actor_restarts"] == 1


def test_an_actor_ray_cannot_place_does_not_hang_the_run_and_ctrl_c_stops_it(tmp_path, cluster):
  """Another job holds the head node's CPUs, so the run's actor goes to the
  worker node; the worker node goes, and the actor's restart waits for a CPU
  that never comes (none of the run's own actors frees one when the run
  stops). A Ctrl-C stops the run cleanly: the pending actor is neither
  waited for nor called killed."""
  # Another job: an actor of 2 CPUs, which only the head node has, held until its stdin closes.
  hold_the_head = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
hold = ray.remote(num_cpus=2)(type("Hold", (), {"ready": lambda self: True})).remote()
ray.get(hold.ready.remote())
print("holding", flush=True)
sys.stdin.read()
"""
  run_dir = tmp_path / "run"
  holder = subprocess.Popen([sys.executable, "-c", hold_the_head, cluster.address], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  proc = None
  try:
    assert holder.stdout.readline() == "holding\n"
    proc = start_cli(CARTPOLE, f"run_dir={run_dir}", *joined(cluster), *SHORT, "stop.env_steps=10_000_000",
                     "stop.seconds=null")
    wait_until_learning(run_dir, proc)
    wait_for(lambda: len(actor_starts(run_dir)) == 1, what="the actor's start")
    assert actor_starts(run_dir)[0]["actor_node"] == cluster.worker.node_id   # the head's CPUs are held
    cluster.remove_node(cluster.worker)
    wait_for(lambda: any("actor_restarts" in r for r in records(run_dir)), timeout=120, what="the restart")
    time.sleep(3)   # the restarted actor is pending
    assert len(actor_starts(run_dir)) == 1
    proc.send_signal(signal.SIGINT)
    sent = time.time()
    _, err = proc.communicate(timeout=30)
  finally:
    if proc is not None:
      proc.kill()
    holder.stdin.close()
    try:
      holder.wait(timeout=30)
    finally:
      holder.kill()
    cluster.worker = cluster.add_node(num_cpus=1)
  assert proc.returncode == 0, err
  assert time.time() - sent < 20
  summary = summary_of(run_dir)
  assert summary["stopped_because"] == "SIGINT" and summary["killed"] == [] and "abandoned" not in summary
  assert summary["actor_restarts"] == 1
  assert not segments_of(proc.pid)


# Slow-only: the default run has Ctrl-Cs to the group while Ray starts and while an actor waits for a node.
@pytest.mark.parametrize("signum, to_group", [pytest.param(signal.SIGINT, True, marks=pytest.mark.slow),
                                              pytest.param(signal.SIGTERM, False, marks=pytest.mark.slow)],
                         ids=["ctrl-c to the process group", "SIGTERM to the driver"])
def test_a_signal_stops_the_run_and_every_ray_process_it_started(tmp_path, signum, to_group):
  """A terminal's Ctrl-C reaches the whole process group; a SIGTERM to the
  driver alone meets the handler that ray.init replaces with its own. Either
  way the run stops with a final checkpoint and summary, and the Ray
  instance it started (GCS, raylet, workers) is gone with it."""
  run_dir = tmp_path / "run"
  proc = start_cli(CARTPOLE, f"run_dir={run_dir}", *RAY, *SHORT, "stop.env_steps=10_000_000",
                   "stop.seconds=null", new_session=True)
  try:
    wait_until_learning(run_dir, proc)
    descendants = psutil.Process(proc.pid).children(recursive=True)
    names = " ".join(p.name() for p in descendants)
    assert "raylet" in names and "gcs_server" in names, names
    wait_for(lambda: actor_starts(run_dir), what="the actor's start")
    assert runs_jax_on_the_cpu(actor_starts(run_dir)[0]["actor_pid"])   # inherited from the driver's ray.init
    if to_group:
      os.killpg(proc.pid, signum)
    else:
      proc.send_signal(signum)
    sent = time.time()
    _, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 0, err
  assert time.time() - sent < 30
  summary = summary_of(run_dir)
  assert summary["stopped_because"] == signum.name and summary["killed"] == [] and summary["learner_steps"] > 0
  gone, alive = psutil.wait_procs(descendants, timeout=10)
  assert not alive, alive
  assert not segments_of(proc.pid)


def test_a_ctrl_c_while_ray_starts_stops_the_run_cleanly(tmp_path):
  """A Ctrl-C to the process group while ray.init starts the run's own Ray
  instance (its GCS is up, the rest is starting) is never lost: the run
  ends with a summary, exit 0, and no process or segment of it is left."""
  run_dir = tmp_path / "run"
  proc = start_cli(CARTPOLE, f"run_dir={run_dir}", *RAY, *SHORT, "stop.env_steps=10_000_000",
                   "stop.seconds=null", new_session=True)

  def ray_starting():
    try:
      return any(p.name().startswith("gcs_server") for p in psutil.Process(proc.pid).children(recursive=True))
    except psutil.NoSuchProcess:
      return False
  try:
    wait_for(lambda: proc.poll() is not None or ray_starting(), timeout=60, what="Ray's start", interval=0.01)
    descendants = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 0, err
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
  assert summary_of(run_dir)["stopped_because"] == "SIGINT"
  gone, alive = psutil.wait_procs(descendants, timeout=10)
  assert not alive, alive
  assert not segments_of(proc.pid)


def test_without_ray_the_backend_is_a_one_line_error(tmp_path):
  hidden = tmp_path / "no_ray"
  (hidden / "ray").mkdir(parents=True)
  (hidden / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
  run_dir = tmp_path / "run"
  proc = train_cli(CARTPOLE, f"run_dir={run_dir}", *RAY, env={"PYTHONPATH": os.pathsep.join(
      [str(hidden), os.environ.get("PYTHONPATH", ""), str(ROOT / "tests")])})
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "jaxrl-train: error: runtime.backend: ray needs the ray package: pip install -e '.[ray]'"]
  assert not run_dir.exists()


def test_sync_mode_with_ray_is_a_config_error(tmp_path):
  proc = train_cli(CARTPOLE, f"run_dir={tmp_path / 'run'}", *RAY, "runtime.mode=sync")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      'jaxrl-train: error: runtime.mode: must be "async" with runtime.backend=ray (sync mode runs in one thread, '
      "with no backend), got 'sync'"]


def test_an_address_that_does_not_answer_is_a_one_line_error(tmp_path):
  run_dir = tmp_path / "run"
  proc = train_cli(CARTPOLE, f"run_dir={run_dir}", *RAY, "runtime.ray.address=127.0.0.1:1", timeout=60)
  assert proc.returncode == 2
  (line,) = proc.stderr.strip().splitlines()
  assert line.startswith("jaxrl-train: error: runtime.ray.address: nothing answers at '127.0.0.1:1'"), line
  assert not run_dir.exists()


def test_a_cluster_without_the_actors_cpus_is_a_one_line_error(tmp_path, cluster):
  run_dir = tmp_path / "run"
  proc = train_cli(CARTPOLE, f"run_dir={run_dir}", *joined(cluster), "runtime.ray.num_cpus_per_actor=8",
                   "actors.num=2", timeout=60)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"jaxrl-train: error: runtime.ray.num_cpus_per_actor: 2 actors of 8 CPUs need 16; the cluster at "
      f"'{cluster.address}' has 3"]
  assert not run_dir.exists()
