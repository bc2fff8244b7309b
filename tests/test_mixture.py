"""config.data.mixture and the too-long policy in the Grain pipeline, on small synthetic
shards and a trivial processor (radjax/data/mixture.py, pipeline.py, source.py)."""
import logging
import math
import os

import numpy as np
import pytest

from data_prep import writer
from radjax.core import defaults
from radjax.data import mixture, pipeline, schema, source
from radjax.train import examples_seen


def _dataset(path, prefix: int, n: int, too_long=(), split='train', num_shards=2) -> str:
  """n text-only records with ids '<prefix>-<i>'; those in too_long are marked 'LONG'."""
  os.makedirs(path, exist_ok=True)
  with writer.ShardedWriter(path, split, num_shards, validate=lambda ex: None) as w:
    for i in range(n):
      w.write(schema.make_example(id=f'{prefix}-{i}', split=split, report={
          'findings': 'LONG' if i in too_long else 'ok', 'impression': ''}))
  return path


def make_processor(tasks):
  """Records -> {'rid': prefix * 1000 + i, 'ntasks', 'noise', 'truncated'}; 'LONG' ones
  raise schema.TooLong as the real encoder does under too_long='drop'."""

  def process(raw, rng):
    ex = schema.decode(raw)
    if ex['report']['findings'] == 'LONG':
      raise schema.TooLong(f"record {ex['id']!r}: 300 tokens, config.data.max_len=256")
    prefix, i = map(int, ex['id'].split('-'))
    return {'rid': np.int32(prefix * 1000 + i), 'ntasks': np.int32(len(tasks)),
            'noise': np.float32(rng.random() if rng is not None else -1.0),
            'truncated': np.int32(i % 4 == 0)}

  return process


def _config(batch_size=10, **components):
  c = defaults.get_config()
  c.seed = 3
  c.train.batch_size = batch_size
  c.data.tasks = ('report',)
  for name, spec in components.items():
    c.data.mixture[name] = spec
  return c


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp('mix')
  return {'a': _dataset(str(root / 'a'), 1, 30),
          'b': _dataset(str(root / 'b'), 2, 50, too_long={7}),
          'c': _dataset(str(root / 'c'), 3, 20),
          'd': _dataset(str(root / 'd'), 4, 20),
          'long': _dataset(str(root / 'long'), 5, 12, too_long=set(range(12))),
          'val_only': _dataset(str(root / 'val_only'), 6, 5, split='val'),
          'both': _dataset(_dataset(str(root / 'both'), 8, 12), 9, 6, split='val'),
          'empty': _dataset(str(root / 'empty'), 7, 0)}


def _examples(ds, num_batches):
  batches = [ds[i] for i in range(num_batches)]
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _within_binomial(counts, probs, n):
  """Each count within 4 binomial standard deviations (sqrt(n p (1 - p))) of n p: a
  false failure has probability < 1e-4 per component if draws were independent (grain's
  interleaving is deterministic and much closer than that)."""
  for count, p in zip(counts, probs):
    assert abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p)), (counts, probs, n)


