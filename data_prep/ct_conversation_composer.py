"""Short yes/no conversations about a synthetic chest CT, answered from its truth.

RadFM trains on VQA pairs about each scan; here the renderer's meta answers them. 2-3
question/answer pairs; topics about what the volume shows come first in the draw, so a
volume with findings is always asked about at least one of them. Every answer starts
with "Yes" or "No" so a VQA scorer can read it.
"""

from __future__ import annotations

import numpy as np

from data_prep import conversation_composer, ct_report_composer

TOPICS = ('nodule', 'pleural_effusion', 'cardiomegaly', 'overall')
QUESTIONS = {
  'nodule': ('Is there a lung nodule?', 'Do you see a pulmonary nodule or mass?',
             'Are there any lung nodules on this CT?'),
  'pleural_effusion': ('Is there a pleural effusion?', 'Do you see pleural fluid?'),
  'cardiomegaly': ('Is the heart enlarged?', 'Is there cardiomegaly?'),
  'overall': ('Is this chest CT normal?', 'Would you call this scan normal?'),
}
MIN_TURNS, MAX_TURNS = 2, 3  # question/answer pairs


def answer(topic: str, meta: dict) -> str:
  findings = set(meta['findings'])
  if topic == 'overall':
    return 'Yes.' if not findings else 'No.'
  if topic not in findings:
    return 'No.'
  if topic == 'nodule':
    return 'Yes. ' + ct_report_composer.lesions_sentence(meta['nodules'])
  if topic == 'pleural_effusion':
    text = ct_report_composer.effusion_text(meta['effusion'])
    return f'Yes. {text[0].upper()}{text[1:]}.'
  return 'Yes, the heart is enlarged.'


def compose(rng: np.random.Generator, meta: dict) -> list[dict]:
  """2-3 user/assistant pairs about the volume described by `meta` (ct_renderer.meta)."""
  present = [t for t in TOPICS if t in meta['findings']]
  return conversation_composer.qa_turns(rng, present, TOPICS, QUESTIONS,
                                        lambda t: answer(t, meta), MIN_TURNS, MAX_TURNS)
