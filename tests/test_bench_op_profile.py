"""bench/op_profile.py reads a compiled HLO module right: each product's FLOPs from its
operand shapes, attention told from the other products, layout copies found, and the
products of a train step carry XLA's own FLOP count."""
import jax
import jax.numpy as jnp

from bench import compiled_step, op_profile
from configs import demo


def _ops(fn, *args) -> dict:
  return op_profile.hlo_ops(jax.jit(fn).lower(*args).compile().as_text())


def test_products_attention_and_copies_are_told_apart():
  x, w = jnp.ones((64, 48)), jnp.ones((48, 80))
  q, k = jnp.ones((2, 4, 16, 8)), jnp.ones((2, 4, 16, 8))

  def fn(x, w, q, k):
    with jax.named_scope('attn'):
      scores = jnp.einsum('bhqd,bhkd->bhqk', q, k)
    return jnp.tanh(x @ w), scores, (x * 2).T

  ops = _ops(fn, x, w, q, k)
  by_kind = {}
  for kind, flops, _, _ in ops.values():
    by_kind.setdefault(kind, []).append(flops)
  assert sorted(by_kind['matmul']) == [2 * 64 * 48 * 80]
  assert by_kind['attention'] == [2 * 2 * 4 * 16 * 16 * 8]
  assert 'copy/transpose' in by_kind and 'other' in by_kind


def test_a_train_steps_products_carry_xlas_flops():
  """The demo's step at micro size, unrolled: the products are nearly all of XLA's count
  (which adds the elementwise ops); a product missed or counted twice would move it."""
  config = compiled_step.with_overrides(demo.get_config('size=micro'),
                                        {'runtime.scan_layers': False, 'data.max_len': 96})
  compiled = compiled_step.lower_and_compile(config)['compiled']
  ops = op_profile.hlo_ops(compiled.as_text())
  products = sum(f for kind, f, _, _ in ops.values() if kind in ('matmul', 'attention'))
  xla = compiled_step.flops(compiled)
  assert 0.85 < products / xla <= 1.0, (products, xla)
