"""Loading a trained run in research code: ``jaxrl.load_run(run_dir)``.

  run = jaxrl.load_run("runs/NAME")        # latest checkpoint; checkpoint=PATH for another
  agent, state = run.learners[run.learner_of("agent_0")]
  q = agent.q_values(state.params, obs, key)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from jaxrl import runtime
from jaxrl.checkpoint import CheckpointError, newest_intact, restore_checkpoint
from jaxrl.config import ConfigError, RunConfig
from jaxrl.config_file import load_config
from jaxrl.learner import Agent, LearnerState
from jaxrl.runtime.learning import warn_on_stderr


@dataclasses.dataclass(frozen=True)
class SavedRun:
  """A run directory's config and the learners' states of one checkpoint.

  Attributes:
    config: the run's ``RunConfig`` (``RUN_DIR/config.yaml``).
    checkpoint: the checkpoint file the states were restored from.
    counters: the run counters saved with it (``env_steps``, ``episodes``,
      ``learner_steps``).
    learners: ``{learner_id: (agent, LearnerState)}``, each agent built for
      its learner's config and spaces, each state restored bit for bit.
    agents: ``{agent_id: learner_id}``: the learner serving each agent id.
  """

  config: RunConfig
  checkpoint: Path
  counters: dict[str, Any]
  learners: dict[str, tuple[Agent, LearnerState]]
  agents: dict[str, str]

  def learner_of(self, agent_id: str) -> str:
    """The id of the learner serving ``agent_id``; KeyError naming it if the
    run has no such agent."""
    if agent_id not in self.agents:
      raise KeyError(f"agent id {agent_id!r} is not an agent of this run (its agents: "
                     f"{', '.join(self.agents)})")
    return self.agents[agent_id]


def load_run(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> SavedRun:
  """The run in ``run_dir`` with its learners restored from a checkpoint.

  Args:
    run_dir: a run directory (holding ``config.yaml`` and ``checkpoints/``).
    checkpoint: a checkpoint file, or a directory of checkpoints (its newest
      intact one is read: newer, corrupt ones are said in one line on
      stderr); None = ``run_dir/checkpoints``.

  Raises:
    CheckpointError: not a run directory, no checkpoint, no intact one (or
      ``checkpoint`` corrupt) or one of another agent (one line naming the
      path).
    ConfigError: ``config.yaml`` does not load under this version of jaxrl.
    EnvError: the run's environment cannot be made here.
  """
  run_dir = Path(run_dir)
  config_path = run_dir / "config.yaml"
  if not config_path.is_file():
    raise CheckpointError(f"{run_dir}: not a run directory (no config.yaml)")
  try:
    cfg = load_config(config_path)
  except ConfigError as e:  # A key this version of jaxrl no longer reads, say.
    message = str(e)
    raise ConfigError(message if message.startswith(f"{config_path}:") else f"{config_path}: {message}") from None
  agents = runtime.make_agents(cfg)
  templates = runtime.state_templates(agents)
  if checkpoint is not None and not Path(checkpoint).is_dir():
    path = Path(checkpoint)
    states, counters, _ = restore_checkpoint(path, templates)
  else:
    path, (states, counters, _) = newest_intact(checkpoint or run_dir / "checkpoints",
                                                lambda p: restore_checkpoint(p, templates), warn_on_stderr)
  return SavedRun(config=cfg, checkpoint=path, counters=counters,
                  learners={lid: (agent, states[lid]) for lid, agent in agents.items()},
                  agents={a: lid for lid, space in runtime.learner_spaces(cfg).items() for a in space.agent_ids})
