r"""RadVLM's model: SigLIP so400m/14-384 -> 2-layer GELU MLP -> Qwen2-7B, fully fine-tuned
(the vision tower at a fifth of the learning rate) in ChatML on a multi-task mixture:
reports, abnormality classification, abnormality / phrase / anatomical grounding (80,000
Chest ImaGenome images), detection, conversations.

  python main.py --config configs/radvlm.py --workdir runs/radvlm \
      --config.data.tokenizer=QWEN2_DIR \
      --config.model.vision.init_from=SIGLIP_DIR --config.model.llm.init_from=QWEN2_DIR \
      --config.data.mixture.mimic_reports.dir=MIMIC_DIR \
      --config.data.mixture.mimic_labels.dir=MIMIC_DIR ...   # one dir per component below
  python main.py --config configs/radvlm.py:size=tiny --workdir runs/radvlm_tiny   # a CPU

RadVLM starts from LLaVA-OneVision-7B-si (tower, projector and LLM after OneVision's
training). Import its HF form, then start every part, the architecture and the tokenizer
from that workdir (init=DIR; the SigLIP tower then has OneVision's 26 layers, read at the
last, the same features as SigLIP's 27 read at -2; the vocabulary OneVision's):

  python -m radjax.convert from-hf --family llava_onevision \
      --hf_dir llava-onevision-qwen2-7b-si-hf --out runs/llava_ov
  python main.py --config configs/radvlm.py:init=runs/llava_ov --workdir runs/radvlm \
      --config.data.mixture.mimic_reports.dir=MIMIC_DIR ...   # one dir per component

The first command above starts the tower and the LLM from SigLIP and Qwen2 with a fresh
projector instead. At full size each evaluator reads its task's own dataset, as RadVLM
scores each task on its own test set (EVAL_SETS below, config.eval.datasets): reports on
MIMIC, classification on CheXpert, abnormality / anatomical / phrase grounding on VinDr-CXR,
Chest ImaGenome (2,000 images drawn with seed 4) and MS-CXR; the held-out loss reads
config.data.dir, or when it is '' the first component by name. Score the test sets with

  python main.py --config configs/radvlm.py --workdir runs/radvlm --mode=eval \
      --config.eval.split=test --config.eval.num_generate=3314 ...   # the dirs of training

Images are read as LLaVA-OneVision reads them (AnyRes, radjax/data/anyres.py): the
384-pixel base tile, then the film's grid of tiles, scaled to about 9 tiles' tokens, a
newline after each row. Data dirs come from `python -m data_prep build <name>`
(mimic_cxr, chexpert, vindr_cxr, ms_cxr, chest_imagenome, llava_json, ...); mimic_cxr's
and chexpert's are their frontal configs, as RadVLM trains and scores on PA/AP films only
(--config frontal: OUT/mimic_cxr/frontal/1.0.0, OUT/chexpert/frontal/1.0.0).
At size=tiny
five components read the embedded default, whose records carry labels, finding boxes and
short conversations; every evaluator reads it too.
Arguments: size=full|tiny|micro, task=vlm|lm, init=DIR (an imported LLaVA-OneVision).
"""
import math
import os

import ml_collections

from configs import base, common
from radjax.core import workdir as workdir_lib

