"""The hand-written backward passes of the hot paths against autodiff of the plain forms:
`layers.linear` (every Dense) and the token cross-entropy."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from radjax.models import layers
from radjax.train import loss as loss_lib


@pytest.mark.parametrize('x_shape,k_shape,n_in', [
    ((3, 5, 8), (8, 6), 1),  # Dense
    ((2, 4, 8), (8, 2, 3), 1),  # q/k/v: features (heads, head_dim)
    ((2, 4, 3, 5), (3, 5, 7), 2),  # DenseOut over (heads, head_dim)
])
def test_linear_matches_einsum_forward_and_gradients(x_shape, k_shape, n_in):
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x, kernel = jax.random.normal(kx, x_shape), jax.random.normal(kk, k_shape)
  dims = (tuple(range(len(x_shape) - n_in, len(x_shape))), tuple(range(n_in)))
  plain = lambda x, k: jax.lax.dot_general(x, k, (dims, ((), ())))
  out = layers.linear(x, kernel, n_in)
  np.testing.assert_allclose(out, plain(x, kernel), rtol=1e-6, atol=1e-6)
  g = jax.random.normal(kg, out.shape)  # a cotangent with no symmetry to hide a swapped axis
  ours = jax.vjp(lambda x, k: layers.linear(x, k, n_in), x, kernel)[1](g)
  ref = jax.vjp(plain, x, kernel)[1](g)
  for a, b in zip(ours, ref):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_linear_keeps_bf16_gradients_in_bf16():
  x = jnp.ones((2, 3, 4), jnp.bfloat16)
  k = jnp.ones((4, 5), jnp.bfloat16)
  dx, dk = jax.grad(lambda x, k: layers.linear(x, k, 1).astype(jnp.float32).sum(),
                    argnums=(0, 1))(x, k)
  assert dx.dtype == dk.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(dk, np.float32), np.full((4, 5), 6.0))


def test_token_losses_match_optax_with_gradients_and_accuracy():
  kl, kt, kw = jax.random.split(jax.random.PRNGKey(1), 3)
  logits = 3.0 * jax.random.normal(kl, (2, 7, 11))
  # About half the targets are the row's argmax, so accuracy has something to count.
  targets = jnp.where(jnp.arange(7) % 2 == 0, jnp.argmax(logits, -1),
                      jax.random.randint(kt, (2, 7), 0, 11))
  weights = (jax.random.uniform(kw, (2, 7)) > 0.3).astype(jnp.float32)

  def ref_sum(lg):
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(lg, targets) * weights)

  sums = loss_lib.token_losses(logits, targets, weights)
  np.testing.assert_allclose(sums['loss_sum'], ref_sum(logits), rtol=1e-6)
  np.testing.assert_allclose(
      jax.grad(lambda lg: loss_lib.token_losses(lg, targets, weights)['loss_sum'])(logits),
      jax.grad(ref_sum)(logits), rtol=1e-5, atol=1e-6)
  argmax_right = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  assert float(sums['accuracy_sum']) == float(jnp.sum(argmax_right * weights)) > 0
  assert float(sums['weight_sum']) == float(weights.sum())


def test_rms_norm_of_bf16_is_the_float32_norm_rounded_once():
  """Statistics, normalisation and scale in f32, one rounding to bf16 at the end."""
  x = (jax.random.normal(jax.random.key(0), (4, 512)) * 3).astype(jnp.bfloat16)
  norm = layers.RMSNorm(1e-6, jnp.bfloat16)
  params = {'params': {'scale': 1 + 0.1 * jax.random.normal(jax.random.key(1), (512,))}}
  x32 = x.astype(jnp.float32)
  want = (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + 1e-6)
          * params['params']['scale']).astype(jnp.bfloat16)
  np.testing.assert_array_equal(norm.apply(params, x), want)


def test_label_losses_leave_out_records_without_labels():
  """mask 0 (a record without labels): no loss, no accuracy, no weight."""
  logits = jnp.array([[2.0, -1.0, 0.5], [-3.0, 4.0, 1.0]])
  labels = jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
  out = loss_lib.label_losses(logits, labels, jnp.array([1.0, 0.0]))
  want = jnp.mean(optax.sigmoid_binary_cross_entropy(logits[0], labels[0]))
  np.testing.assert_allclose(out['loss_sum'], want, rtol=1e-6)
  assert float(out['accuracy_sum']) == 1.0 and float(out['weight_sum']) == 1.0
