"""Instruction tasks (radjax/data/instructions.py) and the demo's conversations."""

from __future__ import annotations

import collections
import dataclasses

import ml_collections
import numpy as np
import pytest

from data_prep import conversation_composer, demo, report_composer
from radjax.core import defaults
from radjax.data import instructions as ins
from radjax.data import schema
from radjax.eval.metrics.classification import parse_labels
from radjax.eval.metrics.grounding import parse_boxes

OPTS = ins.Options()
IMAGE = {'data': b'png', 'format': 'png', 'kind': '2d', 'spacing': None}
NODULE = {'box': [0.12, 0.3, 0.25, 0.41], 'label': 'Lung Lesion', 'phrase': 'left apical nodule'}
EFFUSION = {'box': [0.55, 0.6, 0.9, 0.85], 'label': 'Pleural Effusion', 'phrase': ''}
NODULE2 = {'box': [0.6, 0.2, 0.7, 0.3], 'label': 'Lung Lesion', 'phrase': 'left apical nodule'}
LUNG = {'box': [0.05, 0.1, 0.45, 0.8], 'label': 'Right Lung', 'phrase': ''}
CONVERSATION = [
  {'role': 'system', 'text': 'Answer as a radiologist.'},
  {'role': 'user', 'text': '<image>\nIs the heart enlarged?'},
  {'role': 'assistant', 'text': 'No.'},
]


def _example(**fields) -> dict:
  base = dict(
    id='ex-1', source='test', images=[IMAGE],
    report={'findings': 'Small left effusion.', 'impression': 'Effusion.'},
    labels={'Pleural Effusion': 1, 'Edema': -1, 'Cardiomegaly': 0, 'No Finding': 0},
    boxes=[NODULE, EFFUSION, NODULE2, LUNG], conversation=CONVERSATION)
  base.update(fields)
  return schema.make_example(**base)


def _qa(question, answer):
  return [{'role': 'user', 'text': question}, {'role': 'assistant', 'text': answer}]


# --- each task, variant 0 (evaluation) ---------------------------------------------


def test_report_sections_exact():
  ex = _example()
  assert ins.report(ex, None, OPTS) == _qa(
    'Write the findings and impression for this chest radiograph.',
    'Findings: Small left effusion.\nImpression: Effusion.')
  findings = ins.Options(report_section='findings')
  assert ins.report(ex, None, findings) == _qa(ins.FINDINGS_INSTRUCTIONS[0], 'Small left effusion.')
  impression = ins.Options(report_section='impression')
  assert ins.report(ex, None, impression) == _qa(ins.IMPRESSION_INSTRUCTIONS[0], 'Effusion.')
  # A missing section: that section's task cannot be served, 'both' writes the other.
  only = _example(report={'findings': 'Clear lungs.', 'impression': ''})
  assert ins.report(only, None, impression) is None
  assert ins.report(only, None, OPTS)[-1]['text'] == 'Findings: Clear lungs.'
  assert ins.report(_example(report={}), None, OPTS) is None
  # 'joined': LLM-CXR's stage-1 text, the two sections after each other, unlabelled.
  joined = ins.Options(report_section='joined')
  assert ins.report(ex, None, joined) == _qa(ins.REPORT_INSTRUCTIONS[0],
                                             'Small left effusion. Effusion.')
  assert ins.report(only, None, joined)[-1]['text'] == 'Clear lungs.'
  assert ins.report_text(ex, None, joined) == [{'role': 'assistant',
                                                'text': 'Small left effusion. Effusion.'}]


