"""jaxrl benchmarks: prints a table and writes JSON.

  python scripts/benchmark.py [--config configs/cartpole_dqn.yaml] [--sections env actor ...]
                              [--out benchmark.json] [--quick] [--seeds 3] [--first-seed 0] [--target R]

Each section runs in its own spawned process, so that it sets JAX up as the
runtime process it stands for does (actor: one CPU thread, no async
dispatch; learner: the default backend). Sections, with the config's
actor, replay, agent and learner settings:

  env          raw env steps/s: ``make_vec_env(cfg.env, actors.envs_per_actor)``
               (the fastest vector mode), random actions.
  actor        one ``Actor`` on ``make_env_set(cfg.env, cfg.agents, actors.envs_per_actor)``
               with a fixed snapshot per learner (``set_policy`` once), each
               learner's transitions written to a ``SharedReplay`` of its own
               without rate limiting (the actor process's per-step version
               reads and episode messages are left out); beside it, in turn within
               each repeat, the same actor giving its transitions' priorities
               (``replay.prioritized``: n-step TD errors of its acting values).
  train_step   unfused jitted ``train_step``: DQN and IQN, hidden (120, 84), batch 128.
  learner      the runtime's fused ``lax.scan`` of ``learner.updates_per_call``
               train_steps on one device-resident batch, and ``Learner.update``
               over a full ``SharedReplay``, publishing nothing or to a ParamStore.
               The three are timed in turn within each repeat; their ratio is
               the median of the per-repeat ratios.
  per          (not run by default) prioritized replay's cost to the learner at a MinAtar
               config's settings (``--config`` if it is one, else configs/minatar_dqn.yaml),
               1M rows of replay: ``Learner.update`` with uniform sampling and with
               ``replay.prioritized`` (stratified sampling, taking in the rows written since,
               priority updates from the TD errors), each call after a writer's add of the
               rows actors insert per call at ``replay.samples_per_insert``; timed in turn,
               no publish, in short turns; their ratios (of updates/s, and of the process's
               CPU time an update) are medians of the per-turn ratios. Then the
               ``PrioritizedSampler``'s own work per call, and a ``SumTree``'s update of 32
               rows and sample of 32 at 1M rows, by fanout (2: a binary tree).
  publish      ParamStore publish-to-visible latency for 1M params
               (``scripts/bench_shm.py``; each repeat is the median of 50 publishes).
  time_to_475  ``scripts/train.py`` runs, sync and async, one per seed: wall
               seconds from just before the process starts, and env steps, to
               the first ``eval_return >= 475`` and to the first mean of the
               last 20 training-episode returns >= 475; a run gets SIGINT once
               both are met. Sync mode's records carry its ``acting_seconds``
               and ``learning_seconds`` so far: the overlap target compares
               async's seconds to both criteria, counted from its first
               learner step, with the larger of the two at the sync record
               that met both. Async's seconds from launch add its startup
               (spawn, imports, compiles, ``replay.min_size``), which sync's
               acting and learning seconds leave out by definition; that
               ratio is listed as well.
  supervisor   episode records/s the supervisor logs (``Run.log``, batches of 8), and
               an async MPE simple_spread run with 4 actors: episode records logged/s,
               the share of counted episodes logged, seconds from SIGINT to exit.
  conv         the fused DQN train_step of the MinAtar network, batch 32, C = 4 and 10:
               ``networks.Im2colConv`` against ``flax.linen.Conv``, timed in turn.
  nature       the train_step of the Atari networks (Nature torso, 84x84x4 uint8), DQN
               and IQN (N = N' = 64, K = 32), batch 32 (and 256 on a GPU), jitted alone
               and fused 4 to a ``lax.scan``: ``networks.Im2colConv`` against
               ``flax.linen.Conv``; and DQN's with ``augment: random_shift``; timed in turn.
  minatar      (not run by default) frames/s of the whole system (``scripts/train.py``, async,
               eval off) on a MinAtar config (``--config`` if it is one, else
               configs/minatar_dqn.yaml) at the settings of MinAtar's reference
               ``examples/dqn.py`` (its network, batch 32, one update per frame:
               ``replay.samples_per_insert=32``, n = 1, no double Q, 5,000 random
               frames first), counted from the first learner record; side by side,
               in turns, with that reference itself (``--minatar-reference PATH``
               to its dqn.py, from MinAtar's source repository; needs ``torch``),
               counted from its first update; and the config's own frames/s as
               it is, with the time for 5M frames it implies.
  learning     (not run by default) ``--seeds`` runs of the config in ``--mode``
               (sync by default), from seed ``--first-seed`` (0), to its
               ``stop.env_steps``: env steps and seconds to the first greedy
               ``eval_return >= --target``, best and last
               eval_return, the last 100 training episodes' mean return, wall
               time, and each run's curves (the long MPE and MinAtar benchmarks).
               With ``--run-dir DIR`` each run trains into DIR/seed<SEED> with its replay
               in its checkpoints, and the same command after a SIGINT resumes it.

Each figure is the median of its repeats (listed); a ratio is of two medians
measured in the same run, printed when both sections ran, or the median of
per-repeat ratios where it says so.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import math
import multiprocessing as mp
import operator
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import flax.linen
import jax
import numpy as np

import jaxrl
from jaxrl import networks, runtime
from jaxrl.runtime import local
from jaxrl.runtime.builders import make_actor
from jaxrl.config import RunConfig
from jaxrl.config_file import load_config
from jaxrl.envs import minatar_game
from jaxrl.logger import RETURN_WINDOW, read_metrics, trailing_mean
from jaxrl.priorities import SumTree
from jaxrl.replay import SharedReplay
from jaxrl.shm import ParamStore

SOLVED = 475.0  # CartPole-v1's solved return
_BUSY = ("acting_seconds", "learning_seconds")  # sync mode's running totals
REFERENCE_LAST20_S = 19.7  # the single-process JAX DQN, last-20 criterion; target: half
_OPS = {"<": operator.lt, "<=": operator.le, ">=": operator.ge}


def _median(values: list[float | None]) -> float | None:
  """Median where None (never reached) counts as +inf; an infinite median is None."""
  median = statistics.median(math.inf if v is None else v for v in values)
  return None if math.isinf(median) else median


def _figure(key: str, name: str, unit: str, repeats: list[float | None], target: str | None = None) -> dict:
  """A table row: the median of ``repeats`` and whether it meets ``target`` ("op value")."""
  row = {"key": key, "figure": name, "median": _median(repeats), "unit": unit, "repeats": repeats}
  if target is not None:
    op, value = target.split()
    row.update(target=target, meets=row["median"] is not None and _OPS[op](row["median"], float(value)))
  return row


def _ratio(key: str, name: str, numerator: float | None, denominator: float | None,
           target: str | None = None) -> dict:
  """A ratio row of two medians (None if either is None)."""
  value = None if numerator is None or not denominator else numerator / denominator
  return _figure(key, name, "ratio", [value], target)


def _timed(step: Callable[[], Any], units: int, seconds: float, finish: Callable[[], Any]) -> float:
  """Units/s of whole ``step()`` calls for at least ``seconds``, closed by ``finish()``."""
  calls, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    step()
    calls += 1
  finish()
  return calls * units / (time.perf_counter() - start)


def _interleaved_rates(variants: dict[str, tuple[Callable[[], Any], Callable[[], Any]]], units: int,
                       args) -> dict[str, list[float]]:
  """``args.repeats`` timings (see ``_timed``) of each ``name: (step, finish)``,
  after one untimed warm-up call each, taken in turn within each repeat, so
  that the machine's drift between repeats (large on a shared VM) falls on
  every variant alike and per-repeat ratios compare like with like."""
  for step, finish in variants.values():
    step()
    finish()
  rates: dict[str, list[float]] = {name: [] for name in variants}
  for _ in range(args.repeats):
    for name, (step, finish) in variants.items():
      rates[name].append(_timed(step, units, args.seconds, finish))
  return rates


def _rates(step: Callable[[], Any], units: int, args, finish: Callable[[], Any] = lambda: None) -> list[float]:
  """``_interleaved_rates`` of one variant."""
  return _interleaved_rates({"": (step, finish)}, units, args)[""]


def _batch(size: int, obs_shape: tuple[int, ...], num_actions: int, seed: int = 0) -> jaxrl.Transition:
  """Random transitions: obs float32 [size, *obs_shape], the rest [size]."""
  rng = np.random.default_rng(seed)
  return jaxrl.Transition(
      obs=rng.normal(size=(size, *obs_shape)).astype(np.float32),
      action=rng.integers(0, num_actions, size).astype(np.int32),
      reward=rng.normal(size=size).astype(np.float32),
      discount=np.full(size, 0.99, np.float32),
      next_obs=rng.normal(size=(size, *obs_shape)).astype(np.float32),
      valid=np.ones(size, np.float32))


def _agents(cfg: RunConfig) -> dict[str, tuple[Any, np.dtype]]:
  """Learner id -> (its agent, its observations' dtype)."""
  agents = runtime.make_agents(cfg)
  return {lid: (agents[lid], space.obs_dtype) for lid, space in runtime.learner_spaces(cfg).items()}


# --- Sections (each runs in a spawned process) --------------------------------


def bench_env(cfg: RunConfig, args) -> dict:
  from jaxrl.envs import make_env_set  # pylint: disable=import-outside-toplevel
  env_set = make_env_set(cfg.env, cfg.agents, cfg.actors.envs_per_actor)
  env_set.reset(seed=0)
  rng = np.random.default_rng(0)
  actions = [{lid: rng.integers(0, space.num_actions, len(space.agent_ids) * env_set.num_envs)
              for lid, space in env_set.learners.items()} for _ in range(1024)]
  t = itertools.count()
  rates = _rates(lambda: env_set.step(actions[next(t) % len(actions)]), env_set.num_envs, args)
  env_set.close()
  return {"figures": [_figure("env", f"env {cfg.env.id} x{env_set.num_envs} ({type(env_set).__name__})",
                              "env steps/s", rates)]}


def bench_actor(cfg: RunConfig, args) -> dict:
  runtime.configure_jax("actor")
  from jaxrl.actor import Actor  # pylint: disable=import-outside-toplevel
  from jaxrl.envs import make_env_set  # pylint: disable=import-outside-toplevel
  agents = runtime.make_agents(cfg)
  params = {learner: jax.device_get(agent.init(jax.random.PRNGKey(0)).params) for learner, agent in agents.items()}
  closing = []

  def variant(priorities: bool):
    """(step, finish) of an actor of its own, with or without priorities."""
    env_set = make_env_set(cfg.env, cfg.agents, cfg.actors.envs_per_actor)
    actor = Actor(agents, env_set, seed=0, n_step=cfg.replay.n_step, gamma=cfg.replay.gamma,
                  priorities=priorities)
    for learner, agent in agents.items():
      actor.set_policy(learner, params[learner], agent.config.epsilon_end, 0)
    replays = {learner: SharedReplay.create(space.obs_shape, space.obs_dtype, cfg.replay.capacity)
               for learner, space in env_set.learners.items()}  # no rate limiting
    writers = {learner: replay.writer(0) for learner, replay in replays.items()}
    closing.append((env_set, replays))
    learner_steps = dict.fromkeys(agents, 0)

    def step():
      transitions = actor.step(learner_steps).transitions
      for learner, writer in writers.items():
        writer.add(transitions[learner])
    return step, lambda: None

  try:
    rates = _interleaved_rates({"uniform": variant(False), "prioritized": variant(True)},
                               cfg.actors.envs_per_actor, args)
  finally:
    for env_set, replays in closing:
      env_set.close()
      for replay in replays.values():
        replay.close()
        replay.unlink()
  paired = [p / u for p, u in zip(rates["prioritized"], rates["uniform"])]
  name = f"actor x{cfg.actors.envs_per_actor} ({', '.join(agents)}), fixed snapshot, into replay"
  return {"figures": [
      _figure("actor", name, "env steps/s", rates["uniform"]),
      _figure("actor_prioritized", "  the same, with priorities (replay.prioritized)", "env steps/s",
              rates["prioritized"]),
      _figure("actor_priorities_over_uniform", "  with priorities / without, per repeat", "ratio", paired,
              ">= 0.95")]}


def bench_train_step(cfg: RunConfig, args) -> dict:  # pylint: disable=unused-argument
  figures = []
  for algo in ("dqn", "iqn"):
    agent = jaxrl.make_agent(jaxrl.AgentConfig(algo=algo, hidden_sizes=(120, 84)), (4,), 2)
    state = [agent.init(jax.random.PRNGKey(0))]
    batch = jax.device_put(_batch(128, (4,), 2))
    train_step = jax.jit(agent.train_step)

    def step():
      state[0], _ = train_step(state[0], batch)
    rates = _rates(step, 1, args, finish=lambda: jax.block_until_ready(state))
    figures.append(_figure(f"train_step_{algo}", f"train_step {algo} (120,84) batch 128, unfused",
                           "updates/s", rates))
  return {"figures": figures}


def _fused_train_step(agent, batches: jaxrl.Transition) -> tuple[Callable[[], Any], Callable[[], Any]]:
  """A step running ``agent.train_step`` over the leading axis of the device
  ``batches`` in one jitted ``lax.scan`` (compiled here), and its finish."""
  fused = jax.jit(lambda state, batches: jax.lax.scan(agent.train_step, state, batches)[0])
  state = [fused(agent.init(jax.random.PRNGKey(0)), batches)]

  def step():
    state[0] = fused(state[0], batches)
  return step, lambda: jax.block_until_ready(state[0])


class _FlaxConvTorso(networks.ConvTorso):
  """The conv torso with ``flax.linen.Conv`` (XLA's convolution) for ``Im2colConv``."""
  @staticmethod
  def conv_layer(features: int) -> flax.linen.Module:
    return flax.linen.Conv(features, kernel_size=(3, 3), padding="VALID")


def bench_conv(cfg: RunConfig, args) -> dict:  # pylint: disable=unused-argument
  """The fused (8-step lax.scan) DQN train_step of the MinAtar network
  (conv 16, dense 128) at batch 32 on 10x10x4 and 10x10x10 uint8 frames,
  with ``Im2colConv`` and with ``flax.linen.Conv``, timed in turn."""
  runtime.configure_jax("learner")
  config = jaxrl.AgentConfig(hidden_sizes=(128,))
  rng = np.random.default_rng(0)
  figures = []
  for channels in (4, 10):
    frames = lambda: (rng.random((8, 32, 10, 10, channels)) < 0.1).astype(np.uint8)
    batches = jax.device_put(jaxrl.Transition(
        obs=frames(), action=rng.integers(0, 6, (8, 32)).astype(np.int32), reward=rng.normal(size=(8, 32)).astype(
            np.float32), discount=np.full((8, 32), 0.99, np.float32), next_obs=frames(), valid=np.ones((8, 32), np.float32)))
    variants = {}
    for name, torso in (("im2col", networks.ConvTorso((128,), (0.0, 1.0))),
                        ("flax_conv", _FlaxConvTorso((128,), (0.0, 1.0)))):
      agent = jaxrl.make_agent(config, (10, 10, channels), 6, network=networks.QNetwork(torso, 6))
      variants[name] = _fused_train_step(agent, batches)
    rates = _interleaved_rates(variants, 8, args)
    im2col = _figure(f"conv_im2col_c{channels}", f"MinAtar DQN step, C={channels}: Im2colConv", "updates/s",
                     rates["im2col"])
    xla = _figure(f"conv_flax_c{channels}", f"MinAtar DQN step, C={channels}: flax.linen.Conv", "updates/s",
                  rates["flax_conv"])
    figures += [im2col, xla, _ratio(f"conv_speedup_c{channels}", "  im2col / flax", im2col["median"], xla["median"])]
  return {"figures": figures}


class _FlaxNatureTorso(networks.NatureConvTorso):
  """The Nature torso with ``flax.linen.Conv`` (XLA's convolution) for ``Im2colConv``."""
  @staticmethod
  def conv_layer(features: int, kernel_size: tuple[int, int], strides: tuple[int, int],
                 kernel_init: networks.Initializer) -> flax.linen.Module:
    return flax.linen.Conv(features, kernel_size, strides, padding="VALID", kernel_init=kernel_init)


NATURE_FUSED = 4   # train_steps per lax.scan dispatch, as configs/atari_*.yaml's learner.updates_per_call


def _blocking_train_step(agent, batches: jaxrl.Transition, fused: bool) -> tuple[Callable[[], Any], Callable[[], Any]]:
  """A step of ``agent.train_step`` jitted alone on ``batches[0]`` or, if
  ``fused``, a ``lax.scan`` over all of ``batches`` (compiled here), each
  call waited for: a call takes tens of ms to seconds here, and a queue of
  asynchronous dispatches would only draw out the timing's finish."""
  if fused:
    call = jax.jit(lambda state: jax.lax.scan(agent.train_step, state, batches)[0])
  else:
    train_step, batch = jax.jit(agent.train_step), jax.tree.map(lambda x: x[0], batches)
    call = lambda state: train_step(state, batch)[0]
  state = [jax.block_until_ready(call(agent.init(jax.random.PRNGKey(0))))]

  def step():
    state[0] = jax.block_until_ready(call(state[0]))
  return step, lambda: None


def bench_nature(cfg: RunConfig, args) -> dict:  # pylint: disable=unused-argument
  """The train_step of the Atari networks (``networks.make_network`` on
  84x84x4 uint8 frames: the Nature torso, dense 512; IQN with Dopamine's N
  = N' = 64, K = 32) at batch 32 (and 256 on an accelerator), with
  ``Im2colConv`` and with ``flax.linen.Conv``: jitted alone, and fused 4 to a
  ``lax.scan`` as the runtime runs it (``learner.updates_per_call``); and
  DQN's with ``augment: random_shift``. Timed in turn. Keys at batch 256 end
  in ``_b256``."""
  runtime.configure_jax("learner")
  figures = []
  for size in (32,) if jax.default_backend() == "cpu" else (32, 256):
    figures += _nature_figures(size, args)
  return {"figures": figures}


def _nature_figures(size: int, args) -> list[dict]:
  """``bench_nature``'s figures at batch ``size``."""
  rng = np.random.default_rng(0)
  shape, actions, key = (84, 84, 4), 6, "" if size == 32 else f"_b{size}"
  frames = lambda: rng.integers(0, 256, (NATURE_FUSED, size, *shape), dtype=np.uint8)
  batches = jax.device_put(jaxrl.Transition(
      obs=frames(), action=rng.integers(0, actions, (NATURE_FUSED, size)).astype(np.int32),
      reward=rng.normal(size=(NATURE_FUSED, size)).astype(np.float32),
      discount=np.full((NATURE_FUSED, size), 0.99, np.float32), next_obs=frames(),
      valid=np.ones((NATURE_FUSED, size), np.float32)))
  figures = []
  for algo in ("dqn", "iqn"):
    config = jaxrl.AgentConfig(algo=algo, hidden_sizes=(512,), num_tau_samples=64, num_tau_prime_samples=64,
                               num_quantile_samples=32)
    im2col = jaxrl.make_agent(config, shape, actions, obs_range=(0, 255)).network
    torso = im2col.torso
    flax_conv = im2col.clone(torso=_FlaxNatureTorso(torso.hidden_sizes, torso.obs_range, torso.kernel_init))
    agents = {"im2col": jaxrl.make_agent(config, shape, actions, network=im2col),
              "flax": jaxrl.make_agent(config, shape, actions, network=flax_conv)}
    variants = {}
    for fused, (name, agent) in itertools.product((False, True), agents.items()):
      variants[name + "_fused" * fused] = _blocking_train_step(agent, batches, fused)
    if algo == "dqn":
      augmented = dataclasses.replace(config, augment="random_shift")
      variants["augment"] = _blocking_train_step(jaxrl.make_agent(augmented, shape, actions, network=im2col),
                                                 batches, False)
      for period in (1, 2):   # atari100k_drq's learner: dueling, the target copied every step (or every other)
        drq = dataclasses.replace(augmented, dueling=True, target_update_period=period, max_grad_norm=None)
        variants[f"drq_period{period}"] = _blocking_train_step(
            jaxrl.make_agent(drq, shape, actions, obs_range=(0, 255)), batches, False)
    rates = {name: [rate * (NATURE_FUSED if name.endswith("_fused") else 1) for rate in repeats]
             for name, repeats in _interleaved_rates(variants, 1, args).items()}
    label = f"Atari {algo.upper()} train_step, batch {size}"
    for suffix, how in (("", "jitted alone"), ("_fused", f"fused x{NATURE_FUSED}")):
      ours = _figure(f"nature_{algo}_im2col{suffix}{key}", f"{label}, {how}: Im2colConv", "updates/s",
                     rates[f"im2col{suffix}"])
      xla = _figure(f"nature_{algo}_flax{suffix}{key}", f"{label}, {how}: flax.linen.Conv", "updates/s",
                    rates[f"flax{suffix}"])
      figures += [ours, xla, _ratio(f"nature_{algo}_speedup{suffix}{key}", "  im2col / flax", ours["median"],
                                    xla["median"])]
    if algo == "dqn":
      shifted = _figure(f"nature_dqn_augment{key}", f"{label}, jitted alone: Im2colConv, random_shift", "updates/s",
                        rates["augment"])
      drq, every_other = (_figure(f"nature_drq_period{period}{key}", f"{label}, jitted alone: atari100k_drq's "
                                  f"learner, target copied every {'' if period == 1 else '2nd '}step",
                                  "updates/s", rates[f"drq_period{period}"]) for period in (1, 2))
      figures += [shifted, _ratio(f"nature_dqn_augment_cost{key}", "  with random_shift / without",
                                  shifted["median"], figures[0]["median"]),
                  drq, every_other, _ratio(f"nature_drq_shared_next_obs{key}",
                                           "  every step (one next_obs pass) / every 2nd", drq["median"],
                                           every_other["median"])]
  return figures


def bench_learner(cfg: RunConfig, args) -> dict:
  """The first learner alone (fused train_step; Learner loops), and with
  several learners every learner's Learner.update in turn, as the learner
  process steps them."""
  runtime.configure_jax("learner")
  agents = _agents(cfg)
  agent, _ = next(iter(agents.values()))
  fused, size = cfg.learner.updates_per_call, cfg.learner.batch_size
  shape = f"{cfg.agent.algo} {tuple(cfg.agent.hidden_sizes)} batch {size} x{fused}"
  batches = jax.device_put(jax.tree.map(lambda x: x.reshape(fused, size, *x.shape[1:]),
                                        _batch(fused * size, agent.obs_shape, agent.num_actions)))
  replays = {}
  for lid, (a, dtype) in agents.items():
    replays[lid] = SharedReplay.create(a.obs_shape, dtype, cfg.replay.capacity, min_size=cfg.replay.min_size)
    rows = _batch(cfg.replay.capacity, a.obs_shape, a.num_actions)._asdict()
    replays[lid].writer(0).add({**rows, "policy_step": np.zeros(cfg.replay.capacity, np.int64)})
  replay = next(iter(replays.values()))
  store = ParamStore.create(agent.init(jax.random.PRNGKey(0)).params)
  try:
    silent = runtime.Learner(cfg, agent, replay, agent.init(jax.random.PRNGKey(0)), publish=lambda _: None)
    publishing = runtime.Learner(cfg, agent, replay, agent.init(jax.random.PRNGKey(0)),
                                 publish=local.param_publisher(store))
    variants = {"train_step_fused": _fused_train_step(agent, batches),
                "learner_loop_no_publish": (silent.update, silent.report),
                "learner_loop": (publishing.update, publishing.report)}
    rates = _interleaved_rates(variants, fused, args)
    if len(agents) > 1:
      every = [runtime.Learner(cfg, a, replays[lid], a.init(jax.random.PRNGKey(0)), publish=lambda _: None)
               for lid, (a, _) in agents.items()]
      rates.update(_interleaved_rates({"learners_all": (lambda: [learner.update() for learner in every],
                                                        lambda: [learner.report() for learner in every])},
                                      fused * len(every), args))
  finally:
    for segment in (store, *replays.values()):
      segment.close()
      segment.unlink()
  names = {"train_step_fused": f"train_step fused {shape}, fixed device batch",
           "learner_loop_no_publish": f"Learner.update {shape}, replay, no publish",
           "learner_loop": f"Learner.update {shape}, replay, ParamStore publish"}
  if "learners_all" in rates:
    names["learners_all"] = f"all {len(agents)} learners' Learner.update in turn, updates summed, no publish"
  paired = [loop / bare for loop, bare in zip(rates["learner_loop"], rates["train_step_fused"])]
  return {"figures": [*(_figure(key, names[key], "updates/s", rates[key]) for key in names),
                      _figure("learner_loop_over_train_step", "Learner loop / fused train_step, per repeat",
                              "ratio", paired, ">= 0.9")]}


PER_ROWS = 1_000_000   # the per section's replay


def _per_rows(agent, obs_dtype, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """``size`` random transitions for ``ReplayWriter.add``: binary frames, exponential priorities."""
  rows = _batch(size, agent.obs_shape, agent.num_actions)._asdict()
  return {"obs": (rows["obs"] > 0).astype(obs_dtype), "action": rows["action"], "reward": rows["reward"],
          "discount": rows["discount"], "next_obs": (rows["next_obs"] > 0).astype(obs_dtype),
          "policy_step": np.zeros(size, np.int64), "priority": rng.exponential(size=size).astype(np.float32)}


def _per_replay(agent, obs_dtype, num_writers: int, min_size: int) -> SharedReplay:
  """A full replay of PER_ROWS rows of ``_per_rows``."""
  replay = SharedReplay.create(agent.obs_shape, obs_dtype, PER_ROWS, num_writers, min_size=min_size)
  rng, chunk = np.random.default_rng(0), 50_000
  for w in range(num_writers):
    writer = replay.writer(w)
    for _ in range(-(-PER_ROWS // num_writers // chunk)):
      writer.add(_per_rows(agent, obs_dtype, chunk, rng))
  return replay


def _per_rates(learners: dict, insert: Callable[[], Any], fused: int,
               args) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
  """Updates/s and the process's CPU ms an update of each learner's
  ``insert(); update()`` calls, in turn (which one first alternates) over
  4 x ``args.repeats`` slices of a quarter of ``args.seconds``: short
  slices, so that the load of a shared machine falls on both alike."""
  rates = {name: [] for name in learners}
  cpu = {name: [] for name in learners}
  for name, learner in learners.items():   # warm-up
    insert()
    learner.update()
    learner.report()
  for repeat in range(4 * args.repeats):
    for name in sorted(learners, reverse=repeat % 2 == 1):
      learner, calls = learners[name], 0
      wall, start = time.perf_counter(), time.process_time()
      while time.perf_counter() - wall < args.seconds / 4:
        insert()
        learner.update()
        calls += 1
      learner.report()
      rates[name].append(calls * fused / (time.perf_counter() - wall))
      cpu[name].append(1e3 * (time.process_time() - start) / (calls * fused))
  return rates, cpu


def bench_per(cfg: RunConfig, args) -> dict:
  """Uniform against prioritized Learner.update at a MinAtar config's settings, 1M rows."""
  runtime.configure_jax("learner")
  config = args.config if cfg.env.id.startswith("MinAtar/") else "configs/minatar_dqn.yaml"
  uniform_cfg = load_config(config, [f"replay.capacity={PER_ROWS}"])
  prioritized_cfg = load_config(config, [f"replay.capacity={PER_ROWS}", "replay.prioritized=true"])
  agent, obs_dtype = next(iter(_agents(uniform_cfg).values()))
  fused, size = uniform_cfg.learner.updates_per_call, uniform_cfg.learner.batch_size
  inserts = max(1, round(fused * size / (uniform_cfg.replay.samples_per_insert or fused * size)))
  replay = _per_replay(agent, obs_dtype, uniform_cfg.actors.num, uniform_cfg.replay.min_size)
  try:
    writer, rng = replay.writer(0), np.random.default_rng(1)
    fresh = [_per_rows(agent, obs_dtype, inserts, rng) for _ in range(64)]   # the actors' adds, in turn
    adds = itertools.cycle(fresh)
    learners = {name: runtime.Learner(c, agent, replay, agent.init(jax.random.PRNGKey(0)), publish=lambda _: None)
                for name, c in (("uniform", uniform_cfg), ("prioritized", prioritized_cfg))}

    rates, cpu = _per_rates(learners, lambda: writer.add(next(adds)), fused, args)
    sampler = learners["prioritized"]._sampler   # pylint: disable=protected-access

    def sampler_call():
      writer.add(next(adds))
      _, _, rows, versions = sampler.sample(size, rng, 0.4, fused)
      sampler.update(rows, versions, rng.normal(size=len(rows)).astype(np.float32))
    sampler_us = [1e6 / r for r in _rates(sampler_call, 1, args)]
    trees = {}
    for fanout in (2, 8, 32, 128):
      tree = SumTree(PER_ROWS, fanout)
      tree.update(np.arange(PER_ROWS), rng.exponential(size=PER_ROWS))

      def tree_call(tree=tree):
        tree.update(rng.integers(0, PER_ROWS, 32), rng.exponential(size=32))
        tree.sample(32, rng)
      trees[fanout] = [1e6 / r for r in _rates(tree_call, 1, args)]
  finally:
    replay.close()
    replay.unlink()
  shape = f"{Path(config).stem} batch {size} x{fused}, {PER_ROWS:,} rows, +{inserts} inserts"
  paired = [p / u for p, u in zip(rates["prioritized"], rates["uniform"])]
  cpu_paired = [u / p for p, u in zip(cpu["prioritized"], cpu["uniform"])]
  return {"figures": [
      _figure("per_uniform", f"Learner.update {shape}, uniform", "updates/s", rates["uniform"]),
      _figure("per_prioritized", f"Learner.update {shape}, prioritized", "updates/s", rates["prioritized"]),
      _figure("per_over_uniform", "  prioritized / uniform, per repeat", "ratio", paired, ">= 0.9"),
      _figure("per_cpu_uniform", "  uniform: the process's CPU time an update", "ms", cpu["uniform"]),
      _figure("per_cpu_prioritized", "  prioritized: the process's CPU time an update", "ms", cpu["prioritized"]),
      _figure("per_cpu_over_uniform", "  uniform / prioritized CPU time an update, per repeat", "ratio", cpu_paired,
              ">= 0.9"),
      _figure("per_sampler", f"a writer's add of {inserts}, then PrioritizedSampler: take them in, sample "
              f"{fused} x {size}, update {fused * size}", "us", sampler_us),
      *(_figure(f"per_tree_{fanout}", f"SumTree fanout {fanout}: update 32 + sample 32, {PER_ROWS:,} rows", "us",
                us) for fanout, us in trees.items())]}


def bench_publish(cfg: RunConfig, args) -> dict:  # pylint: disable=unused-argument
  from bench_shm import measure_publish_latency  # pylint: disable=import-outside-toplevel
  results = [measure_publish_latency(1_000_000, 50) for _ in range(args.repeats)]
  return {"figures": [
      _figure("publish", "ParamStore publish-to-visible, 1M params", "ms",
              [r["latency_ms_median"] for r in results], target="< 5"),
      _figure("read", "ParamStore.read, 1M params", "ms", [r["read_ms_median"] for r in results])]}


def criteria_times(records: list[dict], offset: float = 0.0) -> dict[str, dict | None]:
  """When a run first met each criterion, from its metrics records.

  Returns ``{"learning": ..., "eval": ..., "last20": ...}``: for the first
  record with ``learner_steps > 0`` (the end of startup: spawn, imports,
  compiles, replay.min_size), for the first record with an
  ``eval_return >= SOLVED``, and for the first training episode (a record
  with ``episode_return``) at which the mean of the last ``RETURN_WINDOW``
  episode returns is >= SOLVED (at least that many episodes ended), a dict
  of ``seconds`` (the record's ``time`` + ``offset``) and ``env_steps``, and
  the record's ``acting_seconds`` and ``learning_seconds`` where it has them
  (sync mode); None where not met.
  """
  episodes = [r for r in records if r.get("episode_return") is not None]
  means = trailing_mean(np.array([r["episode_return"] for r in episodes], np.float64))
  first = {
      "learning": next((r for r in records if r["learner_steps"] > 0), None),
      "eval": next((r for r in records if r.get("eval_return") is not None and r["eval_return"] >= SOLVED), None),
      "last20": next((r for i, r in enumerate(episodes) if i >= RETURN_WINDOW - 1 and means[i] >= SOLVED), None),
  }
  return {k: r and {"seconds": r["time"] + offset, "env_steps": r["env_steps"],
                    **{c: r[c] for c in _BUSY if c in r}} for k, r in first.items()}


def _train_cmd(config: str, run_dir: str, *overrides: str) -> list[str]:
  """The scripts/train.py command of one benchmark run: no progress display,
  no stop on eval_return, then ``overrides``."""
  return [sys.executable, str(Path(__file__).with_name("train.py")), config, f"run_dir={run_dir}",
          "runtime.progress=false", "stop.eval_return=null", *overrides]


def _train_run(args, mode: str, seed: int, variant: str = "local", overrides: tuple[str, ...] = ()) -> dict:
  """One ``scripts/train.py`` run, stopped with SIGINT once both criteria
  are met; ``variant`` names its ``overrides``."""
  with tempfile.TemporaryDirectory(prefix="jaxrl_bench_") as run_dir:
    cmd = _train_cmd(args.config, run_dir, f"seed={seed}", f"runtime.mode={mode}",
                     f"stop.env_steps={args.stop_env_steps}", f"stop.seconds={args.stop_seconds}", *overrides)
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
      while proc.poll() is None:
        time.sleep(0.2)
        metrics = Path(run_dir, "metrics.jsonl")
        if metrics.exists() and all(criteria_times(read_metrics(run_dir)).values()):
          proc.send_signal(signal.SIGINT)
          break
      proc.wait(timeout=60)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    summary = json.loads(Path(run_dir, "summary.json").read_text())
    offset = summary["launch_time"] - start
    records = read_metrics(run_dir)
    reached = criteria_times(records, offset)
  end = summary["wall_seconds"] + offset
  both = _both(reached)
  return {"mode": mode, "variant": variant, "seed": seed, **reached, "wall_seconds": end,
          "stopped_because": summary["stopped_because"], "stop_lag_s": both and end - both["seconds"],
          "sps": _median([r["sps"] for r in records if "sps" in r and r["learner_steps"] > 0])}


def _both(run: dict) -> dict | None:
  """The criterion a run met last (both were met then); None if it missed one."""
  return run["eval"] and run["last20"] and max(run["eval"], run["last20"], key=lambda c: c["seconds"])


def bench_time_to_475(cfg: RunConfig, args) -> dict:  # pylint: disable=unused-argument
  runs = [_train_run(args, mode, seed) for seed in range(args.seeds) for mode in ("sync", "async")]
  by_mode = {mode: [r for r in runs if r["mode"] == mode] for mode in ("sync", "async")}
  figures, seconds = [], {}
  for mode, mode_runs in by_mode.items():
    for crit, label in (("eval", "eval_return"), ("last20", f"last-{RETURN_WINDOW} mean")):
      target = f"<= {REFERENCE_LAST20_S / 2}" if (mode, crit) == ("async", "last20") else None
      seconds[mode, crit] = _figure(f"{mode}_{crit}_seconds", f"{mode}: s to {label} >= {SOLVED:g}", "s",
                                    [r[crit] and r[crit]["seconds"] for r in mode_runs], target)
      figures += [seconds[mode, crit],
                  _figure(f"{mode}_{crit}_env_steps", f"{mode}: env steps to {label} >= {SOLVED:g}", "env steps",
                          [r[crit] and r[crit]["env_steps"] for r in mode_runs])]
  for crit in ("eval", "last20"):
    figures.append(_ratio(f"{crit}_async_over_sync", f"async / sync s to {crit}", seconds["async", crit]["median"],
                          seconds["sync", crit]["median"]))
  startup = [r["learning"] and r["learning"]["seconds"] for r in by_mode["async"]]

  def overlap(pick: Callable[[dict], dict | None], from_launch: bool = False) -> tuple[float | None, float | None]:
    """(median async seconds to the criterion ``pick`` chooses, after startup
    or from launch; median larger of sync's busy seconds there)."""
    busy = [c and max(c[k] for k in _BUSY) for c in map(pick, by_mode["sync"])]
    async_s = [c and (c["seconds"] if from_launch else s and c["seconds"] - s)
               for c, s in zip(map(pick, by_mode["async"]), startup)]
    return _median(async_s), _median(busy)

  sync_both = [_both(r) for r in by_mode["sync"]]
  figures += [*(_figure(f"sync_{k}", f"sync: {k.replace('_', ' ')} to both", "s", [b and b[k] for b in sync_both])
                for k in _BUSY),
              _figure("async_startup_seconds", "async: s from launch to the first learner step", "s", startup),
              _ratio("async_after_startup_over_sync_busy",
                     "async s to both after startup / max(sync acting, learning)", *overlap(_both), target="<= 1.1"),
              _ratio("async_over_sync_busy", "async s to both from launch / max(sync acting, learning)",
                     *overlap(_both, from_launch=True))]
  for crit in ("eval", "last20"):   # the same after startup, one criterion at a time
    figures.append(_ratio(f"async_after_startup_over_sync_busy_{crit}", f"the same to {crit} only",
                          *overlap(operator.itemgetter(crit))))
  return {"figures": figures, "runs": runs}


def bench_ray(cfg: RunConfig, args) -> dict:
  """The Ray backend against the local one: ``--seeds`` async runs of the
  config with each, in turns (seconds to eval >= 475 from launch, to the
  first learner step, median env steps/s): "ray" starts a Ray instance of
  its own, "ray_joined" joins a running one (as on a cluster); a snapshot
  of 1M params from publish to a Ray actor holding it; and what one Ray
  actor ships to the driver's replay, against the same Actor stepping in
  this process."""
  from ray.cluster_utils import Cluster  # pylint: disable=import-outside-toplevel
  running = Cluster(initialize_head=True, head_node_args={"num_cpus": os.cpu_count(), "include_dashboard": False})
  variants = {"local": (), "ray": ("runtime.backend=ray",),
              "ray_joined": ("runtime.backend=ray", f"runtime.ray.address={running.address}")}
  try:
    runs = [_train_run(args, "async", seed, name, overrides) for seed in range(args.seeds)
            for name, overrides in variants.items()]
  finally:
    running.shutdown()
  figures, rows = [], {}
  for backend in variants:
    mine = [r for r in runs if r["variant"] == backend]
    rows[backend] = [
        _figure(f"{backend}_eval_seconds", f"{backend}: s to eval_return >= {SOLVED:g}", "s",
                [r["eval"] and r["eval"]["seconds"] for r in mine]),
        _figure(f"{backend}_startup_seconds", f"{backend}: s from launch to the first learner step", "s",
                [r["learning"] and r["learning"]["seconds"] for r in mine]),
        _figure(f"{backend}_sps", f"{backend}: env steps/s (median of its learner records)", "env steps/s",
                [r["sps"] for r in mine])]
    figures += rows[backend]
  local_rows = rows["local"]
  for name in ("ray", "ray_joined"):
    ray_rows = rows[name]
    figures += [_ratio(f"{name}_over_local_eval", f"{name} / local s to eval", ray_rows[0]["median"],
                       local_rows[0]["median"], target="<= 1.5"),
                _ratio(f"{name}_over_local_after_startup", f"{name} / local s to eval after startup",
                       ray_rows[0]["median"] and ray_rows[0]["median"] - ray_rows[1]["median"],
                       local_rows[0]["median"] and local_rows[0]["median"] - local_rows[1]["median"]),
                _ratio(f"{name}_over_local_sps", f"{name} / local env steps/s", ray_rows[2]["median"],
                       local_rows[2]["median"])]
  from jaxrl.runtime import ray_backend  # pylint: disable=import-outside-toplevel
  runtime.configure_jax("supervisor")
  with ray_backend._connected(cfg):  # pylint: disable=protected-access
    figures += _ray_snapshot_latency(args) + _ray_shipping(cfg, args)
  return {"figures": figures, "runs": runs}


def _ray_snapshot_latency(args, num_params: int = 1_000_000) -> list[dict]:
  """Publish to a ParamStore, the SnapshotBoard's ray.put, and a Ray actor's
  fetch, for 1M float32 params: ms from the publish to the actor's copy."""
  import ray  # pylint: disable=import-outside-toplevel
  from jaxrl.runtime.ray_backend import SnapshotBoard  # pylint: disable=import-outside-toplevel
  sizes = [num_params // 4] * 3 + [num_params - 3 * (num_params // 4)]
  params = {f"layer{i}": {"kernel": np.full((n,), float(i), np.float32)} for i, n in enumerate(sizes)}
  store = ParamStore.create(params)
  board = SnapshotBoard({"agent_0": store})

  class SnapshotProbe:   # defined here: Ray pickles it by value, not by this script's module name
    """A Ray actor that fetches a snapshot and says when it holds it."""

    def fetch(self, snapshot: list) -> int:
      ray.get(snapshot[0])
      return time.monotonic_ns()
  probe = ray.remote(SnapshotProbe).options(num_cpus=0).remote()
  latency_ms = []
  try:
    for i in range(5 + 20 * args.repeats):
      start = time.monotonic_ns()
      store.publish(params, epsilon=0.1, step=i)
      _, ref = board.newest()
      held = ray.get(probe.fetch.remote([ref]))
      if i >= 5:   # warm-up: the worker's start, first imports
        latency_ms.append((held - start) / 1e6)
  finally:
    store.close()
    store.unlink()
    ray.kill(probe)
  return [_figure("ray_snapshot_ms", "Ray: publish to a Ray actor holding the snapshot, 1M params", "ms",
                  [statistics.median(latency_ms[i::args.repeats]) for i in range(args.repeats)])]


def _ray_shipping(cfg: RunConfig, args) -> list[dict]:
  """Transitions/s (and bytes/s) that one Ray actor steps and ships into
  the driver's replay, against the same Actor stepping in this process."""
  from jaxrl.runtime.ray_backend import RemoteActor, SnapshotBoard  # pylint: disable=import-outside-toplevel
  spaces = runtime.learner_spaces(cfg)
  agents = runtime.make_agents(cfg, spaces)
  params = {lid: jax.device_get(agent.init(jax.random.PRNGKey(0)).params) for lid, agent in agents.items()}
  stores = {lid: ParamStore.create(params[lid]) for lid in agents}
  for lid, store in stores.items():
    store.publish(params[lid], agents[lid].config.epsilon_end, 0)
  board = SnapshotBoard(stores)
  remote = RemoteActor(cfg, spaces, 0, 0, board, None)
  local_actor = make_actor(cfg, agents, 0, 0)
  for lid, store in stores.items():
    snap = store.read()
    local_actor.set_policy(lid, snap.params, snap.epsilon, snap.step)
  learner_steps = dict.fromkeys(agents, 0)
  snapshot_bytes = sum(leaf.nbytes for store in stores.values() for leaf in jax.tree.leaves(store.read().params))
  shipped: list[int] = []   # bytes of the last step

  def ship():
    step = remote.step(learner_steps)
    shipped.append(sum(a.nbytes for t in step.transitions.values() for a in t.values()))
    return sum(len(t["action"]) for t in step.transitions.values())

  def step_here():
    return sum(len(t["action"]) for t in local_actor.step(learner_steps).transitions.values())
  try:
    while not ship():   # the remote actor's start
      pass
    rates = {}
    for name, step in (("ray", ship), ("here", step_here)):
      rates[name] = []
      for _ in range(args.repeats):
        count, start = 0, time.perf_counter()
        shipped.clear()
        while time.perf_counter() - start < args.seconds:
          count += step()
        elapsed = time.perf_counter() - start
        rates[name].append(count / elapsed)
        if name == "ray":
          rates.setdefault("bytes", []).append(sum(shipped) / elapsed / 1e6)
  finally:
    remote.close()
    local_actor.env_set.close()
    for store in stores.values():
      store.close()
      store.unlink()
  ray_row = _figure("ray_ship", f"Ray: one actor x{cfg.actors.envs_per_actor} ships into the driver's replay",
                    "transitions/s", rates["ray"])
  here_row = _figure("ray_ship_here", "  the same Actor stepping in this process", "transitions/s", rates["here"])
  return [ray_row, here_row, _ratio("ray_ship_over_here", "  ray / here", ray_row["median"], here_row["median"]),
          _figure("ray_ship_mb", "  bytes of those transitions", "MB/s", rates["bytes"]),
          _figure("ray_snapshot_bytes", f"  one snapshot of {Path(args.config).name}'s params", "bytes",
                  [snapshot_bytes])]


def bench_supervisor(cfg: RunConfig, args) -> dict:
  """What the supervisor sustains: episode records/s through ``Run.log``
  (metrics.jsonl, TensorBoard, the display's state) in batches of 8, as
  actors send them; and an async run of MPE simple_spread with 4 actors for
  ``--stop-seconds`` (at most 60): episodes it logged per second, whether
  every episode counted was logged, and seconds from a SIGINT to its exit."""
  from jaxrl.runtime.run import Run  # pylint: disable=import-outside-toplevel
  runtime.configure_jax("supervisor")
  with tempfile.TemporaryDirectory(prefix="jaxrl_bench_") as run_dir:
    spaces = runtime.learner_spaces(cfg)
    run = Run(cfg, Path(run_dir), time.time(), None, spaces)
    batch = [{"episode_return": float(i), "episode_length": 25, "policy_lag": 1.5, "agent_id": "agent_0",
              "actor_id": 0} for i in range(8)]

    def log_batch():
      run.env_steps += 200
      run.log(*batch)
    rates = _rates(log_batch, len(batch), args)
    run.finish({})
  figures = [_figure("supervisor_records", "supervisor: episode records logged", "records/s", rates)]
  seconds = min(args.stop_seconds, 60.0)
  spread = str(Path(__file__).resolve().parent.parent / "configs" / "mpe_spread_dqn.yaml")
  with tempfile.TemporaryDirectory(prefix="jaxrl_bench_") as run_dir:
    proc = subprocess.Popen(_train_cmd(spread, run_dir, "actors.num=4", "runtime.mode=async",
                                       "stop.env_steps=null", "stop.seconds=null"), stdout=subprocess.DEVNULL)
    try:
      metrics = Path(run_dir, "metrics.jsonl")
      while proc.poll() is None and not (metrics.exists() and any("loss" in r for r in read_metrics(run_dir))):
        time.sleep(0.2)
      time.sleep(seconds)
      proc.send_signal(signal.SIGINT)
      sent = time.monotonic()
      proc.wait(timeout=120)
      stop_seconds = time.monotonic() - sent
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    summary = json.loads(Path(run_dir, "summary.json").read_text())
    records = read_metrics(run_dir)
  episodes = [r for r in records if "episode_return" in r]   # one per agent and episode, as counted
  figures += [_figure("spread4_episode_records", "MPE spread, 4 actors: episode records logged", "records/s",
                      [len(episodes) / summary["wall_seconds"]]),
              _figure("spread4_all_logged", "  episodes counted that were logged", "fraction",
                      [len(episodes) / max(summary["episodes"], 1)], target=">= 1"),
              _figure("spread4_stop_seconds", "  seconds from SIGINT to exit", "s", [stop_seconds], target="<= 10")]
  return {"figures": figures}


def bench_learning(cfg: RunConfig, args) -> dict:  # pylint: disable=unused-argument
  """``--seeds`` runs of the config in ``--mode`` (sync: deterministic for a
  seed), from seed ``--first-seed``, to its ``stop.env_steps``: env steps
  and seconds to the first greedy ``eval_return`` >= ``--target``, the best
  and last ``eval_return``, the mean of the last 100 training episodes'
  returns, and the wall time; every run's eval curve and training-return
  curve under "runs"."""
  runs = []
  for seed in range(args.first_seed, args.first_seed + args.seeds):
    with contextlib.ExitStack() as stack:
      run_dir = _learning_run_dir(args, seed) or stack.enter_context(
          tempfile.TemporaryDirectory(prefix="jaxrl_bench_"))
      _train_to_the_end(args, run_dir, seed)
      records = read_metrics(run_dir)
      summary = json.loads(Path(run_dir, "summary.json").read_text())
    evals = [r for r in records if "eval_return" in r]
    returns = [r for r in records if "episode_return" in r]
    means = trailing_mean(np.array([r["episode_return"] for r in returns], np.float64), 100)
    first = next((r for r in evals if r["eval_return"] >= args.target), None)
    every = max(1, len(returns) // 200)
    runs.append({"seed": seed, "mode": args.mode, "env_steps_to_target": first and first["env_steps"],
                 "seconds_to_target": first and first["time"], "best_eval_return": max(r["eval_return"] for r in evals),
                 "last_eval_return": evals[-1]["eval_return"],
                 "last100_train_return": float(means[-1]),
                 "env_steps": summary["env_steps"], "wall_seconds": summary["wall_seconds"],
                 "curve": [{k: v for k, v in r.items() if k.startswith(("env_steps", "time", "eval_return"))}
                           for r in evals],
                 "train_curve": [{"env_steps": returns[i]["env_steps"], "time": returns[i]["time"],
                                  "return_mean100": float(means[i])}
                                 for i in range(every - 1, len(returns), every)]})
  return {"figures": [
      _figure("env_steps_to_target", f"{args.mode}: env steps to eval_return >= {args.target:g}", "env steps",
              [r["env_steps_to_target"] for r in runs]),
      _figure("seconds_to_target", f"{args.mode}: s to eval_return >= {args.target:g}", "s",
              [r["seconds_to_target"] for r in runs]),
      _figure("best_eval_return", "best eval_return", "return", [r["best_eval_return"] for r in runs]),
      _figure("last_eval_return", "last eval_return", "return", [r["last_eval_return"] for r in runs]),
      _figure("last100_train_return", "mean return of the last 100 training episodes", "return",
              [r["last100_train_return"] for r in runs]),
      _figure("wall_seconds", "wall time of a run", "s", [r["wall_seconds"] for r in runs])],
          "runs": runs}


def _learning_run_dir(args, seed: int) -> str | None:
  """``--run-dir``'s directory of a learning run's seed, None without it."""
  return args.run_dir and str(Path(args.run_dir) / f"seed{seed}")


def _train_to_the_end(args, run_dir: str, seed: int) -> None:
  """Trains a learning run to its ``stop.env_steps``: from the start, or in a
  ``--run-dir`` that holds a run cut short, from its latest checkpoint (its
  replay saved with it: ``checkpoint.replay=true``); nothing if it finished.
  Raises CalledProcessError if the run did not reach its end (a SIGINT)."""
  summary_path = Path(run_dir, "summary.json")
  done = lambda: summary_path.exists() and json.loads(summary_path.read_text())["stopped_because"] == "env_steps"
  if done():
    return
  if Path(run_dir, "checkpoints").is_dir():
    cmd = [sys.executable, str(Path(__file__).with_name("train.py")), "--resume", run_dir, "runtime.progress=false"]
  else:
    cmd = _train_cmd(args.config, run_dir, f"seed={seed}", f"runtime.mode={args.mode}", "checkpoint.replay=true")
  subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
  if not done():
    raise subprocess.CalledProcessError(1, cmd, stderr="its run stopped before its stop.env_steps")


MINATAR_REFERENCE_SETTINGS = ("agent.double_q=false", "replay.n_step=1", "replay.samples_per_insert=32",
                              "learner.batch_size=32", "replay.min_size=5000", "runtime.learner_cpus=null")
_REFERENCE_DRIVER = """
import importlib.util, sys, time
from minatar import Environment
spec = importlib.util.spec_from_file_location("minatar_reference_dqn", sys.argv[1])
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)
ref.NUM_FRAMES = ref.REPLAY_START_SIZE + int(sys.argv[2])
first, train = [], ref.train
def timed_train(*args):
  if not first:
    first.append(time.perf_counter())
  return train(*args)
ref.train = timed_train
ref.dqn(Environment(sys.argv[3]), False, False, sys.argv[4])
print((ref.NUM_FRAMES - ref.REPLAY_START_SIZE) / (time.perf_counter() - first[0]))
"""


def _minatar_run(config: str, frames: int, overrides: tuple[str, ...]) -> dict:
  """One async ``scripts/train.py`` run of ``frames`` frames after
  ``replay.min_size`` (eval off): its frames/s and updates/s from the first
  learner record to the last."""
  with tempfile.TemporaryDirectory(prefix="jaxrl_bench_") as run_dir:
    min_size = load_config(config, overrides).replay.min_size
    cmd = _train_cmd(config, run_dir, "runtime.mode=async", "eval.interval=0", "stop.seconds=null",
                     f"stop.env_steps={min_size + frames}", *overrides)
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
    learner = [r for r in read_metrics(run_dir) if "learner_id" in r]
  first, last = learner[0], learner[-1]
  seconds = last["time"] - first["time"]
  return {"frames_per_s": (last["env_steps"] - first["env_steps"]) / seconds,
          "updates_per_s": (last["train_steps"] - first["train_steps"]) / seconds}


def _minatar_reference_run(args, game: str, frames: int) -> float | None:
  """Frames/s of MinAtar's reference dqn.py from its first update, or None without it."""
  if not args.minatar_reference:
    return None
  with tempfile.TemporaryDirectory(prefix="jaxrl_bench_") as out:
    done = subprocess.run([sys.executable, "-c", _REFERENCE_DRIVER, args.minatar_reference, str(frames), game,
                           str(Path(out, "reference"))], capture_output=True, text=True, check=True)
  return float(done.stdout.split()[-1])


def bench_minatar(cfg: RunConfig, args) -> dict:
  config = args.config if cfg.env.id.startswith("MinAtar/") else "configs/minatar_dqn.yaml"
  env_id = load_config(config).env.id
  game = minatar_game(env_id.split("/")[1].rsplit("-", 1)[0])
  frames = 3_000 if args.quick else 10_000
  jaxrl_runs, reference = [], []
  for _ in range(min(args.repeats, 3)):   # in turns, so that drifts of the machine hit both
    jaxrl_runs.append(_minatar_run(config, frames, MINATAR_REFERENCE_SETTINGS))
    reference.append(_minatar_reference_run(args, game, frames))
  own = [_minatar_run(config, 5 * frames, ()) for _ in range(1 if args.quick else 2)]
  system = _figure("minatar_reference_settings", f"jaxrl at the reference's settings ({env_id})", "frames/s",
                   [r["frames_per_s"] for r in jaxrl_runs])
  ref = _figure("minatar_reference", "MinAtar examples/dqn.py (PyTorch, CPU)", "frames/s", reference)
  config_rate = _figure("minatar_config", f"jaxrl at {Path(config).name} as it is", "frames/s",
                        [r["frames_per_s"] for r in own])
  return {"figures": [
      system, _figure("minatar_reference_settings_updates", "  its learner", "updates/s",
                      [r["updates_per_s"] for r in jaxrl_runs]),
      ref, _ratio("minatar_over_reference", "jaxrl / reference frames/s", system["median"], ref["median"],
                  target=">= 3"),
      config_rate, _figure("minatar_config_updates", "  its learner", "updates/s", [r["updates_per_s"] for r in own]),
      _figure("minatar_5m_frames_minutes", f"  5M frames of {Path(config).name} take", "min",
              [5e6 / r["frames_per_s"] / 60 for r in own])]}


SECTIONS = {"env": bench_env, "actor": bench_actor, "train_step": bench_train_step, "learner": bench_learner,
            "per": bench_per, "publish": bench_publish, "time_to_475": bench_time_to_475, "conv": bench_conv, "nature": bench_nature, "minatar": bench_minatar,
            "learning": bench_learning, "ray": bench_ray, "supervisor": bench_supervisor}
DEFAULT_SECTIONS = ["env", "actor", "train_step", "learner", "publish", "time_to_475", "supervisor"]   # "minatar", "learning": long
RATIOS = (  # (key, name, numerator key, denominator key, target)
    ("actor_over_env", "actor / env steps/s", "actor", "env", ">= 0.5"),
    ("learners_all_over_one", "all learners / one learner alone, updates/s", "learners_all",
     "learner_loop_no_publish", None),
)


def _run_section(name: str, cfg: RunConfig, args) -> dict:
  return SECTIONS[name](cfg, args)


def _fmt(value: Any) -> str:
  if value is None:
    return "-"
  return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _print_table(figures: list[dict]) -> None:
  width = max(len(f["figure"]) for f in figures)
  for f in figures:
    target = f"{f['target']} {'ok' if f['meets'] else 'MISSED'}" if "target" in f else ""
    repeats = " ".join(_fmt(r) for r in f["repeats"]) if len(f["repeats"]) > 1 else ""
    print(f"  {f['figure']:<{width}}  {_fmt(f['median']):>10} {f['unit']:<11} {target:<14} {repeats}")


def main():
  parser = argparse.ArgumentParser(description="jaxrl benchmarks")
  parser.add_argument("--config", default="configs/cartpole_dqn.yaml")
  parser.add_argument("--sections", nargs="+", default=DEFAULT_SECTIONS, choices=list(SECTIONS))
  parser.add_argument("--out", default="benchmark.json")
  parser.add_argument("--quick", action="store_true", help="2 short repeats and 1 seed, for testing")
  parser.add_argument("--seeds", type=int, default=3, help="time_to_475 seeds per mode; learning seeds")
  parser.add_argument("--first-seed", type=int, default=0, help="learning: the seed of its first run")
  parser.add_argument("--target", type=float, default=0.0, help="learning: the eval_return to reach")
  parser.add_argument("--mode", choices=("sync", "async"), default="sync", help="learning: runtime.mode of its runs")
  parser.add_argument("--run-dir", metavar="DIR",
                      help="learning: train into DIR/seed<SEED> (kept), resuming a run cut short there")
  parser.add_argument("--stop-env-steps", type=int, default=100_000, help="time_to_475 runs' stop.env_steps")
  parser.add_argument("--stop-seconds", type=float, default=60.0, help="time_to_475 runs' stop.seconds")
  parser.add_argument("--minatar-reference", metavar="PATH",
                      help="minatar: MinAtar's examples/dqn.py, run side by side (needs torch and minatar)")
  args = parser.parse_args()
  args.repeats, args.seconds = (2, 0.5) if args.quick else (5, 1.0)
  args.seeds = 1 if args.quick else args.seeds
  cfg = load_config(args.config)
  results: dict[str, Any] = {"args": vars(args), "sections": {}}
  for name in args.sections:
    try:
      with concurrent.futures.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        results["sections"][name] = pool.submit(_run_section, name, cfg, args).result()
    except KeyboardInterrupt:
      _stopped_short(name, "interrupted", args, 130)
    except subprocess.CalledProcessError as e:   # a run stopped short, by a Ctrl-C or an error
      _stopped_short(name, e.stderr or f"a training run exited with status {e.returncode}", args, 1)
    print(f"\n== {name}")
    _print_table(results["sections"][name]["figures"])
  figures = {f["key"]: f for s in results["sections"].values() for f in s["figures"]}
  results["ratios"] = [_ratio(key, name, figures[num]["median"], figures[den]["median"], target)
                       for key, name, num, den, target in RATIOS if num in figures and den in figures]
  if results["ratios"]:
    print("\n== ratios")
    _print_table(results["ratios"])
  results["machine"] = {"platform": platform.platform(), "cpu_model": _cpu_model(), "cpu_flags": _cpu_flags(),
                        "cpus": os.cpu_count(), "backend": jax.default_backend(), "jax": jax.__version__,
                        "xla_flags": os.environ.get("XLA_FLAGS", "")}
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  print(f"\nwrote {args.out}")


def _stopped_short(section: str, why: str, args, status: int) -> None:
  """Exits with ``status`` after one line on stderr: why ``section`` stopped short."""
  resume = " (the same command resumes its --run-dir)" if args.run_dir else ""
  print(f"benchmark.py: section {section}: {why}{resume}", file=sys.stderr)
  sys.exit(status)


def _cpu_model() -> str:
  """The CPU's model name (Linux /proc/cpuinfo), else platform.processor()."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor()


_SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "neon", "sve")


def _cpu_flags() -> list[str]:
  """The CPU's vector-instruction flags XLA's CPU code can use (Linux /proc/cpuinfo), else []."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      flags = next(line.split(":", 1)[1].split() for line in f if line.startswith(("flags", "Features")))
  except (OSError, StopIteration):
    return []
  return [flag for flag in _SIMD_FLAGS if flag in flags]


if __name__ == "__main__":
  main()