def test_three_components_follow_their_weights(dirs):
  config = _config(a=dict(dir=dirs['a'], tasks=('report', 'vqa'), weight=0.5),
                   b=dict(dir=dirs['b'], weight=0.3),
                   c=dict(dir=dirs['c'], tasks=('a', 'b', 'c'), weight=0.2))
  ds = pipeline.train_dataset(config, make_processor, 'train', 0, 1)
  ex = _examples(ds, 120)
  n = len(ex['source'])
  assert n == 1200
  counts = np.bincount(ex['source'], minlength=3)
  _within_binomial(counts, (0.5, 0.3, 0.2), n)
  # `source` is the component (in name order) each example really came from, and each
  # component's processor was built for its own tasks (b: config.data.tasks).
  np.testing.assert_array_equal(ex['rid'] // 1000, ex['source'] + 1)
  np.testing.assert_array_equal(ex['ntasks'], np.array([2, 1, 3])[ex['source']])
  # Every record of every component is reached (b's too-long record 7 never is).
  for i, size in enumerate((30, 50, 20)):
    seen = set(ex['rid'][ex['source'] == i] % 1000)
    assert seen == set(range(size)) - ({7} if i == 1 else set())
  # The loop's host-side counts; to_global would send none of these keys to devices.
  scalars = pipeline.host_scalars(ds[0], ds)
  counts = examples_seen.row_counts(ds[0], mixture.names(config)).sum(0)
  assert counts[0] == sum(counts[1:]) == 10
  assert 0 < scalars['data/truncated'] < 1 and scalars['data/dropped_too_long'] == 1.0
  assert pipeline.to_global(ds[0], {}) == {}


def test_processes_together_read_the_mixture_of_one(dirs):
  """Batch k of a mixture is the same examples (rid and drawn noise) on 1 and 3 processes,
  so a checkpoint's batch index means the same on any count (test_multiprocess.py)."""
  config = _config(batch_size=12, a=dict(dir=dirs['a'], weight=0.5),
                   b=dict(dir=dirs['b'], weight=0.3), c=dict(dir=dirs['c'], weight=0.2))
  one = pipeline.train_dataset(config, make_processor, 'train', 0, 1)
  three = [pipeline.train_dataset(config, make_processor, 'train', i, 3) for i in range(3)]
  for k in (0, 1, 7, 40):
    want = sorted(zip(one[k]['rid'], one[k]['noise']))
    got = sorted(x for ds in three for x in zip(ds[k]['rid'], ds[k]['noise']))
    assert got == want, k


def test_weight_zero_is_size_times_repeat(dirs):
  # a: 30 records, c: 20 records listed 3 times, d: 20 records -> 30 : 60 : 20.
  config = _config(a=dict(dir=dirs['a']), c=dict(dir=dirs['c'], repeat=3),
                   d=dict(dir=dirs['d']))
  ex = _examples(pipeline.train_dataset(config, make_processor, 'train', 0, 1), 55)
  n = len(ex['source'])
  counts = np.bincount(ex['source'], minlength=3)
  _within_binomial(counts, (30 / 110, 60 / 110, 20 / 110), n)
  # Per record: c's are seen 3x as often as d's (same size), a's as often as d's.
  per_record = [counts[i] / size for i, size in enumerate((30, 20, 20))]
  assert per_record[1] == pytest.approx(3 * per_record[2], rel=0.1)
  assert per_record[0] == pytest.approx(per_record[2], rel=0.1)
  # A positive weight is multiplied by repeat too: 1 x 1 : 1 x 3.
  config = _config(a=dict(dir=dirs['a'], weight=1.0), c=dict(dir=dirs['c'], weight=1.0,
                                                             repeat=3))
  ex = _examples(pipeline.train_dataset(config, make_processor, 'train', 0, 1), 40)
  _within_binomial(np.bincount(ex['source'], minlength=2), (0.25, 0.75), 400)


def test_max_records_reads_one_fixed_subset(dirs):
  """RadVLM's num_samples cap: a component with max_records=N reads the same N of its
  records in every epoch and on any process count, and weighs N records by size."""
  config = _config(batch_size=12, a=dict(dir=dirs['a'], max_records=10), d=dict(dir=dirs['d']))
  ex = _examples(pipeline.train_dataset(config, make_processor, 'train', 0, 1), 50)
  kept = set(ex['rid'][ex['source'] == 0])
  assert len(kept) == 10 and kept < {1000 + i for i in range(30)}
  _within_binomial(np.bincount(ex['source'], minlength=2), (1 / 3, 2 / 3), len(ex['source']))
  three = [_examples(pipeline.train_dataset(config, make_processor, 'train', i, 3), 50)
           for i in range(3)]
  assert set().union(*(set(e['rid'][e['source'] == 0]) for e in three)) == kept
  # A cap at or over the size reads every record; a kept record still names its shard.
  comp = mixture.components(config)[0]
  assert mixture.kept_records(comp, 10) is None and len(mixture.kept_records(comp, 30)) == 10
  records = source.open_split(dirs['a'], 'train')
  subset = source.SubsetSource(records, [29])
  assert len(subset) == 1 and subset[0] == records[29]
  assert subset[0].location == records[29].location != ''


def test_splits_train_on_train_and_val_as_one_set(dirs):
  """RadVLM's MS-CXR and PadChest-GR: a component with splits=('train', 'val') reads both
  splits' records, weighs them by their joint size, and caps them together."""
  config = _config(batch_size=12, a=dict(dir=dirs['a']),
                   both=dict(dir=dirs['both'], splits=('train', 'val')))
  ex = _examples(pipeline.train_dataset(config, make_processor, 'train', 0, 1), 40)
  seen = set(ex['rid'][ex['source'] == 1])
  assert seen == {8000 + i for i in range(12)} | {9000 + i for i in range(6)}
  _within_binomial(np.bincount(ex['source'], minlength=2), (30 / 48, 18 / 48), 480)
  # Without `splits` only the run's train split is read.
  config.data.mixture.both.splits = ()
  ex = _examples(pipeline.train_dataset(config, make_processor, 'train', 0, 1), 20)
  assert set(ex['rid'][ex['source'] == 1]) == {8000 + i for i in range(12)}
  # max_records draws from the splits together.
  config.data.mixture.both.splits, config.data.mixture.both.max_records = ('val', 'train'), 9
  ex = _examples(pipeline.train_dataset(config, make_processor, 'train', 0, 1), 40)
  kept = set(ex['rid'][ex['source'] == 1])
  assert len(kept) == 9 and kept < seen


@pytest.mark.parametrize('threads', [0, 2])
def test_mixture_resumes_the_identical_stream(dirs, threads):
  config = _config(batch_size=8, a=dict(dir=dirs['a'], weight=2.0),
                   b=dict(dir=dirs['b'], weight=1.0), c=dict(dir=dirs['c'], weight=1.0))
  config.data.augment = True  # rng draws are part of the stream too

  def fresh():
    return pipeline.make_iterator(pipeline.train_dataset(config, make_processor, 'train', 0, 1),
                                  threads)

  it = fresh()
  for _ in range(7):  # past b's too-long record in b's first epoch
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(12)]
  resumed = fresh()
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  assert len(set(np.concatenate([e['noise'] for e in expected]))) == 12 * 8
  # Components keep their order when another one joins: seeds come from (seed, name).
  config_more = _config(batch_size=8, a=dict(dir=dirs['a'], weight=2.0),
                        b=dict(dir=dirs['b'], weight=1.0), c=dict(dir=dirs['c'], weight=1.0),
                        d=dict(dir=dirs['d'], weight=1.0))
  assert mixture.components(config_more)[0].seed == mixture.components(config)[0].seed


