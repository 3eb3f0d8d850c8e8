"""runtime.Learner, the learner process's loop, in one process: its fused
updates, device-side metric totals and publishes, against a plain lax.scan
of the pure train_step; LearningLoop's periodic and final checkpoints."""

import errno
import os

import chex
import jax
import numpy as np
import pytest

import jaxrl
from jaxrl import runtime
from jaxrl.checkpoint import load_extra_arrays
from jaxrl.config_file import load_config
from jaxrl.replay import SharedReplay
from jaxrl.runtime.builders import make_replays
from jaxrl.runtime.learning import (CHECKPOINT_DIR, FINAL_CHECKPOINT_STARTED, FINAL_CHECKPOINT_WRITTEN,
                                    Checkpointer, LearningLoop, replay_contents)
from runs import CARTPOLE

_CALLS, _FUSED, _BATCH, _PUBLISH_INTERVAL = 8, 3, 4, 6


def _transition(reward: float) -> dict[str, np.ndarray]:
  """One transition, [1, ...] fields."""
  return {"obs": np.full((1, 4), 0.5, np.float32), "action": np.ones(1, np.int32),
          "reward": np.full(1, reward, np.float32), "discount": np.full(1, 0.99, np.float32),
          "next_obs": np.full((1, 4), -0.5, np.float32)}


def _config(*overrides: str):
  return load_config(CARTPOLE, [f"learner.batch_size={_BATCH}", f"learner.updates_per_call={_FUSED}",
                                f"learner.publish_interval={_PUBLISH_INTERVAL}", *overrides])


@pytest.fixture
def make_learner():
  """Learners over a replay whose 16 rows are one transition acted at policy
  step 0, so that every sample is the same batch whatever the rng."""
  replays = []

  def make(reward: float, publish, *overrides: str):
    cfg = _config(*overrides)
    agent = jaxrl.make_agent(cfg.agent, (4,), 2)
    replay = SharedReplay.create((4,), np.float32, 16)
    replays.append(replay)
    rows = {k: np.repeat(v, 16, axis=0) for k, v in _transition(reward).items()}
    replay.writer(0).add({**rows, "policy_step": np.zeros(16, np.int64)})
    state = agent.init(jax.random.PRNGKey(3))
    return agent, state, runtime.Learner(cfg, agent, replay, state, publish)
  yield make
  for replay in replays:
    replay.close()
    replay.unlink()


def _trace(agent, state, steps: int):
  """train_step ``steps`` times on the replay's batch: (final state, metrics
  [steps], params after each step [steps, ...])."""
  batch = jaxrl.Transition(**{k: np.repeat(v, _BATCH, axis=0) for k, v in _transition(1.0).items()},
                           valid=np.ones(_BATCH, np.float32))

  def step(s, _):
    s, metrics = agent.train_step(s, batch)
    return s, (metrics, s.params)
  state, (metrics, params) = jax.lax.scan(step, state, None, length=steps)
  return state, metrics, params


def test_report_means_every_fused_step_and_publishes_whole_states(make_learner):
  published, at_steps = [], []   # the states published; the learner's steps when each was

  def publish(s):
    published.append(jax.device_get(s))
    at_steps.append(learner.steps if len(published) > 1 else 0)   # the first: in the constructor
  agent, state, learner = make_learner(1.0, publish)
  for _ in range(_CALLS):
    learner.update()
  report = learner.report()

  steps = _CALLS * _FUSED
  expected_state, metrics, params = _trace(agent, state, steps)
  chex.assert_trees_all_close(learner.state, expected_state, rtol=1e-5)
  assert learner.steps == steps == int(learner.state.step)
  assert set(report) == {*metrics, "sample_age", "train_steps", "updates_per_s"} - {"td_error"}   # priorities
  assert report["train_steps"] == steps and report["updates_per_s"] > 0
  for key in ("loss", "grad_norm", "q_mean"):   # means over the steps since the last report
    np.testing.assert_allclose(report[key], np.mean(metrics[key]), rtol=1e-5, err_msg=key)
  # epsilon and learning_rate: their values at the record's learner step, not means.
  assert report["epsilon"] == pytest.approx(float(agent.epsilon_schedule(steps)))
  assert report["learning_rate"] == pytest.approx(float(agent.learning_rate_schedule(steps)))
  assert report["epsilon"] < np.mean(metrics["epsilon"])
  # Every row was acted at step 0 and call i samples at step i * F.
  assert report["sample_age"] == pytest.approx(np.mean(np.arange(_CALLS)) * _FUSED)
  assert learner.report() == {}   # the totals restart after a report

  # Due every 6 steps (2 calls), and published as soon as it is computed,
  # which the bound on calls in flight makes at most 2 calls later.
  published_steps = [int(s.step) for s in published]
  assert published_steps == [0, 6, 12, 18]
  assert all(0 <= at - step <= 2 * _FUSED for at, step in zip(at_steps, published_steps))
  for snapshot in published[1:]:   # each publish is one state the updates passed through
    i = int(snapshot.step) - 1
    chex.assert_trees_all_close(snapshot.params, jax.tree.map(lambda x, i=i: x[i], params), rtol=1e-5)
    assert snapshot.epsilon == pytest.approx(float(metrics["epsilon"][i]))


