"""Periodic and standalone evaluation: val loss, generated reports, finding-level F1."""
import functools
import json
import os

import grain
import jax
import numpy as np

from radjax.data import pipeline, schema, templates
from radjax.eval import classification, scoring
from radjax.eval import generate as generate_lib
from radjax.eval.labeler import label_report
from radjax.train import step as step_lib

OBSERVATION_TO_FINDING = {
    'Cardiomegaly': 'cardiomegaly', 'Pleural Effusion': 'pleural_effusion',
    'Pneumothorax': 'pneumothorax', 'Lung Lesion': 'nodule', 'Consolidation': 'consolidation',
}


def report_findings(text: str) -> set[str]:
  """The demo findings the rule-based labeler reads as positive or uncertain in `text`."""
  labels = label_report(text)
  return {f for obs, f in OBSERVATION_TO_FINDING.items() if labels[obs] in (1, -1)}


def true_findings(example: dict) -> set[str]:
  """From the record's labels where it has them, else from its reference report."""
  labels = example.get('labels') or {}
  if any(k in labels for k in OBSERVATION_TO_FINDING):
    return {f for obs, f in OBSERVATION_TO_FINDING.items() if labels.get(obs) == 1}
  report = example.get('report') or {}
  return report_findings(f"{report.get('findings', '')}. {report.get('impression', '')}")


def finding_scores(predicted: list[set[str]], truth: list[set[str]]) -> dict[str, float]:
  """Per-finding and micro/macro P/R/F1 over the 5 demo findings, plus a constant
  baseline: the micro F1 of always predicting every finding (the best constant
  predictor for F1)."""
  findings = list(OBSERVATION_TO_FINDING.values())
  out = classification.multilabel_scores(predicted, truth, labels=findings)
  pos, size = sum(len(set(t) & set(findings)) for t in truth), len(truth) * len(findings)
  out['baseline_all_positive_micro_f1'] = 2 * pos / (pos + size) if size else 0.0
  return out


class Evaluator:

  @functools.cached_property
  def records(self):
    """The split's records, opened on first use (reporting on given images needs none)."""
    return grain.sources.ArrayRecordDataSource(
        pipeline.split_files(self.exp.config.data.dir, self.split))

  def __init__(self, exp, split: str):
    self.exp = exp
    self.split = split
    with exp.context():
      eval_step = step_lib.make_eval_step(exp.model)
      self._eval_step = jax.jit(
          eval_step, in_shardings=(exp.state_shardings.params, exp.batch_shardings))

  def val_loss(self, params) -> dict:
    cfg = self.exp.config
    ds = pipeline.eval_dataset(cfg, self.exp.processor, self.split, cfg.eval.batch_size)
    totals = None
    for i, batch in enumerate(ds):
      if cfg.eval.num_loss_batches and i >= cfg.eval.num_loss_batches:
        break
      with self.exp.context():
        sums = self._eval_step(params, pipeline.to_global(batch, self.exp.batch_shardings))
      totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    if totals is None:
      raise ValueError(f'eval split {self.split!r} has fewer than config.eval.batch_size '
                       f'({cfg.eval.batch_size}) records')
    w = max(float(totals['weight_sum']), 1.0)
    return {'val_loss': float(totals['loss_sum']) / w,
            'val_accuracy': float(totals['correct_sum']) / w}

  def generate(self, params, examples: list[dict]) -> list[str]:
    """Reports for `examples` decoded as config.eval says (padded to whole batches by
    repetition)."""
    exp, cfg = self.exp, self.exp.config
    bs = cfg.eval.batch_size
    enc, proc = exp.encoder, exp.processor
    gen_cfg = generate_lib.config_from_eval(cfg.eval, (enc.ids['end'], enc.ids['eos']),
                                            enc.ids['pad'])
    rng = jax.random.key(cfg.seed) if gen_cfg.strategy == 'sample' else None
    outs = []
    for start in range(0, len(examples), bs):
      chunk = examples[start:start + bs]
      chunk = chunk + [chunk[-1]] * (bs - len(chunk))
      prompts, pixels = [], []
      for ex in chunk:
        instruction = templates.EVAL_INSTRUCTIONS[cfg.data.task]
        imgs, mask = proc.images(ex, None)
        prompts.append(enc.prompt(instruction, int(mask.sum())))
        pixels.append(imgs)
      length = -(-max(len(p) for p in prompts) // 16) * 16  # few distinct compiled shapes
      toks, mask = generate_lib.left_pad(prompts, length, enc.ids['pad'])
      shardings = {'tokens': exp.batch_shardings['tokens'],
                   'prompt_mask': exp.batch_shardings['tokens'],
                   'images': exp.batch_shardings['images']}
      batch = {'tokens': toks, 'prompt_mask': mask, 'images': np.stack(pixels)}
      g = pipeline.to_global(batch, shardings)
      key = None if rng is None else jax.random.fold_in(rng, start)
      with exp.context():
        ids, _ = generate_lib.generate(exp.model, params, g['tokens'], g['prompt_mask'],
                                       g['images'], gen_cfg, key)
      ids = np.asarray(jax.device_get(ids))
      outs.extend(generate_lib.cut_at_stop_strings(enc.decode_answer(row),
                                                   gen_cfg.stop_strings).strip()
                  for row in ids[:len(examples) - start])
    return outs

  def run(self, params, step: int, writer=None, out_dir: str | None = None) -> dict:
    cfg = self.exp.config
    metrics = self.val_loss(params)
    n = min(cfg.eval.num_generate, len(self.records))
    examples = [schema.decode(self.records[i]) for i in range(n)]
    generated = self.generate(params, examples) if n else []
    references = [_reference(ex) for ex in examples]
    predicted = [report_findings(g) for g in generated]
    truth = [true_findings(ex) for ex in examples]
    per_sample = scoring.per_sample_scores(generated, references)
    if n:
      scores = finding_scores(predicted, truth)
      metrics.update({f'finding_{k}': v for k, v in scores.items()})
      metrics.update(scoring.score_reports(generated, references, meteor=cfg.eval.meteor))
    metrics = {f'eval/{k}': v for k, v in metrics.items()}
    if writer is not None and n:
      k = min(cfg.eval.num_logged_examples, n)
      imgs = np.stack([self.exp.processor.images(ex, None)[0][0] for ex in examples[:k]])
      imgs = (imgs - imgs.min()) / max(float(imgs.max() - imgs.min()), 1e-6)
      writer.write_images(step, {'eval/images': imgs})
      writer.write_texts(step, {f'eval/report_{i}': f'GENERATED: {generated[i]}\n\n'
                                f'REFERENCE: {_reference(examples[i])}' for i in range(k)})
    if out_dir is not None and jax.process_index() == 0:
      os.makedirs(out_dir, exist_ok=True)
      prompt = templates.EVAL_INSTRUCTIONS[cfg.data.task]
      with open(os.path.join(out_dir, 'predictions.jsonl'), 'w') as f:
        for ex, g, r, p, t, s in zip(examples, generated, references, predicted, truth,
                                     per_sample):
          f.write(json.dumps({'id': ex['id'], 'prompt': prompt, 'generated': g, 'reference': r,
                              'predicted_findings': sorted(p), 'true_findings': sorted(t),
                              **s}) + '\n')
      with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
        json.dump({'step': step, **metrics}, f, indent=1)
    return metrics


def _reference(example: dict) -> str:
  try:
    return templates.report_text(example)
  except schema.SchemaError:
    return ''
