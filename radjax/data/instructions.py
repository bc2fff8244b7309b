"""Instruction tasks: an Example becomes the turns of one conversation.

A turn is {'role': 'system'|'user'|'assistant', 'text': str}. Image k of the Example
goes where the k-th IMAGE_MARK appears in user text; turns with no mark get every image
at the start of the first user turn (radjax/data/chat.py), so tasks add no marks.

Each task is `fn(example, rng, options) -> turns | None`: the turns end with the
assistant's answer, None means the Example cannot serve the task (no boxes, no labels,
no conversation...). `rng=None` is evaluation: wording variant 0, no randomness.
The tasks follow XrayGPT's and RadVLM's instruction sets (report generation, report
text alone, classification, grounding, detection, conversation, VQA, text-only
instructions); the wording is ours. Answers are written so the evaluation parsers
(radjax/eval/metrics/{classification,grounding}.py) read them back exactly.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping

import numpy as np

from radjax.data import chat, schema

IMAGE_MARK = chat.IMAGE_MARK

# ---- options -------------------------------------------------------------------------

REPORT_SECTIONS = ('findings', 'impression', 'both', 'joined')


@dataclasses.dataclass(frozen=True)
class Options:
  """The task knobs, from config.data.task_options (documented in radjax/core/defaults.py)."""

  # report, report_text: 'findings' | 'impression' | 'both' (labelled lines) | 'joined'
  report_section: str = 'both'
  uncertain_as: int = 1  # classification, vqa: what a CheXpert -1 counts as
  vqa_questions: int = 1  # vqa: closed questions (distinct observations) per example
  codebook_size: int = 0  # report_from_codes, codes_from_report (config.data.codebook_size)
  # codes per image (the codec's grid); a record with another count is an error. 0: any.
  num_codes: int = 0
  # True: a record serving several tasks always gets the same one (its id's hash picks it),
  # as LLM-CXR gives each image one direction by its index's parity; False: drawn per visit.
  task_per_record: bool = False


def options_from_config(task_options: Mapping | None, codebook_size: int = 0,
                        num_codes: int = 0) -> Options:
  """Options from config.data.task_options (a ConfigDict or dict), config.data.codebook_size
  and the codes per image (radjax/eval/llm_cxr.py codes_per_image); unknown keys and
  impossible values are errors naming config.data.task_options.<key>."""
  given = dict(task_options or {})
  known = {f.name for f in dataclasses.fields(Options)} - {'codebook_size', 'num_codes'}
  for key in given:
    if key not in known:
      raise ValueError(f'config.data.task_options.{key}: unknown option; known: {sorted(known)}')
  options = Options(**given, codebook_size=int(codebook_size), num_codes=int(num_codes))
  _check(options.report_section in REPORT_SECTIONS, 'report_section',
         f'{options.report_section!r} is not one of {REPORT_SECTIONS}')
  _check(_is_int(options.uncertain_as) and options.uncertain_as in (0, 1), 'uncertain_as',
         f'{options.uncertain_as!r} is not 0 or 1')
  _check(_is_int(options.vqa_questions) and options.vqa_questions >= 1, 'vqa_questions',
         f'{options.vqa_questions!r} is not an int >= 1')
  _check(isinstance(options.task_per_record, (bool, np.bool_)), 'task_per_record',
         f'{options.task_per_record!r} is not True or False')
  return options


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check(ok: bool, key: str, why: str) -> None:
  if not ok:
    raise ValueError(f'config.data.task_options.{key}: {why}')


# ---- helpers -------------------------------------------------------------------------


def _pick(options: tuple, rng: np.random.Generator | None):
  return options[0] if rng is None else options[int(rng.integers(len(options)))]


def _qa(question: str, answer: str) -> list[dict]:
  return [{'role': 'user', 'text': question}, {'role': 'assistant', 'text': answer}]


def _join(items: list[str]) -> str:
  """'a', 'a and b', 'a, b and c' (the joiners both eval parsers split on)."""
  return items[0] if len(items) == 1 else ', '.join(items[:-1]) + ' and ' + items[-1]


# ---- report --------------------------------------------------------------------------

# Report instructions for findings and impression; the first is the eval wording. The
# demo was trained on these (one rng.integers(5) draw), so its numbers stay comparable.
REPORT_INSTRUCTIONS = (
  'Write the findings and impression for this chest radiograph.',
  'Report on this chest X-ray: findings, then impression.',
  'You are reading this frontal chest film. Give the findings and the impression.',
  'Describe what this chest radiograph shows, as a radiology report.',
  'Draft the radiology report (findings and impression) for this image.',
)
FINDINGS_INSTRUCTIONS = (
  'Write the findings section for this chest radiograph.',
  'Describe the findings on this chest X-ray.',
  'What does this chest film show? Give the findings only.',
  'List the radiographic findings of this image, in report style.',
  'Report what you observe on this frontal chest radiograph, without an impression.',
)
IMPRESSION_INSTRUCTIONS = (
  'Give the impression for this chest radiograph.',
  'What is your overall impression of this chest X-ray?',
  'Summarise this chest film as the impression of a radiology report.',
  'State the impression a radiologist would write for this image.',
  'In brief, what is the conclusion from this radiograph?',
)
_SECTION_INSTRUCTIONS = {'both': REPORT_INSTRUCTIONS, 'joined': REPORT_INSTRUCTIONS,
                         'findings': FINDINGS_INSTRUCTIONS,
                         'impression': IMPRESSION_INSTRUCTIONS}
# The same requests about a volume (CT, MRI: RadFM's 3D cases), not a radiograph.
VOLUME_INSTRUCTIONS = {
  'both': ('Write the findings and impression for this scan.',
           'Report on this scan: findings, then impression.',
           'You are reading this study slice by slice. Give the findings and the impression.',
           'Describe what this scan shows, as a radiology report.',
           'Draft the radiology report (findings and impression) for this volume.'),
  'findings': ('Write the findings section for this scan.',
               'Describe the findings in this volume.',
               'What does this study show? Give the findings only.',
               'List the findings of this scan, in report style.',
               'Report what you observe across these slices, without an impression.'),
  'impression': ('Give the impression for this scan.',
                 'What is your overall impression of this study?',
                 'Summarise this volume as the impression of a radiology report.',
                 'State the impression a radiologist would write for this scan.',
                 'In brief, what is the conclusion from this study?'),
}
VOLUME_INSTRUCTIONS['joined'] = VOLUME_INSTRUCTIONS['both']


def _is_volume(example: dict) -> bool:
  return any(image.get('kind') == '3d' for image in example.get('images') or []
             if isinstance(image, dict))


def report_answer(example: dict, section: str = 'both') -> str | None:
  """The report text of `section`; 'both' is 'Findings: ...\\nImpression: ...' (either
  line alone when the other section is empty), 'joined' the two texts after each other,
  unlabelled (LLM-CXR's stage 1). None when there is nothing to write."""
  report = example.get('report') or {}
  findings = (report.get('findings') or '').strip()
  impression = (report.get('impression') or '').strip()
  if section == 'findings':
    return findings or None
  if section == 'impression':
    return impression or None
  if section == 'joined':
    return ' '.join(t for t in (findings, impression) if t) or None
  parts = ([f'Findings: {findings}'] if findings else []) + (
    [f'Impression: {impression}'] if impression else [])
  return '\n'.join(parts) or None


def report(example: dict, rng: np.random.Generator | None, options: Options) -> list | None:
  """The user asks for a report; the answer is the section(s) options.report_section names."""
  answer = report_answer(example, options.report_section)
  if answer is None:
    return None
  # One rng.integers(len(variants)) draw, as the report template always drew.
  wordings = VOLUME_INSTRUCTIONS if _is_volume(example) else _SECTION_INSTRUCTIONS
  return _qa(_pick(wordings[options.report_section], rng), answer)


def report_text(example: dict, rng: np.random.Generator | None, options: Options) -> list | None:
  """The report alone, no user turn: XrayGPT's stage 1 (the image straight before the
  caption) and the 'lm' task's plain text."""
  del rng
  answer = report_answer(example, options.report_section)
  return None if answer is None else [{'role': 'assistant', 'text': answer}]


# ---- classification and vqa ---------------------------------------------------------

# The 13 CheXpert pathologies in their fixed answer order ('No Finding' is the absence
# of all of them, not a finding to name).
PATHOLOGIES = tuple(o for o in schema.CHEXPERT_OBSERVATIONS if o != 'No Finding')

CLASSIFICATION_QUESTIONS = (
  'Which abnormalities does this chest radiograph show?',
  'List the abnormal findings on this chest X-ray.',
  'Name every pathology you can see in this image.',
  'What abnormalities are present on this film, if any?',
  'Classify this chest radiograph: which findings does it have?',
  'Is anything abnormal on this X-ray? Name the findings.',
)
# Text up to the colon is ignored by the classification parser; keep one colon.
CLASSIFICATION_ANSWERS = (
  'Abnormalities seen: {}.',
  'Findings present: {}.',
  'This radiograph shows: {}.',
  'Positive findings: {}.',
  'The image has the following: {}.',
)
# Each begins with "No" so the parser reads it as asserting no label.
CLASSIFICATION_NONE = (
  'No abnormality is seen.',
  'No abnormal findings on this radiograph.',
  'No pathology is visible on this chest X-ray.',
  'No disease is identified in this image.',
  'No abnormalities.',
)


def _positive(value, options: Options) -> bool:
  return value == 1 or (value == -1 and options.uncertain_as == 1)


def positive_labels(example: dict, options: Options) -> list[str]:
  """The pathologies an answer names, in PATHOLOGIES order (absent counts as 0)."""
  labels = example.get('labels') or {}
  return [o for o in PATHOLOGIES if _positive(labels.get(o), options)]


def classification(example: dict, rng: np.random.Generator | None,
                   options: Options) -> list | None:
  """Which of the 13 CheXpert pathologies are present (RadVLM's abnormality classification)."""
  if not example.get('labels'):
    return None
  question = _pick(CLASSIFICATION_QUESTIONS, rng)
  positives = positive_labels(example, options)
  if positives:
    return _qa(question, _pick(CLASSIFICATION_ANSWERS, rng).format(_join(positives)))
  return _qa(question, _pick(CLASSIFICATION_NONE, rng))


# How each observation reads inside a question.
OBSERVATION_PHRASES = {
  'Enlarged Cardiomediastinum': 'an enlarged cardiomediastinum',
  'Cardiomegaly': 'cardiomegaly',
  'Lung Opacity': 'a lung opacity',
  'Lung Lesion': 'a lung lesion',
  'Edema': 'pulmonary edema',
  'Consolidation': 'consolidation',
  'Pneumonia': 'pneumonia',
  'Atelectasis': 'atelectasis',
  'Pneumothorax': 'a pneumothorax',
  'Pleural Effusion': 'a pleural effusion',
  'Pleural Other': 'a pleural abnormality other than effusion',
  'Fracture': 'a fracture',
  'Support Devices': 'a support device',
}
VQA_QUESTIONS = (
  'Is there {} on this chest radiograph?',
  'Does this chest X-ray show {}?',
  'Can you see {} in this image?',
  'Do you find {} on this film?',
  'Would you report {} on this radiograph?',
)
VQA_ANSWERS = {True: 'Yes.', False: 'No.'}


def vqa(example: dict, rng: np.random.Generator | None, options: Options) -> list | None:
  """Closed yes/no questions about observations the labels state (options.vqa_questions
  of them, distinct; fewer when the labels state fewer)."""
  labels = example.get('labels') or {}
  known = [o for o in PATHOLOGIES if o in labels]
  if not known:
    return None
  k = min(options.vqa_questions, len(known))
  if rng is None:
    asked = known[:k]
  else:
    asked = [known[i] for i in rng.choice(len(known), size=k, replace=False)]
  turns = []
  for obs in asked:
    question = _pick(VQA_QUESTIONS, rng).format(OBSERVATION_PHRASES[obs])
    turns += _qa(question, VQA_ANSWERS[_positive(labels[obs], options)])
  return turns


# ---- grounding -----------------------------------------------------------------------

# Chest ImaGenome's bounding-box regions (anatomical_grounding serves boxes labelled so).
ANATOMICAL_REGIONS = (
  'right lung', 'right upper lung zone', 'right mid lung zone', 'right lower lung zone',
  'right hilar structures', 'right apical zone', 'right costophrenic angle',
  'right cardiophrenic angle', 'right hemidiaphragm', 'right clavicle', 'right atrium',
  'right upper abdomen', 'right cardiac silhouette',
  'left lung', 'left upper lung zone', 'left mid lung zone', 'left lower lung zone',
  'left hilar structures', 'left apical zone', 'left costophrenic angle',
  'left cardiophrenic angle', 'left hemidiaphragm', 'left clavicle', 'left upper abdomen',
  'left cardiac silhouette',
  'trachea', 'carina', 'spine', 'aortic arch', 'descending aorta', 'mediastinum',
  'upper mediastinum', 'svc', 'cavoatrial junction', 'cardiac silhouette', 'abdomen',
)
_REGIONS = frozenset(ANATOMICAL_REGIONS)


def _region(label: str) -> str | None:
  name = ' '.join((label or '').lower().split())
  return name if name in _REGIONS else None


def format_box(coords) -> str:
  """'[x1, y1, x2, y2]' with 2 decimals. A box thinner than 0.01 would round to zero
  width (which the grounding parser rejects), so its edges round outwards instead."""
  x1, y1, x2, y2 = (round(float(c), 2) for c in coords)
  if x2 <= x1:
    x1, x2 = np.floor(coords[0] * 100) / 100, np.ceil(coords[2] * 100) / 100
  if y2 <= y1:
    y1, y2 = np.floor(coords[1] * 100) / 100, np.ceil(coords[3] * 100) / 100
  return '[' + ', '.join(f'{c:.2f}' for c in (x1, y1, x2, y2)) + ']'


def format_boxes(boxes: list[dict]) -> str:
  return _join([format_box(b['box']) for b in boxes])


def _grounding_boxes(example: dict) -> list[dict] | None:
  """The boxes the grounding tasks answer with, or None for a record with a 3D image:
  their answers and the grounding metrics are 2D ([x1, y1, x2, y2] on a radiograph), so
  a volume's 6-number boxes are not served (the record counts as having no task)."""
  if _is_volume(example):
    return None
  return [b for b in example.get('boxes') or [] if len(b.get('box') or ()) == 4]


def _groups(boxes: list[dict] | None,
            key: Callable[[dict], str | None]) -> dict[str, list[dict]]:
  """Boxes by key, keys in order of first appearance; boxes whose key is None dropped."""
  out: dict[str, list[dict]] = {}
  for b in boxes or ():
    k = key(b)
    if k:
      out.setdefault(k, []).append(b)
  return out


def _abnormal(box: dict) -> str | None:
  label = (box.get('label') or '').strip()
  return label if label and _region(label) is None else None


ANATOMY_QUESTIONS = (
  'Where is the {} on this chest radiograph?',
  'Locate the {} in this image.',
  'Give the bounding box of the {} on this X-ray.',
  'Show me where the {} is on this film.',
  'Mark the {} on this chest X-ray with a box.',
)
ANATOMY_ANSWERS = (
  'The {} is at {}.',
  'The {} lies at {}.',
  'Box of the {}: {}.',
  'You can find the {} at {}.',
  'The {} occupies {}.',
)


def anatomical_grounding(example: dict, rng: np.random.Generator | None,
                         options: Options) -> list | None:
  """One anatomical region (a Chest ImaGenome box label) and its box(es)."""
  del options
  groups = _groups(_grounding_boxes(example), lambda b: _region(b.get('label')))
  if not groups:
    return None
  region = _pick(tuple(groups), rng)
  question = _pick(ANATOMY_QUESTIONS, rng).format(region)
  return _qa(question, _pick(ANATOMY_ANSWERS, rng).format(region, format_boxes(groups[region])))


ABNORMALITY_QUESTIONS = (
  'Where is the {} on this chest radiograph?',
  'Locate {} on this chest X-ray and give its coordinates.',
  'Draw a box around each area of {} in this image.',
  'Find {} on this film: where is it?',
  'Give the bounding boxes of {} on this radiograph.',
)
ABNORMALITY_ANSWERS = (
  '{} at {}.',
  '{} is located at {}.',
  '{}: {}.',
  'The image shows {} at {}.',
  'Boxes for {}: {}.',
)


def abnormality_grounding(example: dict, rng: np.random.Generator | None,
                          options: Options) -> list | None:
  """One finding class among the boxes (not anatomical regions) and all its boxes."""
  del options
  groups = _groups(_grounding_boxes(example), _abnormal)
  if not groups:
    return None
  label = _pick(tuple(groups), rng)
  question = _pick(ABNORMALITY_QUESTIONS, rng).format(label)
  return _qa(question,
             _pick(ABNORMALITY_ANSWERS, rng).format(label, format_boxes(groups[label])))


PHRASE_QUESTIONS = (
  'Locate this finding on the radiograph: "{}"',
  'Where in the image is the following described? "{}"',
  'Give the bounding box for: "{}"',
  'Which region does this report phrase refer to? "{}"',
  'Show where "{}" is on this chest X-ray.',
)
# No class names here: the parser gives an unnamed box the row's one reference class.
PHRASE_ANSWERS = (
  'It is at {}.',
  'At {}.',
  'This refers to {}.',
  'The described area is {}.',
  'Coordinates: {}.',
)


def phrase_grounding(example: dict, rng: np.random.Generator | None,
                     options: Options) -> list | None:
  """A box's phrase quoted by the user; the answer gives the box(es) with that phrase."""
  del options
  groups = _groups(_grounding_boxes(example), lambda b: ' '.join((b.get('phrase') or '').split()))
  if not groups:
    return None
  phrase = _pick(tuple(groups), rng)
  question = _pick(PHRASE_QUESTIONS, rng).format(phrase)
  return _qa(question, _pick(PHRASE_ANSWERS, rng).format(format_boxes(groups[phrase])))


DETECTION_QUESTIONS = (
  'Find every abnormality on this chest radiograph and give its location.',
  'Detect the findings on this X-ray, with bounding boxes.',
  'Which abnormalities are present here, and where? Give boxes.',
  'Mark each abnormal area on this image and name it.',
  'List the findings of this radiograph with their coordinates.',
)
DETECTION_ANSWERS = (
  '{}.',
  'Detected: {}.',
  'Abnormalities and their locations: {}.',
  'This radiograph shows {}.',
  'Findings with boxes: {}.',
)
DETECTION_NONE = (
  'No abnormality is seen on this radiograph.',
  'No abnormal findings to mark.',
  'No lesion or other abnormality is visible.',
  'No abnormalities: nothing to box.',
  'No disease is detected in this image.',
)


def detection(example: dict, rng: np.random.Generator | None, options: Options) -> list | None:
  """All boxes of all finding classes ('Class [..] and [..]; Other [..]'), or a no-finding
  answer for an Example labelled No Finding with no boxes. Without boxes and not known
  normal (e.g. a finding that has a label but no box) there is nothing right to say."""
  del options
  groups = _groups(_grounding_boxes(example), _abnormal)
  question = _pick(DETECTION_QUESTIONS, rng)
  if groups:
    listed = '; '.join(f'{label} {format_boxes(b)}' for label, b in groups.items())
    return _qa(question, _pick(DETECTION_ANSWERS, rng).format(listed))
  if ((example.get('labels') or {}).get('No Finding') == 1 and not example.get('boxes')
      and _grounding_boxes(example) is not None):
    return _qa(question, _pick(DETECTION_NONE, rng))
  return None


# ---- conversations -------------------------------------------------------------------


# ---- images as VQ-GAN codes (LLM-CXR) --------------------------------------------------
# The Example's `codes` (one image's codebook indices, written by a trained codec) become
# tokens of the decoder's own vocabulary (radjax/data/chat.py render_codes), so one LLM
# reads and draws chest X-rays with no vision tower.

CODES_READ_QUESTIONS = (
  '{}\nWrite the radiology report for this chest X-ray.',
  '{}\nDescribe the findings of this radiograph.',
  'Here is a chest X-ray: {}\nWhat does it show?',
  '{}\nRead this chest radiograph and report on it.',
  'Report on the following chest film. {}',
)
CODES_DRAW_QUESTIONS = (
  'Generate a chest X-ray that matches this report: {}',
  'Draw the chest radiograph described here: {}',
  'Create a frontal chest X-ray for the following findings. {}',
  'Produce an image consistent with this report: {}',
  'Synthesise the chest film this report describes: {}',
)


def _codes(example: dict, options: Options) -> str | None:
  codes = example.get('codes')
  if not codes or not options.codebook_size:
    return None
  return chat.render_codes(codes, options.codebook_size, example.get('id', ''),
                           options.num_codes)


def report_from_codes(example: dict, rng: np.random.Generator | None,
                      options: Options) -> list | None:
  """LLM-CXR's CXR -> report: the image as code tokens, the report as the answer."""
  codes, answer = _codes(example, options), report_answer(example, options.report_section)
  if codes is None or not answer:
    return None
  return _qa(_pick(CODES_READ_QUESTIONS, rng).format(codes), answer)


def codes_from_report(example: dict, rng: np.random.Generator | None,
                      options: Options) -> list | None:
  """LLM-CXR's report -> CXR: the report in the question, the codes as the answer."""
  codes, text = _codes(example, options), report_answer(example, options.report_section)
  if codes is None or not text:
    return None
  return _qa(_pick(CODES_DRAW_QUESTIONS, rng).format(text), codes)


# ---- text only: a report's findings -> its impression (LLM-CXR's text share on the demo) --

IMPRESSION_FROM_FINDINGS_QUESTIONS = (
  'Here are the findings of a chest X-ray report:\n{}\nWrite the impression.',
  'Summarise these radiology findings as an impression: {}',
  'Findings: {}\nWhat is the impression?',
  'A radiologist wrote these findings. Give the matching impression. {}',
  'Turn the following findings into a one-line conclusion. {}',
)


def impression_from_findings(example: dict, rng: np.random.Generator | None,
                             options: Options) -> list | None:
  """Text only: the report's findings in the question, its impression as the answer (no
  image is shown or needed; a VLM's processor still drops none, so use it with a decoder)."""
  del options
  report = example.get('report') or {}
  findings = (report.get('findings') or '').strip()
  impression = (report.get('impression') or '').strip()
  if not findings or not impression:
    return None
  return _qa(_pick(IMPRESSION_FROM_FINDINGS_QUESTIONS, rng).format(findings), impression)


def _copy_turns(turns: list[dict]) -> list[dict] | None:
  """Fresh turn dicts, or None unless the turns end with a non-empty assistant answer."""
  if not turns or turns[-1].get('role') != 'assistant' or not turns[-1].get('text', '').strip():
    return None
  return [{'role': t['role'], 'text': t['text']} for t in turns]


def conversation(example: dict, rng: np.random.Generator | None,
                 options: Options) -> list | None:
  """The Example's own conversation (system turns and image marks kept), unchanged."""
  del rng, options
  return _copy_turns(example.get('conversation') or [])


def instruction(example: dict, rng: np.random.Generator | None,
                options: Options) -> list | None:
  """Text-only instruction following (e.g. dolly): the conversation of an Example
  without images."""
  del rng, options
  if example.get('images'):
    return None
  return _copy_turns(example.get('conversation') or [])


# ---- choosing a task -----------------------------------------------------------------

Task = Callable[[dict, np.random.Generator | None, Options], list[dict] | None]
TASKS: dict[str, Task] = {
  'report': report,
  'report_text': report_text,
  'classification': classification,
  'anatomical_grounding': anatomical_grounding,
  'abnormality_grounding': abnormality_grounding,
  'phrase_grounding': phrase_grounding,
  'detection': detection,
  'conversation': conversation,
  'vqa': vqa,
  'instruction': instruction,
  'report_from_codes': report_from_codes,
  'codes_from_report': codes_from_report,
  'impression_from_findings': impression_from_findings,
}


def check_tasks(tasks, key: str = 'config.data.tasks') -> tuple[str, ...]:
  """`tasks` as a tuple of known names; else a ValueError naming `key`."""
  if isinstance(tasks, str):
    tasks = (tasks,)
  tasks = tuple(tasks or ())
  if not tasks:
    raise ValueError(f'{key}: empty; choose from {sorted(TASKS)}')
  unknown = [t for t in tasks if t not in TASKS]
  if unknown:
    raise ValueError(f'{key}: unknown {unknown}; known: {sorted(TASKS)}')
  return tasks


def served(example: dict, tasks: tuple[str, ...], options: Options) -> list[tuple]:
  """[(task, its eval turns)] of the `tasks` this Example can serve, in order; a dry run
  at rng=None, so the rng is untouched. None served: schema.NoTask (dropped, counted)."""
  tasks = check_tasks(tasks)
  out = [(t, turns) for t in tasks if (turns := TASKS[t](example, None, options))]
  if not out:
    raise schema.NoTask(
      f"record {example.get('id')!r}: serves none of the tasks {list(tasks)} (its "
      "dataset's: config.data.tasks, or its mixture component's tasks); dropped")
  return out


def draw(example: dict, served_tasks: list[tuple], rng: np.random.Generator | None,
         options: Options) -> list[dict]:
  """The turns of one of `served_tasks` drawn uniformly with `rng` (None: the first), or,
  with options.task_per_record, the one the record's id picks. With one task the rng only
  draws its wording (the report stream stays as the report template drew it)."""
  if rng is None:
    return served_tasks[0][1]
  pick = 0
  if len(served_tasks) > 1 and options.task_per_record:
    pick = zlib.crc32(str(example.get('id', '')).encode()) % len(served_tasks)
  elif len(served_tasks) > 1:
    pick = int(rng.integers(len(served_tasks)))
  return TASKS[served_tasks[pick][0]](example, rng, options)


def make_turns(example: dict, tasks: tuple[str, ...], rng: np.random.Generator | None,
               options: Options) -> list[dict]:
  """The turns of one task drawn uniformly with `rng` among the `tasks` this Example can
  serve (rng None: the first that can). Deterministic given the rng's state."""
  return draw(example, served(example, tasks, options), rng, options)


def reference(turns: list[dict]) -> tuple[list[dict], str]:
  """(prompt turns, answer): the final assistant turn split off, for evaluation."""
  if not turns or turns[-1].get('role') != 'assistant':
    raise ValueError('turns: the last turn is not an assistant answer')
  return [dict(t) for t in turns[:-1]], turns[-1]['text']
