"""jaxrl: a JAX actor-learner system for value-based deep RL (DQN and IQN).

Public names load lazily, so a process that needs only ``jaxrl.shm`` or
``jaxrl.replay`` (an actor) does not pay for importing flax and optax.
"""

import importlib

__all__ = ["AgentConfig", "Agent", "LearnerState", "SavedRun", "Transition", "load_run", "make_agent"]

_WHERE = {
    "AgentConfig": "jaxrl.config",
    "Agent": "jaxrl.learner",
    "LearnerState": "jaxrl.learner",
    "make_agent": "jaxrl.learner",
    "Transition": "jaxrl.transition",
    "load_run": "jaxrl.saved_run",
    "SavedRun": "jaxrl.saved_run",
}


def __getattr__(name):
  if name in _WHERE:
    return getattr(importlib.import_module(_WHERE[name]), name)
  raise AttributeError(f"module 'jaxrl' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)