# component -> (instruction tasks, repeat). Weights are 0: each component is drawn in
# proportion to its size x repeat, RadVLM's concatenation with small sets listed 2-4x.
# A dataset feeding two tasks (MIMIC: reports and labels) is two components on one dir.
MIXTURE = {
    'mimic_reports': (('report',), 1),  # both on the mimic_cxr frontal config's build
    'mimic_labels': (('classification',), 1),
    'chexpert_plus': (('report',), 1),
    'chexpert': (('classification',), 1),  # the frontal config's build: 191,027 images
    'vindr_grounding': (('abnormality_grounding',), 3),
    'vindr_detection': (('detection',), 2),
    'ms_cxr': (('phrase_grounding',), 3),
    'padchest_gr': (('phrase_grounding',), 2),
    'conversations': (('conversation',), 1),
    # Chest ImaGenome's silver train split (the chest_imagenome build), one region per
    # instruction: RadVLM takes 80,000 of its images (num_samples, MAX_RECORDS below).
    'chest_imagenome': (('anatomical_grounding',), 1),
    # RadVLM's create_llava_dataset.py (1,115,021 pairs in all, so 4355 steps) also lists
    # GPT-4o grounded conversations on MS-CXR and PadChest-GR images, x4 each: llava_json
    # builds of all_train.json's records of that id prefix (conv-grounded-train1,
    # conv-grounded-padchest-train1).
    'mscxr_conversations': (('conversation',), 4),
    'padchest_conversations': (('conversation',), 4),
}
# Components that train on these splits of their build, one set (config.data.mixture.<name>.
# splits; the rest: train): RadVLM merges MS-CXR's and PadChest-GR's train and validation.
SPLITS = {'ms_cxr': ('train', 'val'), 'padchest_gr': ('train', 'val')}
# Components read only a fixed subset of this many train records (config.data.mixture.
# <name>.max_records; 0 elsewhere: all): RadVLM's num_samples=80000 on Chest ImaGenome.
MAX_RECORDS = {'chest_imagenome': 80000}
# Full size: evaluator -> (component, split, records drawn, seed) it reads (config.eval.
# datasets): RadVLM's evaluate_instructions.py load_dataset reads each task's test set.
# split '': config.eval.split (val while training, --config.eval.split=test after).
EVAL_SETS = {
    # MIMIC_Dataset_MM(split='test', only_frontal=True, filtered_reports_dir=...): 3,314.
    'reports': ('mimic_reports', '', 0, 0),
    # CheXpert_Dataset_MM(split='test') (only_frontal: Paths ending in frontal.jpg): 518 of
    # the radiologist-labelled test set's 668 images, the test split of the chexpert
    # build's frontal config (there when CheXlocalize's CheXpert/ folder was in its
    # manual_dir); valid.csv's frontal films (val) while training.
    'classification': ('chexpert', '', 0, 0),
    # VinDr_CXR_Single_Label_Dataset(split='test'): 2,108 (image, finding) pairs. VinDr-CXR
    # has no val split, so this reads test while training too.
    'grounding': ('vindr_grounding', 'test', 0, 0),
    # Chest_ImaGenome_Dataset(split='test', seed=4): RadVLM's 2,000 region-grounding items.
    'anatomical_grounding': ('chest_imagenome', '', 2000, 4),
    # MS_CXR(split='test', only_frontal=True): 189. Its val images train (SPLITS), so this
    # reads test while training too.
    'phrase_grounding': ('ms_cxr', 'test', 0, 0),
    # RadVLM has no closed-question set; MIMIC's CheXpert labels are what vqa asks about
    # (the first component, chest_imagenome, has none).
    'vqa': ('mimic_labels', '', 0, 0),
}
# size=tiny: five components on the embedded default, by weight (shares of the stream).
TINY_MIXTURE = {
    'reports': (('report',), 0.35),
    'labels': (('classification',), 0.2),
    'boxes': (('abnormality_grounding',), 0.2),  # the demo's finding boxes
    'questions': (('vqa',), 0.1),
    'conversations': (('conversation',), 0.15),
}


