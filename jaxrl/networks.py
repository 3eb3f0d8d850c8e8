"""Flax networks: torsos chosen from the observation shape, Q and IQN heads.

Modules are pure functions of (params, inputs): no dropout, no batch norm,
no mutable collections, so there is no train/eval mode to get wrong.
Anything stochastic (IQN's taus) is an explicit input.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]
DEFAULT_INIT: Initializer = nn.initializers.lecun_normal()   # flax's own, of every layer but the Nature torso's
# Dopamine's JAX Atari networks (dopamine/jax/networks.py): NatureDQNNetwork
# initialises every kernel with Glorot uniform, ImplicitQuantileNetwork with
# this variance scaling; biases are zero in both.
DQN_ATARI_INIT: Initializer = nn.initializers.xavier_uniform()
IQN_ATARI_INIT: Initializer = nn.initializers.variance_scaling(1.0 / 3.0**0.5, "fan_in", "uniform")
NATURE_MIN_SIZE = 36   # the smallest H and W the Nature torso's three VALID convs accept


def _scaled(obs: jax.Array, obs_range: tuple[float, float] | None) -> jax.Array:
  """obs as float32, mapped from [low, high] = obs_range to [0, 1] (None: unscaled)."""
  x = obs.astype(jnp.float32)
  if obs_range is None:
    return x
  low, high = obs_range
  return (x - low) * (1.0 / (high - low))


class MLPTorso(nn.Module):
  """Flattens [B, ...] observations and applies ReLU dense layers -> [B, hidden_sizes[-1]]
  (no layers: the flattened float32 observations)."""
  hidden_sizes: Sequence[int]
  kernel_init: Initializer = DEFAULT_INIT

  @nn.compact
  def __call__(self, obs):
    x = obs.reshape((obs.shape[0], -1)).astype(jnp.float32)
    for width in self.hidden_sizes:
      x = nn.relu(nn.Dense(width, kernel_init=self.kernel_init)(x))
    return x


def _patches(x: jax.Array, kh: int, kw: int, sh: int, sw: int) -> jax.Array:
  """The kh*kw (strided) views of [B, H, W, C] that a VALID conv with
  strides (sh, sw) multiplies by each kernel tap, concatenated on the channel
  axis in the kernel's (kh, kw, C) order -> [B, H', W', kh*kw*C]."""
  _, height, width, _ = x.shape
  out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
  return jnp.concatenate([x[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]
                          for i in range(kh) for j in range(kw)], axis=-1)


