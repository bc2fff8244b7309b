"""Images as VQ-GAN codes in a decoder's vocabulary (LLM-CXR): the tokenizer gains the
delimiters and one token per code, both directions' tasks, the loss on the drawn codes,
and constrained generation's code range (radjax/data/chat.py, instructions.py)."""
import dataclasses

import numpy as np
import pytest

from radjax.data import chat, instructions, schema
from tests.conftest import bpe_tokenizer

K = 37  # an odd codebook size


@pytest.fixture(scope='module')
def tokenizer():
  return bpe_tokenizer('dolly', images=False, codebook_size=K)


EXAMPLE = schema.make_example(id='c1', codes=[0, 5, 36, 5, 17, 2],
                              report={'findings': 'Small left pleural effusion.',
                                      'impression': ''})
OPTIONS = instructions.Options(codebook_size=K, report_section='findings')


def test_code_tokens_are_contiguous_single_ids(tokenizer):
  first, end = chat.code_ids(tokenizer, K)
  assert end - first == K
  text = chat.render_codes(EXAMPLE['codes'], K)
  ids = tokenizer.encode(text, add_special_tokens=False)
  begin, close = (tokenizer.convert_tokens_to_ids(t) for t in (chat.IMAGE_BEGIN, chat.IMAGE_END))
  assert ids == [begin] + [first + c for c in EXAMPLE['codes']] + [close]
  with pytest.raises(schema.SchemaError, match="record 'x'.*outside the codebook"):
    chat.render_codes([3, K], K, 'x')


def test_both_directions_and_loss_on_the_drawn_codes(tokenizer):
  first, end = chat.code_ids(tokenizer, K)
  enc = chat.ConversationEncoder(tokenizer, chat.get_format('dolly'))
  draw = instructions.codes_from_report(EXAMPLE, None, OPTIONS)
  assert 'Small left pleural effusion.' in draw[0]['text']
  ids, w = map(np.asarray, enc.encode(draw, 0, 'c1'))
  codes = (ids >= first) & (ids < end)
  np.testing.assert_array_equal(ids[codes] - first, EXAMPLE['codes'])
  assert (w[codes] == 1).all()  # the drawn image is what the model learns
  read = instructions.report_from_codes(EXAMPLE, None, OPTIONS)
  assert read[1]['text'] == 'Small left pleural effusion.'
  ids, w = map(np.asarray, enc.encode(read, 0, 'c1'))
  codes = (ids >= first) & (ids < end)
  assert codes.sum() == len(EXAMPLE['codes']) and (w[codes] == 0).all()  # read, not learnt


@pytest.mark.parametrize('per_record', [False, True])
def test_a_record_keeps_its_direction_with_task_per_record(per_record):
  """LLM-CXR gives each image one direction for good (index parity): with
  task_options.task_per_record a record's id picks it, the same at every visit and about
  half the records each way; without, each visit draws it."""
  options = dataclasses.replace(OPTIONS, task_per_record=per_record)
  tasks = ('report_from_codes', 'codes_from_report')
  rng = np.random.default_rng(0)
  drawn = {}
  for i in range(200):
    ex = dict(EXAMPLE, id=f'dicom-{i}')
    served = instructions.served(ex, tasks, options)
    drawn[i] = {instructions.draw(ex, served, rng, options)[1]['text'] ==
                'Small left pleural effusion.' for _ in range(6)}  # True: CXR -> report
  fixed = [d for d in drawn.values() if len(d) == 1]
  if per_record:
    assert len(fixed) == 200 and 70 < sum(True in d for d in fixed) < 130
  else:
    assert len(fixed) < 20  # six draws of two directions agree 1 time in 32


def test_a_records_direction_is_the_same_in_every_process():
  """task_per_record's pick is a stable hash of the record id (crc32), pinned here: with
  Python's hash(), salted per process (PYTHONHASHSEED), each Grain worker, host and resumed
  run would give a record its own direction, and every image would again train both ways."""
  options = dataclasses.replace(OPTIONS, task_per_record=True)
  tasks = ('report_from_codes', 'codes_from_report')
  got = ''
  for i in range(12):
    ex = dict(EXAMPLE, id=f'dicom-{i}')
    turns = instructions.draw(ex, instructions.served(ex, tasks, options),
                              np.random.default_rng(i), options)
    got += 'R' if turns[1]['text'] == 'Small left pleural effusion.' else 'C'  # R: CXR -> report
  assert got == 'RRRRCCCCRRCC'


def test_records_without_codes_serve_neither_task():
  plain = schema.make_example(id='p', report={'findings': 'Normal.', 'impression': ''})
  with pytest.raises(schema.NoTask):
    instructions.served(plain, ('report_from_codes', 'codes_from_report'), OPTIONS)
  no_codebook = instructions.Options()
  with pytest.raises(schema.NoTask):
    instructions.served(EXAMPLE, ('codes_from_report',), no_codebook)


