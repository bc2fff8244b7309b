r"""The embedded default: the LLaVA-style recipe (configs/llava_tinyllama.py) in its
tiny form — a small CLIP-style ViT + MLP projector + LLaMA-style decoder learning to
report synthetic chest radiographs with real OpenI sentences.

  python main.py --config configs/demo.py --workdir runs/demo
  python main.py --config configs/demo.py:task=lm --workdir runs/demo_lm  # decoder on text

Same code path as the 7B configs; only sizes shrink. The dataset is built on
first use into config.data.dir (about a minute on 2 cores).
"""
from configs import llava_tinyllama


def get_config(arg: str = ''):
  return llava_tinyllama.get_config(','.join(filter(None, ['size=tiny', arg])))
