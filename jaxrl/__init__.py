"""jaxrl: a JAX actor-learner system for value-based deep RL (DQN and IQN).

Public names load lazily, so a process that needs only ``jaxrl.shm`` or
``jaxrl.replay`` (an actor) does not pay for importing flax and optax.
"""

import importlib


def lazy_exports(module: str, where: dict[str, str]):
  """(``__getattr__``, ``__dir__``) of a package whose public names load on
  first use: ``where`` maps each name to the module that defines it."""
  def getattr_(name):
    if name in where:
      return getattr(importlib.import_module(where[name]), name)
    raise AttributeError(f"module {module!r} has no attribute {name!r}")

  def dir_():
    return sorted(where)
  return getattr_, dir_


__getattr__, __dir__ = lazy_exports(__name__, {
    "AgentConfig": "jaxrl.config",
    "Agent": "jaxrl.learner",
    "LearnerState": "jaxrl.learner",
    "make_agent": "jaxrl.learner",
    "Transition": "jaxrl.transition",
    "load_run": "jaxrl.saved_run",
    "SavedRun": "jaxrl.saved_run",
})
__all__ = sorted(__dir__())
