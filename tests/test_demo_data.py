"""Tests for the embedded demo dataset: schema, writer, builder, tokenizer, renderer,
report composer and the OpenI parser. Small sizes; the whole file runs in ~30 s."""

from __future__ import annotations

import io
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from data_prep import build as build_lib
from data_prep import cxr_renderer, demo, openi_reports, report_composer, writer
from data_prep import tokenizer as tokenizer_lib
from radjax.data import schema, source, tokens

SMALL = dict(num_train=40, num_val=8, num_test=8)


def _png(value: int = 128, size: int = 16) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format='PNG')
  return buf.getvalue()


def _example(**overrides) -> dict:
  fields = dict(
    id='ex-1',
    source='test',
    split='train',
    images=[{'data': _png(), 'format': 'png', 'kind': '2d', 'spacing': None}],
    report={'findings': 'Heart size is normal.', 'impression': 'No acute disease.'},
    labels={'No Finding': 1, 'Cardiomegaly': 0},
    boxes=[{'box': [0.1, 0.2, 0.3, 0.4], 'label': 'Lung Lesion', 'phrase': 'nodule'}],
  )
  fields.update(overrides)
  return schema.make_example(**fields)


def _all_records(out_dir: str, split: str) -> list[bytes]:
  files = source.split_files(out_dir, split)
  return [r for f in files for r in writer.read_records(f)]


