"""Short conversations about a synthetic radiograph, from what the renderer drew.

RadVLM trains on multi-turn questions and answers about each image. The embedded
default knows its findings exactly, so its conversations come from the renderer's
meta (sides, zones, severity, nodule vs mass, cardiothoracic ratio) rather than from a
language model: 2-4 question/answer pairs, our wording, every answer true to the
picture. Questions about what the image shows come first in the draw, so a record with
findings is always asked about at least one of them.
"""

from __future__ import annotations

import numpy as np

# Topic -> the finding it asks about ('overall' asks whether the study is normal), in a
# report's reading order: heart, lungs, pleura.
TOPICS = {
  'heart': 'cardiomegaly',
  'consolidation': 'consolidation',
  'nodule': 'nodule',
  'effusion': 'pleural_effusion',
  'pneumothorax': 'pneumothorax',
  'overall': None,
}
# Every question of a topic asks the same way round, so a "Yes" or "No" answers each.
QUESTIONS = {
  'heart': ('Is the heart enlarged?', 'How does the heart size look?',
            'What can you say about the cardiac silhouette?'),
  'consolidation': ('Is there any consolidation?', 'Do you see airspace consolidation, and where?',
                    'Is there consolidation in either lung?'),
  'nodule': ('Is there a nodule or mass, and where?', 'Do you see a focal lung lesion?',
             'Any nodule or mass in the lungs?'),
  'effusion': ('Is there a pleural effusion? On which side?', 'Do you see pleural fluid?',
               'Is there fluid at the lung bases?'),
  'pneumothorax': ('Is there a pneumothorax?', 'Do you see air in the pleural space?',
                   'Is there any sign of a pneumothorax?'),
  'overall': ('Is this chest radiograph normal?', 'Would you call this study normal?',
              'Does this look like a normal chest X-ray?'),
}
MIN_TURNS, MAX_TURNS = 2, 4  # question/answer pairs
_ZONE_WORDS = {'upper': 'upper', 'middle': 'mid', 'lower': 'lower'}


def _lesion_name(meta: dict) -> str:
  return meta.get('nodule_phrase') or 'nodule'


def _side_zone(meta: dict, finding: str) -> str:
  """'right lower lung zone', or the words that are known."""
  side = (meta.get('sides') or {}).get(finding)
  zone = _ZONE_WORDS.get((meta.get('zones') or {}).get(finding))
  words = [w for w in (side, zone) if w]
  return ' '.join(words + ['lung zone']) if zone else ' '.join(words + ['lung'])


def answer(topic: str, findings: set[str], meta: dict) -> str:
  """The answer to a `topic` question about an image drawn with `findings` and `meta`."""
  sides, severity = meta.get('sides') or {}, meta.get('severity') or {}
  ctr = meta.get('ctr')
  ratio = f' (cardiothoracic ratio about {ctr:.2f})' if ctr is not None else ''
  if topic == 'overall':
    if not findings:
      return 'Yes. No abnormality is seen.'
    names = {'cardiomegaly': 'cardiomegaly', 'consolidation': 'consolidation',
             'nodule': f'a lung {_lesion_name(meta)}',
             'pleural_effusion': ('bilateral pleural effusions'
                                  if sides.get('pleural_effusion') == 'bilateral'
                                  else 'a pleural effusion'),
             'pneumothorax': 'a pneumothorax'}
    shown = [names[f] for f in TOPICS.values() if f in findings]
    listed = shown[0] if len(shown) == 1 else ', '.join(shown[:-1]) + ' and ' + shown[-1]
    return f'No. It shows {listed}.'
  finding = TOPICS[topic]
  present = finding in findings
  if topic == 'heart':
    if not present:
      return f'The heart is normal in size{ratio}.'
    degree = 'markedly' if severity.get(finding) == 'large' else 'moderately'
    return f'The heart is {degree} enlarged{ratio}.'
  if topic == 'consolidation':
    if not present:
      return 'No, the lungs show no consolidation.'
    return f'Yes, there is consolidation in the {_side_zone(meta, finding)}.'
  if topic == 'nodule':
    if not present:
      return 'No nodule or mass is seen.'
    return f'There is a {_lesion_name(meta)} in the {_side_zone(meta, finding)}.'
  if topic == 'effusion':
    if not present:
      return 'No, there is no pleural effusion; the costophrenic angles are clear.'
    size = severity.get(finding)
    size = f'{size} ' if size else ''
    if sides.get(finding) == 'bilateral':
      return f'Yes, there are {size}pleural effusions on both sides.'
    side = f' on the {sides[finding]} side' if sides.get(finding) else ''
    return f'Yes, a {size}pleural effusion{side}.'
  if not present:  # pneumothorax
    return 'No, there is no pneumothorax.'
  size = severity.get(finding)
  side = sides.get(finding)
  return ' '.join(['Yes, a', *(w for w in (size, side + '-sided' if side else None) if w),
                   'pneumothorax.'])


def qa_turns(rng: np.random.Generator, present: list[str], topics, questions: dict,
             answer_of, min_turns: int, max_turns: int) -> list[dict]:
  """min..max user/assistant pairs: every present topic first (then others at random)
  up to the drawn count, in a random order; each question's wording drawn, its answer
  `answer_of(topic)`. Shared by the 2D and CT demos' conversations."""
  others = [t for t in topics if t not in present]
  others = [others[i] for i in rng.permutation(len(others))]
  n = int(rng.integers(min_turns, max_turns + 1))
  chosen = (present + others)[:n]
  chosen = [chosen[i] for i in rng.permutation(len(chosen))]
  turns = []
  for topic in chosen:
    question = questions[topic][int(rng.integers(len(questions[topic])))]
    turns += [{'role': 'user', 'text': question},
              {'role': 'assistant', 'text': answer_of(topic)}]
  return turns


def compose(rng: np.random.Generator, findings: set[str], meta: dict) -> list[dict]:
  """2-4 user/assistant pairs about the image drawn with `findings` and `meta`."""
  findings = set(findings)
  present = [t for t, f in TOPICS.items() if f in findings]
  return qa_turns(rng, present, TOPICS, QUESTIONS, lambda t: answer(t, findings, meta),
                  MIN_TURNS, MAX_TURNS)
