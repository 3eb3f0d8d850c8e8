"""The parts of a run, built the same way whatever backend runs them.

JAX set up for a process's role, the environment's spaces, the agent, its
first state, the replay and the seeds of the run's random streams: the
learner process, the actor processes, the supervisor and sync mode all
build their parts here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from jaxrl.config import RunConfig
from jaxrl.replay import SharedReplay

AGENT_ID = "agent_0"   # the one agent of a gymnasium env, and its learner (design section 4)

_jax_role: str | None = None   # the role configure_jax set this process's JAX up for


def configure_jax(role: str, compilation_cache: str | None = None) -> None:
  """Per-process JAX setup, before the first computation. Actors, the
  supervisor and sync mode ("actor", "supervisor") stay on one CPU thread
  and off any accelerator; the learner takes the default backend (the GPU
  when there is one). With ``compilation_cache`` (a directory), compiled
  programs persist across runs.

  Each process sets JAX up for its own role only: the environment that the
  processes it starts inherit is left as it was. The backend settings are
  made once per process (JAX reads them when it creates its first client);
  later calls only update the compilation cache.
  """
  global _jax_role
  import jax  # pylint: disable=import-outside-toplevel
  if compilation_cache is not None:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(compilation_cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  if _jax_role is not None:
    return
  _jax_role = role
  if role == "learner":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # read by this process only
    return
  import threadpoolctl  # pylint: disable=import-outside-toplevel
  threadpoolctl.threadpool_limits(1)   # numpy's BLAS: the numpy forward pass at E >= 16
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  flags = os.environ.get("XLA_FLAGS")
  os.environ["XLA_FLAGS"] = f"{flags or ''} --xla_cpu_multi_thread_eigen=false".strip()
  try:
    jax.devices("cpu")   # creates the CPU client, which reads XLA_FLAGS now and never again
  finally:
    if flags is None:
      del os.environ["XLA_FLAGS"]
    else:
      os.environ["XLA_FLAGS"] = flags


def env_spaces(cfg: RunConfig) -> tuple[tuple[int, ...], np.dtype, int]:
  """(obs_shape, obs_dtype, num_actions) of cfg.env; raises EnvError if jaxrl can't serve it."""
  from jaxrl.actor import make_vec_env  # pylint: disable=import-outside-toplevel
  envs = make_vec_env(cfg.env, 1)
  space = envs.single_observation_space
  spaces = (tuple(space.shape), np.dtype(space.dtype), int(envs.single_action_space.n))
  envs.close()
  return spaces


def make_agent(cfg: RunConfig):
  """The run's Agent, built for its environment's spaces."""
  from jaxrl.learner import make_agent as make  # pylint: disable=import-outside-toplevel
  obs_shape, _, num_actions = env_spaces(cfg)
  return make(cfg.agent, obs_shape, num_actions)


def restored_state(agent, cfg: RunConfig, checkpoint: Path | None):
  """The learner's first state: fresh for ``cfg.seed`` (``agent.init``,
  jitted: one compile instead of one per op), or the checkpoint's."""
  import jax  # pylint: disable=import-outside-toplevel
  state = jax.jit(agent.init)(jax.random.PRNGKey(cfg.seed))
  if checkpoint is not None:
    from jaxrl.checkpoint import restore_checkpoint  # pylint: disable=import-outside-toplevel
    state, _, _ = restore_checkpoint(checkpoint, state)
  return state


def seed(cfg: RunConfig, *keys: int) -> int:
  """A uint32 seed for one stream of the run (actor envs, replay sampling,
  evaluation), distinct per ``keys`` and reproducible for ``cfg.seed``."""
  return int(np.random.SeedSequence([cfg.seed, *keys]).generate_state(1)[0])


def actor_seed(cfg: RunConfig, actor_id: int, env_steps: int) -> int:
  """Seed of actor ``actor_id`` started when the run had ``env_steps``: a
  restarted or resumed actor does not replay the episodes of its first life."""
  return seed(cfg, 1, actor_id, env_steps)


def make_actor(cfg: RunConfig, agent, actor_id: int, env_steps: int):
  """Actor ``actor_id`` stepping ``actors.envs_per_actor`` environments."""
  from jaxrl.actor import Actor, make_vec_env  # pylint: disable=import-outside-toplevel
  return Actor(agent, make_vec_env(cfg.env, cfg.actors.envs_per_actor), seed=actor_seed(cfg, actor_id, env_steps),
               n_step=cfg.replay.n_step, gamma=cfg.replay.gamma)


def replay_nbytes(cfg: RunConfig) -> int:
  """Bytes of the learner's replay in shared memory."""
  obs_shape, obs_dtype, _ = env_spaces(cfg)
  return SharedReplay.nbytes(obs_shape, obs_dtype, cfg.replay.capacity, cfg.actors.num)


def make_replay(cfg: RunConfig, contents: dict[str, np.ndarray] | None) -> SharedReplay:
  """The learner's replay, one partition per actor, filled with ``contents``
  (a checkpoint's) when they have this replay's layout."""
  obs_shape, obs_dtype, _ = env_spaces(cfg)
  replay = SharedReplay.create(obs_shape, obs_dtype, cfg.replay.capacity, cfg.actors.num,
                               cfg.replay.min_size, cfg.replay.samples_per_insert, cfg.replay.rate_tolerance)
  if contents is not None:
    try:
      replay.restore(contents)
    except ValueError as e:
      print(f"jaxrl: replay not restored, starting empty: {e}", file=sys.stderr)
  return replay


def describe_error(error: BaseException) -> tuple[str, str]:
  """(one-line reason, traceback) of the exception being handled."""
  import traceback  # pylint: disable=import-outside-toplevel
  return " ".join(f"{type(error).__name__}: {error}".split()), traceback.format_exc()