def test_codes_reports_reads_only_records_with_codes():
  # A record without codes has no image: read from an empty code span, its report would
  # be scored as if the model had seen the image.
  from radjax.eval.evaluators import codes as codes_evaluators
  no_image = schema.make_example(id='n', report={'findings': 'Normal.', 'impression': ''})
  records = [schema.encode(EXAMPLE), schema.encode(no_image)]
  assert [ex['id'] for ex in codes_evaluators.examples_with_codes(records, 2)] == ['c1']
  evaluator = object.__new__(codes_evaluators.CodesReportEvaluator)
  evaluator.codebook_size, evaluator.num_codes = K, len(EXAMPLE['codes'])
  assert '<code_36>' in evaluator.prompt_turns(EXAMPLE)[0]['text']
  short = schema.make_example(id='s', codes=EXAMPLE['codes'][:-1])
  with pytest.raises(schema.SchemaError, match="record 's': codes: 5 codes, but an image has 6"):
    evaluator.prompt_turns(short)
  with pytest.raises(schema.SchemaError, match="record 'n': codes: none"):
    evaluator.prompt_turns(no_image)


def test_decoding_out_of_range_codes_names_the_code_and_the_codec():
  from radjax.eval import llm_cxr
  from radjax.models import vqgan
  codec = object.__new__(llm_cxr.Codec)  # the checks run before any weights are used
  codec.workdir = 'runs/vqgan'
  codec.cfg = vqgan.VQGANConfig(kind='vqgan', image_size=32, channel_mult=(1, 2),
                                codebook_size=K, norm_groups=8, base_channels=8,
                                attn_levels=(1,))
  codes = [[0] * 256, [1] * 255 + [K]]
  with pytest.raises(ValueError, match=rf"code {K} \(image 1, position 255; 1 such\) is "
                                       rf"outside the codebook of {K} of the codec 'runs/vqgan'"):
    codec.decode(codes)
  with pytest.raises(ValueError, match=r'codes of shape \(1, 255\).*256 codes'):
    codec.decode([[0] * 255])


def test_a_record_with_the_wrong_number_of_codes_names_itself_and_its_shard(tokenizer, tmp_path):
  # A record of 5 codes where the codec makes 6 is a data error naming the record and the
  # shard it sits in, never a shorter image the decoder learns to read and draw.
  from data_prep import writer
  from radjax.core import defaults
  from radjax.data import pipeline, processors, source
  options = instructions.Options(codebook_size=K, report_section='findings', num_codes=6)
  assert instructions.codes_from_report(EXAMPLE, None, options)  # 6 codes: fine
  wrong = schema.make_example(id='short', codes=[0, 5, 36, 5, 17],
                              report={'findings': 'Normal.', 'impression': ''})
  for task in (instructions.codes_from_report, instructions.report_from_codes):
    with pytest.raises(schema.SchemaError, match=r"record 'short': codes: 5 codes, but an "
                                                 r'image has 6'):
      task(wrong, None, options)
  with writer.ShardedWriter(str(tmp_path), 'val', 1, validate=lambda ex: None) as w:
    assert w.write({**EXAMPLE, 'split': 'val'}) and w.write({**wrong, 'split': 'val'})
  config = defaults.get_config()
  config.data.dir = str(tmp_path)
  processor = processors.ConversationProcessor(
      chat.ConversationEncoder(tokenizer, chat.get_format('dolly')),
      ('codes_from_report',), options, 256)
  ds = pipeline.eval_dataset(config, processor, 'val', 1, 0, 1)
  assert ds[0]['tokens'].shape == (1, 256)
  with pytest.raises(source.DataError, match=r"val.*array_record.* record 1: record 'short': "
                                             r'codes: 5 codes, but an image has 6'):
    ds[1]


def test_codes_per_image_from_the_config_or_the_codec(tmp_path):
  import json

  from radjax.core import defaults
  from radjax.eval import llm_cxr
  c = defaults.get_config()
  assert llm_cxr.codes_per_image(c) == 0  # no codes read
  c.data.codebook_size = K
  with pytest.raises(ValueError, match='neither config.data.codes_per_image nor config.codec'):
    llm_cxr.codes_per_image(c)
  c.data.codes_per_image = 256
  assert llm_cxr.codes_per_image(c) == 256
  codec = tmp_path / 'codec'  # a codec workdir's config: 64 px, 2 halvings -> 16 x 16
  codec.mkdir()
  (codec / 'config.json').write_text(json.dumps(
      {'model': {'kind': 'vqgan', 'vqgan': {'image_size': 64, 'channel_mult': [1, 2, 2],
                                            'attn_levels': [2]}}}))
  c.codec.workdir = str(codec)
  assert llm_cxr.codes_per_image(c) == 256
  c.data.codes_per_image = 0  # e.g. a workdir trained before the knob: the codec's grid
  assert llm_cxr.codes_per_image(c) == 256
  c.data.codes_per_image = 255
  with pytest.raises(ValueError, match=r'codes_per_image=255 but the codec .* makes 256 '
                                       r'codes \(16 x 16\)'):
    llm_cxr.codes_per_image(c)


