"""PSNR and SSIM in JAX against tf.image.psnr / tf.image.ssim."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radjax.eval.metrics import image_metrics as im

tf = pytest.importorskip('tensorflow')


def _pair(shape, noise, seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  # Smooth structure plus noise, so SSIM is neither ~0 nor ~1.
  h, w = shape[-3:-1]
  yy, xx = np.meshgrid(np.linspace(0, 3, h), np.linspace(0, 3, w), indexing='ij')
  base = 0.5 + 0.4 * np.sin(xx[..., None] * (1 + np.arange(shape[-1]))) * np.cos(yy[..., None])
  a = np.broadcast_to(base, shape) + rng.normal(0, 0.02, shape)
  b = a + rng.normal(0, noise, shape)
  return (np.clip(a, 0, 1) * scale).astype(np.float32), (np.clip(b, 0, 1) * scale).astype(
      np.float32)


@pytest.mark.parametrize('shape,data_range', [((4, 32, 32, 3), 1.0), ((2, 3, 24, 40, 1), 1.0),
                                              ((2, 20, 20, 2), 255.0)])
def test_matches_tensorflow(shape, data_range):
  for seed, noise in enumerate((0.01, 0.1, 0.3)):
    a, b = _pair(shape, noise, seed, scale=data_range)
    want_ssim = tf.image.ssim(a, b, max_val=data_range).numpy()
    want_psnr = tf.image.psnr(a, b, max_val=data_range).numpy()
    got_ssim = np.asarray(jax.jit(im.ssim, static_argnums=2)(a, b, data_range))
    got_psnr = np.asarray(im.psnr(a, b, data_range))
    assert got_ssim.shape == shape[:-3] and got_psnr.shape == shape[:-3]
    np.testing.assert_allclose(got_ssim, want_ssim, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_psnr, want_psnr, atol=1e-4, rtol=1e-6)


def test_identical_and_degraded():
  a, b = _pair((2, 16, 16, 1), 0.2)
  assert np.allclose(im.ssim(a, a), 1.0, atol=1e-6)
  assert np.all(np.isinf(im.psnr(a, a)))
  # More noise, lower scores: both metrics rank degradations the same way.
  _, c = _pair((2, 16, 16, 1), 0.4)
  assert np.all(im.ssim(a, c) < im.ssim(a, b)) and np.all(im.psnr(a, c) < im.psnr(a, b))
  # PSNR by hand: uniform error 0.1 over range 1 is 20 dB.
  np.testing.assert_allclose(im.psnr(jnp.zeros((8, 8, 1)), jnp.full((8, 8, 1), 0.1)), 20.0,
                             rtol=1e-6)


def test_rejects_small_or_mismatched_images():
  with pytest.raises(ValueError, match='H, W >= 11'):
    im.ssim(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match='differ'):
    im.ssim(np.zeros((1, 16, 16, 1)), np.zeros((1, 16, 16, 3)))
