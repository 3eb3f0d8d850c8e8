"""DrQ's random shift (jaxrl.augment) and its use in Agent.train_step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jaxrl
from jaxrl.augment import random_shift

PAD = 4


def shifted(image, dy, dx):
  """numpy reference: image [H, W, C] shifted by (dy, dx), edges replicated:
  out[y, x] = image[clip(y + dy), clip(x + dx)]."""
  height, width = image.shape[:2]
  rows = np.clip(np.arange(height) + dy, 0, height - 1)
  cols = np.clip(np.arange(width) + dx, 0, width - 1)
  return image[rows][:, cols]


def shifts_of(images, out):
  """The (dy, dx) of each output image: the one shift within PAD that gives it."""
  found = []
  for image, result in zip(np.asarray(images), np.asarray(out)):
    matches = [(dy, dx) for dy in range(-PAD, PAD + 1) for dx in range(-PAD, PAD + 1)
               if np.array_equal(shifted(image, dy, dx), result)]
    assert len(matches) == 1, f"output is not the input shifted by at most {PAD}: {matches}"
    found.append(matches[0])
  return found


def random_images(batch, shape=(12, 11, 3), seed=0, dtype=np.uint8):
  return np.random.default_rng(seed).integers(0, 256, (batch, *shape)).astype(dtype)


class RandomShiftTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(np.uint8, np.float32)
  def test_shape_dtype_and_every_image_is_its_input_shifted_with_edges(self, dtype):
    images = random_images(16, dtype=dtype)
    out = self.variant(random_shift)(jax.random.PRNGKey(0), images)
    chex.assert_shape(out, images.shape)
    chex.assert_type(out, dtype)
    shifts_of(images, out)

  @chex.variants(with_jit=True, without_jit=True)
  def test_deterministic_for_a_key_and_different_for_another(self):
    images = random_images(16)
    shift = self.variant(random_shift)
    chex.assert_trees_all_equal(shift(jax.random.PRNGKey(1), images), shift(jax.random.PRNGKey(1), images))
    self.assertNotEqual(shifts_of(images, shift(jax.random.PRNGKey(1), images)),
                        shifts_of(images, shift(jax.random.PRNGKey(2), images)))

  def test_independent_per_sample_and_uniform_over_all_shifts(self):
    """The same image 4,050 times: each of the 81 shifts, -4..4 inclusive, ~50 times."""
    image = random_images(1, shape=(9, 10, 2))
    images = np.repeat(image, 81 * 50, axis=0)
    out = np.asarray(jax.jit(random_shift)(jax.random.PRNGKey(3), images))
    counts = {}
    for dy, dx in shifts_of(images, out):
      counts[dy, dx] = counts.get((dy, dx), 0) + 1
    self.assertEqual(len(counts), 81)
    self.assertLess(max(counts.values()), 90)    # ~ 50 +- 7 each
    self.assertGreater(min(counts.values()), 20)

  def test_a_frame_stack_moves_as_one(self):
    images = random_images(8, shape=(10, 10, 4))
    out = np.asarray(random_shift(jax.random.PRNGKey(4), images))
    for c in range(4):   # each channel alone shows the same shift as the whole stack
      self.assertEqual(shifts_of(images[..., c:c + 1], out[..., c:c + 1]), shifts_of(images, out))

  def test_pad_zero_is_the_identity(self):
    images = random_images(3)
    chex.assert_trees_all_equal(random_shift(jax.random.PRNGKey(0), images, pad=0), images)


def image_batch(seed=0, size=8, shape=(10, 10, 2)):
  rng = np.random.default_rng(seed)
  return jaxrl.Transition(
      obs=rng.integers(0, 256, (size, *shape), dtype=np.uint8),
      action=rng.integers(0, 3, size).astype(np.int32),
      reward=rng.normal(size=size).astype(np.float32),
      discount=np.full(size, 0.99, np.float32),
      next_obs=rng.integers(0, 256, (size, *shape), dtype=np.uint8),
      valid=np.ones(size, np.float32))


def image_agent(algo, augment):
  cfg = jaxrl.AgentConfig(algo=algo, hidden_sizes=(16,), augment=augment, num_tau_samples=3,
                          num_tau_prime_samples=3, num_quantile_samples=3, quantile_embedding_dim=4)
  return jaxrl.make_agent(cfg, (10, 10, 2), 3, obs_range=(0, 255))


ALGOS = parameterized.parameters("dqn", "iqn")


class TrainStepAugmentTest(parameterized.TestCase):

  @ALGOS
  def test_off_the_step_and_its_rng_are_as_without_augment(self, algo):
    agent = image_agent(algo, None)
    state, batch = agent.init(jax.random.PRNGKey(0)), image_batch()
    new_state, metrics = jax.jit(agent.train_step)(state, batch)
    rng, loss_key = jax.random.split(state.rng)
    chex.assert_trees_all_equal(new_state.rng, rng)      # existing runs reproduce
    loss, _ = agent._loss(state.params, state.target_params, jax.tree.map(jnp.asarray, batch), loss_key)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)

  @ALGOS
  def test_on_obs_and_next_obs_are_shifted_with_keys_of_their_own(self, algo):
    off, on = image_agent(algo, None), image_agent(algo, "random_shift")
    state, batch = off.init(jax.random.PRNGKey(0)), image_batch()
    _, metrics_off = jax.jit(off.train_step)(state, batch)
    new_state, metrics_on = jax.jit(on.train_step)(state, batch)
    self.assertNotAlmostEqual(float(metrics_on["loss"]), float(metrics_off["loss"]), places=4)
    # The documented keys: the loss's as without augment, then one for the shifts, split in two.
    rng, loss_key = jax.random.split(state.rng)
    rng, augment_key = jax.random.split(rng)
    obs_key, next_obs_key = jax.random.split(augment_key)
    chex.assert_trees_all_equal(new_state.rng, rng)
    augmented = batch._replace(obs=random_shift(obs_key, batch.obs), next_obs=random_shift(next_obs_key, batch.next_obs))
    self.assertNotEqual(shifts_of(batch.obs, augmented.obs), shifts_of(batch.next_obs, augmented.next_obs))
    loss, _ = on._loss(state.params, state.target_params, jax.tree.map(jnp.asarray, augmented), loss_key)
    np.testing.assert_allclose(metrics_on["loss"], loss, rtol=1e-5)

  def test_next_obs_alone_is_shifted_too(self):
    """A batch whose obs are one flat colour (unchanged by any shift): the
    loss still moves with augment, through next_obs."""
    off, on = image_agent("dqn", None), image_agent("dqn", "random_shift")
    batch = image_batch()._replace(obs=np.full((8, 10, 10, 2), 7, np.uint8))
    state = off.init(jax.random.PRNGKey(0))
    loss_off = jax.jit(off.train_step)(state, batch)[1]["loss"]
    loss_on = jax.jit(on.train_step)(state, batch)[1]["loss"]
    self.assertNotAlmostEqual(float(loss_on), float(loss_off), places=4)

  def test_vector_observations_are_a_value_error(self):
    cfg = jaxrl.AgentConfig(augment="random_shift")
    with pytest.raises(ValueError, match=r"^augment .*\(H, W, C\)"):
      jaxrl.make_agent(cfg, (4,), 2)
