"""LLM-CXR's evaluators (a decoder reading and writing images as VQ-GAN codes):

  codes_loss     held-out loss of each direction apart, on the tokens each trains: read
                 (CXR -> report: the report, '\n\n', '### End') and draw (report -> CXR: the
                 codes with their delimiters, '\n\n', '### End'), with token accuracy
  codes_reports  reports generated from held-out images' codes, scored as `reports` is
                 (finding F1 against the labels, BLEU / ROUGE / ...); code tokens suppressed
"""
import dataclasses
import functools

from radjax.data import chat, instructions, schema
from radjax.eval import llm_cxr
from radjax.eval.evaluators import loss, reports

DIRECTIONS = {'read': 'report_from_codes', 'draw': 'codes_from_report'}


class _OneTask:
  """The task with its processor pinned to one instruction task."""

  def __init__(self, task, name: str):
    self._task, self._name = task, name

  def processor(self, tasks=None, kind: str = ''):
    del tasks
    return self._task.processor((self._name,), kind)

  def __getattr__(self, attr):
    return getattr(self._task, attr)


class CodesLossEvaluator:

  def __init__(self, exp, split: str):
    self.parts = {d: loss.LossEvaluator(dataclasses.replace(exp, task=_OneTask(exp.task, t)),
                                        split, 'codes_loss')
                  for d, t in DIRECTIONS.items()}

  def run(self, params, step: int, writer=None, out_dir=None) -> dict:
    out = {}
    for direction, ev in self.parts.items():
      for key, value in ev.run(params, step).items():
        out[key.replace('eval/val_', f'eval/{direction}_')] = value
    return out


def examples_with_codes(records, n: int, section: str = 'both') -> list[dict]:
  """The first n records with a report (of `section`) and an image's codes: a record
  without codes has no image to read (LLM-CXR drops such samples), so it is not scored."""
  return reports.first_examples(
      records, n, lambda ex: bool(ex.get('codes')) and instructions.report_answer(ex, section))


class CodesReportEvaluator(reports.ReportEvaluator):

  @functools.cached_property
  def examples(self) -> list[dict]:
    return examples_with_codes(self.records, self.exp.config.eval.num_generate,
                               self.options.report_section)

  def __init__(self, exp, split: str):
    super().__init__(exp, split, 'codes_reports')
    k = int(exp.config.data.codebook_size)
    self.codebook_size = k
    self.num_codes = llm_cxr.codes_per_image(exp.config)
    tok = self.answerer.encoder.tokenizer
    first, end = chat.code_ids(tok, k)
    image_ids = set(range(first, end)) | {tok.convert_tokens_to_ids(t)
                                          for t in (chat.IMAGE_BEGIN, chat.IMAGE_END)}
    gen = self.answerer.gen_cfg
    self.answerer.gen_cfg = dataclasses.replace(
        gen, suppress_ids=tuple(sorted(set(gen.suppress_ids) | image_ids)))

  def prompt_turns(self, example: dict) -> list[dict]:
    codes = example.get('codes')
    if not codes:
      raise schema.SchemaError(f"record {example.get('id')!r}: codes: none; codes_reports "
                               "reads a report from the image's codes")
    return llm_cxr.read_request(codes, self.codebook_size, self.num_codes, example.get('id'))

  def run(self, params, step: int, writer=None, out_dir=None) -> dict:
    del writer  # no image tower to log inputs from; predictions.jsonl has the texts
    return super().run(params, step, None, out_dir)
