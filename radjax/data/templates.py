"""Templates: an Example becomes an instruction and a target text.

The token layout of one turn (ids from the tokenizer's special tokens):
  <s> <|user|> <image>*N "\n" instruction <|end|> <|assistant|> target <|end|> </s>
Only `target <|end|> </s>` carries loss.
"""
import numpy as np

from radjax.data import schema

# Our own wording; one is drawn per training example, the first is used at eval.
REPORT_INSTRUCTIONS = (
    'Write the findings and impression for this chest radiograph.',
    'Report on this chest X-ray: findings, then impression.',
    'You are reading this frontal chest film. Give the findings and the impression.',
    'Describe what this chest radiograph shows, as a radiology report.',
    'Draft the radiology report (findings and impression) for this image.',
)


def report_text(example: dict) -> str:
  report = example.get('report') or {}
  parts = []
  if report.get('findings', '').strip():
    parts.append('Findings: ' + report['findings'].strip())
  if report.get('impression', '').strip():
    parts.append('Impression: ' + report['impression'].strip())
  if not parts:
    raise schema.SchemaError(f"record {example.get('id')!r}: report: empty findings and "
                             'impression; report generation needs a target')
  return '\n'.join(parts)


def report_generation(example: dict, rng: np.random.Generator | None) -> tuple[str, str]:
  """(instruction, target) for report generation; `rng=None` picks the eval wording."""
  i = 0 if rng is None else int(rng.integers(len(REPORT_INSTRUCTIONS)))
  return REPORT_INSTRUCTIONS[i], report_text(example)


def report_only(example: dict, rng: np.random.Generator | None) -> tuple[str, str]:
  """('', report text): plain text for a decoder trained on reports alone."""
  del rng
  return '', report_text(example)


TEMPLATES = {'report_generation': report_generation, 'report_text': report_only}
# The instruction used at evaluation and for generation from bare images.
EVAL_INSTRUCTIONS = {'report_generation': REPORT_INSTRUCTIONS[0], 'report_text': ''}


def get_template(name: str):
  if name not in TEMPLATES:
    raise ValueError(f'config.data.template: {name!r} is not one of {sorted(TEMPLATES)}')
  return TEMPLATES[name]