@pytest.mark.parametrize('spec, match', [
    (dict(wieght=1.0), r'config\.data\.mixture\.b\.wieght: unknown key'),
    (dict(weight=1.0), r'config\.data\.mixture\.b\.dir: missing'),
    (dict(dir='/no/such/dir', weight=1.0), r"config\.data\.mixture\.b\.dir: '/no/such/dir'"),
    (dict(dir='A', weight=-0.5), r'config\.data\.mixture\.b\.weight: .*>= 0'),
    (dict(dir='A', weight=0.0), r'config\.data\.mixture\.b\.weight: 0 \(by size\)'),
    (dict(dir='A', weight=1.0, repeat=0), r'config\.data\.mixture\.b\.repeat'),
    (dict(dir='A', weight=1.0, tasks='report'), r'config\.data\.mixture\.b\.tasks'),
    (dict(dir='A', weight=1.0, max_records=-1), r'config\.data\.mixture\.b\.max_records'),
    (dict(dir='val_only', weight=1.0), r'config\.data\.mixture\.b\.dir: no train-\*'),
    (dict(dir='empty', weight=1.0), r'config\.data\.mixture\.b\.dir: .* no records'),
    (dict(dir='A', weight=1.0, splits='val'), r'config\.data\.mixture\.b\.splits'),
    (dict(dir='A', weight=1.0, splits=('train', 'train')), r'mixture\.b\.splits: .*distinct'),
    (dict(dir='A', weight=1.0, splits=('train', 'val')),
     r"config\.data\.mixture\.b\.dir: .* no split 'val'|mixture\.b\.dir: no val-"),
])
def test_a_bad_component_names_its_key(dirs, spec, match):
  if 'dir' in spec:
    spec = {**spec, 'dir': dirs.get(spec['dir'].lower(), spec['dir'])}
  config = _config(a=dict(dir=dirs['a'], weight=1.0), b=spec)
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    pipeline.train_dataset(config, make_processor, 'train', 0, 1)


