"""The image codec on held-out images: PSNR and SSIM of its reconstructions (on [0, 1]
pixels), reconstruction loss, and codebook usage over the whole pass (share of codes
used, perplexity of the code distribution); a grid of inputs next to their
reconstructions goes to TensorBoard."""
import jax
import jax.numpy as jnp
import numpy as np

from radjax.core import sharding
from radjax.data import pipeline, pixels, source
from radjax.eval.evaluators import eval_sets
from radjax.eval.metrics import image_metrics


def usage_stats(counts: np.ndarray) -> dict:
  """Share of codes used and perplexity (exp of the entropy) from per-code counts."""
  p = counts / max(counts.sum(), 1)
  nz = p[p > 0]
  return {'codes_used': float(np.mean(counts > 0)),
          'perplexity': float(np.exp(-np.sum(nz * np.log(nz))))}


def side_by_side(inputs: np.ndarray, recons: np.ndarray) -> np.ndarray:
  """[N, H, W, C] pairs in [-1, 1] -> one [1, N*H, 2*W, C] image in [0, 1]."""
  pairs = np.concatenate([inputs, recons], axis=2)
  return np.clip((pairs.reshape(-1, *pairs.shape[2:]) + 1) / 2, 0, 1)[None]


class CodecEvaluator:

  def __init__(self, exp, split: str):
    self.exp, self.split = exp, split
    self.eval_set = eval_sets.resolve(exp.config, 'codec', split)
    task = exp.task

    def fn(params, batch):
      x = pixels.as_floats(batch)['images']
      recon, codes, rec, loss = task.held_out(exp.model, params, x)
      a, b = (jnp.clip(x, -1, 1) + 1) / 2, (jnp.clip(recon, -1, 1) + 1) / 2
      return {'psnr': image_metrics.psnr(a, b), 'ssim': image_metrics.ssim(a, b),
              'rec_loss': rec, 'loss': loss}, recon, codes
    with exp.context():
      self._fn = jax.jit(fn, in_shardings=(exp.state_shardings.params, exp.batch_shardings))
    self._rows = sharding.batch_sharding(exp.mesh, exp.rules, 1)

  def run(self, params, step: int, writer=None, out_dir=None) -> dict:
    del out_dir
    cfg, task = self.exp.config, self.exp.task
    s = self.eval_set
    ds = pipeline.eval_dataset(cfg, s.processor(task), s.split, cfg.eval.batch_size,
                               records=s.records())
    rows = {'psnr': [], 'ssim': [], 'loss': [], 'rec_loss': []}
    counts = np.zeros(task.model_cfg.codebook_size, np.int64)
    for i, batch in enumerate(pipeline.make_iterator(ds, cfg.data.worker_threads)):
      if cfg.eval.num_loss_batches and i >= cfg.eval.num_loss_batches:
        break
      inputs = pipeline.to_global(batch, self.exp.batch_shardings)
      with self.exp.context():
        m, recon, codes = self._fn(params, inputs)
      m, recon, codes = jax.tree.map(pipeline.to_host, (m, recon, codes))
      # Records, not padding rows: gathered as a global array, in the rows' global order
      # (each process's rows lie where its devices are, not always one block a process).
      real = pipeline.to_host(jax.make_array_from_process_local_data(
          self._rows, batch[source.EVAL_MASK])) > 0
      for k in rows:
        rows[k].append(m[k][real])
      counts += np.bincount(codes[real].reshape(-1), minlength=counts.size)
      if i == 0 and cfg.eval.num_logged_examples:
        # The whole batch's inputs, as `real` and `recon` are (this process's rows alone
        # did not fit the gathered mask with several processes); every process gathers.
        images = pixels.as_floats({k: pipeline.to_host(inputs[k])
                                   for k in ('images', pixels.TABLE) if k in inputs})['images']
        if writer is not None:
          k = cfg.eval.num_logged_examples
          writer.write_images(step, {'eval/inputs_vs_reconstructions': side_by_side(
              images[real][:k], recon[real][:k])})
    usage = usage_stats(counts)
    means = {k: float(np.mean(np.concatenate(v))) for k, v in rows.items()}
    return {'eval/psnr': means['psnr'], 'eval/ssim': means['ssim'],
            'eval/val_loss': means['loss'], 'eval/rec_loss': means['rec_loss'],
            'eval/codes_used': usage['codes_used'], 'eval/perplexity': usage['perplexity']}

