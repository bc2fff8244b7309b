"""Decoder-only LM with a KV cache: LLaMA / Vicuna, Qwen2 (q/k/v bias) and GPT-NeoX
(dolly-v2: LayerNorm, plain GELU MLP, biases everywhere, partial rotary, parallel residual).

HF conventions are kept inside the model (rotate-half RoPE, separate q/k/v,
norm eps, tied or untied head) so HF conversion is reshapes and transposes.
"""
import dataclasses
from typing import ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from radjax.models import layers
from radjax.models.runtime import Runtime

BATCH_LEN_EMBED = ('act_batch', 'act_len', 'act_embed')
# The token lookup's output as the table lays out E ('embed', a parameter axis): the rules
# give embed its mesh axes first and the batch the rest (radjax/core/defaults.py).
LOOKUP = ('act_batch', 'act_len', 'embed')
NORMS = {'rms': layers.RMSNorm, 'layer': layers.LayerNorm}


@dataclasses.dataclass(frozen=True)
class LLMConfig:
  vocab_size: int
  embed_dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  mlp_dim: int
  head_dim: Optional[int] = None  # default embed_dim // num_heads
  rope_theta: float = 10000.0
  norm_eps: float = 1e-6
  qkv_bias: bool = False  # True for Qwen2
  tie_embeddings: bool = False
  activation: str = 'silu'
  norm: str = 'rms'  # 'rms' (RMSNorm) | 'layer' (LayerNorm with bias, GPT-NeoX)
  mlp: str = 'gated'  # 'gated' (act(gate) * up -> down) | 'plain' (up -> act -> down)
  linear_bias: bool = False  # bias on o and the MLP linears (q/k/v follow qkv_bias)
  parallel_residual: bool = False  # x + attn(attn_norm(x)) + mlp(mlp_norm(x))
  rotary_pct: float = 1.0  # RoPE on the first int(head_dim * rotary_pct) dims of a head
  # The context the model was trained for: HF's max_position_embeddings, written by `to-hf`
  # and read by `from-hf`. Nothing in the decoder reads it (RoPE has no position table).
  max_position_embeddings: int = 4096
  kind: ClassVar[str] = 'decoder'

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.embed_dim // self.num_heads

  @property
  def rotary_dim(self) -> int:
    return int(self.dim_per_head * self.rotary_pct)

  def __post_init__(self):
    if self.head_dim is not None and self.head_dim < 0:  # else a ZeroDivisionError in RoPE
      raise ValueError(f'config.model.llm.head_dim={self.head_dim} must be >= 0 (0: '
                       'embed_dim // num_heads)')
    if self.num_heads < 1 or self.num_kv_heads < 1:
      raise ValueError(f'config.model.llm: num_heads={self.num_heads} and num_kv_heads='
                       f'{self.num_kv_heads} must be >= 1')
    if not self.head_dim and self.embed_dim % self.num_heads:
      raise ValueError(f'config.model.llm: embed_dim {self.embed_dim} is not a multiple of '
                       f'num_heads {self.num_heads} (or set head_dim)')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'config.model.llm: num_heads={self.num_heads} is not a multiple '
                       f'of num_kv_heads={self.num_kv_heads}')
    if self.norm not in NORMS:
      raise ValueError(f'config.model.llm.norm: {self.norm!r} not in {sorted(NORMS)}')
    if self.mlp not in ('gated', 'plain'):
      raise ValueError(f"config.model.llm.mlp: {self.mlp!r} not in ['gated', 'plain']")
    if self.activation not in layers.ACTIVATIONS:
      raise ValueError(f'config.model.llm.activation: {self.activation!r} not in '
                       f'{sorted(layers.ACTIVATIONS)}')
    if not self.rope_theta > 0:  # 0, negative or NaN: every logit NaN, no error
      raise ValueError(f'config.model.llm.rope_theta={self.rope_theta} must be > 0')
    if not self.norm_eps >= 0:  # negative: rsqrt of a negative where a row's variance is small
      raise ValueError(f'config.model.llm.norm_eps={self.norm_eps} must be >= 0')
    if self.max_position_embeddings < 1:
      raise ValueError(f'config.model.llm.max_position_embeddings: '
                       f'{self.max_position_embeddings} must be >= 1')
    if not 0.0 < self.rotary_pct <= 1.0:
      raise ValueError(f'config.model.llm.rotary_pct: {self.rotary_pct} must be in (0, 1]')
    if self.rotary_dim % 2:
      knob = ('rotary_pct' if self.rotary_pct < 1.0 else
              'head_dim' if self.head_dim else 'embed_dim / num_heads')
      raise ValueError(f'config.model.llm.{knob}: rotary embeddings turn pairs of dims, and '
                       f'head_dim {self.dim_per_head} x rotary_pct {self.rotary_pct} gives '
                       f'{self.rotary_dim}')