def _rejects(out_dir: str) -> list[dict]:
  with open(os.path.join(out_dir, 'rejects.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def built(tmp_path_factory) -> tuple[str, dict]:
  out = str(tmp_path_factory.mktemp('demo') / 'data')
  return out, demo.build(out, seed=0, num_workers=1, **SMALL)


# --- schema -----------------------------------------------------------------


def test_schema_round_trip():
  ex = _example(codes=[1, 2, 3], conversation=[{'role': 'user', 'text': '<image> Describe.'}])
  schema.validate(ex)
  assert schema.decode(schema.encode(ex)) == ex
  assert ex['schema_version'] == schema.SCHEMA_VERSION
  assert len(schema.CHEXPERT_OBSERVATIONS) == 14


def test_decode_rejects_wrong_version_and_missing_key():
  ex = _example(id='old-1')
  ex['schema_version'] = 0
  with pytest.raises(schema.SchemaError, match=r"'old-1'.*schema_version"):
    schema.decode(schema.encode(ex))
  ex = _example(id='nokey-1')
  del ex['labels']
  with pytest.raises(schema.SchemaError, match=r"'nokey-1'.*labels: missing"):
    schema.decode(schema.encode(ex))


@pytest.mark.parametrize(
  'overrides, pattern',
  [
    (
      {'images': [{'data': _png()[:40], 'format': 'png', 'kind': '2d', 'spacing': None}]},
      r"record 'bad-1': images\[0\]\.data: does not decode",
    ),
    (
      {'images': [{'data': b'not an npy', 'format': 'npy', 'kind': '3d', 'spacing': None}]},
      r"record 'bad-1': images\[0\]\.data",
    ),
    ({'report': {'findings': '', 'impression': ' '}}, r"record 'bad-1': report: .*empty"),
    (
      {'boxes': [{'box': [0.5, 0.1, 0.4, 0.2], 'label': 'x', 'phrase': ''}]},
      r"record 'bad-1': boxes\[0\]\.box",
    ),
    (
      {'boxes': [{'box': [0.1, 0.1, 1.2, 0.2], 'label': 'x', 'phrase': ''}]},
      r"record 'bad-1': boxes\[0\]\.box: .*outside",
    ),
    ({'labels': {'Cardiomegaly': 2}}, r"record 'bad-1': labels\['Cardiomegaly'\]: value"),
    ({'labels': {'Heart Big': 1}}, r"record 'bad-1': labels\['Heart Big'\]: unknown"),
    ({'split': 'dev'}, r"record 'bad-1': split"),
    (  # no in-memory file's address (0x...): a reject reason is the same run to run
      {'images': [{'data': b'not an image', 'format': 'png', 'kind': '2d', 'spacing': None}]},
      r"record 'bad-1': images\[0\]\.data: does not decode as png: cannot identify the "
      r"image file \(not a PNG or JPEG\)$",
    ),
  ],
)
def test_validate_rejects_with_id_and_field(overrides, pattern):
  with pytest.raises(schema.SchemaError, match=pattern):
    schema.validate(_example(id='bad-1', **overrides))


def test_validate_edge_cases():
  with pytest.raises(schema.SchemaError, match=r'id: empty'):
    schema.validate(_example(id=''))
  # A conversation stands in for a report; label-only datasets opt out.
  schema.validate(_example(report={}, conversation=[{'role': 'user', 'text': 'hi'}]))
  schema.validate(_example(report={}), require_text=False)
  buf = io.BytesIO()
  np.save(buf, np.zeros((2, 3, 4), np.float16))
  schema.validate(
    _example(
      images=[{'data': buf.getvalue(), 'format': 'npy', 'kind': '3d', 'spacing': [1.0, 1.0, 2.5]}],
      boxes=[],  # a 2D box on a volume is an error (tests/test_schema_boxes_3d.py)
    )
  )


# --- writer -----------------------------------------------------------------


def test_build_dataset_failure_keeps_previous_dataset(tmp_path):
  out = str(tmp_path / 'ds')
  writer.build_dataset(out, {'train': [_example(id='a'), _example(id='b')]})
  before = writer.read_manifest(out)

  def exploding():
    yield _example(id='c')
    raise RuntimeError('crash mid-build')

  with pytest.raises(RuntimeError, match='crash'):
    writer.build_dataset(out, {'train': exploding()})
  assert writer.read_manifest(out) == before
  assert len(_all_records(out, 'train')) == 2
  assert os.listdir(tmp_path) == ['ds']  # no half-written sibling left behind


# --- builder ----------------------------------------------------------------


def test_builder_rejects_corrupt_examples_and_keeps_the_rest(tmp_path):
  def corrupt(ex):
    if ex['id'] == 'demo-train-000003':
      ex['images'][0]['data'] = ex['images'][0]['data'][:100]  # truncated PNG
    elif ex['id'] == 'demo-train-000005':  # nothing to learn: no report, no conversation
      ex['report'] = {'findings': '', 'impression': ''}
      ex['conversation'] = []
    elif ex['id'] == 'demo-val-000001':
      ex['boxes'] = [{'box': [0.9, 0.1, 0.2, 0.5], 'label': 'Lung Lesion', 'phrase': 'x'}]
    return ex

  out = str(tmp_path / 'demo')
  manifest = demo.build(out, seed=0, num_workers=1, corrupt_hook=corrupt, **SMALL)
  reasons = {r['id']: (r['split'], r['reason']) for r in _rejects(out)}
  assert manifest['num_rejects'] == 3
  assert reasons['demo-train-000003'][0] == 'train'
  assert 'images[0].data' in reasons['demo-train-000003'][1]
  assert 'report' in reasons['demo-train-000005'][1]
  assert reasons['demo-val-000001'] == ('val', reasons['demo-val-000001'][1])
  assert 'boxes[0].box' in reasons['demo-val-000001'][1]
  assert manifest['counts'] == {'train': 38, 'val': 7, 'test': 8}
  assert writer.read_manifest(out)['counts'] == manifest['counts']
  for split, n in manifest['counts'].items():
    ids = {schema.decode(r)['id'] for r in _all_records(out, split)}
    assert len(ids) == n
    assert not ids & set(reasons)


def test_built_dataset_contents(built):
  out, manifest = built
  assert manifest['counts'] == {'train': 40, 'val': 8, 'test': 8}
  assert manifest['num_rejects'] == 0 and manifest['seed'] == 0
  assert sorted(os.listdir(out)) == sorted(
    ['dataset_info.json', 'features.json', 'manifest.json', 'rejects.jsonl', 'terms.txt',
     'tokenizer.json']
    + [f'demo-{s}.array_record-00000-of-00001' for s in ('train', 'val', 'test')]
  )
  assert os.path.exists(os.path.join(out, 'tokenizer.json'))
  examples = [schema.decode(r) for r in _all_records(out, 'train')]
  assert {e['id'] for e in examples} == {f'demo-train-{i:06d}' for i in range(40)}
  for ex in examples:
    schema.validate(ex)
    assert ex['source'] == 'demo'
    roles = [t['role'] for t in ex['conversation']]
    assert 4 <= len(roles) <= 8 and roles == ['user', 'assistant'] * (len(roles) // 2)
    img = Image.open(io.BytesIO(ex['images'][0]['data']))
    assert img.mode == 'L' and img.size[0] == img.size[1]
    assert cxr_renderer.SIZE_RANGE[0] <= img.size[0] <= cxr_renderer.SIZE_RANGE[1]
    for label in schema.DEMO_FINDINGS.values():  # each finding boxed, where present
      boxed = [b for b in ex['boxes'] if b['label'] == label]
      assert bool(boxed) == (ex['labels'][label] == 1), (ex['id'], label)
    assert ex['labels']['No Finding'] == int(
      not any(ex['labels'][o] for o in report_composer.FINDING_TO_OBSERVATION.values())
    )


def test_build_is_deterministic(built, tmp_path):
  out, manifest = built
  again = str(tmp_path / 'again')
  other = str(tmp_path / 'other')
  # Worker processes must not change the bytes.
  demo.build(again, seed=0, num_workers=2, **SMALL)
  demo.build(other, seed=1, num_workers=1, **SMALL)
  for split in ('train', 'val', 'test'):
    assert _all_records(out, split) == _all_records(again, split)
    assert _all_records(out, split) != _all_records(other, split)
  with (
    open(os.path.join(out, 'tokenizer.json')) as a,
    open(os.path.join(again, 'tokenizer.json')) as b,
  ):
    assert a.read() == b.read()


def test_ensure_built_only_builds_once(built, tmp_path):
  out, manifest = built
  mtime = os.path.getmtime(os.path.join(out, 'manifest.json'))
  assert demo.ensure_built(out, seed=0, **SMALL)['counts'] == manifest['counts']
  assert os.path.getmtime(os.path.join(out, 'manifest.json')) == mtime
  fresh = str(tmp_path / 'fresh')
  assert demo.ensure_built(fresh, seed=0, num_train=4, num_val=1, num_test=1)['counts'] == {
    'train': 4,
    'val': 1,
    'test': 1,
  }


def test_a_build_published_meanwhile_is_reused_not_replaced(built, tmp_path, monkeypatch):
  """Two runs build one config.data.dir at once: the one that finishes second keeps the
  first one's dataset (which that run may already be reading) and returns its manifest."""
  out = str(tmp_path / 'shared')
  prepare = build_lib.prepare

  def another_run_publishes_first(builder, **kwargs):
    built_dir = prepare(builder, **kwargs)
    shutil.copytree(built[0], out)
    return built_dir

  monkeypatch.setattr(build_lib, 'prepare', another_run_publishes_first)
  manifest = demo.ensure_built(out, seed=0, num_train=4, num_val=1, num_test=1)
  assert manifest['counts'] == built[1]['counts'] != {'train': 4, 'val': 1, 'test': 1}
  assert build_lib.read_manifest(out)['counts'] == built[1]['counts']
  assert sorted(os.listdir(tmp_path)) == ['shared']  # its own build removed, no tmp left


def test_build_never_deletes_a_directory_radjax_did_not_create(built, tmp_path):
  mine = tmp_path / 'mine'
  mine.mkdir()
  (mine / 'notes.txt').write_text("a user's file")
  for fn in (demo.build, demo.ensure_built):
    with pytest.raises(FileExistsError, match='not a radjax dataset'):
      fn(str(mine), seed=0, num_train=4, num_val=1, num_test=1)
    assert os.listdir(mine) == ['notes.txt'] and (mine / 'notes.txt').read_text() == "a user's file"
  assert sorted(os.listdir(tmp_path)) == ['mine']  # no tmp sibling left behind
  empty = tmp_path / 'empty'
  empty.mkdir()  # an empty dir holds nothing to lose: built into
  assert demo.ensure_built(str(empty), seed=0, num_train=4, num_val=1, num_test=1)['counts'][
    'train'] == 4
  # A radjax dataset is replaced by build(), atomically, and only by build().
  assert demo.build(str(empty), seed=1, num_train=2, num_val=1, num_test=1)['counts'][
    'train'] == 2
  # Only a demo build holding only what a build writes: a user's file in it, or another
  # dataset's build, stays.
  (empty / 'NOTES.txt').write_text('mine')
  with pytest.raises(FileExistsError, match=r"files a build does not write: \['NOTES.txt'\]"):
    demo.build(str(empty), seed=2, num_train=2, num_val=1, num_test=1)
  (empty / 'NOTES.txt').unlink()
  manifest = json.loads((empty / 'manifest.json').read_text())
  (empty / 'manifest.json').write_text(json.dumps({**manifest, 'dataset': 'nih_chest_xray14'}))
  with pytest.raises(FileExistsError, match="holds a 'nih_chest_xray14' build"):
    demo.build(str(empty), seed=2, num_train=2, num_val=1, num_test=1)
  assert json.loads((empty / 'manifest.json').read_text())['dataset'] == 'nih_chest_xray14'
  assert sorted(os.listdir(tmp_path)) == ['empty', 'mine']  # no tmp sibling left behind


def test_data_prep_show_prints_examples(built):
  out, _ = built
  import subprocess
  import sys
  proc = subprocess.run([sys.executable, '-m', 'data_prep', 'show', out, '--split', 'val',
                         '--limit', '3'], capture_output=True, text=True, check=True)
  rows = [json.loads(line) for line in proc.stdout.splitlines()]
  assert [r['id'] for r in rows] == ['demo-val-000000', 'demo-val-000001', 'demo-val-000002']
  image = rows[0]['images'][0]
  assert image['format'] == 'png' and image['mode'] == 'L' and 'data' not in image
  assert set(rows[0]) >= {'id', 'source', 'split', 'report', 'labels', 'boxes', 'conversation'}


# --- tokenizer --------------------------------------------------------------


def test_tokenizer_specials_and_round_trip(built):
  out, _ = built
  tok = tokens.load_tokenizer(os.path.join(out, 'tokenizer.json'))
  for token, idx in tokenizer_lib.SPECIAL_TOKENS.items():
    assert tok.convert_tokens_to_ids(token) == idx
  assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
  assert tok.encode('<image>', add_special_tokens=False) == [4]
  ids = tok.encode('<image> Describe.', add_special_tokens=False)
  assert ids[0] == 4 and ids.count(4) == 1
  sentence = 'The cardiomediastinal silhouette is within normal limits. No pneumothorax.'
  ids = tok.encode(sentence, add_special_tokens=False)
  assert tok.decode(ids) == sentence and min(ids) > 8
  assert tok.decode(tok.encode('Heart SIZE', add_special_tokens=False)) == 'Heart SIZE'
  for raw in _all_records(out, 'val'):
    report = schema.decode(raw)['report']
    text = report['findings'] + ' ' + report['impression']
    assert min(tok.encode(text, add_special_tokens=False)) > 8


# --- renderer ---------------------------------------------------------------


def test_cardiomegaly_heart_is_wider():
  for seed in range(4):
    normal, meta_n = cxr_renderer.render(np.random.default_rng(seed), set())
    big, meta_c = cxr_renderer.render(np.random.default_rng(seed), {'cardiomegaly'})
    assert normal.shape == big.shape and normal.dtype == np.uint8
    assert meta_n['ctr'] < 0.46 < 0.55 < meta_c['ctr']
    h = normal.shape[0]
    band = slice(int(0.55 * h), int(0.68 * h))  # heart band, above the domes
    threshold = (np.percentile(normal[band], 20) + np.percentile(normal[band], 80)) / 2
    width_n = (normal[band] > threshold).sum(1).mean()
    width_c = (big[band] > threshold).sum(1).mean()
    assert width_c - width_n > 0.05 * h, (seed, width_n, width_c)


def test_nodule_box_is_valid_and_bright():
  for seed in range(6):
    normal, _ = cxr_renderer.render(np.random.default_rng(seed), set())
    image, meta = cxr_renderer.render(np.random.default_rng(seed), {'nodule'})
    (box,) = meta['boxes']
    x1, y1, x2, y2 = box['box']
    assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
    assert box['label'] == 'Lung Lesion' and box['phrase'] in ('nodule', 'mass')
    h, w = image.shape
    # Central half of the box: the lesion should be clearly brighter there.
    cx, cy, rx, ry = (x1 + x2) / 2 * w, (y1 + y2) / 2 * h, (x2 - x1) / 4 * w, (y2 - y1) / 4 * h
    region = (slice(int(cy - ry), int(cy + ry) + 1), slice(int(cx - rx), int(cx + rx) + 1))
    diff = image[region].astype(float).mean() - normal[region].astype(float).mean()
    assert diff > 20, (seed, diff)


@pytest.mark.parametrize('finding,label', [('cardiomegaly', 'Cardiomegaly'),
                                           ('consolidation', 'Consolidation'),
                                           ('pneumothorax', 'Pneumothorax'),
                                           ('pleural_effusion', 'Pleural Effusion')])
def test_finding_boxes_hold_what_the_finding_changed(finding, label):
  """The box targets of the label head (config.data.box_token_labels) come from these."""
  for seed in range(4):
    normal, _ = cxr_renderer.render(np.random.default_rng(seed), set())
    image, meta = cxr_renderer.render(np.random.default_rng(seed), {finding})
    boxes = [b['box'] for b in meta['boxes']]
    assert boxes and all(b['label'] == label for b in meta['boxes'])
    h = image.shape[0]
    inside = np.zeros(image.shape, bool)
    for x1, y1, x2, y2 in boxes:
      assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
      inside[int(y1 * h):int(np.ceil(y2 * h)), int(x1 * h):int(np.ceil(x2 * h))] = True
    changed = np.abs(image.astype(float) - normal.astype(float)) > 40
    assert changed.sum() > 0.002 * h * h, (seed, changed.sum())
    assert changed[inside].sum() >= 0.95 * changed.sum(), (seed, changed[inside].sum(),
                                                          changed.sum())
    assert inside.sum() < 0.5 * h * h  # a box, not the whole image


def test_render_is_deterministic_and_fast_enough():
  a, meta_a = cxr_renderer.render(np.random.default_rng(3), {'pleural_effusion', 'nodule'})
  b, meta_b = cxr_renderer.render(np.random.default_rng(3), {'pleural_effusion', 'nodule'})
  assert np.array_equal(a, b) and meta_a == meta_b
  with pytest.raises(ValueError, match=r"unknown findings \['fracture'\]"):
    cxr_renderer.render(np.random.default_rng(0), {'fracture'})


# --- report composer --------------------------------------------------------


def test_report_sentences_agree_with_findings():
  pools = report_composer.default_pools()
  rng = np.random.default_rng(0)
  for i in range(200):
    findings = demo.sample_findings(np.random.default_rng(i))
    _, meta = cxr_renderer.render(np.random.default_rng(i), findings)
    report, labels = report_composer.compose(rng, findings, meta)
    text = report['findings'] + ' ' + report['impression']
    assert report['findings'] and report['impression']
    assert len(text.split()) <= report_composer.MAX_WORDS + 15
    assert labels['No Finding'] == int(not findings)
    sentences = report_composer.split_sentences(report['findings'])
    normal = {s for s, _, _ in pools.normal}
    for f in report_composer.FINDINGS:
      assert labels[report_composer.FINDING_TO_OBSERVATION[f]] == int(f in findings)
      positives = [
        s for s in sentences if s not in normal and report_composer.KEYWORDS[f].search(s)
      ]
      if f in findings:
        assert positives, (f, report)
        side = meta['sides'].get(f)
        for s in positives:
          assert report_composer.sentence_side(s) in (None, side), (f, side, s)
      else:
        assert not positives, (f, report)
    for s in sentences:
      if s in normal:  # normal sentences never deny a present finding
        covers, excludes = report_composer.normal_coverage(s)
        assert not (covers | excludes) & findings, (s, findings)
    if not findings:
      assert report['impression'] in pools.normal_impressions


def test_reference_reports_reach_the_scoring_ceiling():
  """The demo's own reports, scored exactly as generated reports are (the report
  labeler -> findings, against the image's labels), must be right: a model cannot be
  judged against a ceiling below 0.98. 250 draws."""
  from radjax.eval.evaluators import reports
  rng = np.random.default_rng(1)
  predicted, truth = [], []
  for i in range(250):
    findings = demo.sample_findings(np.random.default_rng(10_000 + i))
    _, meta = cxr_renderer.render(np.random.default_rng(10_000 + i), findings)
    report, labels = report_composer.compose(rng, findings, meta)
    predicted.append(reports.report_findings(report['findings'] + ' ' + report['impression']))
    truth.append(reports.true_findings({'labels': labels}))
  scores = reports.finding_scores(predicted, truth)
  assert scores['micro_f1'] >= 0.98, scores
  for f in report_composer.FINDINGS:
    assert scores[f'{f}/f1'] >= 0.95, (f, scores)


def test_every_pool_sentence_is_real_openi_text():
  pools = report_composer.default_pools()
  corpus = ' '.join(
    ' '.join(r['findings'].split() + r['impression'].split()) for r in openi_reports.load_reports()
  ).lower()
  for f in report_composer.FINDINGS:
    for s in pools.findings[f]:
      assert report_composer.KEYWORDS[f].search(s.text)
      assert not s.mirrored
      assert s.text.rstrip('.').lower() in corpus, s.text
  assert all(
    re.search(r'\bno\b|normal|clear|unremarkable|negative|without|free|not', s, re.I)
    for s, _, _ in pools.normal
  )


# --- OpenI parser -----------------------------------------------------------


def test_openi_parser():
  reports = openi_reports.load_reports()
  assert len(reports) > 3900
  assert len({r['id'] for r in reports}) == len(reports)
  assert any('Cardiomegaly' in openi_reports.mesh_headings(r) for r in reports)
  assert sum(r['mesh'] == ['normal'] for r in reports) > 1000
  first = reports[0]
  assert first['id'] == 1 and 'pneumothorax' in first['findings']
  assert all(isinstance(r[k], str) for r in reports for k in ('findings', 'impression'))
