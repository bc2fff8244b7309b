"""Reports and CheXpert-style labels for synthetic chest CT, from the renderer's truth.

No CT report text ships offline, so the sentences are our own, a few wordings each,
written so that radjax's report labeler (radjax/eval/metrics/labeler.py) reads them back
as the labels they come with: a generated report is then scored against the volume's
true findings exactly as the 2D demo's are. Sides are the patient's; sizes are the
lesion diameters the renderer drew, in whole millimetres.
"""

from __future__ import annotations

import numpy as np

from radjax.data.schema import DEMO_FINDINGS

# The CT findings and the CheXpert observation each one is (the 2D demo's names).
FINDING_TO_OBSERVATION = {f: DEMO_FINDINGS[f] for f in ('nodule', 'pleural_effusion',
                                                        'cardiomegaly')}
COUNT_WORDS = {2: 'Two', 3: 'Three'}

HEART_NORMAL = ('The heart is normal in size.', 'Heart size is normal.')
HEART_ENLARGED = ('The heart is enlarged.', 'Cardiomegaly.')
NO_LESION = ('No pulmonary nodule or mass.', 'No lung nodule or mass is seen.')
NO_EFFUSION = ('No pleural effusion.', 'There is no pleural effusion.')
AIRWAYS = ('The central airways are patent.', 'The trachea and main bronchi are patent.')
NORMAL_IMPRESSION = ('No nodule, effusion or cardiomegaly.',
                     'Normal chest CT: no nodule, effusion or cardiomegaly.')


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
  return options[int(rng.integers(len(options)))]


def article(number: int) -> str:
  """'an' before numbers said with a vowel first (8, 11, 18, 80-89), else 'a'."""
  return 'an' if str(number).startswith('8') or number in (11, 18) else 'a'


def lesion_text(nodule: dict) -> str:
  """'a 9 mm nodule in the right upper lobe'."""
  mm = round(nodule['diameter_mm'])
  return f"{article(mm)} {mm} mm {nodule['phrase']} in the {nodule['side']} {nodule['lobe']} lobe"


def lesions_sentence(nodules: list[dict]) -> str:
  """One lesion: 'A 9 mm nodule in ...'. Several: 'Two nodules: a 9 mm nodule in ... and a
  31 mm mass in ...'."""
  parts = [lesion_text(n) for n in nodules]
  if len(parts) == 1:
    return parts[0][0].upper() + parts[0][1:] + '.'
  noun = 'nodules' if all(n['phrase'] == 'nodule' for n in nodules) else 'lesions'
  listed = ', '.join(parts[:-1]) + ' and ' + parts[-1]
  return f'{COUNT_WORDS.get(len(parts), str(len(parts)))} {noun}: {listed}.'


def effusion_text(effusion: dict) -> str:
  """'small right pleural effusion' / 'moderate bilateral pleural effusions'."""
  sides = sorted(effusion)
  size = effusion[sides[0]]
  if len(sides) == 2:
    return f'{size} bilateral pleural effusions'
  return f'{size} {sides[0]} pleural effusion'


def labels_for(findings: set[str]) -> dict[str, int]:
  """The three observations 1/0, and No Finding iff none is present."""
  labels = {obs: int(f in findings) for f, obs in FINDING_TO_OBSERVATION.items()}
  labels['No Finding'] = int(not findings)
  return labels


def compose(rng: np.random.Generator, meta: dict) -> tuple[dict, dict]:
  """({"findings", "impression"}, labels) for a volume's meta (ct_renderer.meta)."""
  findings = set(meta['findings'])
  sentences = [_pick(HEART_ENLARGED if meta['cardiomegaly'] else HEART_NORMAL, rng)]
  sentences.append(lesions_sentence(meta['nodules']) if meta['nodules']
                   else _pick(NO_LESION, rng))
  if meta['effusion']:
    text = effusion_text(meta['effusion'])
    sentences.append(text[0].upper() + text[1:] + '.')
  else:
    sentences.append(_pick(NO_EFFUSION, rng))
  sentences.append(_pick(AIRWAYS, rng))

  impression = []
  if meta['nodules']:
    first = meta['nodules'][0]
    more = len(meta['nodules']) - 1
    impression.append(f"{first['side'].capitalize()} {first['lobe']} lobe {first['phrase']}"
                      + (f' and {more} more' if more else '') + '.')
  if meta['effusion']:
    text = effusion_text(meta['effusion'])
    impression.append(text[0].upper() + text[1:] + '.')
  if meta['cardiomegaly']:
    impression.append('Cardiomegaly.')
  if not impression:
    impression.append(_pick(NORMAL_IMPRESSION, rng))
  report = {'findings': ' '.join(sentences), 'impression': ' '.join(impression)}
  return report, labels_for(findings)
