"""What a task is: its batch, its model composition, its loss, its optimizer and its
evaluators. The trainer (radjax/train: setup, state, step, loop) only talks to this
interface, so a new task (e.g. a GAN with two optimizers overriding `optimizer` and
`train_step`) needs no change to the loop."""
import dataclasses
import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import numpy as np

from radjax.data import chat, instructions, keywords, mixture, pixels, processors
from radjax.data import labels as labels_lib
from radjax.eval import llm_cxr
from radjax.train import loss as loss_lib
from radjax.train import optimizer as optimizer_lib
from radjax.train import pretrained as pretrained_lib
from radjax.train import step as step_lib


@dataclasses.dataclass(frozen=True)
class BatchField:
  shape: tuple[int, ...]  # per example (the batch axis comes first)
  dtype: Any


class Task:
  name: ClassVar[str]
  model_kind: ClassVar[str]  # the config.model.kind it trains (what `to-hf` exports)
  evaluators: ClassVar[tuple[str, ...]]  # default config.eval.evaluators
  parts: ClassVar[dict]  # model part -> its key in the param tree (init_from, freezing)
  needs_tokenizer: ClassVar[bool] = True  # False: an image-only task (the codec)
  packs: ClassVar[bool] = False  # trains on packed rows with config.data.pack
  token_loss: ClassVar[bool] = False  # loss is cross-entropy per text token (a perplexity)
  accumulates: ClassVar[bool] = True  # train_step takes config.optim.grad_accum micro-batches

  def __init__(self, config, tokenizer):
    if config.data.get('pack', False) and not self.packs:
      raise ValueError(f'config.data.pack=True: task {self.name!r} has no packed form '
                       "(tasks 'lm' and 'vlm' do)")
    if config.model.kind != self.model_kind:
      raise ValueError(f'config.task={self.name!r} trains config.model.kind='
                       f'{self.model_kind!r}, not {config.model.kind!r}')
    self.config = config
    self.tokenizer = tokenizer  # None: a benchmark on synthetic batches (no processor)

  def check_vocab(self):
    """After the chat format's tokens were added: the embeddings must cover them."""
    n, v = len(self.tokenizer), self.config.model.llm.vocab_size
    if n > v:
      raise ValueError(f'config.model.llm.vocab_size={v} is smaller than the tokenizer ({n} '
                       f'tokens with config.data.chat_format={self.config.data.chat_format!r}'
                       "'s specials); set it to at least that (new rows start at the mean)")

  # ---- data ---------------------------------------------------------------------
  def batch_spec(self) -> dict[str, BatchField]:
    """Device arrays of one example, by key (the processor may add host-only keys)."""
    raise NotImplementedError

  def processor(self, tasks=None, kind: str = ''):
    """Record bytes, rng -> the arrays of one example (radjax/data/processors.py), for the
    instruction `tasks` (None: the eval dataset's, mixture.eval_tasks) of a dataset of
    `kind` ('image' | 'volume'; '' = the eval dataset's)."""
    raise NotImplementedError

  # ---- model ----------------------------------------------------------------------
  def model(self, frozen: tuple[str, ...] = ()) -> nn.Module:
    """The composition; parts in `frozen` get no backward pass."""
    raise NotImplementedError

  def init_inputs(self) -> tuple:
    """Dummy arguments of `model.init` (shapes only matter)."""
    raise NotImplementedError

  def loss(self, model, params, batch, rng) -> dict:
    """Sums over the batch: {'loss_sum', 'weight_sum', ...}; `<name>_sum / weight_sum`
    is logged as `<name>`."""
    raise NotImplementedError

  def train_loss(self, model, params, batch, rng) -> dict:
    """What training minimises (default: `loss`); a task with auxiliary terms adds them
    here, so held-out `loss` stays the task's own objective."""
    return self.loss(model, params, batch, rng)

  def parts_frozen(self, labels) -> tuple[str, ...]:
    """Parts whose every parameter is in a frozen optimizer group."""
    out = []
    for part, key in self.parts.items():
      tree = labels if not key else labels.get(key, {})
      leaves = jax.tree.leaves(tree)
      if leaves and all(lab == optimizer_lib.FROZEN for lab in leaves):
        out.append(part)
    return tuple(out)

  def pretrained_loaders(self) -> dict:
    return pretrained_lib.loaders(self.config, self.parts)

  def pretrained_fresh(self) -> dict:
    return pretrained_lib.fresh_paths(self.config, self.parts)

  # ---- optimisation ---------------------------------------------------------------
  def optimizer(self, labels):
    """(optax transformation, lr schedule) over the whole param tree."""
    return optimizer_lib.make_optimizer(self.config.optim, self.config.train.num_steps, labels)

  def train_step(self, model, tx, labels, schedule):
    """train_step(state, batch) -> (state, metrics), to be jitted by the trainer."""
    return step_lib.make_train_step(functools.partial(self.train_loss, model), tx,
                                    optimizer_lib.trainable_mask(labels), schedule,
                                    self.config.optim.grad_accum)


