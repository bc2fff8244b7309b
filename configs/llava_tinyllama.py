r"""LLaVA-style model: CLIP ViT-L/14-224 (penultimate layer) + 2-layer MLP projector +
a 1.1B LLaMA (TinyLlama shape), seq 2048, bf16, cuDNN attention; about 1.41B
parameters. RadVLM's recipe shape at a size performance work is measured on.

  python bench/train_step.py --config configs/llava_tinyllama.py --peak_tflops 989
  python main.py --config configs/llava_tinyllama.py --workdir DIR \
      --config.data.dir=DIR_WITH_ARRAY_RECORDS_AND_TOKENIZER \
      --config.model.vision.init_from=HF_DIR/clip-vit-large-patch14 \
      --config.model.llm.init_from=HF_DIR/TinyLlama-1.1B-Chat-v1.0
  python main.py --config configs/llava_tinyllama.py:size=tiny --workdir DIR   # = demo.py

The pretrained towers are local HF directories (or workdirs from
`python -m radjax.convert from-hf`); a tokenizer with radjax's chat specials added
needs --config.model.llm.vocab_size set to its length, which grows the embeddings.
Arguments (configs/common.py): size=full|tiny, task=vlm|lm.
"""
from configs import base, common


def get_config(arg: str = ''):
  args = common.parse(arg)
  c = base.get_config()
  # Tower sizes are radjax/core/defaults.py's (CLIP ViT-L/14-224, TinyLlama 1.1B).
  c.data.max_len = 2048
  c.model.llm.max_position_embeddings = 2048  # TinyLlama's; what to-hf writes
  c.runtime.dtype = 'bfloat16'
  c.runtime.attention_impl = 'cudnn'
  c.runtime.remat.llm = 'qkv_and_attention_out'
  c.runtime.remat.vision = 'qkv_and_attention_out'
  c.train.batch_size = 8
  c.optim.lr = 2e-5
  return common.finish(c, args)