def test_report_draws_its_wording_as_the_demo_always_did():
  """One rng.integers(5) draw picks the wording (the demo's stream and numbers depend on
  it; checked against the old template code when it was replaced)."""
  first = 'Write the findings and impression for this chest radiograph.'
  assert ins.REPORT_INSTRUCTIONS[0] == first
  ex = _example()
  answer = 'Findings: Small left effusion.\nImpression: Effusion.'
  for seed in range(40):
    a, b = np.random.default_rng(seed), np.random.default_rng(seed)
    turns = ins.make_turns(ex, ('report',), a, OPTS)
    assert turns == _qa(ins.REPORT_INSTRUCTIONS[int(b.integers(5))], answer)
    assert a.random() == b.random()  # the rng advanced by exactly that one draw
  assert ins.make_turns(ex, ('report',), None, OPTS) == _qa(ins.REPORT_INSTRUCTIONS[0], answer)


def test_a_volume_is_asked_about_as_a_scan_not_a_radiograph():
  """RadFM's CT and MRI volumes were requested as 'this chest radiograph', in training and
  at --mode=generate. The same one draw picks among as many scan wordings."""
  volume = _example(images=[{'kind': '3d', 'format': 'npy', 'data': b'x'}])
  for section in ('both', 'joined', 'findings', 'impression'):
    options = ins.Options(report_section=section)
    question = ins.report(volume, None, options)[0]['text']
    assert question == ins.VOLUME_INSTRUCTIONS[section][0]
    assert 'radiograph' not in question and 'X-ray' not in question
    assert len(ins.VOLUME_INSTRUCTIONS[section]) == len(ins.REPORT_INSTRUCTIONS)
  a, b = np.random.default_rng(3), np.random.default_rng(3)
  assert ins.report(volume, a, OPTS)[0]['text'] == ins.VOLUME_INSTRUCTIONS['both'][
      int(b.integers(5))]
  assert ins.report(_example(), None, OPTS)[0]['text'] == ins.REPORT_INSTRUCTIONS[0]


def test_report_text_is_the_report_alone():
  ex = _example()
  assert ins.report_text(ex, None, OPTS) == [
    {'role': 'assistant', 'text': 'Findings: Small left effusion.\nImpression: Effusion.'}]
  assert ins.report_text(_example(report={}), None, OPTS) is None


def test_classification_exact_and_uncertain_as():
  ex = _example()
  assert ins.classification(ex, None, OPTS) == _qa(
    'Which abnormalities does this chest radiograph show?',
    'Abnormalities seen: Edema and Pleural Effusion.')
  zero = ins.Options(uncertain_as=0)
  assert ins.classification(ex, None, zero)[-1]['text'] == 'Abnormalities seen: Pleural Effusion.'
  normal = _example(labels={'No Finding': 1, 'Cardiomegaly': 0})
  assert ins.classification(normal, None, OPTS)[-1]['text'] == 'No abnormality is seen.'
  assert ins.classification(_example(labels={}), None, OPTS) is None
  # Fixed order whatever the dict's order.
  shuffled = _example(labels={'Support Devices': 1, 'Atelectasis': 1, 'Cardiomegaly': 1})
  assert ins.positive_labels(shuffled, OPTS) == ['Cardiomegaly', 'Atelectasis', 'Support Devices']


def test_classification_round_trips_through_the_eval_parser():
  rng = np.random.default_rng(0)
  vocab = schema.CHEXPERT_OBSERVATIONS
  for trial in range(60):
    k = int(rng.integers(0, 6))
    chosen = [ins.PATHOLOGIES[i] for i in rng.choice(len(ins.PATHOLOGIES), k, replace=False)]
    ex = _example(labels={o: 1 for o in chosen} | {'No Finding': int(not chosen)})
    expected = [o for o in ins.PATHOLOGIES if o in chosen]
    for variant in range(6):
      answer = ins.classification(ex, np.random.default_rng([trial, variant]), OPTS)[-1]['text']
      labels, unknown = parse_labels(answer, vocab)
      assert (labels, unknown) == (expected, []), answer
  # Every wording, not only those the draws above hit.
  for template in ins.CLASSIFICATION_ANSWERS:
    text = template.format('Enlarged Cardiomediastinum, Pleural Other and Support Devices')
    assert parse_labels(text, vocab)[0] == [
      'Enlarged Cardiomediastinum', 'Pleural Other', 'Support Devices']
  for text in ins.CLASSIFICATION_NONE:
    assert parse_labels(text, vocab) == ([], []), text


