r"""The VQ-GAN image codec LLM-CXR reads and writes chest X-rays with: 256 x 256 RGB ->
16 x 16 codes from a 1,024-entry codebook (Taming's f16 model: base 128 channels,
multipliers 1,1,2,2,4, two residual blocks per level, attention at 16 x 16, 256-wide
codes). LLM-CXR never released its codec's training code; the losses are Taming's
(L1 + LPIPS + codebook and commitment + PatchGAN hinge, adaptive weight 0.8), with
Taming's quantiser weights: beta 0.25 on the codebook term and 1 on the commitment term
(the swap its legacy VectorQuantizer keeps; the VQ-VAE paper has them the other way).

  python main.py --config configs/vqgan.py --workdir DIR --config.data.dir=DATA \
      --config.vqgan.perceptual_weights=vgg16.pth [--config.vqgan.lpips_heads=vgg.pth]
  python main.py --config configs/vqgan.py:size=tiny --workdir runs/vqgan   # CPU minutes
  python -m radjax.convert to-hf --workdir runs/vqgan --out hf_vqgan  # a diffusers VQModel

size=tiny: 64 px grayscale demo images -> 16 x 16 codes (LLM-CXR's 256 tokens per
image) from 256 codes; size=micro: 32 px, seconds per run (tests).
"""
from configs import base, common


def get_config(arg: str = ''):
  args = common.parse(arg)
  if args.task:
    raise ValueError(f'config argument task={args.task!r}: configs/vqgan.py trains the codec')
  c = base.get_config()
  c.task = 'vqgan'
  c.model.kind = 'vqgan'  # radjax/core/defaults.py: Taming f16/1024, 256 px RGB
  c.runtime.dtype = 'bfloat16'
  c.data.augment = False  # LLM-CXR: resize + centre crop only
  c.data.resize = 'crop'  # the shorter side to the size (Lanczos), the centre square
  c.optim.lr = 1e-4
  c.optim.b1, c.optim.b2 = 0.5, 0.9  # Taming's Adam betas, for both optimizers
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 0.0
  # Taming trains at a constant LR (base_lr 4.5e-6 x batch: 1.44e-4 at 32) with no warmup;
  # radjax's choice: 1e-4 after a 1,000-step warmup, then constant.
  c.optim.warmup_steps = 1000
  c.optim.min_lr_ratio = 1.0
  c.train.batch_size = 32
  c.train.num_steps = 200_000
  c.train.checkpoint_every = 5000
  c.train.eval_every = 5000
  c.eval.batch_size = 32
  c.eval.num_loss_batches = 16
  c.mesh.data, c.mesh.fsdp = -1, 1  # ~90M parameters (both nets): a replica per device
  c.vqgan.disc_start = 10_000  # Taming's custom_vqgan.yaml
  c.vqgan.codebook_weight, c.vqgan.beta = 0.25, 1.0  # Taming's legacy quantiser loss
  if args.size in ('tiny', 'micro'):
    tiny(c)
  if args.size == 'micro':
    micro(c)
  return c


def tiny(c):
  c.data.dir = common.DEMO_DIR
  c.data.builder = 'demo'
  c.data.builder_kwargs.seed = 0
  c.runtime.dtype = 'float32'
  c.runtime.attention_impl = 'xla'
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  m = c.model.vqgan
  m.num_channels, m.image_size = 1, 64
  m.base_channels, m.channel_mult, m.num_res_blocks, m.attn_levels = 16, (1, 2, 2), 1, (2,)
  m.z_channels, m.codebook_size, m.codebook_dim, m.norm_groups = 32, 256, 16, 8
  m.disc_channels, m.disc_layers = 16, 2
  c.optim.lr = 1e-3
  c.optim.b1, c.optim.b2 = 0.9, 0.99
  c.optim.warmup_steps = 20
  c.optim.min_lr_ratio = 0.1
  c.vqgan.restart_every = 25
  c.vqgan.usage_decay = 0.9  # a code unused for ~30 steps counts as dead
  c.vqgan.disc_start = 250
  c.vqgan.disc_weight = 0.1
  c.train.num_steps = 400
  c.train.batch_size = 16
  c.train.log_every = 20
  c.train.checkpoint_every = 100
  c.train.eval_every = 200
  c.eval.batch_size = 16
  c.eval.num_loss_batches = 6  # 96 held-out images
  return c


def micro(c):
  m = c.model.vqgan
  m.image_size, m.base_channels, m.channel_mult, m.attn_levels = 32, 8, (1, 2), (1,)
  m.z_channels, m.codebook_size, m.codebook_dim, m.norm_groups = 8, 32, 8, 4
  m.disc_channels = 8
  c.vqgan.restart_every = 2
  c.vqgan.usage_decay = 0.5
  c.vqgan.disc_start = 3
  c.train.batch_size = 8
  c.train.log_every = 1
  c.eval.batch_size = 8
  c.eval.num_loss_batches = 2
  c.eval.num_logged_examples = 2
  return c
