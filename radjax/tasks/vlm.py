"""Image(s) + text -> text: the VLM trained on conversations drawn from instruction tasks
(report generation, classification, grounding, ...), loss on the answers."""
import numpy as np

from radjax.data import chat, mixture, processors
from radjax.models import factory, vlm
from radjax.tasks import base
from radjax.train import loss as loss_lib


class ImageTextToText(base.Task):
  name = 'vlm'
  model_kind = 'vlm'
  evaluators = ('loss', 'reports')
  parts = {'vision': 'vision', 'projector': 'projector', 'llm': 'llm'}

  def __init__(self, config, tokenizer):
    super().__init__(config, tokenizer)
    image_id = self.encoder = None
    if tokenizer is not None:
      base.prepare_tokenizer(config, tokenizer, images=True)
      self.check_vocab()
      image_id = tokenizer.convert_tokens_to_ids(chat.IMAGE_MARK)
    self.model_cfg = factory.vlm_config(config.model, image_id)
    if tokenizer is not None:
      self.encoder = base.chat_encoder(config, tokenizer, self.model_cfg.tokens_per_image)
    c, v = config.data, self.model_cfg.vision
    self.slots = {'image': processors.ImageSlots(
        image_size=v.image_size, num_channels=v.num_channels, max_images=c.max_images,
        mean=tuple(c.image_mean), std=tuple(c.image_std), crop_scale=tuple(c.crop_scale),
        augment=c.augment)}
    if v.kind == 'vit3d':  # volumes too, in batches of their own
      self.slots['volume'] = processors.VolumeSlots(
          image_size=v.image_size, num_channels=v.num_channels, max_images=c.max_images,
          max_depth=v.max_depth, depth_patch=v.depth_patch_size, mean=tuple(c.image_mean),
          std=tuple(c.image_std))
    eval_kind = mixture.eval_kind(config)
    if eval_kind not in self.slots:
      raise ValueError(f"the eval dataset holds volumes (its mixture component's kind is "
                       f"'volume') but config.model.vision.kind={v.kind!r} reads 2D images "
                       "only; use 'vit3d'")
    self.image_slots = self.slots[eval_kind]  # evaluation and generation

  def batch_spec(self) -> dict:
    """Image batches; a volume batch (a 'vit3d' tower) has images [M, H, W, D, C] and a
    depth_mask [M, D] in their place (each kind compiles its own step)."""
    c, v = self.config.data, self.model_cfg.vision
    seq = base.BatchField((c.max_len,), np.int32)
    return {'tokens': seq, 'targets': seq, 'loss_mask': base.BatchField((c.max_len,), np.float32),
            'images': base.BatchField((c.max_images, v.image_size, v.image_size,
                                       v.num_channels), np.float32),
            'image_mask': base.BatchField((c.max_images,), np.bool_),
            **({'depth_mask': base.BatchField((c.max_images, v.max_depth), np.bool_)}
               if 'volume' in self.slots else {})}

  def processor(self, tasks=None, kind: str = '') -> processors.ConversationProcessor:
    """kind: 'image' | 'volume' (default: the eval dataset's)."""
    if kind and kind not in self.slots:
      raise ValueError(f'a mixture component of kind {kind!r} needs a vision tower that '
                       f'reads it; config.model.vision.kind={self.model_cfg.vision.kind!r}')
    slots = self.slots[kind] if kind else self.image_slots
    return base.conversation_processor(self.config, self.encoder, tasks, slots)

  def model(self, frozen=()) -> vlm.VLM:
    return vlm.VLM(self.model_cfg, factory.vlm_runtime(self.config, frozen))

  def init_inputs(self) -> tuple:
    return base.zeros(self.batch_spec(), ('tokens', 'images'))

  def loss(self, model, params, batch, rng):
    logits, _ = model.apply({'params': params}, batch['tokens'], batch['images'],
                            depth_mask=batch.get('depth_mask'),
                            rngs={'dropout': rng} if rng is not None else None)
    return loss_lib.token_losses(logits, batch['targets'], batch['loss_mask'])
