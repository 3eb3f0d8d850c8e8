"""Test-wide settings: silent rank promotion is an error, as in rlax's tests."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
