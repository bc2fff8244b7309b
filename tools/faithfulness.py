r"""Does an image LLM-CXR draws show what its report asked for? A finding classifier
trained in radjax (task 'classify', configs/classifier.py) scores images drawn from
held-out reports, the real images of those reports (the reference) and the codec's
reconstructions of them (what a perfect drawing of the true codes would score).

  python -m tools.faithfulness --llm_cxr runs/lc1 --classifier runs/cls \
      --split val --n 128 [--out faithfulness.json] [--seed 0]

Per finding of the classifier (config.data.label_names), over the held-out records:
  sensitivity  among reports that state the finding (label 1), the share of images the
               classifier calls positive (probability > 0.5)
  specificity  among reports that rule it out (label 0), the share called negative
and the Frechet distance between the classifier's pooled features of the real and the
drawn images (FID's formula in that feature space; lower: closer distributions).
The labels are the records' (they describe the whole report) when the workdir draws from
whole reports; from one section (stage 2: the impression), they are what that text
states, read by the report labeler (uncertain and unmentioned findings are not scored).
"""
import argparse
import io
import json
import sys

import jax
import numpy as np
from PIL import Image

from radjax import run
from radjax.core import workdir as workdir_lib
from radjax.data import images as images_lib
from radjax.data import instructions, mixture, schema, source
from radjax.eval import llm_cxr
from radjax.eval.metrics import labeler
from radjax.eval.metrics.faithfulness import feature_distance, finding_rates


class Classifier:
  """A classify workdir: images as 8-bit arrays -> (probabilities [N, L], pooled [N, D]),
  preprocessed exactly as it was trained (PNG bytes -> resize -> its mean / std)."""

  def __init__(self, workdir: str):
    self.config = workdir_lib.load_config(workdir)
    if self.config.task != 'classify':
      raise ValueError(f'--classifier={workdir!r} is a {self.config.task!r} workdir, not a '
                       "finding classifier (task 'classify')")
    self.exp, _ = run.load_trained(self.config, workdir)
    exp = self.exp
    self.names = tuple(self.config.data.label_names)
    self.vision = exp.task.model_cfg.vision
    task, model, params = exp.task, exp.model, exp.state.params
    self._predict = jax.jit(lambda x: task.predict(model, params, x))
    self.batch_size = int(self.config.eval.batch_size)

  def preprocess(self, image_u8: np.ndarray, record_id: str) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image_u8).save(buf, format='PNG')
    d = self.config.data
    return images_lib.preprocess({'data': buf.getvalue(), 'format': 'png', 'kind': '2d'},
                                 size=self.vision.image_size,
                                 num_channels=self.vision.num_channels, mean=d.image_mean,
                                 std=d.image_std, record_id=record_id)

  def __call__(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack(images).astype(np.float32)
    probs, feats, bs = [], [], self.batch_size
    for i in range(0, len(x), bs):
      chunk = x[i:i + bs]
      n = len(chunk)
      if n < bs:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - n, 0)])
      with self.exp.context():
        p, f = self._predict(chunk)
      probs.append(np.asarray(p)[:n])
      feats.append(np.asarray(f)[:n])
    return np.concatenate(probs), np.concatenate(feats)


WHOLE_REPORT = ('both', 'joined')  # report sections whose text is the whole report


def _labels(examples: list[dict], reports: list[str], section: str, names) -> np.ndarray:
  """[N, L]: 1 stated, 0 ruled out, -2 not scored, of the report text each image is drawn
  from. A section alone need not state what the record's labels (of the whole report) say."""
  if section in WHOLE_REPORT:
    return np.array([[(ex.get('labels') or {}).get(name, -2) for name in names]
                     for ex in examples])
  said = [labeler.label_report(r) for r in reports]
  return np.array([[v if (v := s.get(name)) in (0, 1) else -2 for name in names]
                   for s in said])


def evaluate(llm_cxr_dir: str, classifier_dir: str, split: str = 'val', n: int = 128,
             seed: int = 0, log=print) -> dict:
  """The rates for drawn, real and reconstructed images and the Frechet distances."""
  config = workdir_lib.load_config(llm_cxr_dir)
  model = run.load_llm_cxr(config, llm_cxr_dir)
  scorer = Classifier(classifier_dir)
  records = source.open_split(mixture.eval_dir(config), split)
  options = instructions.options_from_config(config.data.task_options,
                                             config.data.codebook_size)
  examples = []
  for i in range(len(records)):
    ex = schema.decode(records[i])
    if ex.get('images') and ex.get('codes') and instructions.report_answer(
        ex, options.report_section):
      examples.append(ex)
    if len(examples) == n:
      break
  if not examples:
    raise ValueError(f'split {split!r} of {mixture.eval_dir(config)!r} has no records with '
                     'an image, codes and a report')
  reports = [instructions.report_answer(ex, options.report_section) for ex in examples]
  labels = _labels(examples, reports, options.report_section, scorer.names)
  log(f'drawing {len(examples)} images from {split} reports ...')
  drawn = model.draw(reports, seed=seed)
  recon = model.codec.decode([ex['codes'] for ex in examples])
  sets = {'generated': [llm_cxr.to_uint8(x) for x in drawn.images],
          # At the codec's size, as the codec reads them: resolution alone must not
          # separate real from drawn.
          'real': [llm_cxr.to_uint8(model.codec.preprocess(ex['images'][0], ex['id']))
                   for ex in examples],
          'reconstructed': [llm_cxr.to_uint8(x) for x in recon]}
  out = {'split': split, 'n': len(examples), 'seed': seed, 'llm_cxr': llm_cxr_dir,
         'classifier': classifier_dir, 'report_section': options.report_section,
         'labels_from': 'records' if options.report_section in WHOLE_REPORT else
         'report labeler'}
  feats = {}
  for name, images in sets.items():
    probs, feats[name] = scorer([scorer.preprocess(im, f'{name}_{i}')
                                 for i, im in enumerate(images)])
    out[name] = finding_rates(probs, labels, scorer.names)
  out['frechet_real_vs_generated'] = feature_distance(feats['real'], feats['generated'])
  out['frechet_real_vs_reconstructed'] = feature_distance(feats['real'], feats['reconstructed'])
  # The floor: two halves of the real images (finite-sample noise of the distance).
  half = len(feats['real']) // 2
  out['frechet_real_half_vs_half'] = feature_distance(feats['real'][:half],
                                                      feats['real'][half:2 * half])
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m tools.faithfulness',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--llm_cxr', required=True, help='an LLM-CXR workdir (configs/llm_cxr.py)')
  p.add_argument('--classifier', required=True, help='a finding classifier workdir')
  p.add_argument('--split', default='val')
  p.add_argument('--n', type=int, default=128, help='held-out reports to draw from')
  p.add_argument('--seed', type=int, default=0, help='sampling seed of the drawings')
  p.add_argument('--out', default='', help='also write the numbers here (JSON)')
  args = p.parse_args(argv)
  try:
    result = evaluate(args.llm_cxr, args.classifier, args.split, args.n, args.seed)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  text = json.dumps(result, indent=1)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)
  print(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
