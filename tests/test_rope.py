"""Rotary tables (layers.rope_tables): read per position from one table, shared by layers."""
import jax.numpy as jnp
import numpy as np

from radjax.models import layers


def test_tables_equal_the_angles_of_each_rows_positions():
  positions = jnp.array([[0, 1, 2, 0, 1, 5], [3, 3, 0, 4, 2, 1]])  # packed rows reset
  cos, sin = layers.rope_tables(positions, 500000.0, 8, num_positions=6)
  inv_freq = 1.0 / 500000.0 ** (np.arange(0, 8, 2) / 8)
  angles = np.asarray(positions)[..., None] * inv_freq
  angles = np.concatenate([angles, angles], -1)[:, :, None]
  assert cos.shape == sin.shape == (2, 6, 1, 8)
  np.testing.assert_allclose(cos, np.cos(angles), atol=1e-6)
  np.testing.assert_allclose(sin, np.sin(angles), atol=1e-6)


def test_a_position_outside_the_table_reads_nan():
  cos, sin = layers.rope_tables(jnp.array([[0, 3, 4]]), 1e4, 4, num_positions=4)
  assert np.isfinite(cos[0, :2]).all() and np.isfinite(sin[0, :2]).all()
  assert np.isnan(cos[0, 2]).all() and np.isnan(sin[0, 2]).all()


def test_rope_rotates_only_the_first_dims():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 2, 8)), jnp.float32)
  tables = layers.rope_tables(jnp.array([[0, 1, 2]]), 1e4, 4, num_positions=3)
  out = layers.rope(x, tables)
  np.testing.assert_array_equal(out[..., 4:], x[..., 4:])
  np.testing.assert_array_equal(out[:, 0], x[:, 0])  # position 0: no rotation
  assert not np.allclose(out[:, 1:, :, :4], x[:, 1:, :, :4])
  # A rotation keeps each pair's norm: (x_i, x_{i+2}) for the rotate-half layout.
  pair = lambda a: np.hypot(a[..., :2], a[..., 2:4])
  np.testing.assert_allclose(pair(out), pair(x), rtol=1e-5)
