r"""RadFM's model: a 3D ViT (32x32x4 patches) -> Perceiver resampler (32 latents per image)
-> fc -> LLaMA-13B, images interleaved with text, each image's 32 tokens wrapped in
learned <image_begin> / <image_end> embeddings (RadFM's <image> / </image>).

  python -m radjax.convert from-radfm --ckpt pytorch_model.bin \
      --tokenizer RadFM/Quick_demo/Language_files --out runs/radfm   # its published weights
  python main.py --config configs/workdir.py:runs/radfm --workdir runs/radfm \
      --mode=generate --images scan.png --config.mesh.fsdp=8   # sharded over 8 devices
  python main.py --config configs/radfm.py --workdir runs/radfm_train \
      --config.data.tokenizer=LLAMA_DIR --config.data.dir=DATA_DIR
  python main.py --config configs/radfm.py:size=tiny --workdir runs/radfm_tiny   # a CPU
  python main.py --config configs/radfm.py:data=radiopaedia --workdir runs/radfm_3d \
      --config.data.tokenizer=LLAMA_DIR \
      --config.data.mixture.radiopaedia_caption.dir=OUT/radfm/caption/1.0.0 \
      --config.data.mixture.radiopaedia_vqa.dir=OUT/radfm/vqa/1.0.0   # RadFM's 3D sets

Arguments: size=full|tiny|micro, task=vlm|lm, data=dir|radiopaedia (full size: train on
config.data.dir's 2D images, or on RadFM's Radiopaedia builds, RADIOPAEDIA below).
"""
import os

import ml_collections

from configs import base, common

# LLaMA's 32000 + <image>, <image_begin>, <image_end> (the 'plain' format adds none),
# padded to a multiple of 64; ids past the tokenizer are never generated.
VOCAB_SIZE = 32064


# data=radiopaedia: component -> instruction tasks, each a `python -m data_prep build radfm`
# config (volumes only: the build stores RadFM's 2D images as scans of one slice, so every
# batch is a volume batch, of data.volume_batch_size). caption's reports are what eval
# reads (the first component by name).
RADIOPAEDIA = {
    'radiopaedia_caption': ('report', 'conversation'),  # radiology_article_npy_*.json
    'radiopaedia_vqa': ('conversation',),  # radiology_vqa_*.csv
}


def radfm_model(model) -> None:
  """Sets `config.model` to RadFM's published architecture (in place): what
  `python -m radjax.convert from-radfm` reads from its checkpoint."""
  v = model.vision
  v.kind, v.image_size, v.patch_size = 'vit3d', 512, 32
  # Its position tables are 16 x 16 x 128 (512 slices / 4) and are stretched over smaller
  # images and shallower volumes: position_stride.
  v.max_depth, v.depth_patch_size, v.position_stride = 512, 4, True
  v.embed_dim, v.num_layers, v.num_heads, v.head_dim, v.mlp_dim = 768, 12, 8, 64, 2048
  v.num_channels, v.norm_eps = 3, 1e-5
  p = model.projector
  p.kind, p.in_dim, p.out_dim = 'perceiver', 0, 0  # 768 -> fc -> 5120, from the towers
  p.num_queries, p.num_layers, p.num_heads, p.head_dim = 32, 6, 8, 64
  p.mlp_dim, p.norm_eps = 3072, 1e-5
  lm = model.llm  # LLaMA-13B
  lm.kind, lm.vocab_size, lm.embed_dim, lm.num_layers = 'decoder', VOCAB_SIZE, 5120, 40
  lm.num_heads, lm.num_kv_heads, lm.head_dim, lm.mlp_dim = 40, 40, 0, 13824
  lm.rope_theta, lm.norm_eps, lm.tie_embeddings = 10000.0, 1e-6, False
  lm.max_position_embeddings = 2048  # LLaMA-1's; what to-hf writes


def tiny_model(model, micro: bool = False) -> None:
  """The same kinds at CPU sizes (vit3d needs embed_dim divisible by 3)."""
  v = model.vision
  v.image_size, v.patch_size, v.max_depth, v.depth_patch_size = 64, 16, 16, 4
  v.embed_dim, v.num_layers, v.num_heads, v.head_dim, v.mlp_dim = 96, 2, 4, 0, 192
  p = model.projector
  p.num_queries, p.num_layers, p.num_heads, p.head_dim, p.mlp_dim = 16, 2, 2, 0, 192
  # The demo's 2048 (<image> among them) + <image_begin>, <image_end>, padded to 64.
  model.llm.vocab_size = 2048 + 64
  if micro:
    v.image_size, v.patch_size, v.embed_dim, v.num_heads, v.mlp_dim = 32, 8, 48, 2, 96
    p.num_queries, p.mlp_dim = 8, 96


