"""Text -> text: the decoder alone, trained on conversations without images (LLM-CXR's
and XrayGPT's text stages; images and their marks are dropped). Its workdir is an
ordinary LLM workdir (`config.model.kind='llm'`), so `to-hf` exports it as a *ForCausalLM."""
import numpy as np

from radjax.data import processors
from radjax.models import factory, llm
from radjax.tasks import base
from radjax.train import loss as loss_lib
from radjax.train import state as state_lib


class TextToText(base.Task):
  name = 'lm'
  model_kind = 'llm'
  evaluators = ('loss',)
  token_loss = True
  parts = {'llm': state_lib.WHOLE}
  packs = True

  def __init__(self, config, tokenizer):
    super().__init__(config, tokenizer)
    self.model_cfg = factory.llm_config(config.model)
    self.image_slots = None
    self.encoder = None
    if tokenizer is not None:
      base.prepare_tokenizer(config, tokenizer, images=False)
      self.check_vocab()
      self.encoder = base.chat_encoder(config, tokenizer, image_tokens=0)

  def batch_spec(self) -> dict:
    seq = base.BatchField((self.config.data.max_len,), np.int32)
    return {'tokens': seq, 'targets': seq,
            'loss_mask': base.BatchField((self.config.data.max_len,), np.float32),
            **base.packed_fields(self.config)}

  def processor(self, tasks=None, kind: str = '') -> processors.ConversationProcessor:
    del kind  # text only: every component's images are dropped
    return base.conversation_processor(self.config, self.encoder, tasks)

  def model(self, frozen=()) -> llm.Decoder:
    return llm.Decoder(self.model_cfg, factory.runtime(self.config, 'llm', 'llm' in frozen))

  def init_inputs(self) -> tuple:
    return (np.zeros((1, 1, self.model_cfg.embed_dim), np.float32), np.zeros((1, 1), np.int32))

  def loss(self, model, params, batch, rng):
    del rng
    at = base.logits_at(self.config, batch)
    logits, _ = model.apply({'params': params}, batch['tokens'], batch.get('positions'),
                            batch.get('segment_ids'), at, method=llm.Decoder.logits)
    return loss_lib.batch_token_losses(logits, batch, at)
