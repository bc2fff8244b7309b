"""Images -> codes -> images: the VQ-GAN codec trained as Taming does (LLM-CXR's image
tokenizer), in the generic trainer.

Generator loss: l1 |x - x'| + l2 (x - x')^2 + perceptual LPIPS (when weights are given)
+ codebook |sg(z) - e|^2 + beta |z - sg(e)|^2 + lambda * disc_weight * (-D(x')), where
lambda = |grad_W rec| / (|grad_W gan| + 1e-4) at the decoder's last conv W (Esser et al.'s
adaptive weight) and the adversarial terms start at config.vqgan.disc_start.
Discriminator: hinge loss on real vs reconstructed images. Two optimizers (generator,
discriminator) live in one optax state, so checkpoints and resume are the trainer's own.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from radjax.data import pixels, processors, schema
from radjax.models import factory, lpips, vqgan
from radjax.tasks import base
from radjax.train import optimizer as optimizer_lib
from radjax.train import state as state_lib

DISC = 'discriminator'


@dataclasses.dataclass
class ImageProcessor:
  """Record bytes -> the record's first image, [S, S, C] in [-1, 1] once looked up
  (radjax/data/pixels.py)."""
  image_size: int
  num_channels: int
  augment: bool = False
  crop_scale: tuple = (0.8, 1.0)
  resize: str = 'square'  # config.data.resize, when not augmenting
  pixels: str = 'float32'  # config.data.pixels
  jitter: bool = True  # config.data.intensity_jitter, when augmenting

  def __call__(self, raw: bytes, rng) -> dict:
    example = schema.decode(raw)
    return processors.first_image(example, 'the codec', size=self.image_size,
                                  num_channels=self.num_channels, mean=(0.5,) * 3,
                                  std=(0.5,) * 3, rng=rng if self.augment else None,
                                  crop_scale=self.crop_scale, resize=self.resize,
                                  jitter=self.jitter, pixels=self.pixels)


def _split(tree):
  return {k: v for k, v in tree.items() if k != DISC}, tree[DISC]


def two_optimizers(gen_tx, disc_tx) -> optax.GradientTransformation:
  """One optax transformation holding both: the generator's over every param but the
  discriminator's, the discriminator's over those (each with its own clipping)."""
  def init(params):
    gen, disc = _split(params)
    return {'generator': gen_tx.init(gen), DISC: disc_tx.init(disc)}

  def update(grads, state, params=None):
    (g_gen, g_disc), (p_gen, p_disc) = _split(grads), _split(params)
    u_gen, s_gen = gen_tx.update(g_gen, state['generator'], p_gen)
    u_disc, s_disc = disc_tx.update(g_disc, state[DISC], p_disc)
    return {**u_gen, DISC: u_disc}, {'generator': s_gen, DISC: s_disc}
  return optax.GradientTransformation(init, update)


def load_perceptual(vc) -> dict | None:
  """The LPIPS weights of config.vqgan.perceptual_weights (and lpips_heads), or None."""
  if not vc.perceptual_weights or not vc.perceptual_weight:
    logging.warning('perceptual loss off: config.vqgan.perceptual_weights is empty (give a '
                    'torchvision vgg16 state dict to turn it on; nothing is downloaded)')
    return None
  from radjax.convert import hf_io
  vgg = hf_io.load_state_dict_file(vc.perceptual_weights)
  heads = hf_io.load_state_dict_file(vc.lpips_heads) if vc.lpips_heads else None
  weights = lpips.weights_from_state_dict(vgg, heads, vc.perceptual_weights)
  logging.info('perceptual loss: VGG16 from %s, heads %s', vc.perceptual_weights,
               vc.lpips_heads or "none (LPIPS's baseline: channels summed)")
  return weights


class ImageCodec(base.Task):
  name = 'vqgan'
  model_kind = 'vqgan'
  evaluators = ('codec',)
  parts = {'vqgan': state_lib.WHOLE}
  image_slots = None  # no VLM image slots: generation does not apply
  needs_tokenizer = False  # images in, images out
  accumulates = False  # one batch per step (setup.build refuses optim.grad_accum > 1)

  def __init__(self, config, tokenizer):
    super().__init__(config, tokenizer)
    self.model_cfg = factory.part_config(config.model, 'vqgan')
    self._perceptual = None
    self._perceptual_loaded = False

  @property
  def perceptual(self):
    if not self._perceptual_loaded:  # once, when a loss first needs it
      self._perceptual = load_perceptual(self.config.vqgan)
      self._perceptual_loaded = True
    return self._perceptual

  # ---- data -------------------------------------------------------------------
  def batch_spec(self) -> dict:
    s, c = self.model_cfg.image_size, self.model_cfg.num_channels
    return base.image_fields(self.config, (), s, c)

  def processor(self, tasks=None, kind: str = '') -> ImageProcessor:
    del tasks, kind  # 2D images only
    d = self.config.data
    return ImageProcessor(self.model_cfg.image_size, self.model_cfg.num_channels, d.augment,
                          tuple(d.crop_scale), d.get('resize', 'square'),
                          pixels.mode_of(self.config), d.get('intensity_jitter', True))

  # ---- model --------------------------------------------------------------------
  def model(self, frozen=()) -> vqgan.VQGAN:
    return vqgan.VQGAN(self.model_cfg, factory.runtime(self.config, 'vqgan', 'vqgan' in frozen))

  def init_inputs(self) -> tuple:
    return (base.model_images(self.batch_spec()),)

  def held_out(self, model, params, images):
    """Of images in [-1, 1]: reconstructions, codes, and per image the reconstruction
    loss and the loss (reconstruction + codebook terms, no adversarial term); the codec
    evaluator's call."""
    recon, aux = model.apply({'params': params}, images)
    rec = self._rec_loss(images, recon)
    return recon, aux['codes'], rec, rec + jnp.mean(self._vq_terms(aux), axis=(1, 2))

  def _rec_loss(self, x, y):
    """Per-image reconstruction loss (pixels, and LPIPS when weights are given)."""
    vc = self.config.vqgan
    d = y.astype(jnp.float32) - x
    loss = vc.l1_weight * jnp.mean(jnp.abs(d), (1, 2, 3))
    if vc.l2_weight:
      loss = loss + vc.l2_weight * jnp.mean(jnp.square(d), (1, 2, 3))
    if self.perceptual is not None:
      loss = loss + vc.perceptual_weight * lpips.distance(x, y, self.perceptual)
    return loss

  def _vq_terms(self, aux):
    """Codebook + commitment loss per position, weighted as _vq_loss weighs their means
    in training (with EMA the codebook has no loss term)."""
    vc = self.config.vqgan
    codebook = 0.0 if vc.ema else vc.codebook_weight * aux['codebook_loss']
    return codebook + vc.beta * aux['commit_loss']

  def _vq_loss(self, aux):
    vc = self.config.vqgan
    codebook = 0.0 if vc.ema else vc.codebook_weight * jnp.mean(aux['codebook_loss'])
    return codebook + vc.beta * jnp.mean(aux['commit_loss'])

  def loss(self, model, params, batch, rng):
    """Held-out sums: reconstruction + codebook terms per image (no adversarial term)."""
    del rng
    x = pixels.as_floats(batch)['images']
    _, _, rec, loss = self.held_out(model, params, x)
    return {'loss_sum': jnp.sum(loss), 'rec_loss_sum': jnp.sum(rec),
            'weight_sum': jnp.asarray(x.shape[0], jnp.float32)}

  # ---- optimisation -------------------------------------------------------------
  def optimizer(self, labels):
    optim, steps = self.config.optim, self.config.train.num_steps
    gen_labels, disc_labels = _split(labels)
    gen_tx, schedule = optimizer_lib.make_optimizer(optim, steps, gen_labels)
    disc_optim = ml_collections.ConfigDict(optim.to_dict())
    disc_optim.lr = self.config.vqgan.disc_lr or optim.lr
    disc_tx, _ = optimizer_lib.make_optimizer(disc_optim, steps, disc_labels)
    return two_optimizers(gen_tx, disc_tx), schedule

  def uses_gan(self) -> bool:
    vc = self.config.vqgan
    return vc.disc_weight > 0 and vc.disc_start < self.config.train.num_steps

  def train_step(self, model, tx, labels, schedule):
    trainable = optimizer_lib.trainable_mask(labels)
    return functools.partial(_train_step, self, model, tx, trainable, schedule,
                             self.uses_gan())


