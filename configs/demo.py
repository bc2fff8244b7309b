r"""The embedded default: the LLaVA-style recipe (configs/llava_tinyllama.py) in its
tiny form — a small CLIP-style ViT + MLP projector + LLaMA-style decoder learning to
report synthetic chest radiographs with real OpenI sentences.

  python main.py --config configs/demo.py --workdir runs/demo
  python main.py --config configs/demo.py:task=lm --workdir runs/demo_lm  # decoder on text

Same code path as the 7B configs; only sizes shrink. The dataset is built on
first use into config.data.dir (about a minute on 2 cores). The tower also learns the
renderer's five findings through an auxiliary label head (config.data.label_loss_weight):
a tower trained from scratch by the report loss alone is slow to see small findings.
"""
from configs import common, llava_tinyllama
from radjax.data import schema


def get_config(arg: str = ''):
  arg = ','.join(filter(None, ['size=tiny', arg]))
  c = llava_tinyllama.get_config(arg)
  if c.task == 'vlm':
    c.data.label_names = tuple(schema.DEMO_FINDINGS.values())
    c.data.label_loss_weight = 1.0
    # Finding F1 over 256 of the 300 val images: 96 left a finding's F1 resting on ~16
    # positives.
    if common.parse(arg).size == 'tiny':
      c.eval.num_generate = 256
  return c
