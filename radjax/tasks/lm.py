"""Text -> text: the decoder alone, trained on text-only examples (LLM-CXR's and
XrayGPT's text stages). Its workdir is an ordinary LLM workdir (`config.model.kind=
'llm'`), so `to-hf` exports it as a *ForCausalLM."""
import numpy as np

from radjax.data import processors, tokens
from radjax.models import factory, llm
from radjax.tasks import base
from radjax.train import loss as loss_lib
from radjax.train import state as state_lib


class TextToText(base.Task):
  name = 'lm'
  model_kind = 'llm'
  evaluators = ('loss',)
  parts = {'llm': state_lib.WHOLE}

  def __init__(self, config, tokenizer):
    super().__init__(config, tokenizer)
    self.model_cfg = factory.llm_config(config.model)
    self.encoder = tokens.TextEncoder(tokenizer) if tokenizer is not None else None

  def batch_spec(self) -> dict:
    seq = base.BatchField((self.config.data.max_len,), np.int32)
    return {'tokens': seq, 'targets': seq,
            'loss_mask': base.BatchField((self.config.data.max_len,), np.float32)}

  def processor(self, tasks=None) -> processors.TextProcessor:
    return processors.TextProcessor(self.encoder, self.config.data.template,
                                    self.config.data.max_len)

  def model(self, frozen=()) -> llm.Decoder:
    return llm.Decoder(self.model_cfg, factory.runtime(self.config, 'llm', 'llm' in frozen))

  def init_inputs(self) -> tuple:
    return (np.zeros((1, 1, self.model_cfg.embed_dim), np.float32), np.zeros((1, 1), np.int32))

  def loss(self, model, params, batch, rng):
    del rng
    logits, _ = model.apply({'params': params}, batch['tokens'], method=llm.Decoder.logits)
    return loss_lib.token_losses(logits, batch['targets'], batch['loss_mask'])