def tiny_data(c, micro: bool = False) -> None:
  """The embedded default: synthetic chest CT volumes (data_prep/demo_ct) and the 2D demo
  X-rays, batched apart (volumes 8 per batch, X-rays 16) and mixed half and half; eval on
  the held-out volumes."""
  c.data.dir, c.data.builder = '', ''  # eval: the first component by name, 'ct'
  c.data.mixture.ct = dict(dir=common.DEMO_CT_DIR, builder='demo_ct', kind='volume',
                           tasks=('report', 'conversation'))
  c.data.mixture.cxr = dict(dir=common.DEMO_DIR, builder='demo', builder_kwargs=dict(seed=0),
                            tasks=('report', 'vqa'))
  c.data.keyword_terms = ','.join(os.path.join(d, 'terms.txt')
                                  for d in (common.DEMO_CT_DIR, common.DEMO_DIR))
  c.data.volume_batch_size, c.data.volume_batch_share = 8, 0.5
  c.model.vision.max_depth = 48  # the demo's 16-48 slices, padded to 16, 32 or 48
  c.data.depth_buckets = (16, 32)
  c.data.max_len = 64 if micro else 128  # micro: answers truncated
  c.data.max_images = 1


def get_config(arg: str = ''):
  args = common.parse(arg, data='dir')
  if args.data not in ('dir', 'radiopaedia'):
    raise ValueError(f"config argument data={args.data!r}: 'dir' or 'radiopaedia'")
  if args.data == 'radiopaedia' and (args.size != 'full' or args.task == 'lm'):
    raise ValueError("config argument data=radiopaedia: the full VLM recipe's data (the "
                     'tiny sizes train on the embedded CT and X-ray sets)')
  c = base.get_config()
  c.task = 'vlm'
  radfm_model(c.model)
  c.data.chat_format = 'plain'  # RadFM: the question, then the answer after a space
  c.data.image_delimiters = True
  # RadFM feeds ToTensor() pixels in [0, 1], unnormalised.
  c.data.image_mean, c.data.image_std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
  # Its 2D transform is RandomResizedCrop(512, scale (0.8, 1), bicubic) then ToTensor():
  # the crop alone, no intensity jitter.
  c.data.intensity_jitter = False
  c.data.max_len = 2048
  c.data.max_images = 10  # RadFM's test setting (100 in its training)
  c.mesh.data, c.mesh.fsdp = 1, -1  # 13B: parameters and moments over every device
  # RadFM's repo publishes no learning rate, warmup, schedule or batch size (its code
  # defaults are 4 X-rays or 1 volume a device): lr, warmup, the cosine to 0.1 and the
  # batch of 8 are radjax's choices, to tune for a run.
  c.optim.lr, c.optim.warmup_steps, c.optim.weight_decay = 2e-5, 100, 0.0
  c.optim.b2 = 0.999  # RadFM trains with HF Trainer's AdamW defaults (0.9, 0.999, 1e-8)
  c.train.batch_size = 8
  c.runtime.dtype, c.runtime.attention_impl = 'bfloat16', 'xla'
  c.runtime.remat.llm = c.runtime.remat.vision = 'qkv_and_attention_out'
  c.eval.max_new_tokens = 200  # RadFM's generate()
  # RadFM's collator keeps at most 64 slices (its depth table reaches 512, stretched).
  c.data.max_slices = 64
  if args.data == 'radiopaedia':
    c.data.mixture = ml_collections.ConfigDict({
        name: dict(dir='', tasks=tasks, kind='volume') for name, tasks in RADIOPAEDIA.items()})
    c.data.volume_batch_size = c.train.batch_size  # RadFM publishes no batch size
  c = common.finish(c, args)
  if args.size == 'full':
    # RadFM's tokenizer(question + ' ' + answer, max_length=2048, truncation=True): a
    # longer example trains cut there (no EOS), not skipped (long case reports, articles).
    c.data.too_long = 'truncate'
    # RadFM's collator resizes each batch to its own depth (a multiple of 4): buckets keep a
    # shallow batch (a 2D image is one slice, repeated to 4) from running the tower at 64.
    c.data.depth_buckets = (4, 8, 16, 32)
    # Its training collator, at its default of one volume a device: a batch deeper than 4
    # slices at 256 x 256 in-plane (a quarter of the tower's tokens), and a sample of more
    # than 6 images at most 32 slices deep. Evaluation and generation stay at 512 x 512 x
    # up to 64, as its inference path (src/test.py calls no collator) reads scans.
    c.data.volume_image_size = 256
    c.data.many_images, c.data.many_images_max_slices = 6, 32
  else:
    c.data.max_slices = 0
    # volume_image_size stays 0: at 64 px half the size is a 2 x 2 patch grid, and the
    # evaluation's 4 x 4 reads a grid the volumes never trained at (1,500 steps at 32:
    # val loss 0.183 at step 500, then 0.247, 0.303; 0.150 at 64). The full recipe's
    # 256 of 512 keeps RadFM's 8 x 8.
    tiny_model(c.model, micro=args.size == 'micro')
    c.data.image_mean, c.data.image_std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if args.task != 'lm':
      tiny_data(c, micro=args.size == 'micro')
  return c
