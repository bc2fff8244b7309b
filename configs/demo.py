r"""The embedded default: the LLaVA-style recipe (configs/llava_tinyllama.py) in its
tiny form — a small CLIP-style ViT + MLP projector + LLaMA-style decoder learning to
report synthetic chest radiographs with real OpenI sentences.

  python main.py --config configs/demo.py --workdir runs/demo
  python main.py --config configs/demo.py:task=lm --workdir runs/demo_lm  # decoder on text

Same code path as the 7B configs; only sizes shrink. The dataset is built on first use
into config.data.dir (about a minute on 2 cores). Then two stages in the one command, as
LLaVA-style recipes start from a tower that already sees: the vision tower first learns
the renderer's five findings as a classifier (configs/classifier.py, with box targets
for the findings the renderer boxes: all five; <workdir>/pre_stage), then the projector and
decoder learn the reports on the frozen tower. A from-scratch tower trained by the report
loss alone misses small findings; 8-pixel patches (64 image tokens) let it see nodules.
size=micro (the tests' shrink) trains in one stage, the tower with the same label and
box losses as an auxiliary head (config.data.label_loss_weight).
"""
from configs import common, llava_tinyllama


def get_config(arg: str = ''):
  arg = ','.join(filter(None, ['size=tiny', arg]))
  if common.parse(arg).size == 'full':
    raise ValueError("config argument size='full': configs/demo.py is the tiny recipe "
                     '(size=tiny or micro); the full-size model is configs/llava_tinyllama.py')
  c = llava_tinyllama.get_config(arg)
  if c.task != 'vlm':
    return c
  common.demo_findings(c)
  c.data.label_loss_weight = 1.0
  c.data.pixels = 'gray8'  # the renderer's films are gray: one byte per pixel to the device
  if common.parse(arg).size != 'tiny':
    return c
  c.model.vision.patch_size = 8
  c.data.max_len = 176  # 64 image tokens + prompt + the longest reports
  c.data.max_target_tokens = 96  # the longest report is 84 tokens; logits only there
  c.train.pre_stage = 'configs/classifier.py:size=tiny'
  c.train.pre_stage_set = (('train.num_steps', 600), ('train.batch_size', 32),
                           ('optim.lr', 2e-3), ('train.eval_every', 0))
  c.optim.param_groups = (('vision/.*', 'frozen'), ('.*', 1.0))
  # The frozen tower learnt its findings in the pre-stage: no label head here.
  c.data.label_loss_weight = c.data.box_token_weight = 0.0
  c.train.num_steps, c.train.eval_every = 750, 750
  # Finding F1 over 256 of the 300 val images: 96 left a finding's F1 resting on ~16
  # positives.
  c.eval.num_generate = 256
  return c