def _train_step(task, model, tx, trainable, schedule, use_gan, state, batch):
  vc, cfg = task.config.vqgan, task.model_cfg
  rng = jax.random.fold_in(state.rng, state.step)
  x = pixels.as_floats(batch)['images'].astype(jnp.float32)  # the step's first op
  params = state.params
  gen, disc = _split(params)
  gan_on = state.step >= vc.disc_start  # the adversarial terms' switch

  def front(g):  # up to the decoder's last conv: (its input features, vq loss), aux
    recon, aux = model.apply({'params': {**g, DISC: disc}}, x)
    del recon
    return (aux['pre_out'], task._vq_loss(aux)), aux

  (h, vq_loss), front_vjp, aux = jax.vjp(front, gen, has_aux=True)
  last = gen['decoder']['conv_out']
  tail = lambda w, h: vqgan.conv2d(h, w['kernel'], w['bias'])
  y, tail_vjp = jax.vjp(tail, last, h)
  rec, d_rec = jax.value_and_grad(lambda y: jnp.mean(task._rec_loss(x, y)))(y)
  disc_apply = lambda p, img: model.apply({'params': {**gen, DISC: p}}, img,
                                          method=vqgan.VQGAN.discriminate)

  def adversarial(_):
    g_loss, d_g = jax.value_and_grad(lambda y: -jnp.mean(disc_apply(disc, y)))(y)
    w_rec, w_g = tail_vjp(d_rec)[0]['kernel'], tail_vjp(d_g)[0]['kernel']
    weight = jnp.clip(optax.tree.norm(w_rec) / (optax.tree.norm(w_g) + 1e-4), 0.0, 1e4)
    weight = (jax.lax.stop_gradient(weight) * vc.disc_weight).astype(jnp.float32)
    # Both branches of the cond give the same dtypes (bf16 activations: a bf16 d_y).
    return (g_loss.astype(jnp.float32), weight,
            jax.tree.map(lambda a, b: (a + weight * b).astype(a.dtype), d_rec, d_g))

  def reconstruction_only(_):
    return jnp.zeros(()), jnp.zeros(()), d_rec

  # Before disc_start the discriminator is not run at all (lax.cond runs one branch).
  g_loss, gan_weight, d_y = (jax.lax.cond(gan_on, adversarial, reconstruction_only, None)
                             if use_gan else reconstruction_only(None))
  d_last, d_h = tail_vjp(d_y)
  (g_gen,) = front_vjp((d_h, jnp.ones_like(vq_loss)))
  g_gen['decoder'] = {**g_gen['decoder'], 'conv_out': jax.tree.map(
      jnp.add, g_gen['decoder']['conv_out'], d_last)}

  fake = jax.lax.stop_gradient(y)

  def disc_step(_):
    def d_loss_fn(p):
      real, fake_logits = disc_apply(p, x), disc_apply(p, fake)
      loss = 0.5 * (jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake_logits)))
      return loss, (jnp.mean(real), jnp.mean(fake_logits))
    (loss, (real, fake_logits)), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(disc)
    return (*(v.astype(jnp.float32) for v in (loss, real, fake_logits)), grads)

  def disc_idle(_):
    return (jnp.zeros(()),) * 3 + (jax.tree.map(jnp.zeros_like, disc),)

  d_loss, logit_real, logit_fake, g_disc = (
      jax.lax.cond(gan_on, disc_step, disc_idle, None) if use_gan else disc_idle(None))

  grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), {**g_gen, DISC: g_disc},
                       trainable)
  updates, opt_state = tx.update(grads, state.opt_state, params)
  new_params = optax.apply_updates(params, updates)
  if use_gan:  # the discriminator (and its optimizer) wait for disc_start
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(gan_on, a, b), new, old)
    new_params = {**new_params, DISC: keep(new_params[DISC], params[DISC])}
    opt_state = {**opt_state, DISC: keep(opt_state[DISC], state.opt_state[DISC])}
  quantize, stats = codebook_update(new_params['quantize'], aux['z'], aux['codes'], vc, cfg,
                                    state.step, jax.random.fold_in(rng, 1))
  # A frozen codebook (config.optim.param_groups) stays as it is: EMA and restarts would
  # move it without a gradient, and the codes a decoder learned with it.
  quantize = jax.tree.map(lambda new, old, t: new if t else old, quantize,
                          new_params['quantize'], trainable['quantize'])
  new_params = {**new_params, 'quantize': quantize}

  vq_aux = (jnp.mean(aux['codebook_loss']), jnp.mean(aux['commit_loss']))
  metrics = {
      'loss': rec + vq_loss + gan_weight * g_loss, 'rec_loss': rec,
      'l1': jnp.mean(jnp.abs(fake - x)), 'codebook_loss': vq_aux[0], 'commit_loss': vq_aux[1],
      'g_loss': g_loss, 'd_loss': d_loss, 'gan_weight': gan_weight,
      'logits_real': logit_real, 'logits_fake': logit_fake,
      'grad_norm': optax.tree.norm(g_gen), 'disc_grad_norm': optax.tree.norm(g_disc),
      'update_norm': optax.tree.norm(updates), 'param_norm': optax.tree.norm(new_params),
      'lr': schedule(state.step), **stats,
  }
  return state.replace(step=state.step + 1, params=new_params, opt_state=opt_state), metrics


