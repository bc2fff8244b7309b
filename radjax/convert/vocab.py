"""Vocabulary growth: new special tokens or image codes appended to a pretrained LLM."""
import numpy as np

from radjax.convert.common import ConversionError

EMBEDDING, HEAD = 'embedder', 'lm_head'


def grow_vocab(params: dict, vocab_size: int) -> dict:
  """Appends rows to the embedding table (and columns to an untied head) so the
  model has `vocab_size` tokens. New rows start at the mean of the old ones, which
  keeps the first logits of a new token ordinary (as HF's `mean_resizing`) instead
  of random vectors that can dominate the softmax."""
  table = np.asarray(params[EMBEDDING]['embedding'])
  old = table.shape[0]
  if vocab_size < old:
    raise ConversionError(f'config.model.llm.vocab_size={vocab_size} is smaller than the '
                          f'pretrained vocabulary ({old} rows of embedder/embedding)')
  if vocab_size == old:
    return params
  out = dict(params)
  new_rows = np.broadcast_to(table.mean(axis=0), (vocab_size - old, table.shape[1]))
  out[EMBEDDING] = {'embedding': np.concatenate([table, new_rows]).astype(table.dtype)}
  if HEAD in params:
    kernel = np.asarray(params[HEAD]['kernel'])  # (embed, vocab)
    new_cols = np.broadcast_to(kernel.mean(axis=1, keepdims=True),
                               (kernel.shape[0], vocab_size - old))
    out[HEAD] = {**params[HEAD],
                 'kernel': np.concatenate([kernel, new_cols], axis=1).astype(kernel.dtype)}
  return out