def test_vqa_exact_uncertain_and_several_questions():
  ex = _example()
  # Known observations in CheXpert order: Cardiomegaly (0), Edema (-1), Pleural Effusion (1).
  assert ins.vqa(ex, None, OPTS) == _qa('Is there cardiomegaly on this chest radiograph?', 'No.')
  three = ins.vqa(ex, None, ins.Options(vqa_questions=3))
  assert [t['text'] for t in three[1::2]] == ['No.', 'Yes.', 'Yes.']
  assert three[2]['text'] == 'Is there pulmonary edema on this chest radiograph?'
  assert [t['text'] for t in ins.vqa(ex, None, ins.Options(vqa_questions=3, uncertain_as=0))[1::2]
          ] == ['No.', 'No.', 'Yes.']
  # Drawn questions are distinct observations and never more than the labels state.
  for seed in range(20):
    turns = ins.vqa(ex, np.random.default_rng(seed), ins.Options(vqa_questions=5))
    assert len(turns) == 6 and len({t['text'] for t in turns[0::2]}) == 3
  assert ins.vqa(_example(labels={'No Finding': 1}), None, OPTS) is None
  assert set(ins.OBSERVATION_PHRASES) == set(ins.PATHOLOGIES)


def test_grounding_tasks_exact():
  ex = _example()
  assert ins.abnormality_grounding(ex, None, OPTS) == _qa(
    'Where is the Lung Lesion on this chest radiograph?',
    'Lung Lesion at [0.12, 0.30, 0.25, 0.41] and [0.60, 0.20, 0.70, 0.30].')
  assert ins.detection(ex, None, OPTS) == _qa(
    'Find every abnormality on this chest radiograph and give its location.',
    'Lung Lesion [0.12, 0.30, 0.25, 0.41] and [0.60, 0.20, 0.70, 0.30]; '
    'Pleural Effusion [0.55, 0.60, 0.90, 0.85].')
  assert ins.phrase_grounding(ex, None, OPTS) == _qa(
    'Locate this finding on the radiograph: "left apical nodule"',
    'It is at [0.12, 0.30, 0.25, 0.41] and [0.60, 0.20, 0.70, 0.30].')
  assert ins.anatomical_grounding(ex, None, OPTS) == _qa(
    'Where is the right lung on this chest radiograph?',
    'The right lung is at [0.05, 0.10, 0.45, 0.80].')


def test_grounding_draws_the_class_and_skips_inapplicable_boxes():
  ex = _example()
  asked = {ins.abnormality_grounding(ex, np.random.default_rng(s), OPTS)[0]['text']
           for s in range(40)}
  assert any('Pleural Effusion' in q for q in asked) and any('Lung Lesion' in q for q in asked)
  assert not any('Right Lung' in q or 'right lung' in q for q in asked)  # anatomy is not a finding
  no_boxes = _example(boxes=[])
  for task in ('abnormality_grounding', 'phrase_grounding', 'anatomical_grounding'):
    assert ins.TASKS[task](no_boxes, None, OPTS) is None
  assert ins.phrase_grounding(_example(boxes=[EFFUSION]), None, OPTS) is None  # no phrase
  assert ins.anatomical_grounding(_example(boxes=[NODULE]), None, OPTS) is None
  assert ins.abnormality_grounding(_example(boxes=[LUNG]), None, OPTS) is None


