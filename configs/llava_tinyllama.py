r"""LLaVA-style model at the scale later performance work is measured on:
CLIP ViT-L/14-224 (penultimate layer) + 2-layer MLP projector + a 1.1B LLaMA
(TinyLlama shape), seq 2048, bf16, cuDNN attention. About 1.41B parameters.

  python bench/train_step.py --config configs/llava_tinyllama.py --peak_tflops 989
  python main.py --config configs/llava_tinyllama.py --workdir DIR \
      --config.data.dir=DIR_WITH_ARRAY_RECORDS_AND_TOKENIZER \
      --config.model.vision.init_from=HF_DIR/clip-vit-large-patch14 \
      --config.model.llm.init_from=HF_DIR/TinyLlama-1.1B-Chat-v1.0

The pretrained towers are local HF directories (or workdirs from
`python -m radjax.convert from-hf`); a tokenizer with radjax's chat specials added
needs --config.model.llm.vocab_size set to its length, which grows the embeddings.

Sizes are configs/base.py's defaults; this file only sets the run shape.
"""
from configs import base


def get_config(arg: str = ''):
  c = base.get_config(arg)
  c.data.max_len = 2048
  c.model.dtype = 'bfloat16'
  c.model.attention_impl = 'cudnn'
  c.model.remat_policy = 'qkv_and_attention_out'
  c.train.batch_size = 8
  c.optim.lr = 2e-5
  return c
