"""The supervisor's parts, one at a time: signals held without being lost,
bounded reads of a child's messages, episode records a batch per actor
step, one snapshot reader, evaluations that can be abandoned."""

import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest

from jaxrl.actor import ActorStep, Episode
from jaxrl.config_file import load_config
from jaxrl.replay import SharedReplay
from jaxrl.runtime import local
from jaxrl.runtime.run import Evaluator
from jaxrl.runtime.builders import make_agents, restored_states
from jaxrl.shm import ParamStore, SnapshotReader
from runs import CARTPOLE


def test_a_signal_while_signals_are_held_is_handled_not_lost():
  """What a child's start used to do (ignore the signal for the whole
  process) lost a Ctrl-C that came meanwhile; holding it only delays it."""
  got = []
  previous = signal.signal(signal.SIGTERM, lambda signum, _: got.append(signum))
  try:
    with local.signals_held():
      os.kill(os.getpid(), signal.SIGTERM)
      assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
      time.sleep(0.01)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert got == [signal.SIGTERM]


def _flood(ready, connection):
  """A child that sends numbered messages as fast as it can, forever."""
  local.ignore_signals()
  for i in range(10**9):
    connection.send(("record", {"i": i}))
    if i == 1_000:
      ready.set()


def test_a_child_that_floods_its_pipe_is_read_a_bounded_number_at_a_time():
  ctx = mp.get_context("spawn")
  ready = ctx.Event()
  child = local.ProcessChild(ctx, "actor 0", _flood, (ready,))
  try:
    assert ready.wait(60)
    first = child.receive(64)
    second = child.receive(64)
    assert len(first) == len(second) == 64
    assert [m[1]["i"] for m in first + second] == list(range(128))
  finally:
    assert child.kill()
    child.close()
  assert child.exit_reason() == "killed by SIGKILL" and not child.alive()


def test_a_childs_messages_after_its_exit_are_read_to_the_end():
  ctx = mp.get_context("spawn")
  child = local.ProcessChild(ctx, "learner", _send_three_and_exit, ())
  deadline = time.monotonic() + 60
  while child.alive() and time.monotonic() < deadline:
    time.sleep(0.05)
  assert child.receive(2) == [("record", 0), ("record", 1)]
  assert child.receive(10) == [("record", 2)]
  assert child.receive(10) == []
  assert child.exit_reason() == "exited with status 0"
  child.close()


def _send_three_and_exit(connection):
  for i in range(3):
    connection.send(("record", i))
  connection.close()


class _ScriptedActor:
  """An Actor whose steps end the given numbers of episodes, one transition each."""

  def __init__(self, episodes_per_step):
    self._script = list(episodes_per_step)

  def set_policy(self, *_):
    pass

  def step(self, _learner_steps):
    n = self._script.pop(0)
    episodes = [Episode(env=0, agent_id="agent_0", episode_return=float(i), length=1, policy_lag=0.0)
                for i in range(n)]
    transitions = {"agent_0": {"obs": np.zeros((1, 3), np.float32), "action": np.zeros(1, np.int32),
                               "reward": np.zeros(1, np.float32), "discount": np.ones(1, np.float32),
                               "next_obs": np.zeros((1, 3), np.float32), "policy_step": np.zeros(1, np.int64)}}
    return ActorStep(transitions, episodes, 1)


class _Control:
  def __init__(self, steps):
    self.arrays = {"env_steps": np.zeros(1, np.int64), "episodes": np.zeros(1, np.int64),
                   "learner_steps": np.zeros(1, np.int64)}
    self._steps = steps

  def should_stop(self):
    self._steps -= 1
    return self._steps < 0


class _Outbox(list):
  put = list.append


def test_episode_records_travel_a_batch_per_actor_step():
  replay = SharedReplay.create((3,), np.float32, capacity=16)
  try:
    outbox = _Outbox()
    control = _Control(steps=3)
    local.run_actor(0, _ScriptedActor([3, 0, 2]), lambda: {}, control, {"agent_0": replay}, outbox)
  finally:
    replay.close()
    replay.unlink()
  assert [kind for kind, _ in outbox] == ["episodes", "episodes"]
  assert [[r["episode_return"] for r in records] for _, records in outbox] == [[0.0, 1.0, 2.0], [0.0, 1.0]]
  assert control.arrays["episodes"][0] == 5 and control.arrays["env_steps"][0] == 3


def _tree(value):
  return {"w": np.full((2, 2), value, np.float32)}


def test_the_snapshot_reader_copies_a_store_only_after_it_published():
  stores = {"a": ParamStore.create(_tree(0)), "b": ParamStore.create(_tree(0))}
  try:
    reader = SnapshotReader(stores)
    assert not reader.ready() and reader.newest() is None
    stores["a"].publish(_tree(1), epsilon=0.5, step=1)
    assert set(reader.changed()) == {"a"} and reader.changed() == {}
    assert reader.newest() is None   # b has not published
    stores["b"].publish(_tree(2), epsilon=0.1, step=7)
    assert set(reader.changed()) == {"b"}
    newest = reader.newest()
    assert {lid: (float(s.params["w"][0, 0]), s.step) for lid, s in newest.items()} == {"a": (1.0, 1), "b": (2.0, 7)}
    stores["a"].publish(_tree(3), epsilon=0.5, step=2)
    assert reader.newest()["a"].step == 2 and reader.changed() == {}
  finally:
    for store in stores.values():
      store.close()
      store.unlink()


def test_an_evaluation_is_abandoned_at_its_next_step():
  """Asked to stop at its third step, an evaluation returns None there."""
  cfg = load_config(CARTPOLE, ["eval.episodes=2"])
  agents = make_agents(cfg)
  evaluator = Evaluator(cfg, agents, learner_steps=0)
  params = {lid: state.params for lid, state in restored_states(agents, cfg, None).items()}
  asked = []

  def should_stop():
    asked.append(True)
    return len(asked) == 3
  try:
    assert evaluator(params, 0, 0, should_stop) is None and len(asked) == 3
    assert evaluator(params, 5, 0)["eval_learner_steps"] == 5   # not asked to stop: a record
  finally:
    evaluator.close()


def test_a_resumed_replay_is_handed_over_once():
  """The supervisor copies a checkpoint's replay into shared memory and
  keeps no second copy for the whole run."""
  from jaxrl.runtime.run import Resume  # pylint: disable=import-outside-toplevel
  contents = {"agent_0": {"action": np.arange(4)}}
  resume = Resume(checkpoint=None, counters={}, replay=contents)
  assert resume.take_replay() is contents
  assert resume.replay is None and resume.take_replay() is None


def test_a_second_signal_in_a_deferred_block_raises_only_at_its_end():
  """While the supervisor starts or closes a child (``deferred``), a
  second Ctrl-C cannot leave it half done: it raises once the block ends."""
  from jaxrl.runtime.run import Interrupted  # pylint: disable=import-outside-toplevel
  interrupted = Interrupted()
  done = []
  try:
    with pytest.raises(KeyboardInterrupt):
      with interrupted.deferred():
        for _ in range(2):
          os.kill(os.getpid(), signal.SIGINT)
          time.sleep(0.05)   # the handler runs between bytecodes
        done.append(True)
    assert done == [True] and interrupted.signum == signal.SIGINT
    with interrupted.deferred():   # nothing pending any more
      pass
  finally:
    interrupted.restore()
