"""``jaxrl-train`` / ``python scripts/train.py``: train from a YAML config.

  jaxrl-train configs/cartpole_dqn.yaml [dotted.key=value ...]
  jaxrl-train --resume runs/NAME [dotted.key=value ...]

A bad config, environment or run directory is a one-line error on stderr
with exit status 2; a run stopped by an error exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from jaxrl.config import ConfigError, load_config


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, exit 2, as for config errors
    self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
  launch_time = time.time()
  parser = _Parser(prog="jaxrl-train", description="Train a DQN/IQN agent with jaxrl.")
  parser.add_argument("config", nargs="?", help="YAML config file (see configs/)")
  parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. agent.learning_rate=1e-3")
  parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
  args = parser.parse_args(argv)
  if args.resume is not None:
    print("jaxrl-train: error: --resume needs checkpoints, which this version does not write yet",
          file=sys.stderr)
    return 2
  if args.config is None:
    parser.error("a config file is required")
  try:
    cfg = load_config(args.config, args.overrides)
  except ConfigError as e:
    print(f"jaxrl-train: error: {e}", file=sys.stderr)
    return 2
  run_dir = Path(cfg.run_dir or f"runs/{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
  if (run_dir / "metrics.jsonl").exists():
    print(f"jaxrl-train: error: run_dir: {run_dir} already holds a run (use --resume)", file=sys.stderr)
    return 2
  from jaxrl import runtime  # pylint: disable=import-outside-toplevel
  from jaxrl.actor import EnvError  # pylint: disable=import-outside-toplevel
  try:
    runtime.env_spaces(cfg)
  except EnvError as e:
    print(f"jaxrl-train: error: {e}", file=sys.stderr)
    return 2
  summary = runtime.train(cfg, run_dir, launch_time)
  print(f"jaxrl-train: {summary['stopped_because']}: eval_return {summary['eval_return']}, "
        f"env_steps {summary['env_steps']}, learner_steps {summary['learner_steps']}, "
        f"{summary['wall_seconds']:.1f}s -> {run_dir}")
  return 1 if summary["stopped_because"] == "error" else 0


if __name__ == "__main__":
  sys.exit(main())
