"""Flax networks: torsos chosen from the observation shape, Q and IQN heads.

Modules are pure functions of (params, inputs): no dropout, no batch norm,
no mutable collections, so there is no train/eval mode to get wrong.
Anything stochastic (IQN's taus) is an explicit input.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLPTorso(nn.Module):
  """Flattens [B, ...] observations and applies ReLU dense layers -> [B, hidden_sizes[-1]]."""
  hidden_sizes: Sequence[int]

  @nn.compact
  def __call__(self, obs):
    x = obs.reshape((obs.shape[0], -1)).astype(jnp.float32)
    for width in self.hidden_sizes:
      x = nn.relu(nn.Dense(width)(x))
    return x


class Im2colConv(nn.Module):
  """A stride-1 VALID convolution [B, H, W, C] -> [B, H-kh+1, W-kw+1, features]
  as one matmul of its patches: the kh*kw shifted views of the input,
  concatenated on the channel axis, times the kernel [kh, kw, C, features]
  read as [kh*kw*C, features].

  Same maths and parameters (``kernel``, ``bias``) as ``flax.linen.Conv``
  with padding "VALID", and on XLA's CPU backend at MinAtar's sizes 3x (4
  channels) to 6x (10) faster to train: the kernel's gradient becomes one
  matmul instead of a convolution over the batch (``scripts/benchmark.py
  --sections conv``).
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    batch, height, width, channels = x.shape
    out_h, out_w = height - kh + 1, width - kw + 1
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, channels, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    patches = jnp.concatenate([x[:, i:i + out_h, j:j + out_w, :] for i in range(kh) for j in range(kw)],
                              axis=-1)                                     # [B, H', W', kh*kw*C]
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
    x = obs.astype(jnp.float32)
    if self.obs_range is not None:
      low, high = self.obs_range
      x = (x - low) * (1.0 / (high - low))
    x = nn.relu(self.conv_layer(self.channels)(x))
    return MLPTorso(self.hidden_sizes)(x)


def make_torso(obs_shape: Sequence[int], hidden_sizes: Sequence[int],
               obs_range: tuple[float, float] | None = None) -> nn.Module:
  """MLP for vector observations (rank 1, unscaled), conv torso for HxWxC
  frames (rank 3, scaled to [0, 1] by ``obs_range``)."""
  if len(obs_shape) == 1:
    return MLPTorso(tuple(hidden_sizes))
  if len(obs_shape) == 3:
    return ConvTorso(tuple(hidden_sizes), None if obs_range is None else tuple(map(float, obs_range)))
  raise ValueError(f"obs_shape must be (D,) or (H, W, C), got {tuple(obs_shape)}")


class QNetwork(nn.Module):
  """Q(obs): [B, *obs_shape] -> float32 [B, num_actions]."""
  torso: nn.Module
  num_actions: int

  @nn.compact
  def __call__(self, obs):
    return nn.Dense(self.num_actions)(self.torso(obs))


class IQNNetwork(nn.Module):
  """Implicit quantile network (Dabney et al. 2018, arXiv:1806.06923).

  Z(obs, tau): obs [B, *obs_shape], taus [B, N] in [0, 1] ->
  quantile values float32 [B, N, num_actions].

  phi(tau)_j = ReLU(sum_i cos(pi * i * tau) w_ij + b_j), i = 0..E-1 with
  E = embedding_dim; the torso output psi(obs) [B, D] is multiplied
  elementwise with phi [B, N, D] and a ReLU dense layer of width D and the
  linear output layer follow.
  """
  torso: nn.Module
  num_actions: int
  embedding_dim: int

  @nn.compact
  def __call__(self, obs, taus):
    psi = self.torso(obs)                                       # [B, D]
    width = psi.shape[-1]
    i = jnp.arange(self.embedding_dim, dtype=jnp.float32)       # [E]
    cos = jnp.cos(jnp.pi * taus[:, :, None] * i[None, None, :])  # [B, N, E]
    phi = nn.relu(nn.Dense(width)(cos))                         # [B, N, D]
    x = psi[:, None, :] * phi                                   # [B, N, D]
    x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_actions)(x)                        # [B, N, A]
