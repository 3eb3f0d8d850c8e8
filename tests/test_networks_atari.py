"""The Atari networks: the Nature torso, its strided im2col conv, Dopamine's
IQN head and initialisers; MinAtar's conv torso left as it was."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

import jaxrl
from jaxrl import networks

ATARI, NUM_ACTIONS = (84, 84, 4), 6


def frames(batch, shape=ATARI, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, *shape), dtype=np.uint8)


def shapes(params):
  return jax.tree.map(jnp.shape, params)


def reference_convs(params, x):
  """Nature's three VALID convs with XLA's convolution (lax.conv), ReLU after
  each, flattened: [B, 84, 84, 4] float in [0, 1] -> [B, 3136]."""
  for i, stride in enumerate((4, 2, 1)):
    layer = params[f"Im2colConv_{i}"]
    x = jax.lax.conv_general_dilated(x, layer["kernel"], (stride, stride), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    x = jax.nn.relu(x + layer["bias"][None, None, None, :])
  return x.reshape(x.shape[0], -1)


def dense(layer, x):
  return x @ layer["kernel"] + layer["bias"].reshape((1,) * (x.ndim - 1) + (-1,))


class Im2colConvTest(parameterized.TestCase):

  @parameterized.parameters(
      ((2, 84, 84, 4), 32, 8, 4),      # Nature conv 1: space-to-depth, then col2im
      ((2, 20, 20, 32), 64, 4, 2),     # Nature conv 2: space-to-depth, then col2im
      ((2, 9, 9, 64), 64, 3, 1),       # Nature conv 3: im2col
      ((2, 10, 10, 4), 16, 3, 1),      # MinAtar: im2col
      ((2, 9, 9, 40), 4, 3, 1),        # stride 1, col2im
      ((2, 11, 13, 3), 5, 3, 2),       # a stride that does not divide the kernel: strided slices
      ((2, 17, 15, 3), 7, 5, 3),       # the same, and rows and columns left over
      ((2, 13, 12, 2), 8, 4, 2),       # space-to-depth with a row left over
  )
  def test_matches_flax_conv_and_its_gradients(self, shape, features, size, stride):
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    flax_conv = nn.Conv(features, (size, size), (stride, stride), padding="VALID")
    ours = networks.Im2colConv(features, (size, size), (stride, stride))
    params = flax_conv.init(jax.random.PRNGKey(0), x)
    chex.assert_trees_all_equal_shapes(params, ours.init(jax.random.PRNGKey(0), x))
    with jax.default_matmul_precision("highest"):
      expected = flax_conv.apply(params, x)
      chex.assert_trees_all_close(ours.apply(params, x), expected, rtol=1e-5, atol=1e-5)
      loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))   # non-uniform output gradient
      grads = jax.grad(loss(ours), argnums=(0, 1))(params, x)
      chex.assert_trees_all_close(grads, jax.grad(loss(flax_conv), argnums=(0, 1))(params, x), rtol=1e-4, atol=1e-4)


class TorsoTest(parameterized.TestCase):

  def test_nature_torso_for_atari_frames(self):
    torso = networks.make_torso(ATARI, (512,), (0, 255))
    self.assertIsInstance(torso, networks.NatureConvTorso)
    out, params = torso.init_with_output(jax.random.PRNGKey(0), frames(3))
    self.assertEqual(out.shape, (3, 512))
    self.assertEqual(shapes(params["params"]), {
        "Im2colConv_0": {"kernel": (8, 8, 4, 32), "bias": (32,)},
        "Im2colConv_1": {"kernel": (4, 4, 32, 64), "bias": (64,)},
        "Im2colConv_2": {"kernel": (3, 3, 64, 64), "bias": (64,)},
        "MLPTorso_0": {"Dense_0": {"kernel": (3136, 512), "bias": (512,)}}})

  def test_nature_torso_is_convs_relu_flatten_dense(self):
    torso = networks.NatureConvTorso((512,), (0.0, 255.0))
    obs = frames(2)
    params = torso.init(jax.random.PRNGKey(0), obs)["params"]
    state = reference_convs(params, obs.astype(np.float32) / 255.0)
    expected = jax.nn.relu(dense(params["MLPTorso_0"]["Dense_0"], state))
    with jax.default_matmul_precision("highest"):
      chex.assert_trees_all_close(torso.apply({"params": params}, obs), expected, rtol=1e-4, atol=1e-5)
      state_only = networks.NatureConvTorso((), (0.0, 255.0)).apply({"params": params}, obs)
      chex.assert_trees_all_close(state_only, state, rtol=1e-4, atol=1e-5)

  def test_frames_are_scaled_by_obs_range(self):
    obs = frames(2)
    torso = networks.NatureConvTorso((16,), (0.0, 255.0))
    params = torso.init(jax.random.PRNGKey(0), obs)
    unscaled = networks.NatureConvTorso((16,), None).apply(params, obs.astype(np.float32) / 255.0)
    chex.assert_trees_all_close(torso.apply(params, obs), unscaled, rtol=1e-5, atol=1e-6)

  @parameterized.parameters(((36, 36, 4), networks.NatureConvTorso), ((84, 84, 1), networks.NatureConvTorso),
                            ((35, 84, 4), networks.ConvTorso), ((10, 10, 4), networks.ConvTorso),
                            ((10, 10, 10), networks.ConvTorso), ((4,), networks.MLPTorso))
  def test_torso_chosen_by_shape(self, shape, expected):
    torso = networks.make_torso(shape, (8,), (0, 1) if len(shape) == 3 else None)
    self.assertIsInstance(torso, expected)
    self.assertEqual(torso.init_with_output(jax.random.PRNGKey(0), jnp.zeros((2, *shape)))[0].shape, (2, 8))

  @parameterized.parameters(4, 10)
  def test_minatar_conv_torso_and_params_layout(self, channels):
    """One 3x3 conv of 16 (its params as flax.linen.Conv's), dense, head; IQN's tau embedding
    multiplies the dense layer, which feeds its output layer: as deep as DQN's network."""
    for algo in ("dqn", "iqn"):
      agent = jaxrl.make_agent(jaxrl.AgentConfig(algo=algo, hidden_sizes=(128,)), (10, 10, channels), NUM_ACTIONS,
                               obs_range=(0, 1))
      params = agent.init(jax.random.PRNGKey(0)).params["params"]
      self.assertEqual(shapes(params["torso"]), {
          "Im2colConv_0": {"kernel": (3, 3, channels, 16), "bias": (16,)},
          "MLPTorso_0": {"Dense_0": {"kernel": (8 * 8 * 16, 128), "bias": (128,)}}})
      head = ({"Dense_0": {"kernel": (128, NUM_ACTIONS), "bias": (NUM_ACTIONS,)}} if algo == "dqn" else
              {"Dense_0": {"kernel": (64, 128), "bias": (128,)},
               "Dense_1": {"kernel": (128, NUM_ACTIONS), "bias": (NUM_ACTIONS,)}})
      self.assertEqual({k: v for k, v in shapes(params).items() if k != "torso"}, head)


class AtariNetworkTest(parameterized.TestCase):

  def test_dqn_network_is_the_nature_network(self):
    agent = jaxrl.make_agent(jaxrl.AgentConfig(hidden_sizes=(512,)), ATARI, NUM_ACTIONS, obs_range=(0, 255))
    params = agent.init(jax.random.PRNGKey(0)).params["params"]
    self.assertEqual(shapes(params["Dense_0"]), {"kernel": (512, NUM_ACTIONS), "bias": (NUM_ACTIONS,)})
    obs = frames(2)
    state = reference_convs(params["torso"], obs.astype(np.float32) / 255.0)
    expected = dense(params["Dense_0"], jax.nn.relu(dense(params["torso"]["MLPTorso_0"]["Dense_0"], state)))
    with jax.default_matmul_precision("highest"):
      chex.assert_trees_all_close(agent.q_values({"params": params}, obs), expected, rtol=1e-4,
                                  atol=1e-5)

  def test_iqn_head_is_dopamines(self):
    """Dopamine's ImplicitQuantileNetwork: the tau embedding, ReLU(Dense(3136)(cos(pi i tau))),
    i = 1..64, multiplies the flattened convs; then dense 512, ReLU, dense A."""
    cfg = jaxrl.AgentConfig(algo="iqn", hidden_sizes=(512,), quantile_embedding_dim=64)
    agent = jaxrl.make_agent(cfg, ATARI, NUM_ACTIONS, obs_range=(0, 255))
    params = agent.init(jax.random.PRNGKey(0)).params["params"]
    self.assertEqual({k: v for k, v in shapes(params).items() if k != "torso"}, {
        "Dense_0": {"kernel": (64, 3136), "bias": (3136,)},
        "Dense_1": {"kernel": (3136, 512), "bias": (512,)},
        "Dense_2": {"kernel": (512, NUM_ACTIONS), "bias": (NUM_ACTIONS,)}})
    self.assertNotIn("MLPTorso_0", params["torso"])
    obs, taus = frames(2), jnp.array([[0.1, 0.5, 0.93], [0.0, 0.25, 1.0]])
    state = reference_convs(params["torso"], obs.astype(np.float32) / 255.0)                 # [B, 3136]
    cos = jnp.cos(jnp.pi * taus[:, :, None] * jnp.arange(1, 65)[None, None, :])              # [B, N, 64]
    x = state[:, None, :] * jax.nn.relu(dense(params["Dense_0"], cos))
    expected = dense(params["Dense_2"], jax.nn.relu(dense(params["Dense_1"], x)))
    with jax.default_matmul_precision("highest"):
      chex.assert_trees_all_close(agent.network.apply({"params": params}, obs, taus), expected, rtol=1e-4,
                                  atol=1e-5)

  @parameterized.parameters("dqn", "iqn")
  def test_dopamine_initialisers(self, algo):
    """Every kernel of the Atari DQN is Glorot uniform, of the IQN variance
    scaling (1/sqrt(3), fan in, uniform); every bias is zero."""
    cfg = jaxrl.AgentConfig(algo=algo, hidden_sizes=(512,))
    params = jaxrl.make_agent(cfg, ATARI, NUM_ACTIONS, obs_range=(0, 255)).init(jax.random.PRNGKey(0)).params
    kernels = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
      leaf = np.asarray(leaf)
      if path[-1].key == "bias":
        np.testing.assert_array_equal(leaf, 0.0)
        continue
      kernels += 1
      fan_in, fan_out = np.prod(leaf.shape[:-1]), np.prod(leaf.shape[:-2]) * leaf.shape[-1]
      limit = np.sqrt(6 / (fan_in + fan_out)) if algo == "dqn" else np.sqrt(3 / np.sqrt(3) / fan_in)
      self.assertLessEqual(np.abs(leaf).max(), limit, path)
      # Uniform on [-limit, limit]: the largest of n draws is near the limit, the std is limit / sqrt(3).
      self.assertGreater(np.abs(leaf).max(), 0.9 * limit, path)
      np.testing.assert_allclose(leaf.std(), limit / np.sqrt(3), rtol=0.2 if leaf.size < 500 else 0.05)
    self.assertEqual(kernels, 5 if algo == "dqn" else 6)

  @parameterized.parameters("dqn", "iqn")
  def test_train_step_on_uint8_frames(self, algo):
    cfg = jaxrl.AgentConfig(algo=algo, hidden_sizes=(32,), num_tau_samples=2, num_tau_prime_samples=2,
                            num_quantile_samples=2, quantile_embedding_dim=8)
    agent = jaxrl.make_agent(cfg, ATARI, NUM_ACTIONS, obs_range=(0, 255))
    state = agent.init(jax.random.PRNGKey(0))
    batch = jaxrl.Transition(obs=frames(2), action=np.array([1, 5], np.int32), reward=np.array([1.0, -1.0], np.float32),
                             discount=np.array([0.99, 0.0], np.float32), next_obs=frames(2, seed=1),
                             valid=np.ones(2, np.float32))
    new_state, metrics = jax.jit(agent.train_step)(state, batch)
    self.assertTrue(np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0)
    for old, new in zip(jax.tree.leaves(state.params["params"]["torso"]),
                        jax.tree.leaves(new_state.params["params"]["torso"])):
      self.assertFalse(np.allclose(old, new))     # the gradient reaches every conv
    q = agent.q_values(new_state.params, batch.obs, jax.random.PRNGKey(1))
    self.assertEqual(q.shape, (2, NUM_ACTIONS))


def test_custom_network_contract_unchanged_for_atari_iqn():
  """(obs, taus) -> [B, N, A] for the built-in Atari IQN network too."""
  cfg = jaxrl.AgentConfig(algo="iqn", hidden_sizes=(16,), quantile_embedding_dim=4)
  agent = jaxrl.make_agent(cfg, ATARI, NUM_ACTIONS, obs_range=(0, 255))
  params = agent.init(jax.random.PRNGKey(0)).params
  assert agent.network.apply(params, frames(2), jnp.full((2, 5), 0.5)).shape == (2, 5, NUM_ACTIONS)
