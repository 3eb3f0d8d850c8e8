"""Typed configuration: the schema of a run.

Every config is a frozen dataclass whose docstring documents each field and
whose ``__post_init__`` validates it: an invalid value raises ``ValueError``
whose message starts with the field's name. A run is described by a
``RunConfig``; reading and writing one as YAML, with dotted overrides, is
``jaxrl.config_file`` (its names load lazily from here too). Every mistake
in a config is a ``ConfigError`` whose message is one line naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import difflib
import functools
import math
import os
import types
import typing
from typing import Any

from jaxrl import lazy_exports


def check(ok: bool, field: str, requirement: str, value: Any) -> None:
  """Raises ``ValueError('<field> must be <requirement>, got <value>')`` unless ok."""
  if not ok:
    raise ValueError(f"{field} must be {requirement}, got {value!r}")


def _is_real(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_module_name(x: Any) -> bool:
  return isinstance(x, str) and all(part.isidentifier() for part in x.split("."))


def check_positive(field: str, value: Any, allow_zero: bool = False) -> None:
  bound = ">= 0" if allow_zero else "> 0"
  ok = _is_real(value) and (value >= 0 if allow_zero else value > 0)
  check(ok, field, f"a finite number {bound}", value)


def check_positive_int(field: str, value: Any, allow_zero: bool = False) -> None:
  bound = ">= 0" if allow_zero else ">= 1"
  ok = _is_int(value) and (value >= 0 if allow_zero else value >= 1)
  check(ok, field, f"an integer {bound}", value)


def check_unit_interval(field: str, value: Any, open_low: bool = False) -> None:
  ok = _is_real(value) and (0 < value if open_low else 0 <= value) and value <= 1
  check(ok, field, "in (0, 1]" if open_low else "in [0, 1]", value)


AUGMENTS = (None, "random_shift")


@dataclasses.dataclass(frozen=True)
class AgentConfig:
  """Hyperparameters of one DQN or IQN learner.

  Attributes:
    algo: "dqn" or "iqn".
    hidden_sizes: widths of the MLP torso's hidden layers (also the dense
      layers after the conv torso for image observations).
    learning_rate: Adam step size at learner step 0.
    lr_end: step size reached after ``lr_decay_steps`` learner steps, linearly;
      None keeps ``learning_rate`` constant.
    lr_decay_steps: learner steps of the linear decay (needed with lr_end).
    adam_eps: Adam's epsilon.
    max_grad_norm: global-norm gradient clipping threshold; None = off.
    double_q: bootstrap action from the online net (Double DQN) instead of
      the target net.
    huber_delta: Huber threshold of the DQN loss; None = 0.5 * td**2.
    target_update_period: target update every this many learner steps.
    target_tau: target <- tau * online + (1 - tau) * target; 1.0 = hard copy.
    epsilon_start: exploration rate at learner step 0.
    epsilon_end: exploration rate reached after ``epsilon_decay_steps``
      learner steps, linearly, and kept from then on.
    epsilon_decay_steps: learner steps of the linear decay of exploration.
    num_tau_samples: IQN N, quantile samples of the online net in the loss.
    num_tau_prime_samples: IQN N', quantile samples of the target in the loss.
    num_quantile_samples: IQN K, quantile samples for acting / q_values.
    quantile_embedding_dim: IQN cosine features of tau.
    kappa: IQN quantile Huber threshold (0 = plain quantile regression).
    augment: None, or "random_shift": image observations (``obs`` and
      ``next_obs``) padded by 4 pixels (edge replication) and cropped back
      at a random offset, independently per sample, inside ``train_step``
      (DrQ; Kostrikov et al. 2020).
    dueling: the dueling head (Wang et al. 2016): Q = V + A - mean(A), on
      every torso, each stream with its own copy of the last hidden layer
      (IQN: per quantile, multiplied by the tau embedding; on the Nature
      torso IQN's streams are linear on its last hidden layer).
  """

  algo: str = "dqn"
  hidden_sizes: tuple[int, ...] = (120, 84)
  learning_rate: float = 2.5e-4
  lr_end: float | None = None
  lr_decay_steps: int = 0
  adam_eps: float = 1e-8
  max_grad_norm: float | None = 10.0
  double_q: bool = True
  huber_delta: float | None = 1.0
  target_update_period: int = 500
  target_tau: float = 1.0
  epsilon_start: float = 1.0
  epsilon_end: float = 0.05
  epsilon_decay_steps: int = 10_000
  num_tau_samples: int = 32
  num_tau_prime_samples: int = 32
  num_quantile_samples: int = 32
  quantile_embedding_dim: int = 64
  kappa: float = 1.0
  augment: str | None = None
  dueling: bool = False

  def __post_init__(self):
    check(self.algo in ("dqn", "iqn"), "algo", 'one of "dqn", "iqn"', self.algo)
    object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
    check(len(self.hidden_sizes) >= 1 and all(_is_int(h) and h >= 1 for h in self.hidden_sizes),
          "hidden_sizes", "a non-empty list of integers >= 1", self.hidden_sizes)
    check_positive("learning_rate", self.learning_rate)
    if self.lr_end is not None:
      check_positive("lr_end", self.lr_end, allow_zero=True)
      check_positive_int("lr_decay_steps", self.lr_decay_steps)
    else:
      check_positive_int("lr_decay_steps", self.lr_decay_steps, allow_zero=True)
    check_positive("adam_eps", self.adam_eps)
    if self.max_grad_norm is not None:
      check_positive("max_grad_norm", self.max_grad_norm)
    check(isinstance(self.double_q, bool), "double_q", "true or false", self.double_q)
    if self.huber_delta is not None:
      check_positive("huber_delta", self.huber_delta)
    check_positive_int("target_update_period", self.target_update_period)
    check_unit_interval("target_tau", self.target_tau, open_low=True)
    check_unit_interval("epsilon_start", self.epsilon_start)
    check_unit_interval("epsilon_end", self.epsilon_end)
    check(self.epsilon_end <= self.epsilon_start, "epsilon_end",
          f"<= epsilon_start ({self.epsilon_start})", self.epsilon_end)
    check_positive_int("epsilon_decay_steps", self.epsilon_decay_steps, allow_zero=True)
    check_positive_int("num_tau_samples", self.num_tau_samples)
    check_positive_int("num_tau_prime_samples", self.num_tau_prime_samples)
    check_positive_int("num_quantile_samples", self.num_quantile_samples)
    check_positive_int("quantile_embedding_dim", self.quantile_embedding_dim)
    check_positive("kappa", self.kappa, allow_zero=True)
    check(self.augment in AUGMENTS, "augment", 'null or "random_shift"', self.augment)
    check(isinstance(self.dueling, bool), "dueling", "true or false", self.dueling)


SHARES = ("none", "type", "all")


@dataclasses.dataclass(frozen=True)
class AgentsConfig:
  """Several agents (PettingZoo envs): which learner serves each agent id.

  Attributes:
    share: "none": a learner per agent id; "type": agents whose ids agree
      before the last "_" share one (adversary_0, adversary_1 -> learner
      adversary); "all": one learner "shared" for every agent (their spaces
      must match). A gymnasium env has the one agent "agent_0".
    overrides: per learner id, AgentConfig fields that differ from
      ``agent`` for that learner, e.g. ``{adversary: {learning_rate: 1e-3}}``.
  """

  share: str = "none"
  overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    check(self.share in SHARES, "share", 'one of "none", "type", "all"', self.share)
    check(isinstance(self.overrides, Mapping) and all(isinstance(k, str) for k in self.overrides),
          "overrides", "a mapping {learner_id: {agent field: value}}", self.overrides)
    overrides = {}
    for learner_id, fields in self.overrides.items():
      check(isinstance(fields, Mapping), f"overrides.{learner_id}", "a mapping {agent field: value}",
            fields)
      key = _join("agents.overrides", learner_id)
      # ConfigErrors naming agents.overrides.<learner_id>.<field>, as _build's would.
      overrides[learner_id] = {
          name: _coerce(value, _field_hint(AgentConfig, name, _join(key, name)), _join(key, name))
          for name, value in fields.items()}
    object.__setattr__(self, "overrides", overrides)


def check_optional(field: str, value: Any, checker, **kwargs) -> None:
  """Runs ``checker(field, value, **kwargs)`` unless value is None."""
  if value is not None:
    checker(field, value, **kwargs)


@dataclasses.dataclass(frozen=True)
class EnvConfig:
  """The environment every actor and the evaluator builds.

  Attributes:
    id: gymnasium id given to ``gymnasium.make``, e.g. "CartPole-v1".
    kwargs: keyword arguments of ``gymnasium.make`` (``max_episode_steps``,
      the environment's own arguments, ...); string keys, YAML values.
    imports: modules imported in every process before the environment is
      made, so that third-party packages register their ids, e.g.
      ``[minatar.gym]``, ``[ale_py]`` or a module of your own.
    terminal_on_life_loss: a lost life ends the bootstrap of the transitions
      that reach it, as a termination would, in what the learner trains on
      only: the game goes on, and episode records, evaluation and
      ``summary.json`` count whole games.
    clip_rewards: rewards clipped to [-1, 1] in replay only; episode
      returns are the game's score.
  """

  id: str = "CartPole-v1"
  kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  imports: tuple[str, ...] = ()
  terminal_on_life_loss: bool = False
  clip_rewards: bool = False

  def __post_init__(self):
    check(isinstance(self.id, str) and bool(self.id), "id", "a non-empty string", self.id)
    check(isinstance(self.kwargs, Mapping) and all(isinstance(k, str) for k in self.kwargs),
          "kwargs", "a mapping with string keys", self.kwargs)
    object.__setattr__(self, "kwargs", dict(self.kwargs))
    check(isinstance(self.imports, (list, tuple)) and all(map(_is_module_name, self.imports)),
          "imports", "a list of module names, e.g. [minatar.gym]", self.imports)
    object.__setattr__(self, "imports", tuple(self.imports))
    check(isinstance(self.terminal_on_life_loss, bool), "terminal_on_life_loss", "true or false",
          self.terminal_on_life_loss)
    check(isinstance(self.clip_rewards, bool), "clip_rewards", "true or false", self.clip_rewards)


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
  """Experience replay and the rate limiter between actors and learner.

  Attributes:
    capacity: transitions held per learner (each has its own replay); the
      oldest are overwritten first.
    min_size: transitions inserted before the learner samples its first
      batch; at least ``learner.batch_size`` and at most ``capacity //
      actors.num`` (each actor writes its own share of the replay).
    n_step: k of the k-step return each stored transition carries (1 = one
      step TD).
    gamma: discount per environment step; a k-step transition has discount
      gamma**k (0 where the episode terminated).
    samples_per_insert: target ratio of transitions sampled by the learner
      (``learner.batch_size`` per learner step) to transitions inserted by the
      actors, enforced once ``min_size`` is reached; None = no rate limit
      (in async mode actors and learner each run as fast as they can; in
      sync mode the learner makes one fused update per actor step).
    rate_tolerance: slack of the rate limiter, in inserted transitions: the
      actors wait when they are more than this many inserts ahead of what
      the learner's samples justify (``samples / samples_per_insert``;
      each waiting actor's step may take them past it, by at most its own
      size), taking turns fairly in rows; the learner waits when it is more
      than this many behind. Any value >= 0 is deadlock-free (see
      ``SharedReplay``).
    prioritized: proportional prioritized replay (Schaul et al. 2016), with
      each transition's first priority from the actor that made it (Ape-X);
      false: uniform.
    priority_exponent: alpha: sampling is proportional to priority**alpha.
    importance_exponent: beta at the start of the run, annealed linearly to
      1 by ``stop.env_steps``; each sample's weight is (N P(i))**-beta over
      the batch's largest.
    priority_epsilon: added to |td error| before the exponent.
  """

  capacity: int = 100_000
  min_size: int = 1_000
  n_step: int = 1
  gamma: float = 0.99
  samples_per_insert: float | None = 8.0
  rate_tolerance: int = 2_000
  prioritized: bool = False
  priority_exponent: float = 0.6
  importance_exponent: float = 0.4
  priority_epsilon: float = 1e-6

  def __post_init__(self):
    check_positive_int("capacity", self.capacity)
    check_positive_int("min_size", self.min_size)
    check_positive_int("n_step", self.n_step)
    check_unit_interval("gamma", self.gamma)
    check_optional("samples_per_insert", self.samples_per_insert, check_positive)
    check_positive_int("rate_tolerance", self.rate_tolerance, allow_zero=True)
    check(isinstance(self.prioritized, bool), "prioritized", "true or false", self.prioritized)
    check_positive("priority_exponent", self.priority_exponent, allow_zero=True)
    check_unit_interval("importance_exponent", self.importance_exponent)
    check_positive("priority_epsilon", self.priority_epsilon)


@dataclasses.dataclass(frozen=True)
class ActorsConfig:
  """The actor processes that step environments with published parameters.

  Attributes:
    num: actor processes. Each steps every agent of its environments, so
      every actor serves every learner.
    envs_per_actor: environments each actor steps together as one batch.
    max_restarts: times one actor process is restarted after it crashes
      before the run is aborted.
  """

  num: int = 2
  envs_per_actor: int = 8
  max_restarts: int = 3

  def __post_init__(self):
    check_positive_int("num", self.num)
    check_positive_int("envs_per_actor", self.envs_per_actor)
    check_positive_int("max_restarts", self.max_restarts, allow_zero=True)


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
  """The learner loop around ``Agent.train_step``.

  Attributes:
    batch_size: transitions per learner step (train_step).
    publish_interval: learner steps between two publishes of the parameters
      to the actors; checked between dispatches, so in effect rounded up to
      a multiple of ``updates_per_call``.
    updates_per_call: learner steps fused into one jitted ``lax.scan``
      dispatch, each on its own batch.
  """

  batch_size: int = 128
  publish_interval: int = 10
  updates_per_call: int = 1

  def __post_init__(self):
    check_positive_int("batch_size", self.batch_size)
    check_positive_int("publish_interval", self.publish_interval)
    check_positive_int("updates_per_call", self.updates_per_call)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Periodic evaluation episodes, reported as ``eval_return``.

  Attributes:
    interval: learner steps between evaluations; 0 = no evaluation.
    episodes: episodes per evaluation; ``eval_return`` is their mean return.
    epsilon: exploration rate while evaluating (0 = greedy).
    max_episode_steps: env steps after which an evaluation episode of an env
      without a time limit of its own is cut (it counts with its return so
      far, and the record's ``eval_capped`` says how many were cut), so that
      a policy that never ends its episode cannot hang the run.
    at_end: evaluate once more when the run stops (whatever ``interval``),
      so that ``summary.json`` always has ``eval_return``.
  """

  interval: int = 2_000
  episodes: int = 10
  epsilon: float = 0.0
  max_episode_steps: int = 10_000
  at_end: bool = True

  def __post_init__(self):
    check_positive_int("interval", self.interval, allow_zero=True)
    check_positive_int("episodes", self.episodes)
    check_unit_interval("epsilon", self.epsilon)
    check_positive_int("max_episode_steps", self.max_episode_steps)
    check(isinstance(self.at_end, bool), "at_end", "true or false", self.at_end)


@dataclasses.dataclass(frozen=True)
class StopConfig:
  """When a run stops: whichever set condition is met first.

  With none set, a run goes on until Ctrl-C or SIGTERM.

  Attributes:
    env_steps: environment steps, summed over all actors; None = no limit.
    seconds: wall-clock seconds since the run was launched; None = no limit.
    eval_return: stop once an evaluation's mean return is >= this (needs
      ``eval.interval > 0``); None = never.
  """

  env_steps: int | None = None
  seconds: float | None = None
  eval_return: float | None = None

  def __post_init__(self):
    check_optional("env_steps", self.env_steps, check_positive_int)
    check_optional("seconds", self.seconds, check_positive)
    if self.eval_return is not None:
      check(_is_real(self.eval_return), "eval_return", "a finite number", self.eval_return)


@dataclasses.dataclass(frozen=True)
class RayConfig:
  """Where the Ray backend (``runtime.backend: ray``) runs its actors.

  Attributes:
    address: null: a Ray instance on this machine, started and stopped by
      the run; "auto" or "HOST:PORT": join that running cluster (left
      running).
    num_cpus_per_actor: CPUs Ray reserves for each actor (may be fractional).
  """

  address: str | None = None
  num_cpus_per_actor: float = 1.0

  def __post_init__(self):
    check(self.address is None or isinstance(self.address, str) and bool(self.address), "address",
          'null, "auto" or "HOST:PORT"', self.address)
    check_positive("num_cpus_per_actor", self.num_cpus_per_actor)


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
  """How the processes of a run are started and report.

  Attributes:
    backend: "local": the learner and actors are processes on this machine
      over shared memory; "ray": the actors are Ray actors, placed anywhere
      in a Ray cluster (``runtime.ray``), and the learner runs on this
      machine.
    ray: the Ray backend's cluster and actor resources.
    mode: "async": actors and learner run concurrently in their own
      processes; "sync": they take turns in lock-step in one thread
      (reproducible; for debugging; local backend only).
    start_method: multiprocessing start method, "spawn" or "forkserver";
      "fork" is refused (unsafe once JAX, which runs threads, is imported).
    log_interval_seconds: wall-clock seconds between two learner metric
      records, at most.
    log_interval_learner_steps: learner steps between two learner metric
      records, at most (a record is due when either interval has passed).
    progress: show a live progress display on the console.
    compilation_cache: directory of JAX's persistent compilation cache
      (``~`` expands); a later run with the same shapes loads its XLA
      programs instead of compiling them. null = no cache. Its default is
      the environment variable JAXRL_COMPILATION_CACHE where set (the tests
      set it to a directory of their own), else ~/.cache/jaxrl/xla.
    learner_cpus: async mode on Linux: the learner process runs on the
      first ``learner_cpus`` of the CPUs the run may use, and the
      supervisor and actors on the others, so that acting and evaluation
      do not preempt the learner's computation. null = no pinning; also
      none (with a note) when no CPU would be left for the others.
    stop_timeout_seconds: the longest the run waits, once asked to stop, for
      the learner to write its final checkpoint and exit, while it is still
      working (compiling, updating, writing); a learner that has written its
      final checkpoint is done at once. Actors get at most this long too.
  """

  backend: str = "local"
  ray: RayConfig = dataclasses.field(default_factory=RayConfig)
  mode: str = "async"
  start_method: str = "spawn"
  log_interval_seconds: float = 2.0
  log_interval_learner_steps: int = 500
  progress: bool = True
  compilation_cache: str | None = dataclasses.field(
      default_factory=lambda: os.environ.get("JAXRL_COMPILATION_CACHE", "~/.cache/jaxrl/xla"))
  learner_cpus: int | None = None
  stop_timeout_seconds: float = 300.0

  def __post_init__(self):
    check(self.backend in ("local", "ray"), "backend", 'one of "local", "ray"', self.backend)
    check(isinstance(self.ray, RayConfig), "ray", "a mapping", self.ray)
    check(self.mode in ("async", "sync"), "mode", 'one of "async", "sync"', self.mode)
    check(self.backend == "local" or self.mode == "async", "mode",
          '"async" with runtime.backend=ray (sync mode runs in one thread, with no backend)', self.mode)
    check(self.start_method in ("spawn", "forkserver"), "start_method",
          '"spawn" or "forkserver" ("fork" is unsafe once JAX is imported: a forked'
          " child can deadlock on the threads JAX started)", self.start_method)
    check_positive("log_interval_seconds", self.log_interval_seconds)
    check_positive_int("log_interval_learner_steps", self.log_interval_learner_steps)
    check(isinstance(self.progress, bool), "progress", "true or false", self.progress)
    check(self.compilation_cache is None or bool(self.compilation_cache), "compilation_cache",
          "null or a directory", self.compilation_cache)
    if self.learner_cpus is not None:
      check_positive_int("learner_cpus", self.learner_cpus)
    check_positive("stop_timeout_seconds", self.stop_timeout_seconds)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Periodic checkpoints under ``<run_dir>/checkpoints/``.

  Attributes:
    interval_seconds: wall-clock seconds between checkpoints; a final one is
      always written when the run stops.
    keep: most recent checkpoints kept on disk.
    replay: also save the replay contents (large), so a resumed run need not
      refill it.
  """

  interval_seconds: float = 600.0
  keep: int = 3
  replay: bool = False

  def __post_init__(self):
    check_positive("interval_seconds", self.interval_seconds)
    check_positive_int("keep", self.keep)
    check(isinstance(self.replay, bool), "replay", "true or false", self.replay)


@dataclasses.dataclass(frozen=True)
class WandbConfig:
  """Weights & Biases tracking of a run, beside TensorBoard (the ``wandb`` extra).

  Attributes:
    project: the W&B project; None = no tracking.
    entity: the W&B user or team; None = the default of the login.
    group: the W&B group of the run (e.g. a sweep's name); None = none.
    tags: tags of the run.
    mode: "online" (sync as it runs) or "offline" (write under
      ``<run_dir>/wandb`` only; ``wandb sync`` uploads it later).
  """

  project: str | None = None
  entity: str | None = None
  group: str | None = None
  tags: tuple[str, ...] = ()
  mode: str = "online"

  def __post_init__(self):
    for name in ("project", "entity", "group"):
      value = getattr(self, name)
      check(value is None or isinstance(value, str) and bool(value), name, "a non-empty string or null", value)
    check(isinstance(self.tags, (list, tuple)) and all(isinstance(t, str) and t for t in self.tags), "tags",
          "a list of non-empty strings", self.tags)
    object.__setattr__(self, "tags", tuple(self.tags))
    check(self.mode in ("online", "offline"), "mode", 'one of "online", "offline"', self.mode)


MAX_SEED = 2**32 - 1   # jax.random.PRNGKey(seed) keeps only the low 32 bits of a seed


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything a training run needs; ``config.yaml`` of a run directory.

  Attributes:
    env: the environment.
    agent: the learners' hyperparameters (each learner's own are ``agent``
      updated by ``agents.overrides[learner_id]``; see ``agent_config``).
    agents: which learner serves each agent, and per-learner overrides.
    replay: experience replay and rate limiting.
    actors: the actor processes.
    learner: the learner loop.
    eval: periodic evaluation.
    stop: stop conditions.
    runtime: processes and reporting.
    checkpoint: checkpointing.
    wandb: Weights & Biases tracking (off unless ``wandb.project`` is set).
    seed: seed of every random stream of the run (params, actors, envs), in
      [0, 2**32 - 1] (``jax.random.PRNGKey`` keeps only the low 32 bits).
    run_dir: directory of the run's outputs; None = ``runs/<config>-<time>``.
  """

  env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
  agent: AgentConfig = dataclasses.field(default_factory=AgentConfig)
  agents: AgentsConfig = dataclasses.field(default_factory=AgentsConfig)
  replay: ReplayConfig = dataclasses.field(default_factory=ReplayConfig)
  actors: ActorsConfig = dataclasses.field(default_factory=ActorsConfig)
  learner: LearnerConfig = dataclasses.field(default_factory=LearnerConfig)
  eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
  stop: StopConfig = dataclasses.field(default_factory=StopConfig)
  runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
  checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
  wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)
  seed: int = 0
  run_dir: str | None = None

  def __post_init__(self):
    for name, hint in _hints(RunConfig).items():
      if dataclasses.is_dataclass(hint):
        value = getattr(self, name)
        check(isinstance(value, hint), name, f"a {hint.__name__}", value)
    check(_is_int(self.seed) and 0 <= self.seed <= MAX_SEED, "seed", "an integer in [0, 2**32 - 1]",
          self.seed)
    check(self.run_dir is None or isinstance(self.run_dir, str) and bool(self.run_dir),
          "run_dir", "null or a non-empty string", self.run_dir)
    replay, batch_size, actors = self.replay, self.learner.batch_size, self.actors.num
    # Each actor writes its own partition of the replay, and any one of them must reach min_size.
    check(replay.min_size <= replay.capacity // actors, "replay.min_size",
          f"<= replay.capacity // actors.num ({replay.capacity} // {actors} = {replay.capacity // actors})",
          replay.min_size)
    check(replay.min_size >= batch_size, "replay.min_size",
          f">= learner.batch_size ({batch_size})", replay.min_size)
    if self.stop.eval_return is not None:
      check(self.eval.interval > 0, "stop.eval_return",
            "null while evaluation is off (eval.interval = 0)", self.stop.eval_return)
    for learner_id in self.agents.overrides:
      try:
        self.agent_config(learner_id)
      except ValueError as e:  # "<field> must be ..." from AgentConfig.
        field, _, rest = str(e).partition(" ")
        raise ConfigError(f"{_join('agents.overrides', learner_id)}.{field}: {rest}") from None

  def agent_config(self, learner_id: str) -> AgentConfig:
    """The ``AgentConfig`` of learner ``learner_id``: ``agent`` updated by
    ``agents.overrides[learner_id]``, if any."""
    return dataclasses.replace(self.agent, **self.agents.overrides.get(learner_id, {}))


class ConfigError(ValueError):
  """A mistake in a run configuration; ``str()`` is one line naming the key."""

@functools.cache
def _hints(cls: type) -> dict[str, Any]:
  """Field name -> resolved type hint of the config dataclass ``cls``."""
  hints = typing.get_type_hints(cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _join(prefix: str, name: Any) -> str:
  """The dotted key of ``name`` in section ``prefix``, printable on one line."""
  name = name if isinstance(name, str) and name.isprintable() else repr(name)
  return f"{prefix}.{name}" if prefix else name


def _mismatch(key: str, expected: str, value: Any, nullable: bool) -> ConfigError:
  return ConfigError(f"{key}: expected {expected}{' or null' if nullable else ''}, got {value!r}")


_SCALARS = {
    bool: lambda v: isinstance(v, bool),
    int: _is_int,
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def _coerce(value: Any, hint: Any, key: str, nullable: bool = False) -> Any:
  """``value`` (YAML data) checked against the type ``hint`` and converted to it.

  Supports config dataclasses, ``X | None``, ``tuple[X, ...]`` (from a list),
  ``dict`` (from a mapping), ``Any`` and bool/int/float/str; a float accepts
  an int, an int an integral float (``1e5``).
  """
  if dataclasses.is_dataclass(hint):
    return _build(hint, value, key)
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    (inner,) = [a for a in args if a is not type(None)]
    return None if value is None else _coerce(value, inner, key, nullable=True)
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      raise _mismatch(key, f"a list of {args[0].__name__}", value, nullable)
    return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
  if hint is dict or origin is dict:
    if not isinstance(value, Mapping):
      raise _mismatch(key, "a mapping", value, nullable)
    return dict(value)
  if hint is Any:
    return value
  if hint is int and isinstance(value, float) and value.is_integer():
    return int(value)
  if not _SCALARS[hint](value):
    raise _mismatch(key, hint.__name__, value, nullable)
  try:
    return hint(value)
  except OverflowError:
    raise _mismatch(key, hint.__name__, value, nullable) from None


def _field_hint(cls: type, name: Any, key: str) -> Any:
  """The type hint of field ``name`` of ``cls``, whose full dotted key is ``key``."""
  hints = _hints(cls)
  if name not in hints:
    close = difflib.get_close_matches(str(name), list(hints), n=1)
    parent = key.rpartition(".")[0]
    hint = f"did you mean {_join(parent, close[0])}?" if close else f"expected one of: {', '.join(hints)}"
    raise ConfigError(f"{key}: unknown key ({hint})")
  return hints[name]


def _build(cls: type, tree: Any, key: str) -> Any:
  """The config dataclass ``cls`` from a mapping (None = all defaults)."""
  if tree is None:
    tree = {}
  if not isinstance(tree, Mapping):
    raise _mismatch(key or "config", "a mapping", tree, nullable=False)
  kwargs = {name: _coerce(value, _field_hint(cls, name, _join(key, name)), _join(key, name))
            for name, value in tree.items()}
  try:
    return cls(**kwargs)
  except ConfigError:  # Already names its full key.
    raise
  except ValueError as e:  # "<field> must be ..." from __post_init__.
    field, _, rest = str(e).partition(" ")
    raise ConfigError(f"{_join(key, field)}: {rest}") from None


# The YAML side of a config, importable from here without importing yaml.
__getattr__ = lazy_exports(__name__, dict.fromkeys(
    ["apply_overrides", "config_from_dict", "config_keys_help", "config_to_dict", "load_config",
     "save_config"], "jaxrl.config_file"))[0]
