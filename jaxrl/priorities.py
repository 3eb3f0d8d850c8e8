"""Proportional prioritized replay (Schaul et al. 2016) the Ape-X way
(Horgan et al. 2018): the learner samples a shared replay in proportion to
priority**alpha, from a sum tree of its own.

The learner process is the only one that samples and updates priorities,
so the tree lives there and takes no lock: writers (actors) store each
transition's first priority beside it in shared memory, and at each sample
the ``PrioritizedSampler`` takes in the rows written since its last one.

Numpy only (no jax), batched operations only (no loop over rows).
"""

from __future__ import annotations

import numpy as np

from jaxrl.replay import SharedReplay
from jaxrl.transition import Transition

# Children per node of a SumTree, and the most sums of its top level. At 1M
# rows (levels of 1M, 31,264 and 977 sums), an update of 32 rows and a sample
# of 32 take 68 us on a loaded 2-core VM, against 618 us for a binary tree
# (fanout 2: ten levels of numpy calls on 32 items), 148 at fanout 8 and 85 at
# 128 (scripts/benchmark.py --sections per); np.cumsum and np.searchsorted over
# all rows take 3.7 ms.
FANOUT = 32
TOP = 1024


class SumTree:
  """Non-negative values over ``size`` leaves and their sums, in a tree of
  ``fanout`` children per node: level 0 holds the leaves, each level above
  the sums of the one below, padded with zeros to whole nodes, up to the
  first of at most ``top`` sums, which ``find`` searches by its running sum
  (one ``np.cumsum`` and ``np.searchsorted`` in place of the levels above).
  Every sum is recomputed from its children (float64), never adjusted by
  differences, so it carries no drift.
  """

  def __init__(self, size: int, fanout: int = FANOUT, top: int = TOP):
    self.size, self._fanout = size, fanout
    self._levels = [np.zeros(-(-size // fanout) * fanout)]
    while len(self._levels[-1]) > top:
      nodes = len(self._levels[-1]) // fanout
      self._levels.append(np.zeros(nodes if nodes <= top else -(-nodes // fanout) * fanout))

  @property
  def leaves(self) -> np.ndarray:
    """float64 [size], read-only view."""
    view = self._levels[0][:self.size]
    view.flags.writeable = False
    return view

  @property
  def total(self) -> float:
    """The sum of all leaves."""
    return float(self._levels[-1].sum())

  def update(self, rows: np.ndarray, values: np.ndarray) -> None:
    """Sets leaves ``rows`` [K] to ``values`` [K] (>= 0; of a row given twice, the last)."""
    fanout = self._fanout
    self._levels[0][rows] = values
    index = np.asarray(rows)
    for below, level in zip(self._levels, self._levels[1:]):
      index = index // fanout
      children = below.reshape(-1, fanout)
      if len(index) >= len(children):   # as many nodes as the level holds: all of them
        level[:len(children)] = children.sum(1)
      else:
        level[index] = children[index].sum(1)

  def find(self, targets: np.ndarray) -> np.ndarray:
    """The rows int64 [K] whose span of the leaves' running sum holds each
    of ``targets`` [K] (in [0, total)): the first row whose inclusive prefix
    sum exceeds the target. A row of value 0 is never found; a target at or
    past the total (by rounding) finds the last row of positive value."""
    fanout, top = self._fanout, self._levels[-1]
    targets = np.asarray(targets, np.float64)
    running = top.cumsum()
    node = np.searchsorted(running, targets, side="right")
    past = node == len(top)
    if past.any():
      node[past] = np.flatnonzero(top)[-1]
    targets = targets - np.where(node > 0, running[node - 1], 0.0)
    offset = np.arange(len(targets)) * fanout
    for level in reversed(self._levels[:-1]):
      children = level.reshape(-1, fanout)[node]   # [K, fanout]
      running = children.cumsum(1)
      child = np.argmax(running > targets[:, None], axis=1)
      past = running[:, -1] <= targets
      if past.any():
        child[past] = fanout - 1 - np.argmax(children[past, ::-1] > 0, axis=1)
      chosen = offset + child
      targets = targets - (running.ravel()[chosen] - children.ravel()[chosen])
      node = node * fanout + child
    return node

  def sample(self, batch_size: int, rng: np.random.Generator, batches: int = 1) -> np.ndarray:
    """Rows int64 [batches * batch_size], each batch stratified (Schaul et
    al.): one uniform draw in each of ``batch_size`` equal segments of the
    total. Raises ValueError if the total is 0."""
    total = self.total
    if not total > 0:
      raise ValueError("cannot sample rows of total priority 0")
    strata = np.tile(np.arange(batch_size), batches)
    return self.find((strata + rng.random(len(strata))) * (total / batch_size))


def importance_weights(priorities: np.ndarray, beta: float) -> np.ndarray:
  """(N P(i))**-beta over its largest in the batch, for the sampled rows'
  ``priorities`` [..., B] (> 0; batches on the last axis): P(i) = p_i / sum p,
  so N and the sum cancel and the weight is (p_i / min_j p_j)**-beta."""
  return (priorities / priorities.min(-1, keepdims=True)) ** -beta


def importance_exponent(start: float, env_steps: int, horizon: int | None) -> float:
  """beta, annealed linearly from ``start`` to 1 over ``horizon`` env steps
  (``stop.env_steps``); ``start`` throughout if horizon is None."""
  if horizon is None:
    return start
  return start + (1.0 - start) * min(env_steps / horizon, 1.0)


class PrioritizedSampler:
  """Samples a ``SharedReplay`` (either layout) in proportion to
  ``(priority + epsilon)**exponent``: the replay's sampler in the learner
  process, in place of its uniform ``sample``.

  Its ``SumTree`` has a leaf per row of the replay (a slot; for
  ``FrameStackReplay`` a cell), valid for the row's content of one version;
  rows holding no transition have 0. Each ``sample`` first takes in the rows
  written since the last (``replay.changed_rows``): a row's priority is the
  one its writer stored, or where none was given the largest so far
  (Schaul et al.'s default, 1 at first; of the rows taken in together,
  those given count as before). ``update`` sets the priorities of
  sampled rows from their TD errors, unless a row's content has changed
  since it was sampled. Both are kept in the replay's shared memory as well
  (``replay.learn_priorities``), so that ``replay.contents()`` saves them
  and a sampler made on a restored replay has the tree of the saved one.
  """

  def __init__(self, replay: SharedReplay, exponent: float, epsilon: float):
    self.replay, self._exponent, self._epsilon = replay, exponent, epsilon
    self.tree = SumTree(replay.capacity)
    self._version = np.full(replay.capacity, -1, np.int64)   # of each leaf's content; -1: none
    self._marks = replay.marks()
    self._take(np.arange(replay.capacity))

  def _leaf(self, priority: np.ndarray, version: np.ndarray) -> np.ndarray:
    """Leaf values: (priority + epsilon)**exponent, 0 where version is -1."""
    return np.where(version >= 0, (priority.astype(np.float64) + self._epsilon) ** self._exponent, 0.0)

  def _take(self, rows: np.ndarray) -> None:
    """Reads the stored priorities of ``rows`` into the tree, keeping them
    as the learner's: a row without one gets the largest so far, those
    taken with it included, and keeps it after a checkpoint."""
    priority, version = self.replay.stored_priorities(rows)
    held = version >= 0
    priority[held] = self.replay.learn_priorities(rows[held], version[held], priority[held])
    self.tree.update(rows, self._leaf(priority, version))
    self._version[rows] = version

  def sample(self, batch_size: int, rng: np.random.Generator, beta: float,
             batches: int = 1) -> tuple[Transition, np.ndarray, np.ndarray, np.ndarray]:
    """``batches`` stratified batches of ``batch_size``, one after the other.

    Returns:
      ``(batch, policy_step, rows, versions)``: as ``replay.sample``'s, with
      ``weight`` float32 [batches * batch_size] the importance weights
      (``importance_weights`` within each batch); and the rows' identities
      for ``update``: row int64 and version int64 (-1 for an invalid row).
      While no row holds a transition the replay serves (a writer lapping
      all it had taken in), all rows are padding, of weight 1.
    """
    marks = self.replay.marks()
    cleared, written = self.replay.changed_rows(self._marks, marks)
    self._marks = marks
    if len(cleared):
      self.tree.update(cleared, 0.0)
      self._version[cleared] = -1
    if len(written):
      self._take(written)
    if self.tree.total > 0:
      rows = self.tree.sample(batch_size, rng, batches)
      versions = self._version[rows]
      weight = importance_weights(self.tree.leaves[rows].reshape(batches, batch_size), beta)
    else:
      rows, versions = np.zeros(batches * batch_size, np.int64), np.full(batches * batch_size, -1)
      weight = np.ones(batches * batch_size)
    batch, policy_step, valid = self.replay.read(rows, versions)
    if not valid.all():   # changed since taken in, or never complete: out of the tree until rewritten
      self.tree.update(rows[~valid], 0.0)
      self._version[rows[~valid]] = versions[~valid] = -1
    return batch._replace(weight=weight.reshape(-1).astype(np.float32)), policy_step, rows, versions

  def update(self, rows: np.ndarray, versions: np.ndarray, td_error: np.ndarray) -> None:
    """Sets the priorities of sampled ``rows`` [K] to ``|td_error|`` [K],
    where the row still holds the content of ``versions`` [K] (``sample``'s)
    and the error is finite; of a row given twice, the last."""
    priority = np.abs(np.asarray(td_error, np.float32))
    keep = (versions >= 0) & (self._version[rows] == versions) & np.isfinite(priority)
    rows, versions, priority = rows[keep], versions[keep], priority[keep]
    self.replay.learn_priorities(rows, versions, priority)
    self.tree.update(rows, self._leaf(priority, versions))
