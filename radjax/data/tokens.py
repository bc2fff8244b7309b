"""Prompt/target -> fixed-length token arrays with a loss mask on the answer only."""
import dataclasses
import os
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerFast

from radjax.data import schema

# radjax's special tokens, the one list: tokenizers radjax trains give them ids 0-8 in
# this order (data_prep/tokenizer.py); chat layouts and exports look them up by name.
SPECIAL_TOKENS = ('<pad>', '<s>', '</s>', '<unk>', '<image>', '<|system|>', '<|user|>',
                  '<|assistant|>', '<|end|>')
SPECIALS = {'pad': '<pad>', 'bos': '<s>', 'eos': '</s>', 'unk': '<unk>', 'image': '<image>',
            'system': '<|system|>', 'user': '<|user|>', 'assistant': '<|assistant|>',
            'end': '<|end|>'}
# What a chat layout (TurnEncoder) needs from a tokenizer.
CHAT_SPECIALS = ('pad', 'bos', 'eos', 'image', 'user', 'assistant', 'end')

# The TurnEncoder layout as a Jinja chat template, so an exported model's HF processor
# builds the prompts the model was trained on: images first, then the instruction.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{% else %}<|assistant|>{% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] if c['type'] == 'image' %}<image>{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'text' %}{{ '\\n' ~ c['text'] }}{% endfor %}"
    "{% endif %}<|end|>{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tokenizer_path(config) -> str:
  """config.data.tokenizer, else the dataset's own <data.dir>/tokenizer.json."""
  return config.data.tokenizer or os.path.join(config.data.dir, 'tokenizer.json')


def load_tokenizer(path: str):
  """The one way radjax opens a tokenizer: a `tokenizer.json` file, or a local HF
  tokenizer directory (`tokenizer.json`, or a sentencepiece `tokenizer.model` as
  LLaMA/Vicuna ship it). Never downloads; never runs remote code."""
  if os.path.isdir(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path, local_files_only=True)
  if not os.path.exists(path):
    raise FileNotFoundError(f'tokenizer {path!r} does not exist (config.data.tokenizer, or '
                            'tokenizer.json in config.data.dir)')
  tokenizer = PreTrainedTokenizerFast(tokenizer_file=path)
  vocab = tokenizer.get_vocab()
  # bos/eos/pad/unk by radjax's (and LLaMA's) names, where the vocabulary has them.
  for attr, name in (('bos_token', 'bos'), ('eos_token', 'eos'), ('pad_token', 'pad'),
                     ('unk_token', 'unk')):
    if SPECIALS[name] in vocab:
      setattr(tokenizer, attr, SPECIALS[name])
  return tokenizer


def special_ids(tokenizer) -> dict:
  """{name: id} of radjax's specials that the tokenizer has."""
  vocab = tokenizer.get_vocab()
  return {k: vocab[t] for k, t in SPECIALS.items() if t in vocab}


@dataclasses.dataclass
class TurnEncoder:
  """Builds the chat layout of radjax/data/templates.py with static lengths."""
  tokenizer: Any
  image_tokens: int  # placeholders per image (the vision tower's feature count)

  def __post_init__(self):
    self.ids = special_ids(self.tokenizer)
    missing = [SPECIALS[k] for k in CHAT_SPECIALS if k not in self.ids]
    if missing:
      raise ValueError(f'tokenizer lacks special tokens {missing}')

  def text(self, s: str) -> list[int]:
    return self.tokenizer.encode(s, add_special_tokens=False)

  def prompt(self, instruction: str, num_images: int) -> list[int]:
    ids = self.ids
    return ([ids['bos'], ids['user']] + [ids['image']] * (num_images * self.image_tokens)
            + self.text('\n' + instruction) + [ids['end'], ids['assistant']])

  def answer(self, target: str) -> list[int]:
    return self.text(target) + [self.ids['end'], self.ids['eos']]

  def training_arrays(self, instruction: str, target: str, num_images: int, max_len: int,
                      record_id: str) -> dict:
    """tokens/targets/loss_mask of length max_len; targets are next tokens.

    Answers that do not fit are cut (their end tokens with them); a prompt that
    does not fit is an error naming the record.
    """
    prompt, answer = self.prompt(instruction, num_images), self.answer(target)
    if len(prompt) + 1 > max_len:
      raise schema.SchemaError(
          f'record {record_id!r}: prompt of {len(prompt)} tokens does not fit '
          f'config.data.max_len={max_len}')
    seq = (prompt + answer)[:max_len + 1]
    weights = ([0] * len(prompt) + [1] * len(answer))[:max_len + 1]
    pad = max_len + 1 - len(seq)
    seq = np.asarray(seq + [self.ids['pad']] * pad, np.int32)
    weights = np.asarray(weights + [0] * pad, np.float32)
    return {'tokens': seq[:-1], 'targets': seq[1:], 'loss_mask': weights[1:],
            'truncated': np.int32(len(prompt) + len(answer) > max_len + 1)}

  def decode_answer(self, ids) -> str:
    """Generated ids -> text, stopping at the first end/eos token."""
    out = []
    for t in ids:
      if int(t) in (self.ids['end'], self.ids['eos']):
        break
      out.append(int(t))
    return self.tokenizer.decode(out, skip_special_tokens=True).strip()


@dataclasses.dataclass
class TextEncoder:
  """Plain text for a decoder alone: `bos text eos`, loss on every token after bos.
  Works with any tokenizer that has an eos token (bos and pad where it has them)."""
  tokenizer: Any

  def __post_init__(self):
    t = self.tokenizer
    if t.eos_token_id is None:
      raise ValueError('the tokenizer has no eos token; text training needs one')
    self.bos = t.bos_token_id
    self.eos = t.eos_token_id
    self.pad = t.pad_token_id if t.pad_token_id is not None else t.eos_token_id

  def training_arrays(self, text: str, max_len: int) -> dict:
    ids = self.tokenizer.encode(text, add_special_tokens=False)
    seq = ([self.bos] if self.bos is not None else []) + ids + [self.eos]
    weights = [0] * (len(seq) - len(ids) - 1) + [1] * (len(ids) + 1)
    truncated = len(seq) > max_len + 1
    seq, weights = seq[:max_len + 1], weights[:max_len + 1]
    pad = max_len + 1 - len(seq)
    seq = np.asarray(seq + [self.pad] * pad, np.int32)
    weights = np.asarray(weights + [0] * pad, np.float32)
    return {'tokens': seq[:-1], 'targets': seq[1:], 'loss_mask': weights[1:],
            'truncated': np.int32(truncated)}