def test_detection_without_boxes():
  normal = _example(boxes=[], labels={'No Finding': 1, 'Cardiomegaly': 0})
  assert ins.detection(normal, None, OPTS)[-1]['text'] == ins.DETECTION_NONE[0]
  # A finding with a label but no box (the demo's effusions): no right answer to give.
  assert ins.detection(_example(boxes=[]), None, OPTS) is None
  assert ins.detection(_example(boxes=[], labels={}), None, OPTS) is None
  for text in ins.DETECTION_NONE:
    assert parse_boxes(text) == ([], 0)


def _rounded(box):
  return tuple(round(c, 2) for c in box)


def test_grounding_round_trips_through_the_eval_parser():
  rng = np.random.default_rng(1)
  labels = ['Lung Lesion', 'Pleural Effusion', 'Aortic enlargement', 'Cardiomegaly']
  for trial in range(40):
    boxes = []
    for _ in range(int(rng.integers(1, 6))):
      x1, y1 = rng.uniform(0, 0.78, 2)
      w, h = rng.uniform(0.02, 0.2, 2)
      boxes.append({'box': [float(x1), float(y1), float(x1 + w), float(y1 + h)],
                    'label': labels[int(rng.integers(len(labels)))], 'phrase': 'a phrase'})
    ex = _example(boxes=boxes)
    want = sorted((b['label'], _rounded(b['box'])) for b in boxes)
    parsed, bad = parse_boxes(ins.detection(ex, np.random.default_rng(trial), OPTS)[-1]['text'],
                              labels)
    assert bad == 0 and sorted((b['label'], b['box']) for b in parsed) == want
    turns = ins.abnormality_grounding(ex, np.random.default_rng(trial), OPTS)
    [label] = [x for x in labels if x in turns[0]['text']]
    parsed, bad = parse_boxes(turns[-1]['text'], labels)
    assert bad == 0 and [(b['label'], b['box']) for b in parsed] == [
      (label, _rounded(b['box'])) for b in boxes if b['label'] == label]
  # Every answer wording of every grounding task, exactly to 2 decimals.
  want_lesion = [_rounded(NODULE['box']), _rounded(NODULE2['box'])]
  for template in ins.ABNORMALITY_ANSWERS:
    text = template.format('Lung Lesion', ins.format_boxes([NODULE, NODULE2]))
    assert parse_boxes(text, labels) == (
      [{'label': 'Lung Lesion', 'box': b} for b in want_lesion], 0), text
  for template in ins.DETECTION_ANSWERS:
    text = template.format('Lung Lesion [0.12, 0.30, 0.25, 0.41]; Pleural Effusion '
                           '[0.55, 0.60, 0.90, 0.85]')
    assert [b['label'] for b in parse_boxes(text, labels)[0]] == ['Lung Lesion', 'Pleural Effusion']
  for template in ins.PHRASE_ANSWERS:
    text = template.format(ins.format_boxes([NODULE, NODULE2]))
    assert parse_boxes(text, (), default_label='Lung Lesion') == (
      [{'label': 'Lung Lesion', 'box': b} for b in want_lesion], 0), text
  for template in ins.ANATOMY_ANSWERS:
    text = template.format('right lung', ins.format_box(LUNG['box']))
    assert parse_boxes(text, ins.ANATOMICAL_REGIONS) == (
      [{'label': 'right lung', 'box': _rounded(LUNG['box'])}], 0), text


def test_format_box_keeps_thin_boxes_valid():
  assert ins.format_box([0.121, 0.5, 0.124, 0.6]) == '[0.12, 0.50, 0.13, 0.60]'
  assert ins.format_box([0.0, 0.994, 1.0, 0.999]) == '[0.00, 0.99, 1.00, 1.00]'
  assert ins.format_box([0.125, 0.3, 0.5, 0.4]) == '[0.12, 0.30, 0.50, 0.40]'  # round half even


