"""The parts of a run, built the same way whatever backend runs them.

JAX set up for a process's role, the learners and their spaces, the agents,
their first states, the replays, the actors and the seeds of the run's
random streams: the learner process, the actor processes, the supervisor and
sync mode all build their parts here. Parts of several learners are dicts
keyed by learner id, in the env set's learner order.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from jaxrl.config import ConfigError, RunConfig
from jaxrl.envs import LearnerSpace, env_learner_spaces, make_env_set
from jaxrl.frame_replay import FrameStackReplay
from jaxrl.replay import SharedReplay

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


def learner_spaces(cfg: RunConfig) -> dict[str, LearnerSpace]:
  """Learner id -> the agents it serves and their spaces; raises EnvError if
  jaxrl can't serve the environment."""
  return env_learner_spaces(cfg.env, cfg.agents)


def make_agents(cfg: RunConfig, spaces: dict[str, LearnerSpace] | None = None) -> dict:
  """Learner id -> its Agent, built for its config (``cfg.agent_config``) and
  spaces (``learner_spaces(cfg)``, made here when not given)."""
  from jaxrl.learner import make_agent  # pylint: disable=import-outside-toplevel
  return {lid: make_agent(cfg.agent_config(lid), space.obs_shape, space.num_actions, obs_range=space.obs_range)
          for lid, space in (spaces or learner_spaces(cfg)).items()}


def _init_key(cfg: RunConfig, index: int):
  """The init key of the learner at ``index``: PRNGKey(seed) for the first
  (a one-learner run is as before several learners were), folded with the
  index for the others."""
  import jax  # pylint: disable=import-outside-toplevel
  key = jax.random.PRNGKey(cfg.seed)
  return key if index == 0 else jax.random.fold_in(key, index)


def restored_states(agents: dict, cfg: RunConfig, checkpoint: Path | None) -> dict:
  """Learner id -> its first state: fresh (``agent.init``, jitted: one
  compile instead of one per op), or the checkpoint's."""
  import jax  # pylint: disable=import-outside-toplevel
  states = {lid: jax.jit(agent.init)(_init_key(cfg, i)) for i, (lid, agent) in enumerate(agents.items())}
  if checkpoint is not None:
    from jaxrl.checkpoint import restore_checkpoint  # pylint: disable=import-outside-toplevel
    states, _, _ = restore_checkpoint(checkpoint, states)
  return states


def state_templates(agents: dict) -> dict:
  """Learner id -> the shapes and dtypes of its state (no computation)."""
  import jax  # pylint: disable=import-outside-toplevel
  return {lid: jax.eval_shape(agent.init, jax.random.PRNGKey(0)) for lid, agent in agents.items()}


def seed(cfg: RunConfig, *keys: int) -> int:
  """A uint32 seed for one stream of the run (actor envs, replay sampling,
  evaluation), distinct per ``keys`` and reproducible for ``cfg.seed``."""
  return int(np.random.SeedSequence([cfg.seed, *keys]).generate_state(1)[0])


def actor_seed(cfg: RunConfig, actor_id: int, env_steps: int) -> int:
  """Seed of actor ``actor_id`` started when the run had ``env_steps``: a
  restarted or resumed actor does not replay the episodes of its first life."""
  return seed(cfg, 1, actor_id, env_steps)


def learner_stream(index: int) -> tuple[int, ...]:
  """Seed keys that tell learner ``index``'s random streams from the others'
  (none for the first: a one-learner run is as before several learners were)."""
  return () if index == 0 else (index,)


def make_actor(cfg: RunConfig, agents: dict, actor_id: int, env_steps: int):
  """Actor ``actor_id`` stepping ``actors.envs_per_actor`` copies of the
  environment for every learner's agents."""
  from jaxrl.actor import Actor  # pylint: disable=import-outside-toplevel
  return Actor(agents, make_env_set(cfg.env, cfg.agents, cfg.actors.envs_per_actor),
               seed=actor_seed(cfg, actor_id, env_steps), n_step=cfg.replay.n_step, gamma=cfg.replay.gamma,
               clip_rewards=cfg.env.clip_rewards, terminal_on_life_loss=cfg.env.terminal_on_life_loss,
               priorities=cfg.replay.prioritized)


def _replay_layout(cfg: RunConfig, space: LearnerSpace) -> tuple[type, dict]:
  """The replay class of a learner and its arguments beyond ``SharedReplay``'s:
  stacked frames are stored once, in a stream per slot of each actor."""
  if space.frame_stacked:
    return FrameStackReplay, {"streams_per_writer": cfg.actors.envs_per_actor * len(space.agent_ids)}
  return SharedReplay, {}


def check_replays(cfg: RunConfig, spaces: dict[str, LearnerSpace]) -> None:
  """Raises ConfigError (one line) if a learner's replay cannot be made with
  ``replay.capacity``: stacked frames need 4 stacks a stream at least."""
  for space in spaces.values():
    layout, options = _replay_layout(cfg, space)
    if layout is FrameStackReplay:
      least = FrameStackReplay.min_capacity(space.obs_shape, cfg.actors.num, **options)
      if cfg.replay.capacity < least:
        raise ConfigError(f"replay.capacity must be >= {least} for {space.obs_shape} frame stacks "
                          f"(4 stacks for each of the {cfg.actors.num} x {options['streams_per_writer']} "
                          f"env copies' streams), got {cfg.replay.capacity}")


def replay_nbytes(cfg: RunConfig, spaces: dict[str, LearnerSpace]) -> int:
  """Bytes of the learners' replays in shared memory."""
  total = 0
  for space in spaces.values():
    layout, options = _replay_layout(cfg, space)
    total += layout.nbytes(space.obs_shape, space.obs_dtype, cfg.replay.capacity, cfg.actors.num, **options)
  return total


def make_replays(cfg: RunConfig, spaces: dict[str, LearnerSpace],
                 contents: dict[str, dict[str, np.ndarray]] | None) -> dict[str, SharedReplay]:
  """Learner id -> its replay, one partition per actor, filled with its
  ``contents`` (a checkpoint's) when they have this replay's layout."""
  replays = {}
  try:
    for lid, space in spaces.items():
      layout, options = _replay_layout(cfg, space)
      replays[lid] = layout.create(space.obs_shape, space.obs_dtype, cfg.replay.capacity, cfg.actors.num,
                                   cfg.replay.min_size, cfg.replay.samples_per_insert, cfg.replay.rate_tolerance,
                                   **options)
      if contents is not None and lid in contents:
        try:
          replays[lid].restore(contents[lid])
        except ValueError as e:
          print(f"jaxrl: replay of {lid} not restored, starting empty: {e}", file=sys.stderr)
  except BaseException:
    for replay in replays.values():
      replay.close()
      replay.unlink()
    raise
  return replays


def describe_error(error: BaseException) -> tuple[str, str]:
  """(one-line reason, traceback) of the exception being handled."""
  import traceback  # pylint: disable=import-outside-toplevel
  return " ".join(f"{type(error).__name__}: {error}".split()), traceback.format_exc()