class Im2colConv(nn.Module):
  """A VALID convolution [B, H, W, C] -> [B, H', W', features], H' = (H -
  kh) // sh + 1 (W' alike), as one matmul, in whichever of two forms
  materialises less:

  - im2col: the patches, the kh*kw shifted (strided) views of the input
    concatenated on the channel axis [B, H', W', kh*kw*C], times the kernel
    [kh, kw, C, features] read as [kh*kw*C, features];
  - col2im (stride 1, where H*W*features < H'*W'*C): every input pixel
    times every tap of the kernel, [B*H*W, C] @ [C, kh*kw*features], then
    the sum over taps of the shifted views of that product.

  A stride s that divides the kernel (Atari's 8x8 / 4 and 4x4 / 2) is
  first folded away: a space-to-depth reshape of the input into s x s
  blocks [B, H/s, W/s, s*s*C] makes it a stride-1 conv with a (kh/s) x
  (kw/s) kernel.

  Same maths and parameters (``kernel``, ``bias``) as ``flax.linen.Conv``
  with padding "VALID", and faster on XLA's CPU backend: the kernel's
  gradient becomes one matmul instead of a convolution over the batch, and
  XLA's convolutions slow down inside a ``lax.scan``. The DQN train_step of
  the MinAtar network (im2col), batch 32, fused 8 to a scan as the runtime
  runs it, is 3x (4 channels) to 6x (10) faster (``scripts/benchmark.py
  --sections conv``); jitted alone, 1.2x (C = 4: 720 / 620 updates/s).
  Atari's Nature network: see ``NatureConvTorso``.
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  kernel_init: Initializer = DEFAULT_INIT

  @nn.compact
  def __call__(self, x):
    (kh, kw), (sh, sw) = self.kernel_size, self.strides
    batch, height, width, channels = x.shape
    out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
    kernel = self.param("kernel", self.kernel_init, (kh, kw, channels, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    if (sh, sw) != (1, 1) and kh % sh == 0 and kw % sw == 0:
      # Tap (a * sh + p, b * sw + q) of output (y, x) reads block (y + a, x + b) at offset (p, q).
      height, width = out_h + kh // sh - 1, out_w + kw // sw - 1          # the blocks read
      x = x[:, :height * sh, :width * sw, :].reshape(batch, height, sh, width, sw, channels)
      x = x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, height, width, sh * sw * channels)
      kernel = kernel.reshape(kh // sh, sh, kw // sw, sw, channels, self.features).transpose(0, 2, 1, 3, 4, 5)
      kh, kw, sh, sw, channels = kh // sh, kw // sw, 1, 1, sh * sw * channels
      kernel = kernel.reshape(kh, kw, channels, self.features)
    if (sh, sw) == (1, 1) and height * width * self.features < out_h * out_w * channels:
      taps = x.reshape(-1, channels) @ kernel.transpose(2, 0, 1, 3).reshape(channels, kh * kw * self.features)
      taps = taps.reshape(batch, height, width, kh * kw, self.features)
      y = sum(taps[:, i:i + out_h, j:j + out_w, i * kw + j, :] for i in range(kh) for j in range(kw))
      return y + bias[None, None, None, :]
    patches = _patches(x, kh, kw, sh, sw)                                 # [B, H', W', kh*kw*C]
    y = patches.reshape(-1, kh * kw * channels) @ kernel.reshape(-1, self.features) + bias[None, :]
    return y.reshape(batch, out_h, out_w, self.features)


class ConvTorso(nn.Module):
  """The MinAtar paper's DQN torso for [B, H, W, C] frames: one 3x3 conv
  with 16 channels (stride 1, VALID), ReLU, then the MLP torso on the
  flattened features -> [B, hidden_sizes[-1]].

  Frames are scaled to [0, 1] first by the observation space's bounds
  ``obs_range = (low, high)``: a uint8 frame in [0, 255] and a bool frame
  in [0, 1] of the same image give the same features. None: no scaling.
  """
  hidden_sizes: Sequence[int]
  obs_range: tuple[float, float] | None = None
  channels: int = 16
  conv_layer: ClassVar[Callable[..., nn.Module]] = Im2colConv   # (features) -> the conv module

  @nn.compact
  def __call__(self, obs):
    x = nn.relu(self.conv_layer(self.channels)(_scaled(obs, self.obs_range)))
    return MLPTorso(self.hidden_sizes)(x)


class NatureConvTorso(nn.Module):
  """The Nature DQN torso (Mnih et al. 2015) for [B, H, W, C] frames
  (Atari's 84x84x4): convs of 32 8x8 stride 4, 64 4x4 stride 2 and 64 3x3
  stride 1 (VALID, ReLU), flattened (7x7x64 = 3136 at 84x84), then ReLU
  dense layers of ``hidden_sizes`` (Nature: (512,)) -> [B, hidden_sizes[-1]];
  ``hidden_sizes = ()`` gives the flattened conv features [B, 3136], the
  "state" that Dopamine's IQN head multiplies with the tau embedding.

  Frames are scaled to [0, 1] by ``obs_range`` as in ``ConvTorso``; every
  kernel is initialised by ``kernel_init``, biases are zero.

  ``conv_layer`` is ``Im2colConv``: on XLA's CPU backend it trains as fast
  as ``flax.linen.Conv`` or faster, and ``flax.linen.Conv`` is 8-10x
  slower inside the ``lax.scan`` of fused learner steps
  (``learner.updates_per_call``). Updates/s at batch 32, im2col / flax
  (``scripts/benchmark.py --sections nature``: medians of 5; 2-core Intel
  Xeon VM with AVX-512 and AMX, jax 0.10.2, no XLA_FLAGS):

  ==============  ===================  ===================
  train_step      jitted alone         fused x4 (scan)
  ==============  ===================  ===================
  DQN             33.7 / 28.0 (1.2x)   39.5 / 3.37 (11.7x)
  IQN (N = 64)    4.45 / 4.46 (1.0x)   4.94 / 2.09 (2.4x)
  ==============  ===================  ===================

  Pinned to one core (``taskset``) the two are even alone (DQN: 15.4 / 14.7).
  IQN's time goes to its 3136 x 512 dense layer on B x N rows.
  """
  hidden_sizes: Sequence[int]
  obs_range: tuple[float, float] | None = None
  kernel_init: Initializer = DQN_ATARI_INIT
  conv_layer: ClassVar[Callable[..., nn.Module]] = Im2colConv   # (features, kernel_size, strides, kernel_init)

  @nn.compact
  def __call__(self, obs):
    x = _scaled(obs, self.obs_range)
    for features, size, stride in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
      x = nn.relu(self.conv_layer(features, (size, size), (stride, stride), kernel_init=self.kernel_init)(x))
    return MLPTorso(self.hidden_sizes, self.kernel_init)(x)


def is_nature_shape(obs_shape: Sequence[int]) -> bool:
  """True for frames (H, W, C) with H, W >= 36, large enough for the Nature torso."""
  return len(obs_shape) == 3 and min(obs_shape[:2]) >= NATURE_MIN_SIZE


def make_torso(obs_shape: Sequence[int], hidden_sizes: Sequence[int],
               obs_range: tuple[float, float] | None = None) -> nn.Module:
  """MLP for vector observations (rank 1, unscaled); for HxWxC frames (rank
  3, scaled to [0, 1] by ``obs_range``) the Nature torso where H, W >= 36
  (Atari's 84x84) and the MinAtar conv torso below (10x10)."""
  obs_range = None if obs_range is None else tuple(map(float, obs_range))
  if len(obs_shape) == 1:
    return MLPTorso(tuple(hidden_sizes))
  if is_nature_shape(obs_shape):
    return NatureConvTorso(tuple(hidden_sizes), obs_range)
  if len(obs_shape) == 3:
    return ConvTorso(tuple(hidden_sizes), obs_range)
  raise ValueError(f"obs_shape must be (D,) or (H, W, C), got {tuple(obs_shape)}")


class DuelingHead(nn.Module):
  """The dueling head (Wang et al. 2016, eq. 9): features [..., D] ->
  Q [..., num_actions] = V + A - mean_a A, with V [..., 1] and A [..., num_actions]
  its two streams (params ``value`` and ``advantage``). With ``hidden`` > 0
  each stream first has its own ReLU dense layer of that width
  (``value_hidden``, ``advantage_hidden``), as in Wang et al.; with 0 both
  are linear on the shared features, as in Dopamine's Rainbow.

  Subtracting A's mean over actions makes V and A identifiable: Q - mean_a Q
  is A - mean_a A, and V moves every action's Q alike.
  """
  num_actions: int
  kernel_init: Initializer = DEFAULT_INIT
  hidden: int = 0

  @nn.compact
  def __call__(self, x, phi=None):
    """x [..., D] -> Q [..., A]; IQN's separate streams pass ``phi``, the tau
    embedding [B, N, hidden] each stream's hidden layer is multiplied by
    (x [B, D] -> [B, N, A])."""
    def stream(name: str, width: int):
      h = x
      if self.hidden:
        h = nn.relu(nn.Dense(self.hidden, kernel_init=self.kernel_init, name=f"{name}_hidden")(x))
      if phi is not None:
        h = h[:, None, :] * phi
      return nn.Dense(width, kernel_init=self.kernel_init, name=name)(h)
    value = stream("value", 1)                        # [..., 1]
    advantage = stream("advantage", self.num_actions)  # [..., A]
    return value + advantage - jnp.mean(advantage, axis=-1, keepdims=True)


def _output_layer(num_actions: int, dueling: bool, kernel_init: Initializer, dueling_hidden: int = 0) -> nn.Module:
  """The last layer of a Q or IQN network: linear, or ``DuelingHead`` (its
  streams' hidden width ``dueling_hidden``).

  Called inside a compact ``__call__``: the linear one is that module's next
  ``Dense_<i>``, so networks without dueling keep the params layout they
  always had; the dueling one is ``head`` (``head/value``, ``head/advantage``).
  """
  if dueling:
    return DuelingHead(num_actions, kernel_init, dueling_hidden, name="head")
  return nn.Dense(num_actions, kernel_init=kernel_init)


class QNetwork(nn.Module):
  """Q(obs): [B, *obs_shape] -> float32 [B, num_actions]: the torso, then a
  linear layer, or with ``dueling`` the ``DuelingHead`` on the torso's
  features (its streams' hidden width ``dueling_hidden``)."""
  torso: nn.Module
  num_actions: int
  kernel_init: Initializer = DEFAULT_INIT
  dueling: bool = False
  dueling_hidden: int = 0

  @nn.compact
  def __call__(self, obs):
    return _output_layer(self.num_actions, self.dueling, self.kernel_init, self.dueling_hidden)(self.torso(obs))


class IQNNetwork(nn.Module):
  """Implicit quantile network (Dabney et al. 2018, arXiv:1806.06923).

  Z(obs, tau): obs [B, *obs_shape], taus [B, N] in [0, 1] ->
  quantile values float32 [B, N, num_actions].

  phi(tau)_j = ReLU(sum_i cos(pi * i * tau) w_ij + b_j), i = f..f+E-1 with
  f = first_frequency (0 as in the paper, 1 as in Dopamine) and E =
  embedding_dim; the torso output psi(obs) [B, D] is multiplied elementwise
  with phi [B, N, D], then ReLU dense layers of ``hidden_sizes`` and the
  linear output layer follow; with ``dueling`` the ``DuelingHead`` in its
  place, per quantile: Z(obs, tau)_a = V(obs, tau) + A(obs, tau)_a -
  mean_a' A(obs, tau)_a'. With ``dueling_hidden`` the torso's last hidden
  layer is the streams' own (``make_network``): phi has their width and
  multiplies each stream's hidden features in place of psi's.

  Either way the network is as deep as DQN's on the same torso. The MLP and
  MinAtar torsos end in their dense layers and take the default (): phi
  multiplies the last hidden layer, which feeds the output layer. (A further
  dense layer after the product held MinAtar Seaquest and Asterix back:
  benchmarks/README.md.) For Atari the torso is the Nature convs alone (D =
  3136) and ``hidden_sizes = (512,)``, Dopamine's ImplicitQuantileNetwork.
  """
  torso: nn.Module
  num_actions: int
  embedding_dim: int
  hidden_sizes: Sequence[int] = ()
  first_frequency: int = 0
  kernel_init: Initializer = DEFAULT_INIT
  dueling: bool = False
  dueling_hidden: int = 0

  @nn.compact
  def __call__(self, obs, taus):
    dense = lambda width: nn.Dense(width, kernel_init=self.kernel_init)
    psi = self.torso(obs)                                                    # [B, D]
    width = self.dueling_hidden or psi.shape[-1]
    i = jnp.arange(self.first_frequency, self.first_frequency + self.embedding_dim, dtype=jnp.float32)  # [E]
    cos = jnp.cos(jnp.pi * taus[:, :, None] * i[None, None, :])               # [B, N, E]
    phi = nn.relu(dense(width)(cos))                                         # [B, N, D]
    if self.dueling_hidden:   # Each stream's own hidden layer [B, D], times phi.
      return DuelingHead(self.num_actions, self.kernel_init, self.dueling_hidden, name="head")(psi, phi)
    x = psi[:, None, :] * phi                                                # [B, N, D]
    for hidden in self.hidden_sizes:
      x = nn.relu(dense(hidden)(x))
    return _output_layer(self.num_actions, self.dueling, self.kernel_init)(x)  # [B, N, A]


def make_network(algo: str, obs_shape: Sequence[int], num_actions: int, hidden_sizes: Sequence[int],
                 obs_range: tuple[float, float] | None = None, embedding_dim: int = 64,
                 dueling: bool = False) -> nn.Module:
  """jaxrl's network for ``algo`` ("dqn": ``QNetwork``, obs -> [B, A];
  "iqn": ``IQNNetwork``, (obs, taus) -> [B, N, A]) on ``make_torso``'s torso.

  Atari-sized frames (``is_nature_shape``) get Dopamine's networks: for DQN
  the Nature torso with ``hidden_sizes`` and Glorot-uniform kernels; for IQN
  the Nature convs as the state, the tau embedding of its width (cosines
  i = 1..E) multiplied into it, then ``hidden_sizes`` and the output, every
  kernel from ``IQN_ATARI_INIT``.

  ``dueling``: the output layer is the ``DuelingHead``, on every torso;
  without it the params are laid out as they always were. The last of
  ``hidden_sizes`` leaves the torso and each stream has its own hidden
  layer of that width, as in Wang et al.; for IQN each stream's hidden
  layer is multiplied by the tau embedding (1.3x the cost of an update on
  MinAtar; benchmarks/README.md). IQN on the Nature torso keeps linear
  streams on its last hidden layer, as in Dopamine: that layer runs on
  B x N rows after the tau product, and a copy per stream would double it.
  """
  hidden_sizes = tuple(hidden_sizes)
  dueling_hidden = 0
  if dueling and hidden_sizes and (algo == "dqn" or not is_nature_shape(obs_shape)):
    hidden_sizes, dueling_hidden = hidden_sizes[:-1], hidden_sizes[-1]
  if is_nature_shape(obs_shape):
    obs_range = None if obs_range is None else tuple(map(float, obs_range))
    if algo == "dqn":
      return QNetwork(NatureConvTorso(hidden_sizes, obs_range, DQN_ATARI_INIT), num_actions, DQN_ATARI_INIT,
                      dueling=dueling, dueling_hidden=dueling_hidden)
    return IQNNetwork(NatureConvTorso((), obs_range, IQN_ATARI_INIT), num_actions, embedding_dim,
                      hidden_sizes=hidden_sizes, first_frequency=1, kernel_init=IQN_ATARI_INIT, dueling=dueling)
  torso = make_torso(obs_shape, hidden_sizes, obs_range)
  if algo == "dqn":
    return QNetwork(torso, num_actions, dueling=dueling, dueling_hidden=dueling_hidden)
  return IQNNetwork(torso, num_actions, embedding_dim, dueling=dueling, dueling_hidden=dueling_hidden)
