"""``jaxrl-train`` / ``python scripts/train.py``: train from a YAML config.

  jaxrl-train configs/cartpole_dqn.yaml [dotted.key=value ...]
  jaxrl-train --resume runs/NAME [dotted.key=value ...]

``--resume`` continues from RUN_DIR's latest checkpoint; overrides after it
(new stop conditions, say) apply on top of RUN_DIR/config.yaml.

A bad config, environment, run directory or checkpoint is a one-line error
on stderr with exit status 2; a run stopped by an error exits with status 1
(the reason on stderr, the traceback in RUN_DIR/errors.log); a second
Ctrl-C stops at once with status 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from jaxrl.config import ConfigError, load_config


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, exit 2, as for config errors
    self.exit(2, f"{self.prog}: error: {message}\n")


def _fail(message: str) -> int:
  print(f"jaxrl-train: error: {message}", file=sys.stderr)
  return 2


def main(argv: list[str] | None = None) -> int:
  launch_time = time.time()
  parser = _Parser(prog="jaxrl-train", description="Train a DQN/IQN agent with jaxrl.")
  parser.add_argument("config", nargs="?", help="YAML config file (see configs/)")
  parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. agent.learning_rate=1e-3")
  parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
  args = parser.parse_args(argv)
  if args.resume is not None:
    run_dir = Path(args.resume)
    config_path, overrides = run_dir / "config.yaml", [a for a in [args.config, *args.overrides] if a]
    if not config_path.is_file():
      return _fail(f"--resume: {run_dir} is not a run directory (no config.yaml)")
  elif args.config is None:
    parser.error("a config file is required")
  else:
    config_path, overrides = Path(args.config), args.overrides
  try:
    cfg = load_config(config_path, overrides)
  except ConfigError as e:
    return _fail(str(e))
  if args.resume is None:
    run_dir = Path(cfg.run_dir or f"runs/{config_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    if (run_dir / "metrics.jsonl").exists():
      return _fail(f"run_dir: {run_dir} already holds a run (use --resume)")
  cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
  from jaxrl import runtime  # pylint: disable=import-outside-toplevel
  from jaxrl.actor import EnvError  # pylint: disable=import-outside-toplevel
  from jaxrl.checkpoint import CheckpointError  # pylint: disable=import-outside-toplevel
  try:
    runtime.env_spaces(cfg)
    resume = runtime.load_resume(cfg, run_dir) if args.resume is not None else None
  except (EnvError, CheckpointError) as e:
    return _fail(str(e))
  try:
    summary = runtime.train(cfg, run_dir, launch_time, resume)
  except KeyboardInterrupt:
    print("jaxrl-train: interrupted twice: stopped at once, without a final checkpoint or summary",
          file=sys.stderr)
    return 130
  print(f"jaxrl-train: {summary['stopped_because']}: eval_return {summary['eval_return']}, "
        f"env_steps {summary['env_steps']}, learner_steps {summary['learner_steps']}, "
        f"{summary['wall_seconds']:.1f}s -> {run_dir}")
  if summary["stopped_because"] == "error":
    print(f"jaxrl-train: error: {summary['error']}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
