"""The actor-learner runtime: one set of loops, run by a backend.

Modules, in the order a reader meets them:
  builders  the parts of a run, the same for every backend: JAX set up per
            process role, the environment's spaces, the agent and its first
            state, the replay, seeds.
  acting    ``ActingLoop``: an actor's loop body (newest policy, env step,
            insert, counts, episodes).
  learning  ``Learner`` (fused updates, publishes, metrics) and
            ``LearningLoop``: the learner's loop body (update, report,
            checkpoint).
  run       the run itself: run directory, counters, stop conditions,
            evaluation, summary; ``preflight``, ``load_resume`` and ``train``,
            which hands the run to a backend.
  sync      the one-thread backend (``runtime.mode: sync``): the loops
            interleaved in this process, deterministic for a seed.
  supervisor  the async supervisor (``runtime.mode: async``), top-down:
            shared memory, the learner and actors as ``Child``ren (start,
            messages, stop, restart), the stop phases; reads the same for
            both backends.
  local     processes on this machine: the learner and actor processes, the
            supervisor's handle on each (``ProcessChild``), pipes, signals
            and orphan detection.
  ray_backend  the Ray backend (``runtime.backend: ray``): the supervisor
            and its learner, with Ray actors anywhere in a cluster; the only
            module that imports Ray.

The loops know nothing of processes, signals, shared-memory names or Ray.
Public names load lazily, so an actor process that imports
``jaxrl.runtime.local`` does not import the logger.
"""

from jaxrl import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "AGENT_ID": "jaxrl.envs",
    "configure_jax": "jaxrl.runtime.builders",
    "learner_spaces": "jaxrl.runtime.builders",
    "make_agents": "jaxrl.runtime.builders",
    "state_templates": "jaxrl.runtime.builders",
    "Learner": "jaxrl.runtime.learning",
    "NonFiniteError": "jaxrl.runtime.learning",
    "Interrupted": "jaxrl.runtime.run",
    "Resume": "jaxrl.runtime.run",
    "load_resume": "jaxrl.runtime.run",
    "preflight": "jaxrl.runtime.run",
    "train": "jaxrl.runtime.run",
    "cpu_placement": "jaxrl.runtime.supervisor",
})
__all__ = sorted(__dir__())
