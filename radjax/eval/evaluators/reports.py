"""Generated reports: decoding as config.eval says, report metrics, the demo's
finding-level F1 against the record labels, predictions.jsonl."""
import functools
import json
import os

import jax
import numpy as np

from radjax.data import pipeline, schema, source, templates
from radjax.eval.decoding import generate as generate_lib
from radjax.eval.metrics import classification, scoring
from radjax.eval.metrics.labeler import label_report

OBSERVATION_TO_FINDING = {obs: f for f, obs in schema.DEMO_FINDINGS.items()}


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


class ReportEvaluator:

  @functools.cached_property
  def records(self):
    """The split's records, opened on first use (reporting on given images needs none)."""
    return source.open_split(self.exp.config.data.dir, self.split)

  def __init__(self, exp, split: str):
    self.exp = exp
    self.split = split
    self.instruction = templates.EVAL_INSTRUCTIONS[exp.config.data.template]

  def generate(self, params, examples: list[dict]) -> list[str]:
    """Reports for `examples` decoded as config.eval says (padded to whole batches by
    repetition)."""
    exp, cfg = self.exp, self.exp.config
    bs = cfg.eval.batch_size
    enc, proc = exp.task.encoder, exp.task.processor()
    gen_cfg = generate_lib.config_from_eval(cfg.eval, (enc.ids['end'], enc.ids['eos']),
                                            enc.ids['pad'])
    rng = jax.random.key(cfg.seed) if gen_cfg.strategy == 'sample' else None
    outs = []
    for start in range(0, len(examples), bs):
      chunk = examples[start:start + bs]
      chunk = chunk + [chunk[-1]] * (bs - len(chunk))
      prompts, pixels = [], []
      for ex in chunk:
        imgs, mask = proc.images(ex, None)
        prompts.append(enc.prompt(self.instruction, int(mask.sum())))
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
    metrics = {}
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
      proc = self.exp.task.processor()
      imgs = np.stack([proc.images(ex, None)[0][0] for ex in examples[:k]])
      imgs = (imgs - imgs.min()) / max(float(imgs.max() - imgs.min()), 1e-6)
      writer.write_images(step, {'eval/images': imgs})
      writer.write_texts(step, {f'eval/report_{i}': f'GENERATED: {generated[i]}\n\n'
                                f'REFERENCE: {_reference(examples[i])}' for i in range(k)})
    if out_dir is not None and jax.process_index() == 0:
      os.makedirs(out_dir, exist_ok=True)
      prompt = self.instruction
      with open(os.path.join(out_dir, 'predictions.jsonl'), 'w') as f:
        for ex, g, r, p, t, s in zip(examples, generated, references, predicted, truth,
                                     per_sample):
          f.write(json.dumps({'id': ex['id'], 'prompt': prompt, 'generated': g, 'reference': r,
                              'predicted_findings': sorted(p), 'true_findings': sorted(t),
                              **s}) + '\n')
    return metrics


def _reference(example: dict) -> str:
  try:
    return templates.report_text(example)
  except schema.SchemaError:
    return ''