def get_config(arg: str = ''):
  args = common.parse(arg, init='')
  c = base.get_config()
  v = c.model.vision
  v.variant, v.image_size, v.patch_size = 'siglip', 384, 14
  # google/siglip-so400m-patch14-384 has 27 layers; LLaVA-NeXT's tower drops the last and
  # reads the 26th (mm_vision_select_layer -2): -2 here, so init_from takes that checkpoint.
  v.embed_dim, v.num_layers, v.num_heads, v.mlp_dim = 1152, 27, 16, 4304
  v.norm_eps, v.select_layer = 1e-6, -2
  c.model.projector.kind = 'mlp'
  lm = c.model.llm  # Qwen2-7B-Instruct
  lm.vocab_size, lm.embed_dim, lm.num_layers, lm.num_heads, lm.num_kv_heads = (
      152064, 3584, 28, 28, 4)
  lm.mlp_dim, lm.norm_eps, lm.rope_theta, lm.qkv_bias = 18944, 1e-6, 1e6, True
  lm.max_position_embeddings = 32768  # what to-hf writes (radjax/core/defaults.py)
  # LLaVA-OneVision's AnyRes (anyres_max_9, pinpoints (1x1)..(6x6)): a film is the base
  # tile's 729 tokens and up to ~9 x 729 more from its grid, rows ended by image_newline.
  c.model.anyres_grids = tuple((r, col) for r in range(1, 7) for col in range(1, 7))
  c.model.anyres_max_tiles = 9
  c.data.image_mean = c.data.image_std = (0.5, 0.5, 0.5)
  # Films are gray: their tiles travel as one byte per pixel (5.5 MB per film's 37 tile
  # slots, 65 MB as float32 RGB) and the device looks them up (radjax/data/pixels.py).
  c.data.pixels = 'gray8'
  c.data.chat_format = 'chatml'
  # RadVLM trains these wherever they stand (LLaVA-NeXT's unmask_tokens_idx).
  c.data.always_trained = ('\n', '<|im_start|>', '<|im_end|>')
  c.data.task_options.uncertain_as = 1  # RadVLM counts uncertain findings as present
  c.data.max_len = 10240  # up to 8,829 image tokens (AnyRes) and the conversation
  c.data.mixture = ml_collections.ConfigDict({
      name: dict(dir='', tasks=tasks, weight=0.0, repeat=repeat,
                 max_records=MAX_RECORDS.get(name, 0), splits=SPLITS.get(name, ()))
      for name, (tasks, repeat) in MIXTURE.items()})
  c.optim.lr, c.optim.warmup_steps, c.optim.min_lr_ratio = 1e-5, 130, 0.0
  c.optim.weight_decay, c.optim.b2 = 0.0, 0.999
  c.optim.param_groups = (('vision/.*', 0.2), ('.*', 1.0))
  c.train.batch_size, c.train.num_steps = 256, 4355  # one epoch of ~1.1M examples
  c.eval.batch_size = 64  # a multiple of the batch shards of 8-64 GPUs (data x fsdp)
  c.runtime.dtype, c.runtime.attention_impl = 'bfloat16', 'cudnn'
  c.runtime.remat.llm = c.runtime.remat.vision = 'qkv_and_attention_out'
  c.eval.evaluators = ('loss', 'reports', 'classification', 'grounding', 'vqa')
  c = common.finish(c, args)
  if args.size != 'full':
    c.model.vision.variant, c.model.vision.select_layer = 'siglip', -1  # every tiny layer
    c.data.image_mean = c.data.image_std = (0.5, 0.5, 0.5)
    c.model.llm.vocab_size = 2048 + 64  # ChatML's two markers join the demo's 2048
    # AnyRes at a tiny scale: grids up to 2 x 2 tiles, scaled down above 2 tiles' tokens
    # (the demo's square films: 16 base tokens + 30 of the grid and its newlines).
    c.model.anyres_grids, c.model.anyres_max_tiles = ((1, 1), (1, 2), (2, 1), (2, 2)), 2
    c.data.max_len = 256  # ChatML + up to 56 image tokens + up to 4 conversation turns
    c.data.mixture = ml_collections.ConfigDict({
        name: dict(dir=c.data.dir, tasks=tasks, weight=weight, repeat=1)
        for name, (tasks, weight) in TINY_MIXTURE.items()})
    c.optim.lr, c.optim.warmup_steps, c.optim.min_lr_ratio = 1e-3, 50, 0.1
  if args.task == 'lm':
    c.data.mixture = ml_collections.ConfigDict()
    c.data.tasks = ('conversation', 'instruction', 'report_text')
    # Qwen2-Instruct's conversations, as the VLM reads them (and always_trained names
    # ChatML's markers: under 'none' the demo tokenizer has no such tokens).
    c.data.chat_format = 'chatml'
    c.eval.evaluators = ('loss',)
  if args.size == 'full':
    as_radvlm_ran(c)
    if args.task != 'lm':
      per_task_eval_sets(c)
  if args.init:
    start_from(c, args.init)
  return c


