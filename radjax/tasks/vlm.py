"""Image(s) + text -> text: the VLM trained on conversations drawn from instruction tasks
(report generation, classification, grounding, ...), loss on the answers."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from radjax.data import anyres, chat, mixture, pipeline, pixels, processors, volumes
from radjax.models import factory, vlm
from radjax.tasks import base
from radjax.train import loss as loss_lib

# A batch key train_step adds under grad_accum: the whole batch's tokens per labelled example.
LABEL_SCALE = 'label_scale'


class ImageTextToText(base.Task):
  name = 'vlm'
  model_kind = 'vlm'
  evaluators = ('loss', 'reports')
  token_loss = True
  parts = {'vision': 'vision', 'projector': 'projector', 'llm': 'llm'}
  packs = True  # 2D images; rows of up to pack_max_examples examples (radjax/data/packing.py)

  def __init__(self, config, tokenizer):
    super().__init__(config, tokenizer)
    image_id = self.encoder = None
    if tokenizer is not None:
      base.prepare_tokenizer(config, tokenizer, images=True)
      self.check_vocab()
      image_id = tokenizer.convert_tokens_to_ids(chat.IMAGE_MARK)
    # The auxiliary label loss (config.data.label_loss_weight > 0): its targets and head.
    self.label_weight = float(config.data.get('label_loss_weight', 0.0))
    names = tuple(config.data.get('label_names', ())) if self.label_weight else ()
    if self.label_weight and not names:
      raise ValueError(f'config.data.label_loss_weight={self.label_weight} needs '
                       'config.data.label_names')
    if config.data.get('box_token_weight', 0.0) and not self.label_weight:
      raise ValueError('config.data.box_token_weight > 0 supervises the label head, which '
                       'a VLM has only with config.data.label_loss_weight > 0')
    self._check_packable(config)
    self.model_cfg = factory.vlm_config(config.model, image_id, len(names))
    if config.data.max_len <= self.model_cfg.tokens_per_image:
      raise ValueError(f"config.data.max_len={config.data.max_len} does not hold one image's "
                       f'{self.model_cfg.tokens_per_image} placeholder tokens and an answer')
    self.targets = base.label_targets(config, self.model_cfg.vision) if names else None
    if tokenizer is not None:
      self.encoder = base.chat_encoder(config, tokenizer, self.model_cfg.tokens_per_image)
    c, v = config.data, self.model_cfg.vision
    self.anyres = self._anyres(config)
    mode = pixels.mode_of(config)
    if self.anyres:
      self.slots = {'image': processors.TileSlots(
          self.anyres, num_channels=v.num_channels, max_images=c.max_images,
          mean=tuple(c.image_mean), std=tuple(c.image_std), pixels=mode)}
    else:
      self.slots = {'image': processors.ImageSlots(
          image_size=v.image_size, num_channels=v.num_channels, max_images=c.max_images,
          mean=tuple(c.image_mean), std=tuple(c.image_std), crop_scale=tuple(c.crop_scale),
          augment=c.augment, jitter=c.get('intensity_jitter', True), pixels=mode)}
    eval_slots = dict(self.slots)
    self.volume_plane, self.model_plane = v.image_size, ()
    if v.kind == 'vit3d':  # volumes too, in batches of their own
      eval_slots['volume'] = processors.VolumeSlots(
          image_size=v.image_size, num_channels=v.num_channels, max_images=c.max_images,
          max_depth=pipeline.max_slices(config), depth_patch=v.depth_patch_size,
          mean=tuple(c.image_mean), std=tuple(c.image_std), pixels=mode)
      # Training's: a sample of many images capped in depth (RadFM's training collator;
      # its inference path, src/test.py, calls no collator).
      self.slots['volume'] = dataclasses.replace(
          eval_slots['volume'], many_images=c.get('many_images', 0),
          many_images_depth=pipeline.many_images_slices(config))
      self.volume_plane = pipeline.volume_image_size(config)
      # Several processes: the training step's model resizes (a host sees a share).
      if jax.process_count() > 1 and self.volume_plane < v.image_size:
        self.model_plane = tuple(int(i) for i in volumes.nearest_indices(v.image_size,
                                                                         self.volume_plane))
    eval_kind = mixture.eval_kind(config)
    if eval_kind not in self.slots:
      raise ValueError(f"the eval dataset holds volumes (its mixture component's kind is "
                       f"'volume') but config.model.vision.kind={v.kind!r} reads 2D images "
                       "only; use 'vit3d'")
    self.eval_slots = eval_slots
    self.image_slots = eval_slots[eval_kind]  # evaluation and generation

  def _anyres(self, config) -> anyres.AnyRes | None:
    cfg = self.model_cfg
    if not cfg.anyres_grids:
      return None
    if config.data.augment:
      raise ValueError('config.model.anyres_grids tiles the whole image (LLaVA-NeXT neither '
                       'crops nor jitters); set config.data.augment=False')
    if self.label_weight:
      raise ValueError(f'config.model.anyres_grids and config.data.label_loss_weight='
                       f'{self.label_weight}: the label head reads one tile per image; set '
                       'one of them off')
    v = cfg.vision
    return anyres.AnyRes(tile=v.image_size, side=v.image_size // v.patch_size,
                         grids=cfg.anyres_grids, max_tiles=cfg.anyres_max_tiles)

  def _check_packable(self, config):
    if not config.data.get('pack', False):
      return
    if self.label_weight:
      raise ValueError(f'config.data.pack=True and config.data.label_loss_weight='
                       f'{self.label_weight}: the label head reads one example per row; '
                       'set label_loss_weight=0 or pack=False')
    if config.model.vision.kind == 'vit3d':
      raise ValueError("config.data.pack=True packs 2D images only; config.model.vision.kind="
                       "'vit3d' reads volumes")

  def image_slots_per_row(self) -> int:
    """config.data.max_images, times pack_max_examples when rows are packed."""
    c = self.config.data
    return c.max_images * (c.pack_max_examples if c.get('pack', False) else 1)

  def _check_kind(self, kind: str) -> None:
    if kind and kind not in self.slots:
      raise ValueError(f'a mixture component of kind {kind!r} needs a vision tower that '
                       f'reads it; config.model.vision.kind={self.model_cfg.vision.kind!r}')

  def batch_spec(self, kind: str = '') -> dict:
    """The batch fields. kind 'image': images [M, H, W, P] and their pixel_table as
    config.data.pixels sends them (radjax/data/pixels.py); 'volume' (a 'vit3d' tower):
    volume slots [M, H, W, D, C] as it sends them (pixels.volume_fields: float16 voxels,
    8-bit 2D images, ...) and a depth_mask [M, D] (each kind compiles its own step); '':
    every field of either kind, images 2D (what the batch shardings are made from)."""
    self._check_kind(kind)
    c, v = self.config.data, self.model_cfg.vision
    seq = base.BatchField((c.max_len,), np.int32)
    m = self.image_slots_per_row()
    # A volume batch is as deep as its slots make it (config.data.max_slices, else the
    # tower's max_depth): what training feeds, so the dry run compiles the same step.
    max_depth = self.slots['volume'].max_depth if 'volume' in self.slots else 0
    tiles, plans = (), {}
    if self.anyres:  # AnyRes: tile slots per image, and each image's plan
      tiles = (self.anyres.slots,)
      plan = (m, self.anyres.max_tokens, 4)
      plans = {'tile_index': base.BatchField(plan, np.int32),
               'tile_weight': base.BatchField(plan, np.float32)}
    images = base.image_fields(self.config, (m, *tiles), v.image_size, v.num_channels)
    if max_depth and kind != 'image':  # '': the volume-only fields beside the 2D images
      # A volume batch that deep is at config.data.volume_image_size in-plane (one depth
      # patch deep, at image_size: fewer tokens than a deeper one at RadFM's sizes).
      size = (self.volume_plane if kind == 'volume' and max_depth > v.depth_patch_size
              and not self.model_plane else v.image_size)
      volume = {k: base.BatchField(*f) for k, f in pixels.volume_fields(
          pixels.mode_of(self.config), (m,), size, max_depth, v.num_channels).items()}
      images = volume if kind == 'volume' else {**volume, **images}
    return {'tokens': seq, 'targets': seq, 'loss_mask': base.BatchField((c.max_len,), np.float32),
            **images,
            **plans,
            'image_mask': base.BatchField((m,), np.bool_),
            **base.packed_fields(self.config),
            **({'depth_mask': base.BatchField((c.max_images, max_depth), np.bool_)}
               if kind == 'volume' or (not kind and 'volume' in self.slots) else {}),
            **base.label_fields(self.targets)}

  def slots_for(self, examples) -> processors.ImageSlots | processors.VolumeSlots:
    """The eval kind's slots, or the volume slots when an example holds a volume (they take
    2D images too, repeated in depth, as RadFM reads them): an imported 'vit3d' workdir
    has no dataset to say which."""
    volume = self.eval_slots.get('volume')
    if volume is not None and any(im.get('kind') == '3d' for ex in examples
                                  for im in ex.get('images') or []):
      return volume
    return self.image_slots

  def processor(self, tasks=None, kind: str = '') -> processors.ConversationProcessor:
    """kind: 'image' | 'volume' (default: the eval dataset's)."""
    self._check_kind(kind)
    slots = self.slots[kind] if kind else self.image_slots
    return base.conversation_processor(self.config, self.encoder, tasks, slots, self.targets)

  def model(self, frozen=()) -> vlm.VLM:
    rt = factory.vlm_runtime(self.config, frozen)
    if 'volume' in self.slots:  # each volume slot's floats built as the tower runs it
      rt = dataclasses.replace(rt, volume_floats=pixels.volume_floats)
    return vlm.VLM(self.model_cfg, rt)

  def init_inputs(self) -> tuple:
    spec = self.batch_spec()
    (tokens,), images = base.zeros(spec, ('tokens',)), base.model_images(spec)
    if self.anyres:  # the parameters are those of one tile per image
      images = images[:, :, 0]
    return tokens, images

  def depth_mask(self, batch):
    """The batch's depth_mask; a vit3d tower's 2D batch gets one from its image_mask, each
    image one depth patch deep (all False: an empty slot), so that the tower skips the
    slots no row of the global batch uses, as it does a volume batch's (VLM._volume_slots)."""
    if ('depth_mask' in batch or 'volume' not in self.slots or 'image_mask' not in batch
        or batch['images'].ndim != 5):
      return batch.get('depth_mask')
    shape = (*batch['image_mask'].shape, self.model_cfg.vision.depth_patch_size)
    return jnp.broadcast_to(batch['image_mask'][..., None], shape)

  def loss(self, model, params, batch, rng):
    # The step's first op: 8-bit pixels -> the tower's floats (volumes: slot by slot)
    batch = pixels.model_inputs(batch, model.rt.volume_floats is not None)
    at = base.logits_at(self.config, batch)
    logits, _ = model.apply({'params': params}, batch['tokens'], batch['images'],
                            positions=batch.get('positions'), depth_mask=self.depth_mask(batch),
                            segment_ids=batch.get('segment_ids'), logits_at=at,
                            tile_index=batch.get('tile_index'),
                            tile_weight=batch.get('tile_weight'),
                            rngs={'dropout': rng} if rng is not None else None)
    return loss_lib.batch_token_losses(logits, batch, at)

  def train_step(self, model, tx, labels, schedule):
    """The generic step; with the label loss and micro-batches, each micro-batch scales it
    by the whole batch's tokens per labelled example, so that accumulation gives the big
    batch's loss (each micro-batch's own ratio weighed micro-batches by their tokens)."""
    step = super().train_step(model, tx, labels, schedule)
    if not self.label_weight or self.config.optim.grad_accum == 1:
      return step

    def with_label_scale(state, batch):
      at = base.logits_at(self.config, batch)
      weights = batch['loss_mask']
      if at is not None:
        weights = jnp.take_along_axis(weights, at, axis=1)
      ratio = jnp.sum(weights) / jnp.maximum(jnp.sum(batch['label_mask']), 1.0)
      n = batch['loss_mask'].shape[0]
      return step(state, {**batch, LABEL_SCALE: jnp.full((n,), ratio, jnp.float32)})
    return with_label_scale

  def train_loss(self, model, params, batch, rng):
    """The report loss, plus label_loss_weight x the label head's mean cross-entropy per
    labelled example (scaled by tokens per example, as the step divides by tokens)."""
    if self.model_plane:  # several processes: the model resizes in-plane
      model = model.clone(rt=dataclasses.replace(model.rt, volume_plane=self.model_plane))
    if not self.label_weight:
      return self.loss(model, params, batch, rng)
    batch = pixels.model_inputs(batch, model.rt.volume_floats is not None)
    at = base.logits_at(self.config, batch)
    logits, (label_logits, scores) = model.apply(
        {'params': params}, batch['tokens'], batch['images'], depth_mask=self.depth_mask(batch),
        logits_at=at, rngs={'dropout': rng} if rng is not None else None,
        method=vlm.VLM.with_labels)
    sums = loss_lib.batch_token_losses(logits, batch, at)
    lab = base.label_head_losses(self.targets, self.config, label_logits, scores, batch)
    if LABEL_SCALE in batch:  # the whole batch's tokens per labelled example (train_step)
      per_example = batch[LABEL_SCALE][0]
    else:
      per_example = sums['weight_sum'] / jnp.maximum(lab['weight_sum'], 1.0)
    per_example = jax.lax.stop_gradient(per_example)
    sums['label_loss_sum'] = lab.get('label_loss_sum', lab['loss_sum']) * per_example
    sums['label_accuracy_sum'] = lab['accuracy_sum'] * per_example
    if 'box_loss_sum' in lab:
      sums['box_loss_sum'] = lab['box_loss_sum'] * per_example
    sums['loss_sum'] = sums['loss_sum'] + self.label_weight * lab['loss_sum'] * per_example
    return sums