def test_one_non_finite_loss_fails_the_report(make_learner):
  _, _, learner = make_learner(np.nan, lambda s: None)
  learner.update()
  with pytest.raises(runtime.NonFiniteError, match=rf"non-finite loss \(nan\) before learner step {_FUSED}"):
    learner.report()


def test_sample_age_counts_valid_samples_only(make_learner):
  """A slot being written (odd version) samples as an invalid row whose
  policy_step is 0: it must not count as an age of ``steps``."""
  _, _, learner = make_learner(1.0, lambda s: None)
  arrays = learner.replay._arrays   # pylint: disable=protected-access
  arrays["policy_step"][:] = 1000
  arrays["version"][:8] += 1   # half the slots "being written": invalid when sampled
  for _ in range(_CALLS):
    learner.update()
  report = learner.report()
  # Valid rows were acted at step 1000 and sampled at steps 0 .. (_CALLS - 1) * _FUSED;
  # an invalid row counted as acted at step 0 would pull the age up to about +steps.
  assert -1000 <= report["sample_age"] <= (_CALLS - 1) * _FUSED - 1000


def test_reports_are_due_every_log_interval_learner_steps(make_learner):
  _, _, learner = make_learner(1.0, lambda s: None, "runtime.log_interval_seconds=1e6",
                               "runtime.log_interval_learner_steps=30")
  assert not learner.report_due()
  while learner.steps < 30:
    assert not learner.report_due()
    learner.update()
  assert learner.report_due()
  learner.report()
  assert not learner.report_due()


def _recording(sampler, samples: list, updates: list) -> None:
  """Records the PrioritizedSampler's samples (its beta and what it returned) and updates."""
  sample, update = sampler.sample, sampler.update

  def recorded_sample(*args):
    out = sample(*args)
    samples.append((args[2], *out))
    return out

  def recorded_update(*args):
    updates.append(args)
    update(*args)
  sampler.sample, sampler.update = recorded_sample, recorded_update


def test_prioritized_samples_take_the_td_errors_of_their_updates_as_priorities(make_learner):
  """Each call's batches carry weights of beta annealed over stop.env_steps;
  once the loop waits for a call, its samples' priorities are the |td_error|
  of a plain lax.scan of train_step on its batches, flattened step-major."""
  agent, _, learner = make_learner(1.0, lambda s: None, "replay.prioritized=true", "stop.env_steps=1000",
                                   "replay.importance_exponent=0.4")
  sampler = learner._sampler   # pylint: disable=protected-access
  samples, updates, states = [], [], []
  _recording(sampler, samples, updates)
  for env_steps in (0, 500, 1000, 2000):
    states.append(learner.state)
    learner.update(env_steps)
  assert [beta for beta, *_ in samples] == pytest.approx([0.4, 0.7, 1.0, 1.0])
  assert len(updates) == 2   # calls 0 and 1: the loop waited for them
  last = {}
  for (_, batch, _, rows, versions), (rows_set, versions_set, td), state in zip(samples, updates, states):
    fused = jax.tree.map(lambda x: x.reshape(_FUSED, _BATCH, *x.shape[1:]), batch)
    _, metrics = jax.lax.scan(agent.train_step, state, fused)
    np.testing.assert_allclose(td, np.asarray(metrics["td_error"]).reshape(-1), rtol=1e-5)
    np.testing.assert_array_equal(rows_set, rows)
    np.testing.assert_array_equal(versions_set, versions)
    last.update(zip(rows.tolist(), np.abs(td).tolist()))
  assert not (samples[3][1].weight == 1).all()   # call 3 samples after call 0 set priorities
  rows = np.array(list(last))
  np.testing.assert_allclose(sampler.tree.leaves[rows], (np.array(list(last.values())) + 1e-6) ** 0.6, rtol=1e-6)