def test_llm_cxr_prompts_are_the_trained_variant_0_and_reading_never_writes_codes(tokenizer):
  """Reading and drawing prompts are the tasks' wording variant 0 (what the evaluators and
  generation ask); a read never generates a code or a delimiter; a draw is exactly the
  grid of codes and <image_end>."""
  import types

  from radjax.core import defaults
  from radjax.eval import llm_cxr
  from radjax.eval.decoding import generate as generate_lib
  ex = {**EXAMPLE, 'report': {'findings': 'Small left pleural effusion.', 'impression': ''}}
  read = instructions.report_from_codes(ex, None, OPTIONS)[0]['text']
  assert llm_cxr.read_request(EXAMPLE['codes'], K, 6, 'c1') == [{'role': 'user', 'text': read}]
  draw = instructions.codes_from_report(ex, None, OPTIONS)[0]['text']
  assert llm_cxr.draw_request(' Small left pleural effusion. ') == [
      {'role': 'user', 'text': draw}]
  config = defaults.get_config()
  config.data.codebook_size = K
  answerer = types.SimpleNamespace(encoder=types.SimpleNamespace(tokenizer=tokenizer),
                                   gen_cfg=generate_lib.GenerationConfig(suppress_ids=(3,)))
  codec = types.SimpleNamespace(cfg=types.SimpleNamespace(codebook_size=K), num_codes=6,
                                workdir='codec')
  model = llm_cxr.LlmCxr(types.SimpleNamespace(config=config), answerer, codec)
  first, end = chat.code_ids(tokenizer, K)
  begin, close = (tokenizer.convert_tokens_to_ids(t) for t in (chat.IMAGE_BEGIN, chat.IMAGE_END))
  assert set(model.read_cfg.suppress_ids) == set(range(first, end)) | {begin, close, 3}
  assert model.draw_cfg.image_span == (first, end, 6, close)
  assert model.draw_cfg.max_new_tokens == 7


def test_codes_reports_suppresses_codes_and_reads_the_trained_section(tokenizer, monkeypatch):
  """codes_reports never lets a code or a delimiter into a report, and scores the records
  that have the section the model was trained to write (LLM-CXR stage 2: the impression)."""
  import types

  from radjax.core import defaults
  from radjax.eval.decoding import generate as generate_lib
  from radjax.eval.evaluators import answers
  from radjax.eval.evaluators import codes as codes_evaluators
  monkeypatch.setattr(answers, 'Answerer', lambda exp: types.SimpleNamespace(
      encoder=types.SimpleNamespace(tokenizer=tokenizer),
      gen_cfg=generate_lib.GenerationConfig(suppress_ids=(3,))))
  config = defaults.get_config()
  config.data.dir, config.eval.num_generate = 'unused', 4
  config.data.codebook_size, config.data.codes_per_image = K, 6
  config.data.task_options.report_section = 'impression'
  ev = codes_evaluators.CodesReportEvaluator(types.SimpleNamespace(config=config), 'val')
  first, end = chat.code_ids(tokenizer, K)
  begin, close = (tokenizer.convert_tokens_to_ids(t) for t in (chat.IMAGE_BEGIN, chat.IMAGE_END))
  assert set(ev.answerer.gen_cfg.suppress_ids) == set(range(first, end)) | {begin, close, 3}
  findings_only = schema.make_example(id='f', codes=EXAMPLE['codes'],
                                      report={'findings': 'Effusion.', 'impression': ''})
  impression = schema.make_example(id='i', codes=EXAMPLE['codes'],
                                   report={'findings': '', 'impression': 'Effusion.'})
  ev.records = [schema.encode(findings_only), schema.encode(impression)]
  assert [ex['id'] for ex in ev.examples] == ['i']


def test_codes_loss_names_each_direction_by_the_task_it_reads(monkeypatch):
  """eval/read_* is the loss of report_from_codes (CXR -> report), eval/draw_* that of
  codes_from_report; each direction's processor serves its one task."""
  import dataclasses
  import types

  from radjax.eval.evaluators import codes as codes_evaluators
  from radjax.eval.evaluators import loss

  class Fake:
    def __init__(self, exp, split, name):
      assert (split, name) == ('val', 'codes_loss')
      self.tasks = exp.task.processor()

    def run(self, params, step):
      return {'eval/val_loss': self.tasks, 'eval/val_accuracy': step}

  @dataclasses.dataclass
  class Exp:
    config: object
    task: object

  monkeypatch.setattr(loss, 'LossEvaluator', Fake)
  task = types.SimpleNamespace(processor=lambda tasks=None, kind='': tasks)
  out = codes_evaluators.CodesLossEvaluator(Exp(None, task), 'val').run(None, 3)
  assert out == {'eval/read_loss': ('report_from_codes',), 'eval/read_accuracy': 3,
                 'eval/draw_loss': ('codes_from_report',), 'eval/draw_accuracy': 3}
