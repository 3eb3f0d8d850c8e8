"""Image augmentation inside the learner step (pure functions of a key).

``random_shift`` is DrQ's augmentation (Kostrikov et al. 2020,
arXiv:2004.13649), which ``Agent.train_step`` applies to ``obs`` and
``next_obs`` when ``AgentConfig.augment == "random_shift"``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_shift(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
  """Each image of [B, H, W, C] shifted by its own random (dy, dx).

  DrQ: the image is padded by ``pad`` pixels on each side by replicating its
  edge and cropped back to H x W at an offset uniform over (2 pad + 1)^2, so
  out[b, y, x] = images[b, clip(y + dy_b, 0, H-1), clip(x + dx_b, 0, W-1)]
  with dy_b, dx_b uniform in {-pad, ..., pad}, independent per image and the
  same for all C channels (a frame stack moves as one). A gather per image:
  ``jax.lax.dynamic_slice`` of the padded batch, vmapped.

  Args:
    key: PRNG key; the shifts are a function of it alone.
    images: [B, H, W, C] of any dtype (uint8 frames stay uint8).
    pad: the largest shift, in pixels, >= 0.

  Returns:
    [B, H, W, C], the dtype of ``images``.
  """
  if images.ndim != 4:
    raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
  batch, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
  offsets = jax.random.randint(key, (batch, 2), 0, 2 * pad + 1)          # [B, 2]: dy + pad, dx + pad
  crop = lambda image, offset: jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                                     (height, width, channels))
  return jax.vmap(crop)(padded, offsets)
