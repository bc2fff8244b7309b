"""bf16 compute over float32 weights: what a bf16 step must keep exact that rounding would
not (the embedding's summed gradient, accuracy on tied logits)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radjax.models import llm
from radjax.models.runtime import Runtime
from radjax.train import loss as loss_lib


@pytest.mark.parametrize('tie', [False, True])
def test_a_frequent_tokens_embedding_gradient_sums_in_float32(tie):
  """One token fills half of every row (a chat marker, a common word: 1,024 times here).
  Its gradient row in a bf16 step is the float32 step's up to bf16 rounding of the
  activations; summed in a bf16 table it kept about half (relative error 0.5)."""
  cfg = llm.LLMConfig(vocab_size=300, embed_dim=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, mlp_dim=112, tie_embeddings=tie)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 300, (4, 512)).astype(np.int32)
  tokens[:, :256] = 7
  targets, weights = np.roll(tokens, -1, 1), np.ones(tokens.shape, np.float32)
  params = nn.meta.unbox(llm.Decoder(cfg).init(jax.random.key(0), tokens[:1, :1],
                                               method=llm.Decoder.logits))['params']

  def grads(dtype):
    model = llm.Decoder(cfg, Runtime(dtype=dtype))

    def loss(p):
      logits, _ = model.apply({'params': p}, tokens, method=llm.Decoder.logits)
      return loss_lib.token_losses(logits, targets, weights)['loss_sum']
    return np.asarray(jax.jit(jax.grad(loss))(params)['embedder']['embedding'])

  full, half = grads(jnp.float32), grads(jnp.bfloat16)
  rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(a)
  assert rel(full[7], half[7]) < 0.03
  assert rel(full, half) < 0.03


def test_accuracy_counts_a_tie_as_what_greedy_picks():
  """bf16 logits tie: the target is correct only where argmax (the first maximum, what
  greedy decoding emits) is the target."""
  logits = jnp.array([[[1.0, 3.0, 3.0, 0.0], [3.0, 3.0, 0.0, 0.0], [0.0, 1.0, 3.0, 2.0]]])
  targets = jnp.array([[2, 0, 2]])
  sums = loss_lib.token_losses(logits, targets, jnp.ones((1, 3)))
  assert float(sums['accuracy_sum']) == 2.0  # position 0's tie goes to index 1, not 2