def test_conversation_and_instruction():
  ex = _example()
  turns = ins.conversation(ex, None, OPTS)
  assert turns == CONVERSATION and turns is not ex['conversation']
  turns[0]['text'] = 'changed'
  assert ex['conversation'][0]['text'] == 'Answer as a radiologist.'  # a copy
  assert ins.conversation(_example(conversation=[]), None, OPTS) is None
  assert ins.conversation(_example(conversation=CONVERSATION[:2]), None, OPTS) is None
  assert ins.instruction(ex, None, OPTS) is None  # has an image
  dolly = schema.make_example(id='dolly-00001', source='dolly', conversation=[
    {'role': 'user', 'text': 'Name a primary colour.'}, {'role': 'assistant', 'text': 'Red.'}])
  assert ins.instruction(dolly, None, OPTS) == _qa('Name a primary colour.', 'Red.')
  for task in set(ins.TASKS) - {'instruction', 'conversation'}:
    assert ins.TASKS[task](dolly, None, OPTS) is None, task


# --- choosing among tasks ----------------------------------------------------------


def test_make_turns_is_deterministic_and_spreads_over_tasks():
  ex = _example()
  # The codes tasks need codes and a codebook (tests/test_codes_tasks.py).
  tasks = tuple(t for t in ins.TASKS if 'codes' not in t)
  served = [t for t in tasks if t != 'instruction']
  assert all(ins.TASKS[t](ex, None, OPTS) for t in served)
  assert ins.TASKS['instruction'](ex, None, OPTS) is None
  counts = collections.Counter()
  for seed in range(600):
    turns = ins.make_turns(ex, tasks, np.random.default_rng(seed), OPTS)
    assert turns == ins.make_turns(ex, tasks, np.random.default_rng(seed), OPTS)
    # One draw picks among the servable tasks; the task then draws its wording.
    rng = np.random.default_rng(seed)
    name = served[int(rng.integers(len(served)))]
    assert turns == ins.TASKS[name](ex, rng, OPTS)
    assert turns[-1]['role'] == 'assistant'
    counts[name] += 1
  assert set(counts) == set(served)
  assert min(counts.values()) > 600 / len(served) * 0.6, counts
  assert len({str(ins.make_turns(ex, tasks, np.random.default_rng(s), OPTS))
              for s in range(50)}) > 30  # wordings vary too
  assert ins.make_turns(ex, tasks, None, OPTS) == ins.report(ex, None, OPTS)
  assert ins.make_turns(ex, ('instruction', 'vqa'), None, OPTS) == ins.vqa(ex, None, OPTS)


def test_make_turns_errors():
  ex = _example(boxes=[], labels={}, conversation=[])
  with pytest.raises(schema.SchemaError, match=r"record 'ex-1'.*detection.*classification"):
    ins.make_turns(ex, ('detection', 'classification'), None, OPTS)
  with pytest.raises(ValueError, match=r'config\.data\.tasks.*bogus'):
    ins.make_turns(ex, ('report', 'bogus'), None, OPTS)
  with pytest.raises(ValueError, match=r'config\.data\.tasks'):
    ins.make_turns(ex, (), None, OPTS)


def test_options_from_config():
  c = defaults.get_config()
  options = ins.options_from_config(c.data.task_options)
  assert options == ins.Options()
  # Every option is a task_options knob, except the codebook (config.data.codebook_size)
  # and the codes per image (config.data.codes_per_image, else the codec's grid).
  assert set(c.data.task_options) | {'codebook_size', 'num_codes'} == {
      f.name for f in dataclasses.fields(ins.Options)}
  assert ins.options_from_config(None, 37).codebook_size == 37
  assert ins.options_from_config(None) == ins.Options()
  got = ins.options_from_config(ml_collections.ConfigDict(dict(report_section='findings',
                                                               uncertain_as=0)))
  assert (got.report_section, got.uncertain_as) == ('findings', 0)
  with pytest.raises(ValueError, match=r'config\.data\.task_options\.uncertain_ass'):
    ins.options_from_config({'uncertain_ass': 1})
  with pytest.raises(ValueError, match=r'config\.data\.task_options\.report_section'):
    ins.options_from_config({'report_section': 'summary'})
  with pytest.raises(ValueError, match=r'config\.data\.task_options\.uncertain_as'):
    ins.options_from_config({'uncertain_as': -1})
  with pytest.raises(ValueError, match=r'config\.data\.task_options\.vqa_questions'):
    ins.options_from_config({'vqa_questions': 0})
  with pytest.raises(ValueError, match=r'config\.data\.task_options\.task_per_record'):
    ins.options_from_config({'task_per_record': 'yes'})


