"""What `main.py --mode=...` does: train, evaluate a checkpoint, or generate."""
import os

import jax
from absl import logging

from radjax import tasks
from radjax.core import workdir as workdir_lib
from radjax.data import tokens
from radjax.eval import evaluators
from radjax.train import loop, setup, writers


def make_task(config, name: str | None = None) -> tasks.Task:
  """The configured task (or `name`) with its tokenizer (config.data.tokenizer or the
  dataset's)."""
  tokenizer = tokens.load_tokenizer(tokens.tokenizer_path(config))
  if name is not None:
    return tasks.TASKS[name](config, tokenizer)
  return tasks.make(config, tokenizer)


def load_trained(config, workdir: str, step: int | None = None, task=None):
  """The experiment with the params of the workdir's checkpoint (default: latest),
  restored straight into their shards; optimizer moments are never read."""
  exp = setup.build(config, task or make_task(config), pretrained=False, train=False)
  step = workdir_lib.latest_step(workdir) if step is None else step
  exp.state = exp.state.replace(params=workdir_lib.load_params(workdir, step,
                                                               target=exp.state.params))
  return exp, step


def evaluate(config, workdir: str) -> dict:
  exp, step = load_trained(config, workdir)
  evs = evaluators.make(exp, config.eval.split)
  writer, _ = writers.make_writers(workdir, resume_step=None)
  out_dir = os.path.join(workdir, 'eval', str(step))
  metrics = evaluators.run_all(evs, exp.state.params, step, writer, out_dir=out_dir)
  writer.write_scalars(step, metrics)
  writer.flush()
  logging.info('eval at step %d: %s', step, metrics)
  print(f'wrote {out_dir}/metrics.json: ' + ', '.join(f'{k}={v:.4g}' for k, v in metrics.items()))
  return metrics


def generate(config, workdir: str, image_paths: list[str], prompt: str = '') -> list[str]:
  if config.model.kind == 'llm':  # a bare decoder, whatever task trained it
    from radjax.eval.decoding import text_generation
    exp, _ = load_trained(config, workdir, task=make_task(config, 'lm'))
    texts = text_generation.generate_text(exp.model, exp.state.params, exp.task.tokenizer,
                                          [prompt], config.eval, exp.mesh, exp.rules,
                                          config.seed)
    print(f'== {prompt}\n{texts[0]}\n')
    return texts
  if not image_paths:
    raise ValueError('--mode=generate needs --images=a.png[,b.png]')
  exp, _ = load_trained(config, workdir)
  reporter = evaluators.reports.ReportEvaluator(exp, config.eval.split)
  examples = []
  for path in image_paths:
    with open(path, 'rb') as f:
      data = f.read()
    fmt = 'png' if data.startswith(b'\x89PNG') else 'jpeg'
    examples.append({'id': path, 'images': [{'data': data, 'format': fmt, 'kind': '2d'}]})
  reports = reporter.generate(exp.state.params, examples)
  for path, report in zip(image_paths, reports):
    print(f'== {path}\n{report}\n')
  return reports


def maybe_initialize_distributed():
  """Multi-host runs (SLURM GPU pods, TPU VM pods) set RADJAX_DISTRIBUTED=1; JAX
  reads the coordinator, process count and id from the cluster environment."""
  if os.environ.get('RADJAX_DISTRIBUTED') == '1' and not jax.distributed.is_initialized():
    jax.distributed.initialize()


def main(config, workdir: str, mode: str, images: list[str] | None = None, prompt: str = ''):
  maybe_initialize_distributed()
  logging.info('process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  if mode == 'train':
    return loop.train(config, workdir, make_task(config))
  if mode == 'eval':
    return evaluate(config, workdir)
  if mode == 'generate':
    return generate(config, workdir, images or [], prompt)
  raise ValueError(f'--mode={mode!r}')
