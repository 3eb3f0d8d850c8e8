"""Agent steps/s of jaxrl on Pong at the standard settings, after learning starts.

  python benchmarks/atari_speed/jaxrl_sps.py SECONDS [dotted.key=value ...]

Runs ``scripts/train.py configs/atari_dqn.yaml`` (one update of batch 32 per
4 agent steps) for SECONDS with a 100k replay, learning from 1,000
transitions on (as ``cleanrl_sps.sh``), one actor of 8 envs (a 2-core
machine), and prints one JSON line: the CPU, the settings, and the medians
over the last half of the learner records of ``sps`` (agent steps per
second, all envs) and ``updates_per_s``.
"""

import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ["actors.num=1", "actors.envs_per_actor=8", "replay.capacity=100_000", "replay.min_size=1_000",
            "eval.interval=0", "runtime.progress=false", "runtime.log_interval_seconds=5",
            "agent.epsilon_start=0.01", "agent.epsilon_end=0.01"]


def cpu_model() -> str:
  for line in Path("/proc/cpuinfo").read_text().splitlines():
    if line.startswith("model name"):
      return line.split(":", 1)[1].strip()
  return platform.processor()


def main() -> None:
  seconds, overrides = float(sys.argv[1]), sys.argv[2:]
  run_dir = Path(tempfile.mkdtemp()) / "pong"
  args = [sys.executable, str(ROOT / "scripts" / "train.py"), str(ROOT / "configs" / "atari_dqn.yaml"),
          *SETTINGS, f"stop.seconds={seconds}", f"run_dir={run_dir}", *overrides]
  subprocess.run(args, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
  learner = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  learner = [r for r in learner if "updates_per_s" in r and r["train_steps"] > 0]
  last = learner[len(learner) // 2:]
  print(json.dumps({"system": "jaxrl", "cpu": cpu_model(), "nproc": len(__import__("os").sched_getaffinity(0)),
                    "settings": SETTINGS + overrides, "seconds": seconds,
                    "agent_steps_per_s": statistics.median(r["sps"] for r in last),
                    "updates_per_s": statistics.median(r["updates_per_s"] for r in last),
                    "records": len(last), "run_dir": str(run_dir)}))


if __name__ == "__main__":
  main()