def test_reference_splits_off_the_answer():
  turns = ins.conversation(_example(), None, OPTS)
  prompt, answer = ins.reference(turns)
  assert prompt == CONVERSATION[:2] and answer == 'No.'
  assert ins.reference(ins.report_text(_example(), None, OPTS)) == (
    [], 'Findings: Small left effusion.\nImpression: Effusion.')
  with pytest.raises(ValueError, match='assistant'):
    ins.reference(CONVERSATION[:2])


# --- the embedded default's conversations -----------------------------------------------


def test_conversation_composer_answers_from_the_meta():
  assert {f for f in conversation_composer.TOPICS.values() if f} == set(report_composer.FINDINGS)
  meta = {'sides': {'pleural_effusion': 'bilateral', 'nodule': 'left'},
          'zones': {'nodule': 'middle'}, 'severity': {'pleural_effusion': 'small'},
          'ctr': 0.42, 'nodule_phrase': 'mass'}
  findings = {'pleural_effusion', 'nodule'}
  for seed in range(30):
    turns = conversation_composer.compose(np.random.default_rng(seed), findings, meta)
    assert 4 <= len(turns) <= 8
    assert [t['role'] for t in turns] == ['user', 'assistant'] * (len(turns) // 2)
    answers = ' '.join(t['text'] for t in turns[1::2])
    # At least one question about what the image shows.
    assert 'small pleural effusions on both sides' in answers or 'mass in the left mid' in answers
    assert 'pneumothorax.' not in answers or 'no pneumothorax' in answers
  answer = conversation_composer.answer
  assert answer('nodule', findings, meta) == 'There is a mass in the left mid lung zone.'
  assert answer('overall', findings, meta) == (
    'No. It shows a lung mass and bilateral pleural effusions.')
  assert answer('overall', set(), meta) == 'Yes. No abnormality is seen.'
  assert answer('heart', set(), meta) == (
    'The heart is normal in size (cardiothoracic ratio about 0.42).')
  assert answer('pneumothorax', {'pneumothorax'}, {'sides': {'pneumothorax': 'left'}}) == (
    'Yes, a left-sided pneumothorax.')


def test_demo_records_carry_a_conversation_from_their_findings():
  # (seed 0, train 1): a left upper mass and a moderate right pneumothorax.
  ex = demo.make_demo_example(0, 'train', 1)
  assert ex['labels']['Pneumothorax'] == 1 and ex['labels']['Lung Lesion'] == 1
  schema.validate(ex)
  answers = [t['text'] for t in ex['conversation'][1::2]]
  assert answers == ['There is a mass in the left upper lung zone.',
                     'Yes, a moderate right-sided pneumothorax.']
  assert [b['phrase'] for b in ex['boxes'] if b['label'] == 'Lung Lesion'] == ['mass']
  assert ins.make_turns(ex, ('conversation',), None, OPTS) == ex['conversation']
  # The conversation's own rng: the rest of the record is what the main stream alone makes.
  rng = demo.example_rng(0, 'train', 1)
  findings = demo.sample_findings(rng)
  image, meta = demo.cxr_renderer.render(rng, findings)
  report, labels = report_composer.compose(rng, findings, meta)
  assert ex['images'][0]['data'] == demo.encode_png(image)
  assert (ex['report'], ex['labels'], ex['boxes']) == (report, labels, meta['boxes'])