def test_eval_reads_the_first_component_when_data_dir_is_empty(dirs):
  config = _config(z=dict(dir=dirs['c']), m=dict(dir=dirs['d']))
  assert config.data.dir == '' and mixture.eval_dir(config) == dirs['d']  # 'm' < 'z'
  batch = pipeline.eval_dataset(config, make_processor(('report',)), 'train', 4, 0, 1)[0]
  np.testing.assert_array_equal(batch['rid'] // 1000, 4)
  config.data.dir = dirs['a']
  assert mixture.eval_dir(config) == dirs['a']


def test_eval_uses_the_first_components_tasks_when_data_dir_is_empty(dirs):
  """A VQA-only first component is evaluated on its conversations, not on
  config.data.tasks' reports (which it has none of)."""
  from radjax.tasks import base
  config = _config(z=dict(dir=dirs['c']), m=dict(dir=dirs['d'], tasks=('conversation',)))
  assert mixture.eval_tasks(config) == ('conversation',)
  assert base.conversation_processor(config, None, None).tasks == ('conversation',)
  assert base.conversation_processor(config, None, ('report',)).tasks == ('report',)
  config.data.dir = dirs['a']
  assert mixture.eval_tasks(config) == ('report',)


def test_report_metrics_on_a_split_without_reports_fail_before_training(dirs, tmp_path):
  from radjax.eval import evaluators
  qa = str(tmp_path / 'qa')
  os.makedirs(qa)
  with writer.ShardedWriter(qa, 'val', 1, validate=lambda ex: None) as w:
    for i in range(3):
      w.write(schema.make_example(id=f'q{i}', split='val', conversation=[
          {'role': 'user', 'text': 'Is there an effusion?'}, {'role': 'assistant', 'text': 'No.'}]))
  config = _config(qa=dict(dir=qa, tasks=('conversation',)))
  config.eval.batch_size = 2
  evaluators.check_split(config, 'val', ('loss',))
  with pytest.raises(ValueError, match=r"'reports' but no record of split 'val' of .*qa has a "
                     r'report'):
    evaluators.check_split(config, 'val', ('loss', 'reports'))
  config.data.dir = dirs['a']  # records with reports
  evaluators.check_split(config, 'train', ('loss', 'reports'))


def test_too_long_record_is_dropped_counted_and_resumable(dirs, caplog):
  config = _config(batch_size=4)
  config.data.dir = dirs['b']  # record 7 (of 50, in 2 shards) is too long
  config.data.shuffle = False
  config.data.max_skipped_records = 0  # too-long drops never count against it
  ds = pipeline.train_dataset(config, make_processor, 'train', 0, 1)
  # Records are written round-robin: shard 0 holds ids 0, 2, .., 48, shard 1 ids 1, 3, ..
  # so id 7 is element 28, the first of batch 7.
  with caplog.at_level(logging.INFO):
    batch = ds[7]
  # Element 28 is replaced by the next one that fits (id 9); its neighbours pass.
  np.testing.assert_array_equal(batch['rid'] % 1000, [9, 9, 11, 13])
  np.testing.assert_array_equal(ds[6]['rid'] % 1000, [48, 1, 3, 5])
  log = source.record_log(ds)
  assert list(log.too_long) == [f'{source.split_files(dirs["b"], "train")[1]} record 3']
  assert not log.bad
  ds[7]  # the same record again: still one, logged once
  logged = [r.getMessage() for r in caplog.records if "'2-7'" in r.getMessage()]
  assert len(logged) == 1 and 'max_len' in logged[0]
  assert pipeline.host_scalars(batch, ds)['data/dropped_too_long'] == 1.0
  # Resuming after it continues the same stream.
  it = pipeline.make_iterator(ds, 0)
  next(it)
  state = it.get_state()
  expected = [next(it)['rid'] for _ in range(20)]  # a full epoch and more
  again = pipeline.make_iterator(pipeline.train_dataset(config, make_processor, 'train', 0, 1), 0)
  again.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(again)['rid'], want)


def test_located_too_long_keeps_its_type(dirs):
  records = source.open_split(dirs['b'], 'train')
  raw = next(records[i] for i in range(len(records)) if b'LONG' in records[i])
  with pytest.raises(schema.TooLong) as e:
    source.locate_errors(make_processor(()))(raw, None)
  assert isinstance(e.value, source.DataError) and raw.location in str(e.value)


def test_nothing_fits_is_a_clear_error(dirs, monkeypatch):
  monkeypatch.setattr(source, 'TOO_LONG_IN_A_ROW', 100)  # 1000 by default: a fast test
  config = _config(batch_size=4)
  config.data.dir = dirs['long']
  ds = pipeline.train_dataset(config, make_processor, 'train', 0, 1)
  with pytest.raises(source.DataError,
                     match='100 examples in a row .* config.data.max_len'):
    ds[0]


