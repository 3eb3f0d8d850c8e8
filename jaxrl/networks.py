"""Flax networks: torsos chosen from the observation shape, Q and IQN heads.

Modules are pure functions of (params, inputs): no dropout, no batch norm,
no mutable collections, so there is no train/eval mode to get wrong.
Anything stochastic (IQN's taus) is an explicit input.
"""

from __future__ import annotations

from typing import Sequence

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


class ConvTorso(nn.Module):
  """Small conv torso for [B, H, W, C] frames (e.g. 10x10xC MinAtar).

  One 3x3 conv with 16 channels (stride 1, as in the MinAtar paper's DQN),
  then the MLP torso on the flattened features -> [B, hidden_sizes[-1]].
  """
  hidden_sizes: Sequence[int]
  channels: int = 16

  @nn.compact
  def __call__(self, obs):
    x = nn.relu(nn.Conv(self.channels, kernel_size=(3, 3), padding="VALID")(obs.astype(jnp.float32)))
    return MLPTorso(self.hidden_sizes)(x)


def make_torso(obs_shape: Sequence[int], hidden_sizes: Sequence[int]) -> nn.Module:
  """MLP for vector observations (rank 1), conv torso for HxWxC frames (rank 3)."""
  if len(obs_shape) == 1:
    return MLPTorso(tuple(hidden_sizes))
  if len(obs_shape) == 3:
    return ConvTorso(tuple(hidden_sizes))
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
