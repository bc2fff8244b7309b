"""Prompt/target -> fixed-length token arrays with a loss mask on the answer only."""
import dataclasses
import os

import numpy as np
from transformers import PreTrainedTokenizerFast

from radjax.data import schema

SPECIALS = {'pad': '<pad>', 'bos': '<s>', 'eos': '</s>', 'image': '<image>',
            'user': '<|user|>', 'assistant': '<|assistant|>', 'end': '<|end|>'}

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


def load_tokenizer(path: str) -> PreTrainedTokenizerFast:
  return PreTrainedTokenizerFast(tokenizer_file=path, bos_token='<s>', eos_token='</s>',
                                 pad_token='<pad>', unk_token='<unk>')


@dataclasses.dataclass
class TurnEncoder:
  """Builds the chat layout of radjax/data/templates.py with static lengths."""
  tokenizer: PreTrainedTokenizerFast
  image_tokens: int  # placeholders per image (the vision tower's feature count)

  def __post_init__(self):
    vocab = self.tokenizer.get_vocab()
    missing = [t for t in SPECIALS.values() if t not in vocab]
    if missing:
      raise ValueError(f'tokenizer lacks special tokens {missing}')
    self.ids = {k: vocab[t] for k, t in SPECIALS.items()}

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