def test_an_unknown_task_names_its_knob_before_a_record_is_read(demo_data):
  from radjax import run
  from tests.conftest import tiny_config
  config = tiny_config(demo_data)
  config.data.mixture.chexpert = dict(dir=demo_data, tasks=('classificaton',), weight=1.0)
  processor = run.make_task(config).processor
  with pytest.raises(ValueError, match=r"config\.data\.mixture\.chexpert\.tasks: unknown "
                     r"\['classificaton'\]"):
    pipeline.train_dataset(config, processor, 'train', 0, 1)
  config = tiny_config(demo_data)
  config.data.tasks = ('report', 'reprot')
  with pytest.raises(ValueError, match=r"config\.data\.tasks: unknown \['reprot'\]"):
    pipeline.train_dataset(config, run.make_task(config).processor, 'train', 0, 1)


def test_a_mixture_without_a_data_dir_builds_nothing_in_its_place(demo_data, tmp_path,
                                                                   monkeypatch):
  """README's mixture recipe sets config.data.dir = '' on a recipe whose data.builder is
  the demo's: main.py must not build the demo into '' (the working directory)."""
  import main as main_lib
  from tests.conftest import tiny_config
  config = tiny_config(demo_data)
  config.data.dir, config.data.builder = '', 'demo'
  config.data.mixture.a = dict(dir=demo_data, weight=1.0)
  monkeypatch.chdir(tmp_path)
  main_lib.ensure_data(config)
  assert os.listdir(tmp_path) == []


def test_the_first_component_is_checked_before_its_tokenizer_is_read(demo_data, tmp_path):
  """With config.data.dir = '' (the README's mixture) the tokenizer comes from the first
  component: a missing dir, a spec that is no dict, or a misspelt builder is named by its
  knob, not reported as a missing tokenizer.json or an AttributeError."""
  import main as main_lib
  from radjax import run
  from tests.conftest import tiny_config
  config = tiny_config(demo_data)
  config.data.dir, config.data.builder = '', ''
  config.data.mixture.a = dict(dir=str(tmp_path / 'nowhere'), weight=1.0)
  with pytest.raises(FileNotFoundError, match=r"config\.data\.mixture\.a\.dir: '.*nowhere' "
                                              'is not a directory'):
    run.make_task(config)
  config.data.mixture.a = dict(dir=demo_data, kind='3d')
  with pytest.raises(ValueError, match=r"config\.data\.mixture\.a\.kind: '3d'"):
    run.make_task(config)
  config.data.mixture.a = dict(dir=str(tmp_path / 'new'), builder='demoo')
  with pytest.raises(ValueError, match=r"config\.data\.mixture\.a\.builder: 'demoo' is no "
                                       'module of data_prep'):
    main_lib.ensure_data(config)
  with config.unlocked():
    config.data.mixture.b = '/a/path'
  with pytest.raises(ValueError, match=r'config\.data\.mixture\.b: expected dict'):
    main_lib.ensure_data(config)


def test_a_negative_target_cap_is_refused(demo_data):
  from radjax.core import config_checks
  from tests.conftest import tiny_config
  config = tiny_config(demo_data)
  config.data.max_target_tokens = -5
  assert 'config.data.max_target_tokens=-5 must be >= 0' in config_checks.errors(config)


@pytest.mark.parametrize('truncate_helps', [True, False])
def test_the_nothing_fits_hint_offers_truncation_only_where_it_helps(monkeypatch,
                                                                      truncate_helps):
  import grain
  monkeypatch.setattr(source, 'TOO_LONG_IN_A_ROW', 5)

  def too_long(i):
    raise schema.TooLong(f'record {i}: the prompt alone does not fit', truncate_helps)

  ds = source.skip_records(grain.MapDataset.range(10).map(too_long),
                           source.RecordLog(limit=0))
  with pytest.raises(source.DataError, match='raise config.data.max_len') as e:
    ds[0]
  assert ("too_long='truncate'" in str(e.value)) == truncate_helps


def test_component_orders_and_subsets_follow_the_seed_and_the_name():
  """A component's shuffle seed and its max_records subset are functions of config.seed
  and its name: another run seed, or another name, gives another order and subset."""
  seeds = {mixture.component_seed(s, n) for s in (0, 1) for n in ('a', 'b')}
  assert len(seeds) == 4

  def kept(seed, name):
    comp = mixture.Component(name, '', ('report',), 0.0, 1, mixture.component_seed(seed, name),
                             max_records=10)
    return tuple(mixture.kept_records(comp, 1000))
  assert kept(0, 'a') == kept(0, 'a')
  assert len({kept(0, 'a'), kept(1, 'a'), kept(0, 'b')}) == 3
