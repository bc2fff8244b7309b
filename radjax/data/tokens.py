"""Tokenizers: radjax's special tokens and the one way a tokenizer is opened (chat
layouts and their loss masks are radjax/data/chat.py)."""
import os

from transformers import PreTrainedTokenizerFast

from radjax.core import files
from radjax.data import mixture

# radjax's special tokens, the one list: tokenizers radjax trains give them ids 0-8 in
# this order (data_prep/tokenizer.py); the radjax chat format uses them.
SPECIAL_TOKENS = ('<pad>', '<s>', '</s>', '<unk>', '<image>', '<|system|>', '<|user|>',
                  '<|assistant|>', '<|end|>')
SPECIALS = {'pad': '<pad>', 'bos': '<s>', 'eos': '</s>', 'unk': '<unk>', 'image': '<image>',
            'system': '<|system|>', 'user': '<|user|>', 'assistant': '<|assistant|>',
            'end': '<|end|>'}


def tokenizer_path(config) -> str:
  """config.data.tokenizer, else the dataset's own tokenizer.json (of the eval dataset:
  config.data.dir, or a mixture's first component)."""
  if config.data.tokenizer:
    return config.data.tokenizer
  data_dir = mixture.eval_dir(config)
  if data_dir and not os.path.isdir(data_dir):  # the dataset, not its tokenizer, is missing
    raise FileNotFoundError(f'{mixture.eval_knob(config)}: {data_dir!r} is not a directory')
  return os.path.join(data_dir, 'tokenizer.json')


def load_tokenizer(path: str,
                   knob: str = 'config.data.tokenizer, or tokenizer.json in config.data.dir'):
  """The one way radjax opens a tokenizer: a `tokenizer.json` file, or a local HF
  tokenizer directory (`tokenizer.json`, or a sentencepiece `tokenizer.model` as
  LLaMA/Vicuna ship it). Never downloads; never runs remote code."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'tokenizer {path!r} does not exist ({knob})')
  try:
    return _load(path)
  except Exception as e:  # tokenizers' and transformers' own errors name neither path nor knob
    raise ValueError(f'tokenizer {path!r} ({knob}) does not load: {type(e).__name__}: '
                     f'{_first_line(e)}') from e


def _first_line(e: Exception) -> str:
  return next((line.strip() for line in str(e).splitlines() if line.strip()), '')


def _load(path: str):
  if os.path.isdir(path):
    from transformers import AutoTokenizer, LlamaTokenizer
    has = {n for n in ('tokenizer.json', 'tokenizer_config.json', 'tokenizer.model')
           if os.path.exists(os.path.join(path, n))}
    if not has:
      raise FileNotFoundError('the folder has no tokenizer.json, tokenizer_config.json or '
                              'tokenizer.model')
    if has == {'tokenizer.model'}:
      # A bare sentencepiece model is LLaMA's: AutoTokenizer's generic reading of it drops
      # the '▁' that starts the first word ('Can' 6028 where LLaMA has '▁Can' 1815).
      return LlamaTokenizer.from_pretrained(path, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True, **_blank_specials(path))
  tokenizer = PreTrainedTokenizerFast(tokenizer_file=path)
  vocab = tokenizer.get_vocab()
  # bos/eos/pad/unk by radjax's (and LLaMA's) names, where the vocabulary has them.
  for attr, name in (('bos_token', 'bos'), ('eos_token', 'eos'), ('pad_token', 'pad'),
                     ('unk_token', 'unk')):
    if SPECIALS[name] in vocab:
      setattr(tokenizer, attr, SPECIALS[name])
  return tokenizer


def _blank_specials(path: str) -> dict:
  """LLaMA's names for the bos/eos/unk an early LLaMA export (RadFM's Language_files) left
  as '' in tokenizer_config.json: transformers recurses on an empty unk token."""
  config = os.path.join(path, 'tokenizer_config.json')
  if not (os.path.exists(config) and os.path.exists(os.path.join(path, 'tokenizer.model'))):
    return {}
  written = files.read_json(config)
  return {k: v for k, v in (('bos_token', '<s>'), ('eos_token', '</s>'), ('unk_token', '<unk>'))
          if written.get(k) == ''}


def special_ids(tokenizer) -> dict:
  """{name: id} of radjax's specials that the tokenizer has."""
  vocab = tokenizer.get_vocab()
  return {k: vocab[t] for k, t in SPECIALS.items() if t in vocab}
