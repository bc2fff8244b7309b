r"""The embedded default: a tiny CLIP-style ViT + MLP projector + LLaMA-style decoder
learning to report synthetic chest radiographs with real OpenI sentences.

  python main.py --config configs/demo.py --workdir runs/demo

Same code path as the 7B configs; only sizes shrink. The dataset is built on
first use into config.data.dir (about a minute on 2 cores).
"""
import os

from configs import base


def get_config(arg: str = ''):
  c = base.get_config(arg)
  c.data.dir = os.path.join(os.path.expanduser('~'), '.cache', 'radjax', 'demo_v1')
  c.data.builder = 'demo'
  c.data.builder_kwargs.seed = 0
  c.data.max_len = 112  # 16 image tokens + prompt + the longest reports (~72 tokens)
  # Minutes of CPU leave no room for augmentation to pay off; the tests cover it.
  c.data.augment = False

  c.model.dtype = 'float32'  # bf16 matmuls are slow on most CPUs
  c.model.vision.variant = 'clip'
  c.model.vision.image_size = 64
  c.model.vision.patch_size = 16
  c.model.vision.embed_dim = 128
  c.model.vision.num_layers = 4
  c.model.vision.num_heads = 4
  c.model.vision.mlp_dim = 384
  c.model.vision.select_layer = -2

  c.model.llm.vocab_size = 2048
  c.model.llm.embed_dim = 128
  c.model.llm.num_layers = 2
  c.model.llm.num_heads = 4
  c.model.llm.num_kv_heads = 2
  c.model.llm.mlp_dim = 384

  c.optim.lr = 1e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.1
  c.optim.b2 = 0.98

  c.train.num_steps = 1500
  c.train.batch_size = 16
  c.train.log_every = 10
  c.train.checkpoint_every = 100
  c.train.eval_every = 500

  c.eval.batch_size = 16
  c.eval.num_loss_batches = 8
  c.eval.num_generate = 96
  c.eval.max_new_tokens = 96
  return c