def prepare_tokenizer(config, tokenizer, images: bool):
  """Adds what config.data.chat_format needs (and <image>, with image_delimiters also
  <image_begin> / <image_end>, for a VLM) to the tokenizer."""
  return chat.prepare_tokenizer(tokenizer, chat.get_format(config.data.chat_format), images,
                                config.data.get('image_delimiters', False),
                                config.data.get('codebook_size', 0))


def chat_encoder(config, tokenizer, image_tokens: int) -> chat.ConversationEncoder:
  c = config.data
  if c.get('max_target_tokens', 0) and c.get('pack', False):
    raise ValueError(f'config.data.max_target_tokens={c.max_target_tokens} caps each '
                     'example, and config.data.pack=True puts several in a row; turn one off')
  return chat.ConversationEncoder(tokenizer, chat.get_format(c.chat_format), image_tokens,
                                  c.system_prompt, c.too_long,
                                  c.get('image_delimiters', False), keywords.from_config(c),
                                  c.get('max_target_tokens', 0),
                                  tuple(c.get('always_trained', ())),
                                  tuple(config.eval.get('stop_tokens', ())),
                                  train_assistant_turn=c.get('train_assistant_turn', False),
                                  loss_norm=c.get('loss_norm', 'token'))


def logits_at(config, batch):
  """The positions the token loss reads logits at (config.data.max_target_tokens > 0),
  else None (every position)."""
  k = config.data.get('max_target_tokens', 0)
  return loss_lib.target_positions(batch['loss_mask'], k) if k else None


def conversation_processor(config, encoder, tasks, images=None, labels=None):
  tasks = mixture.eval_tasks(config) if tasks is None else tuple(tasks)
  options = instructions.options_from_config(config.data.task_options,
                                             config.data.get('codebook_size', 0),
                                             llm_cxr.codes_per_image(config))
  return processors.ConversationProcessor(encoder, tasks, options, config.data.max_len, images,
                                          labels)


def label_targets(config, vision) -> labels_lib.LabelTargets | None:
  """config.data's label targets; box targets on the 2D tower `vision`'s patch grid."""
  if vision.kind == 'vit3d':
    return labels_lib.from_config(config.data)
  return labels_lib.from_config(config.data, vision.image_size // vision.patch_size,
                                vision.image_size / vision.patch_size)


def label_fields(targets: labels_lib.LabelTargets | None) -> dict[str, BatchField]:
  """The batch fields a label head trains on (none without targets)."""
  if targets is None:
    return {}
  out = {'labels': BatchField((len(targets.names),), np.float32),
         'label_mask': BatchField((), np.float32)}
  if targets.box_labels:
    out['box_targets'] = BatchField((targets.grid ** 2, len(targets.box_labels)), np.float32)
    out['box_mask'] = BatchField((len(targets.box_labels),), np.float32)
  return out


def label_head_losses(targets, config, logits, scores, batch) -> dict:
  """train/loss.label_head_losses with the box targets config.data names."""
  weight = float(config.data.get('box_token_weight', 0.0)) if targets.box_labels else 0.0
  return loss_lib.label_head_losses(logits, scores, batch, targets.box_indices, weight)


def packed_fields(config) -> dict[str, BatchField]:
  """With config.data.pack: the rows' segment ids (0 = padding) and per-example positions."""
  if not config.data.get('pack', False):
    return {}
  seq = BatchField((config.data.max_len,), np.int32)
  return {'segment_ids': seq, 'positions': seq}


def image_fields(config, lead: tuple, size: int, num_channels: int) -> dict[str, BatchField]:
  """A batch's 2D image fields as config.data.pixels sends them (radjax/data/pixels.py):
  8-bit `images` [*lead, size, size, P] and their `pixel_table` [*lead, 256, C], or float32
  `images` alone."""
  return {k: BatchField(*f) for k, f in pixels.fields(pixels.mode_of(config), lead, size,
                                                          num_channels).items()}


def model_images(spec: dict) -> np.ndarray:
  """Zero images [1, ...] of the spec as the model takes them (float32, C channels): the
  dummy input of `model.init`."""
  keys = [k for k in ('images', pixels.TABLE) if k in spec]
  return pixels.as_floats(dict(zip(keys, zeros(spec, keys))))['images']


def zeros(spec: dict, keys) -> tuple:
  return tuple(np.zeros((1, *spec[k].shape), spec[k].dtype) for k in keys)