def start_from(c, path: str) -> None:
  """Every part of the model from the VLM workdir `path` (architecture, weights through
  init_from, and `<image>`'s id), and its tokenizer: RadVLM's start, LLaVA-OneVision-7B-si
  as `python -m radjax.convert from-hf --family llava_onevision` imports it."""
  path = os.path.abspath(path)  # config.json keeps it: the run starts from any directory
  try:
    source = workdir_lib.load_config(path)
  except workdir_lib.WorkdirError as e:
    raise ValueError(f'config argument init={path!r}: {e}') from e
  if source.model.kind != 'vlm':
    raise ValueError(f'config argument init={path!r}: a {source.model.kind!r} workdir, not '
                     'a vlm (python -m radjax.convert from-hf --family llava_onevision)')
  for part in ('vision', 'projector', 'llm'):
    for key, value in source.model[part].items():
      c.model[part][key] = value
    c.model[part].init_from = path
  c.model.image_token_id = source.model.image_token_id
  c.model.anyres_grids = source.model.get('anyres_grids', ())
  c.model.anyres_max_tiles = source.model.get('anyres_max_tiles', 0)
  c.data.tokenizer = source.data.tokenizer
  c.data.image_mean, c.data.image_std = source.data.image_mean, source.data.image_std


def per_task_eval_sets(c) -> None:
  """Each task scored on its own dataset, as RadVLM's evaluate_instructions.py does
  (EVAL_SETS); 'loss' keeps the default eval dataset."""
  c.eval.evaluators = ('loss', 'reports', 'classification', 'grounding',
                       'anatomical_grounding', 'phrase_grounding', 'vqa')
  c.eval.datasets = ml_collections.ConfigDict({
      name: dict(component=comp, dir='', split=split, max_records=n, seed=seed)
      for name, (comp, split, n, seed) in EVAL_SETS.items()})


def as_radvlm_ran(c):
  """What RadVLM's code does at full size (finetuning/scripts/finetune_radio_7b.sh,
  finetuning/llava/train/train.py, radvlm/evaluation/models_loading_inference.py).
  size=tiny keeps the demo's own settings (README's measured numbers)."""
  # LLaVA-NeXT's image processor resizes, nothing more: no crop, no jitter.
  c.data.augment = False
  # The reports RadVLM trains on and scores are findings only (GPT-4o-filtered findings).
  c.data.task_options.report_section = 'findings'
  # preprocess_qwen trains each assistant turn whole ('<|im_start|>assistant\n' through
  # '<|im_end|>\n'), besides the markers and newlines everywhere (always_trained above).
  c.data.train_assistant_turn = True
  # One example per GPU (x2 accumulation) under a transformers of before 4.46: the loss is
  # the mean of the examples' own token means.
  c.data.loss_norm = 'example'
  # Its per-device batch 1: the global 256 is 2 micro-batches on RadVLM's 128 GPUs, 32 on 8
  # (optim.grad_accum derived from the mesh; memory of one 10,240-token example a device).
  c.train.micro_batch_per_device = 1
  # HF's warmup_ratio 0.03: ceil(0.03 x 4355) steps.
  c.optim.warmup_steps = math.ceil(0.03 * c.train.num_steps)
  c.eval.max_new_tokens = 1500  # inference_llavaov: greedy, max_new_tokens=1500
