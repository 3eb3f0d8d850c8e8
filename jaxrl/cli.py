"""The command-line tools.

``jaxrl-train`` / ``python scripts/train.py``: train from a YAML config.

  jaxrl-train cartpole_dqn [dotted.key=value ...]    # a shipped config by name, or a YAML file
  jaxrl-train --resume runs/NAME [dotted.key=value ...]
  jaxrl-train --list-configs                         # the shipped configs, one a line

``--resume`` continues from RUN_DIR's newest intact checkpoint (a corrupt
newer one is said in one line), or from ``--checkpoint PATH``; overrides
after it apply on top of RUN_DIR/config.yaml (see ``resume_config`` for the
stop conditions). ``--help`` lists every config key.

A bad config, environment, run directory (also one in use by a live run:
``jaxrl.run_dir``) or checkpoint is a one-line error on stderr with exit
status 2; a run stopped by an error exits with status 1 (the reason on
stderr, the traceback in RUN_DIR/errors.log); a second Ctrl-C stops at once
with status 130.

``jaxrl-evaluate`` / ``python scripts/evaluate.py``: episodes of a trained
run's saved policy (see ``evaluate_main``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from jaxrl.config import MAX_SEED, ConfigError, EnvConfig, RunConfig, StopConfig
from jaxrl.config_file import apply_overrides, config_keys_help, find_config, load_config, shipped_configs
from jaxrl.run_dir import RunDirError, lock_run_dir

if TYPE_CHECKING:   # numpy is imported where it is used: the CLI starts without it
  import numpy as np


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, exit 2, as for config errors
    self.exit(2, f"{self.prog}: error: {message}\n")


def _fail(message: str, prog: str = "jaxrl-train") -> int:
  print(f"{prog}: error: {message}", file=sys.stderr)
  return 2


def resume_config(saved: RunConfig, overrides: Sequence[str]) -> RunConfig:
  """The config a run resumed with ``overrides`` goes on with: ``saved`` with
  the overrides applied, except that the stop conditions are exactly the
  ``stop`` overrides when there is one (a saved condition not overridden
  becomes null: ``stop.env_steps=N`` alone must not stop at a saved
  ``stop.eval_return`` already met), and the saved ones when there is none.

  Raises:
    ConfigError: a bad override (one line naming the key).
  """
  keys = [text.partition("=")[0].strip() for text in overrides]
  if any(key == "stop" or key.startswith("stop.") for key in keys):
    saved = dataclasses.replace(saved, stop=StopConfig())
  return apply_overrides(saved, overrides)


def main(argv: list[str] | None = None) -> int:
  launch_time = time.time()
  parser = _Parser(prog="jaxrl-train", description="Train a DQN/IQN agent with jaxrl.",
                   epilog=config_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("config", nargs="?",
                      help="a YAML config file, or the name of a shipped config (see --list-configs)")
  parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. agent.learning_rate=1e-3")
  parser.add_argument("--resume", metavar="RUN_DIR",
                      help="continue the run in RUN_DIR from its newest intact checkpoint")
  parser.add_argument("--checkpoint", metavar="PATH",
                      help="with --resume: the checkpoint to continue from (default: the newest intact one)")
  parser.add_argument("--list-configs", action="store_true",
                      help="list the shipped configs (name and description) and exit")
  args = parser.parse_args(argv)
  if args.list_configs:
    configs = shipped_configs()
    width = max(map(len, configs))
    print("\n".join(f"{name:<{width}}  {description}" for name, description in configs.items()))
    return 0
  if args.checkpoint is not None and args.resume is None:
    parser.error("--checkpoint needs --resume RUN_DIR")
  if args.resume is not None:
    run_dir = Path(args.resume)
    config_path, overrides = run_dir / "config.yaml", [a for a in [args.config, *args.overrides] if a]
    if not config_path.is_file():
      return _fail(f"--resume: {run_dir} is not a run directory (no config.yaml)")
  elif args.config is None:
    parser.error("a config (a YAML file or a shipped config's name: --list-configs) is required")
  else:
    overrides = args.overrides
  try:
    if args.resume is not None:
      cfg = resume_config(load_config(config_path), overrides)
    else:
      config_path = find_config(args.config)
      cfg = load_config(config_path, overrides)
  except ConfigError as e:
    return _fail(str(e))
  if args.resume is None:
    run_dir = Path(cfg.run_dir or f"runs/{config_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}")
  try:
    lock = lock_run_dir(run_dir)
  except RunDirError as e:
    return _fail(str(e))
  with lock:   # until the run ends; a directory made for a run that never started is removed
    if args.resume is None and (run_dir / "metrics.jsonl").exists():
      return _fail(f"run_dir: {run_dir} already holds a run (use --resume)")
    return _train(cfg, run_dir, launch_time, args.resume is not None, args.checkpoint)


def _train(cfg: RunConfig, run_dir: Path, launch_time: float, resuming: bool, checkpoint: str | None = None) -> int:
  """Checks, then trains the run in ``run_dir`` (resuming it, if
  ``resuming``, from ``checkpoint``, default its newest intact one); main's
  exit status."""
  cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
  if cfg.runtime.progress:   # at once: the imports, checks and compiling ahead take seconds
    print(f"jaxrl-train: {'resuming' if resuming else 'starting'} {cfg.env.id} in {run_dir}", flush=True)
  from jaxrl import runtime  # pylint: disable=import-outside-toplevel
  from jaxrl.checkpoint import CheckpointError  # pylint: disable=import-outside-toplevel
  from jaxrl.envs import EnvError  # pylint: disable=import-outside-toplevel
  from jaxrl.shm import SharedMemoryError  # pylint: disable=import-outside-toplevel
  interrupted = runtime.Interrupted()   # from here on, a Ctrl-C stops the run with a summary
  try:
    try:
      spaces = runtime.preflight(cfg)
      resume = runtime.load_resume(cfg, run_dir, spaces, checkpoint) if resuming else None
    except (ConfigError, EnvError, CheckpointError, SharedMemoryError) as e:
      return _fail(str(e))
    summary = runtime.train(cfg, run_dir, launch_time, resume, spaces, interrupted)
  except KeyboardInterrupt:
    print("jaxrl-train: interrupted twice: stopped at once, without a final checkpoint or summary",
          file=sys.stderr)
    return 130
  finally:
    interrupted.restore()
  from jaxrl.logger import significant  # pylint: disable=import-outside-toplevel
  eval_return = summary["eval_return"]
  print(f"jaxrl-train: {summary['stopped_because']}: eval_return "
        f"{'-' if eval_return is None else significant(eval_return)}, env_steps {summary['env_steps']:,}, "
        f"learner_steps {summary['learner_steps']:,}, {summary['wall_seconds']:.1f}s -> {run_dir}")
  if "error" in summary:   # a failure, or a learner killed before its final checkpoint
    print(f"jaxrl-train: error: {summary['error']}", file=sys.stderr)
    return 1
  return 0


VIDEO_MIN_SIDE = 160  # pixels: smaller frames (MinAtar's 10x10) are enlarged, each cell a square


def video_frame(frame) -> np.ndarray:
  """An rgb_array frame as a video frame: uint8 (a float frame in [0, 1],
  as MinAtar renders, is scaled by 255), enlarged by an integer factor by
  repeating pixels until its smaller side is at least ``VIDEO_MIN_SIDE``."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  frame = np.asarray(frame)
  if frame.dtype != np.uint8:
    frame = np.clip(frame * (255.0 if frame.max(initial=0) <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
  scale = -(-VIDEO_MIN_SIDE // min(frame.shape[:2]))
  return frame.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else frame


# gymnasium's checks of a render that video_frame and the 30 fps default take care of: MinAtar declares no
# render_fps and renders float frames.
_RENDER_WARNINGS = (r".*No render fps was declared",
                    r".*RGB-array rendering should return a numpy array with dtype uint8")


def _record_episode(env_cfg: EnvConfig, agent, params, directory: Path, epsilon: float, seed: int,
                    max_steps: int | None) -> Path:
  """Writes a video of one episode of ``agent`` acting ``epsilon``-greedily
  with ``params`` in the environment ``env_cfg`` (cut at ``max_steps``, None
  = no cap): ``directory/episode.mp4`` with imageio-ffmpeg installed, else
  ``directory/episode.gif``. Its frames are the environment's ``rgb_array``
  renders (for Atari the game's 210x160 RGB screen, the agent acting on its
  preprocessed frames: ``make_video_env``)."""
  import imageio  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from jaxrl.envs import EnvError, make_video_env  # pylint: disable=import-outside-toplevel
  os.environ.setdefault("SDL_VIDEODRIVER", "dummy")   # pygame renders off screen: no display, no XDG_RUNTIME_DIR
  with warnings.catch_warnings():
    for message in _RENDER_WARNINGS:
      warnings.filterwarnings("ignore", message, UserWarning)
    env = make_video_env(env_cfg)
    try:
      obs, _ = env.reset(seed=seed)
      frames = [env.render()]
      if frames[0] is None:
        raise EnvError(f"env.id: {env_cfg.id!r} renders no rgb_array frames")
      act, key, done = jax.jit(agent.act), jax.random.PRNGKey(seed), False
      while not done:
        key, act_key = jax.random.split(key)
        obs, _, terminated, truncated, _ = env.step(int(act(params, obs[None], epsilon, act_key)[0]))
        frames.append(env.render())
        done = terminated or truncated or (max_steps is not None and len(frames) > max_steps)
      fps = env.metadata.get("render_fps") or 30
    finally:
      env.close()
  frames = [video_frame(frame) for frame in frames]
  directory.mkdir(parents=True, exist_ok=True)
  if importlib.util.find_spec("imageio_ffmpeg") is not None:
    path = directory / "episode.mp4"
    # imageio-ffmpeg starts ffmpeg with a preexec_fn, so JAX's fork hook warns; the child only execs ffmpeg.
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
      imageio.mimsave(path, frames, fps=fps, macro_block_size=2)   # libx264 needs even sizes
  else:
    path = directory / "episode.gif"
    imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
  return path


def evaluate_main(argv: list[str] | None = None) -> int:
  """``jaxrl-evaluate RUN_DIR [--episodes N] [--epsilon E] [--video DIR]
  [--checkpoint PATH] [--seed S]``: episodes of the saved policy (greedy by
  default), one per environment, each its first; prints one JSON line
  ``{"eval_return", "eval_return/<agent_id>", "episodes", "checkpoint",
  "learner_steps"}`` (and ``"video"``, the file written, with ``--video``).
  Bad input is a one-line error on stderr with exit status 2."""
  prog = "jaxrl-evaluate"
  parser = _Parser(prog=prog, description="Evaluate the saved policy of a jaxrl run; prints one JSON line.")
  parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
  parser.add_argument("--episodes", type=int, metavar="N",
                      help="episodes to average (default: the run's eval.episodes)")
  parser.add_argument("--epsilon", type=float, default=0.0, metavar="E",
                      help="exploration rate (default 0: greedy)")
  parser.add_argument("--video", metavar="DIR", help="write a video of the first episode to DIR")
  parser.add_argument("--checkpoint", metavar="PATH", help="checkpoint to load (default: the run's latest)")
  parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the episodes (default 0)")
  args = parser.parse_args(argv)
  if args.episodes is not None and args.episodes < 1:
    parser.error(f"--episodes must be >= 1, got {args.episodes}")
  if not 0.0 <= args.epsilon <= 1.0:
    parser.error(f"--epsilon must be in [0, 1], got {args.epsilon}")
  if not 0 <= args.seed <= MAX_SEED:
    parser.error(f"--seed must be in [0, 2**32 - 1], got {args.seed}")
  missing = [name for name in ("imageio", "pygame") if importlib.util.find_spec(name) is None]
  if args.video is not None and missing:   # pygame renders classic control
    return _fail(f"--video needs {missing[0]}: pip install -e '.[video]'", prog)
  from jaxrl.actor import evaluate  # pylint: disable=import-outside-toplevel
  from jaxrl.checkpoint import CheckpointError  # pylint: disable=import-outside-toplevel
  from jaxrl.envs import AGENT_ID, EnvError, has_time_limit, make_env_set  # pylint: disable=import-outside-toplevel
  from jaxrl.saved_run import load_run  # pylint: disable=import-outside-toplevel
  try:
    run = load_run(args.run_dir, args.checkpoint)
  except (ConfigError, CheckpointError, EnvError) as e:
    return _fail(str(e), prog)
  if args.video is not None and list(run.agents) != [AGENT_ID]:
    return _fail(f"--video records gymnasium and Atari environments only; {run.config.env.id} is a PettingZoo "
                 "environment", prog)
  episodes = args.episodes or run.config.eval.episodes
  env_set = make_env_set(run.config.env, run.config.agents, episodes)
  max_steps = None if has_time_limit(env_set) else run.config.eval.max_episode_steps
  try:
    evaluation = evaluate({lid: agent for lid, (agent, _) in run.learners.items()},
                          {lid: state.params for lid, (_, state) in run.learners.items()}, env_set,
                          epsilon=args.epsilon, seed=args.seed, max_steps=max_steps)
  finally:
    env_set.close()
  result = {"eval_return": evaluation.mean_return,
            **{f"eval_return/{agent_id}": value for agent_id, value in evaluation.agent_returns.items()},
            "episodes": episodes, "eval_capped": evaluation.capped, "checkpoint": str(run.checkpoint),
            "learner_steps": run.counters["learner_steps"]}
  if args.video is not None:
    agent, state = run.learners[run.learner_of(AGENT_ID)]
    try:
      video = _record_episode(run.config.env, agent, state.params, Path(args.video), args.epsilon, args.seed,
                              max_steps)
    except (EnvError, OSError) as e:
      return _fail(f"--video: {e}", prog)
    result["video"] = str(video)
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