def init_cache(cfg: LLMConfig, batch: int, max_len: int, dtype) -> dict:
  """Zeroed KV cache [layers, batch, max_len, kv_heads, head_dim] for k and v."""
  shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.dim_per_head)
  return {'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype)}


class Attention(nn.Module):
  cfg: LLMConfig
  rt: Runtime = Runtime()

  @nn.compact
  def __call__(self, x, rotary, cache, layer, cache_index, mask):
    """`rotary`: (cos, sin) from layers.rope_tables. `cache`: None (training) or every
    layer's k/v [L, B, S, KV, hd]; this layer (index `layer`) writes its slot in place and
    the updated stack is returned."""
    cfg = self.cfg
    hd = cfg.dim_per_head
    q = layers.Dense((cfg.num_heads, hd), ('embed', 'heads', 'kv'), cfg.qkv_bias,
                     self.rt.dtype, name='q')(x)
    k = layers.Dense((cfg.num_kv_heads, hd), ('embed', 'kv_heads', 'kv'), cfg.qkv_bias,
                     self.rt.dtype, name='k')(x)
    v = layers.Dense((cfg.num_kv_heads, hd), ('embed', 'kv_heads', 'kv'), cfg.qkv_bias,
                     self.rt.dtype, name='v')(x)
    q = layers.constrain(q, ('act_batch', 'act_len', 'act_heads', 'act_kv'))
    q, k = layers.rope(q, rotary), layers.rope(k, rotary)
    if cache is None:  # causal, or within segments (`mask`) for packed rows
      out = layers.attention(q, k, v, mask=mask, is_causal=mask is None,
                             implementation=self.rt.attention_impl)
      new_cache = None
    else:
      # Written into the whole stack, not a per-layer slice that is re-stacked: inside the
      # decode loop XLA then updates the cache in place instead of copying all of it
      # every token (at batch 32 that copy cost more than the step's math).
      new_cache = {n: _write_slot(cache[n], t, layer, cache_index) for n, t in (('k', k),
                                                                               ('v', v))}
      ck, cv = (jax.lax.dynamic_index_in_dim(new_cache[n], layer, keepdims=False)
                for n in ('k', 'v'))
      out = layers.attention(q, ck.astype(self.rt.dtype), cv.astype(self.rt.dtype), mask=mask,
                             implementation=self.rt.attention_impl)
    out = layers.DenseOut(cfg.embed_dim, ('heads', 'kv', 'embed'), 2, cfg.linear_bias,
                          self.rt.dtype, name='o')(out)
    return out, new_cache


class Mlp(nn.Module):
  """Gated MLP (SwiGLU for silu) or plain up -> act -> down (GPT-NeoX)."""
  cfg: LLMConfig
  rt: Runtime = Runtime()

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    act = layers.ACTIVATIONS[cfg.activation]
    dense = lambda name: layers.Dense((cfg.mlp_dim,), ('embed', 'mlp'), cfg.linear_bias,
                                      self.rt.dtype, name=name)(x)
    if cfg.mlp == 'gated':
      gate = dense('gate')
      h = act(gate) * dense('up')
    else:
      h = act(dense('up'))
    h = layers.constrain(h, ('act_batch', 'act_len', 'act_mlp'))
    return layers.DenseOut(cfg.embed_dim, ('mlp', 'embed'), 1, cfg.linear_bias, self.rt.dtype,
                           name='down')(h)


class DecoderBlock(nn.Module):
  cfg: LLMConfig
  rt: Runtime = Runtime()

  @nn.compact
  def __call__(self, carry, layer, rotary, cache_index, mask):
    """carry: x, or (x, every layer's KV cache) when decoding; layer: this block's index;
    rotary: (cos, sin) of the positions (layers.rope_tables)."""
    cfg = self.cfg
    x, cache = carry if isinstance(carry, tuple) else (carry, None)
    norm = NORMS[cfg.norm]
    x = layers.constrain(x, BATCH_LEN_EMBED)
    h = norm(cfg.norm_eps, self.rt.dtype, name='attn_norm')(x)
    attn, cache = Attention(cfg, self.rt, name='attn')(h, rotary, cache, layer, cache_index,
                                                      mask)
    if cfg.parallel_residual:
      h = norm(cfg.norm_eps, self.rt.dtype, name='mlp_norm')(x)
      # HF GPT-NeoX sums mlp + attn first, then adds the residual.
      x = (Mlp(cfg, self.rt, name='mlp')(h) + attn) + x
    else:
      x = x + attn
      h = norm(cfg.norm_eps, self.rt.dtype, name='mlp_norm')(x)
      x = x + Mlp(cfg, self.rt, name='mlp')(h)
    x = layers.constrain(x, BATCH_LEN_EMBED)
    return (x if cache is None else (x, cache)), None


class Decoder(nn.Module):
  """Token embeddings in, logits out. `__call__` accepts ready embeddings so a VLM
  can splice image features in before the first layer."""
  cfg: LLMConfig
  rt: Runtime = Runtime()

  def setup(self):
    cfg = self.cfg
    # The lookup reads the float32 table and casts after (the same values): its gradient,
    # every occurrence of a token added into the table, then sums in float32. Casting the
    # table first summed it in bf16, which kept ~1/4 of a token seen 2,048 times a batch.
    self.embedder = nn.Embed(
        cfg.vocab_size, cfg.embed_dim, dtype=jnp.float32, param_dtype=jnp.float32,
        embedding_init=layers.param_init(layers.default_init, ('vocab', 'embed')))
    if self.rt.scan_layers:
      self.layers = layers.scanned_stack(
          self, DecoderBlock, (cfg, self.rt), num_layers=cfg.num_layers,
          remat_policy=self.rt.remat_policy, loop=self.rt.unroll_scan,
          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast))
    else:
      block = layers.stack_layers(DecoderBlock, num_layers=cfg.num_layers,
                                  remat_policy=self.rt.remat_policy, scan=False)
      self.layers = [block(cfg, self.rt, name=f'layers_{i}') for i in range(cfg.num_layers)]
    self.final_norm = NORMS[cfg.norm](cfg.norm_eps, self.rt.dtype)
    if not cfg.tie_embeddings:
      self.lm_head = layers.Dense((cfg.vocab_size,), ('embed', 'vocab'), dtype=self.rt.dtype)

  def embed(self, tokens):
    """tokens [B, T] -> [B, T, E]. The lookup's output is first laid out as the table
    (embed's mesh axes on E, the batch over the batch axes left: LOOKUP), then as the
    activations (BATCH_LEN_EMBED). Between the two is one all-to-all, forward and (the
    constraints' transpose) backward, where the gradient's scatter into the table wants
    E as the table has it; without the step, a batch over data x fsdp has no all-to-all
    to the table's fsdp on E and XLA replicates the whole [B, T, E] cotangent on every
    device ("Involuntary full rematerialization")."""
    x = layers.constrain(self.embedder(tokens).astype(self.rt.dtype), LOOKUP)
    return layers.constrain(x, BATCH_LEN_EMBED)

  def logits(self, tokens, positions=None, segment_ids=None, logits_at=None):
    """tokens [B, T] -> (logits, aux): the causal forward of text alone; packed rows pass
    their positions and segment_ids (see __call__)."""
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return self(self.embed(tokens), positions, segment_ids=segment_ids, logits_at=logits_at)

  def decode_step(self, tokens, positions, cache, cache_index, key_mask):
    """Tokens in (a prompt chunk or one new token per row) with the KV cache; the
    same signature as `VLM.decode_step`, so generation serves both."""
    return self(self.embed(tokens), positions, cache, cache_index, key_mask)

  def __call__(self, embeds, positions, cache=None, cache_index=0, key_mask=None,
               segment_ids=None, logits_at=None):
    """embeds [B, T, E]; positions [B, T].

    Without `cache`: causal training/scoring forward; `segment_ids` [B, T] (packed rows:
    0 = padding, 1.. = examples) keeps attention within each example. With `cache` (see
    `init_cache`): writes this chunk's k/v at `cache_index` and attends over the
    cache, where `key_mask` [B, S] marks valid (non-padding) cache slots. `logits_at`
    [B, K] (positions): logits there only, [B, K, V] (train/loss.py target_positions).
    Returns (logits f32 [B, T, V], aux with 'cache' and 'hidden' [B, T, E]).
    """
    cfg = self.cfg
    if self.is_initializing():
      self.embedder(jnp.zeros((1, 1), jnp.int32))  # create the table when init skips embed()
    x = layers.constrain(embeds.astype(self.rt.dtype), BATCH_LEN_EMBED)
    mask = None
    if cache is not None and segment_ids is not None:  # it would be dropped, not applied
      raise ValueError('segment_ids (packed rows) are for the cache-free forward; decoding '
                       'with a cache masks by key_mask')
    if cache is not None:
      mask = decode_mask(key_mask, cache_index, embeds.shape[1])
    elif segment_ids is not None:
      mask = layers.segment_mask(segment_ids)
    carry = x if cache is None else (x, cache)
    # Positions index the cache's slots when decoding, the row's tokens otherwise.
    num_positions = embeds.shape[1] if cache is None else cache['k'].shape[2]
    rotary = layers.rope_tables(positions, cfg.rope_theta, cfg.rotary_dim, num_positions)
    if self.rt.scan_layers:
      carry, _ = self.layers(carry, jnp.arange(cfg.num_layers), rotary, cache_index, mask)
    else:
      for i, blk in enumerate(self.layers):
        carry, _ = blk(carry, i, rotary, cache_index, mask)
    x, new_cache = carry if cache is not None else (carry, None)
    hidden = self.final_norm(x)
    read = hidden if logits_at is None else jnp.take_along_axis(hidden, logits_at[..., None],
                                                                axis=1)
    if cfg.tie_embeddings:
      dt = self.rt.dtype  # the head's product in the compute dtype, as an untied one's
      logits = jnp.dot(read.astype(dt), self.embedder.embedding.astype(dt).T)
    else:
      logits = self.lm_head(read)
    logits = layers.constrain(logits.astype(jnp.float32), ('act_batch', 'act_len', 'act_vocab'))
    return logits, {'cache': new_cache, 'hidden': hidden}


def _write_slot(stack, new, layer, cache_index):
  """stack [L, B, S, KV, hd] with `new` [B, T, KV, hd] at [layer, :, cache_index:+T]."""
  zero = jnp.zeros((), jnp.int32)
  start = (jnp.asarray(layer, jnp.int32), zero, jnp.asarray(cache_index, jnp.int32), zero,
           zero)
  return jax.lax.dynamic_update_slice(stack, new.astype(stack.dtype)[None], start)


def decode_mask(key_mask, cache_index, num_queries):
  """[B, 1, T, S] bool: query t (at absolute slot cache_index + t) sees valid slots <= it."""
  slots = jnp.arange(key_mask.shape[1])
  query_slots = cache_index + jnp.arange(num_queries)
  causal = slots[None, :] <= query_slots[:, None]  # [T, S]
  return (key_mask[:, None, None, :].astype(bool) & causal[None, None])


def positions_from_mask(mask):
  """Positions that skip left padding: 0 at each row's first valid token."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