def test_a_checkpoint_of_a_prioritized_replay_restores_the_learners_tree(make_learner, tmp_path):
  """Restored as --resume restores it (``make_replays`` of the checkpoint's replay)."""
  overrides = ("replay.prioritized=true", "checkpoint.replay=true", "stop.env_steps=1000", "replay.capacity=16",
               "replay.min_size=4", "actors.num=1")
  agent, state, learner = make_learner(1.0, lambda s: None, *overrides)
  samples = []
  _recording(learner._sampler, samples, [])   # pylint: disable=protected-access
  counters = {"env_steps": 250, "episodes": 0, "learner_steps": 0}
  loop = LearningLoop({"agent_0": learner}, Checkpointer(_config(*overrides), tmp_path, {"agent_0": learner.replay}),
                      lambda: counters, lambda *_: None, lambda _: None)
  for _ in range(4):
    loop.step()
  assert samples[0][0] == pytest.approx(0.55)   # beta at the run's env steps
  path = loop.checkpoint()
  cfg = _config(*overrides)
  restored = make_replays(cfg, runtime.learner_spaces(cfg), replay_contents(load_extra_arrays(path)))["agent_0"]
  try:
    assert restored.inserts() == 16
    resumed = runtime.Learner(cfg, agent, restored, state, lambda s: None)
    tree = resumed._sampler.tree   # pylint: disable=protected-access
    np.testing.assert_array_equal(tree.leaves, learner._sampler.tree.leaves)   # pylint: disable=protected-access
    assert len(set(tree.leaves.tolist())) > 1   # updated from TD errors, not the defaults
  finally:
    restored.close()
    restored.unlink()


def _no_space(*args, **kwargs):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def make_loop(make_learner, tmp_path):
  """A LearningLoop of one learner that checkpoints into tmp_path at every
  housekeeping: (loop, learner, checkpoint directory, records, warnings,
  progress events as (event, the checkpoints on disk then))."""
  def make():
    overrides = ["checkpoint.interval_seconds=1e-9", "checkpoint.keep=5"]
    _, _, learner = make_learner(1.0, lambda s: None, *overrides)
    directory, records, warnings, events = tmp_path / CHECKPOINT_DIR, [], [], []
    counters = {"env_steps": 0, "episodes": 0, "learner_steps": 0}

    def count(_lid, steps):
      counters["learner_steps"] = steps

    def progress(event):
      events.append((event, sorted(os.listdir(directory)) if directory.exists() else []))

    loop = LearningLoop({"agent_0": learner}, Checkpointer(load_config(CARTPOLE, overrides), tmp_path, {}),
                        lambda: counters, count, records.append, warnings.append, progress)
    return loop, learner, directory, records, warnings, events
  return make


def test_a_failed_periodic_checkpoint_is_one_warning_and_the_next_is_written(make_loop, monkeypatch):
  loop, _, directory, records, warnings, _ = make_loop()
  loop.step()
  monkeypatch.setattr(os, "fsync", _no_space)
  loop.housekeeping()   # does not raise
  monkeypatch.undo()
  assert len(warnings) == 1 and "\n" not in warnings[0], warnings
  assert warnings[0].startswith("learner: checkpoint not written ([Errno 28] No space left on device")
  assert os.listdir(directory) == []
  assert [r["train_steps"] for r in records] == [_FUSED]   # the records before it still went out
  loop.step()
  loop.housekeeping()
  assert os.listdir(directory) == [f"step_{2 * _FUSED:09d}.ckpt"] and len(warnings) == 1


def test_a_non_finite_state_stops_the_run_at_a_periodic_checkpoint(make_loop):
  loop, learner, directory, _, warnings, _ = make_loop()
  learner.state = learner.state.replace(epsilon=jax.numpy.float32(np.nan))
  with pytest.raises(runtime.NonFiniteError, match=r"non-finite state.*epsilon"):
    loop.housekeeping()
  assert not warnings and not directory.exists()


def test_the_final_checkpoint_tells_its_start_and_end_and_a_failure_raises(make_loop, monkeypatch):
  loop, _, directory, _, warnings, events = make_loop()
  monkeypatch.setattr(os, "replace", _no_space)
  with pytest.raises(OSError, match="No space left"):
    loop.checkpoint()
  monkeypatch.undo()
  assert events == [(FINAL_CHECKPOINT_STARTED, [])] and not warnings
  loop.step()
  path = loop.checkpoint()
  assert path == directory / f"step_{_FUSED:09d}.ckpt"
  assert events[1:] == [(FINAL_CHECKPOINT_STARTED, []), (FINAL_CHECKPOINT_WRITTEN, [path.name])]