def codebook_update(q: dict, z, codes, vc, cfg, step, rng):
  """The quantizer's params after a step: running usage, EMA codebook (config.vqgan.ema)
  and dead-code restarts (config.vqgan.restart_every). Returns (params, metrics)."""
  k = cfg.codebook_size
  z = jax.lax.stop_gradient(z).reshape(-1, z.shape[-1]).astype(jnp.float32)
  if cfg.l2_normalize:  # codes live on the sphere: average and restart there
    z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(z), -1, keepdims=True), 1e-12))
  codes = codes.reshape(-1)
  counts = jnp.bincount(codes, length=k).astype(jnp.float32)
  share = counts / codes.shape[0]
  usage = vc.usage_decay * q['usage'] + (1.0 - vc.usage_decay) * share
  embedding, ema_count, ema_sum = q['embedding'], q['ema_count'], q['ema_sum']
  if vc.ema:
    d = vc.ema_decay
    ema_count = d * ema_count + (1.0 - d) * counts
    ema_sum = d * ema_sum + (1.0 - d) * jax.ops.segment_sum(z, codes, k)
    total = jnp.sum(ema_count)
    smoothed = (ema_count + 1e-5) / (total + k * 1e-5) * total  # Laplace: no division by 0
    embedding = ema_sum / smoothed[:, None]
  if vc.restart_every:
    due = (step + 1) % vc.restart_every == 0
    dead = due & (usage < vc.restart_threshold / k)
    fresh = z[jax.random.randint(rng, (k,), 0, z.shape[0])]
    embedding = jnp.where(dead[:, None], fresh, embedding)
    ema_sum = jnp.where(dead[:, None], fresh, ema_sum)
    ema_count = jnp.where(dead, 1.0, ema_count)
    usage = jnp.where(dead, 1.0 / k, usage)
  used = jnp.where(share > 0, share, 1.0)
  metrics = {'codes_used': jnp.mean(counts > 0),
             'perplexity': jnp.exp(-jnp.sum(share * jnp.log(used))),
             'codes_alive': jnp.mean(usage >= vc.restart_threshold / k)}
  return {**q, 'embedding': embedding, 'ema_count': ema_count, 'ema_sum': ema_sum,
          'usage': usage}, metrics
