"""Builders for text-first sets: dolly-15k jsonl, XrayGPT filter_cap.json and LLaVA
JSON, on fixtures in the publishers' formats with planted bad records."""
import json
import os

import pytest

from data_prep import build as build_lib
from data_prep.builder import ManualDirError
from tests import data_prep_fixtures as fx

DOLLY = [
  {'instruction': 'When did Virgin Australia start operating?',
   'context': 'Virgin Australia commenced services on 31 August 2000.',
   'response': 'Virgin Australia commenced services on 31 August 2000.', 'category': 'closed_qa'},
  {'instruction': 'Which is a species of fish? Tope or Rope', 'context': '',
   'response': 'Tope', 'category': 'classification'},
  {'instruction': 'Name three primary colours.', 'context': '', 'response': '',
   'category': 'open_qa'},
  {'instruction': 'Why?', 'context': '', 'response': 'Because.', 'category': 'chit_chat'},
  {'instruction': 'No response field', 'context': '', 'category': 'open_qa'},
]


def test_dolly(tmp_path):
  src = tmp_path / 'src'
  src.mkdir()
  lines = [json.dumps(r) for r in DOLLY] + ['{"instruction": "cut off']
  (src / 'databricks-dolly-15k.jsonl').write_text('\n'.join(lines) + '\n')
  path, manifest = fx.build('dolly', str(src), str(tmp_path / 'out'))
  examples = fx.examples(path, 'train')
  assert [e['id'] for e in examples] == ['dolly-00001', 'dolly-00002']
  assert examples[0]['conversation'] == [
    {'role': 'user', 'text': DOLLY[0]['instruction'] + '\n\n' + DOLLY[0]['context']},
    {'role': 'assistant', 'text': DOLLY[0]['response']}]
  assert examples[1]['conversation'][0]['text'] == DOLLY[1]['instruction']
  assert examples[0]['images'] == []
  rejects = fx.rejects(path)
  assert 'empty' in rejects['dolly-00003']['reason']
  assert "category: unknown value 'chit_chat'" in rejects['dolly-00004']['reason']
  assert 'expected string fields' in rejects['dolly-00005']['reason']
  assert 'not JSON' in rejects['dolly-00006']['reason'] and rejects['dolly-00006']['row'] == 6


def test_xraygpt_captions(tmp_path):
  src = str(tmp_path / 'src')
  anns = [{'image_id': '02aa804e-bde0afdd-112c0b34-7bc16630-4e384014',
           'caption': 'The lungs are clear.  No acute process.'},
          {'image_id': '1384_1', 'caption': 'Heart size normal.'},
          {'image_id': '1384_2', 'caption': 'Missing image.'},
          {'image_id': 7, 'caption': 'bad id'}]
  fx.write_file(os.path.join(src, 'filter_cap.json'), json.dumps({'annotations': anns}).encode())
  fx.write_file(os.path.join(src, 'image', anns[0]['image_id'] + '.jpg'), fx.image_bytes())
  fx.write_file(os.path.join(src, 'image', '1384_1.png'), fx.image_bytes(fmt='PNG'))
  path, manifest = fx.build('xraygpt_captions', src, str(tmp_path / 'out'))
  examples = fx.examples(path, 'train')
  assert [(e['id'], e['images'][0]['format']) for e in examples] == [
    (anns[0]['image_id'], 'jpeg'), ('1384_1', 'png')]
  # Verbatim, doubled space and all: XrayGPT trains on ann['caption'] as it is.
  assert examples[0]['report'] == {'findings': 'The lungs are clear.  No acute process.',
                                   'impression': ''}
  rejects = fx.rejects(path)
  assert 'image file missing' in rejects['1384_2']['reason']
  assert 'expected string image_id' in rejects['annotation-3']['reason']
  fx.write_file(os.path.join(src, 'filter_cap.json'), b'[1, 2]')
  with pytest.raises(ManualDirError, match='filter_cap.json: expected'):
    build_lib.build('xraygpt_captions', str(tmp_path / 'out2'), manual_dir=src)


def test_llava_json(tmp_path):
  src = str(tmp_path / 'src')
  fx.write_file(os.path.join(src, 'images/mimic/a.jpg'), fx.image_bytes())
  fx.write_file(os.path.join(src, 'images/mimic/b.jpg'), fx.image_bytes(seed=1))
  records = [
    {'id': 'r1', 'image': 'mimic/a.jpg', 'conversations': [
      {'from': 'human', 'value': '<image>\nDescribe the radiograph.'},
      {'from': 'gpt', 'value': 'No acute findings.'},
      {'from': 'human', 'value': 'Any effusion?'}, {'from': 'gpt', 'value': 'No.'}]},
    {'id': 'r2', 'image': ['mimic/a.jpg', 'mimic/b.jpg'], 'conversations': [
      {'from': 'human', 'value': 'Compare the two studies.'},
      {'from': 'gpt', 'value': 'Unchanged.'}]},
    {'id': 'r3', 'conversations': [{'from': 'human', 'value': 'What is a pneumothorax?'},
                                   {'from': 'gpt', 'value': 'Air in the pleural space.'}]},
    {'id': 'r4', 'image': 'mimic/missing.jpg', 'conversations': [
      {'from': 'human', 'value': '<image>\nx'}, {'from': 'gpt', 'value': 'y'}]},
    {'id': 'r5', 'image': 'mimic/a.jpg', 'conversations': [
      {'from': 'human', 'value': '<image><image> x'}, {'from': 'gpt', 'value': 'y'}]},
    {'id': 'r6', 'image': 'mimic/a.jpg', 'conversations': [
      {'from': 'doctor', 'value': 'x'}, {'from': 'gpt', 'value': 'y'}]},
    {'id': 'r1', 'image': 'mimic/b.jpg', 'conversations': [
      {'from': 'human', 'value': '<image> x'}, {'from': 'gpt', 'value': 'y'}]},
    {'id': 'r7', 'image': 'mimic/a.jpg', 'conversations': [{'from': 'gpt', 'value': 'y'}]},
  ]
  fx.write_file(os.path.join(src, 'all_train.json'), json.dumps(records).encode())
  fx.write_file(os.path.join(src, 'all_test.json'), json.dumps(records[:1]).encode())
  # A file whose name names no split would be in no split: an error, nothing built.
  fx.write_file(os.path.join(src, 'conversations.json'), json.dumps(records[:1]).encode())
  with pytest.raises(ManualDirError, match=r"\['conversations.json'\] name no split"):
    fx.build('llava_json', src, str(tmp_path / 'out'))
  os.remove(os.path.join(src, 'conversations.json'))
  path, manifest = fx.build('llava_json', src, str(tmp_path / 'out'))
  train = {e['id']: e for e in fx.examples(path, 'train')}
  assert list(train) == ['r1', 'r2', 'r3'] and manifest['counts']['test'] == 1
  assert [t['role'] for t in train['r1']['conversation']] == ['user', 'assistant'] * 2
  assert len(train['r2']['images']) == 2
  assert train['r2']['conversation'][0]['text'] == '<image>\n<image>\nCompare the two studies.'
  assert train['r3']['images'] == []
  rejects = {(r['id'], r['row']): r for r in map(json.loads, open(
    os.path.join(path, 'rejects.jsonl')))}
  assert 'image file missing' in rejects[('r4', 3)]['reason']
  assert '2 <image> marks for 1 images' in rejects[('r5', 4)]['reason']
  assert "unknown role 'doctor'" in rejects[('r6', 5)]['reason']
  assert 'duplicate' in rejects[('r1', 6)]['reason']
  assert 'no user turn' in rejects[('r7', 7)]['reason']
  # A split file of [] is an empty split: warned of and listed, like a header-only CSV.
  fx.write_file(os.path.join(src, 'all_val.json'), b'[]')
  path, manifest = fx.build('llava_json', src, str(tmp_path / 'out_val'))
  assert manifest['empty_splits'] == ['val'] and manifest['counts']['val'] == 0


def test_llava_jsonl_reads_a_record_a_line_and_rejects_a_bad_line(tmp_path):
  """LLaVA-NeXT / OneVision sets ship as .jsonl: the builder found no files in them."""
  src = str(tmp_path / 'src')
  fx.write_file(os.path.join(src, 'images/a.jpg'), fx.image_bytes())
  rows = [json.dumps({'id': 'j1', 'image': 'a.jpg', 'conversations': [
            {'from': 'human', 'value': '<image>\nDescribe it.'},
            {'from': 'gpt', 'value': 'Clear lungs.'}]}),
          '', '{"id": "j2", "conversations": [',  # a blank line, then a cut one
          json.dumps({'id': 'j3', 'conversations': [{'from': 'human', 'value': 'Hi'},
                                                    {'from': 'gpt', 'value': 'Hello.'}]})]
  fx.write_file(os.path.join(src, 'train.jsonl'), '\n'.join(rows).encode())
  path, manifest = fx.build('llava_json', src, str(tmp_path / 'out'))
  train = {e['id']: e for e in fx.examples(path, 'train')}
  assert list(train) == ['j1', 'j3'] and len(train['j1']['images']) == 1
  rejects = [json.loads(line) for line in open(os.path.join(path, 'rejects.jsonl'))]
  assert len(rejects) == 1 and rejects[0]['reason'].startswith('line 3: not JSON')


def test_llava_split_words_start_a_word():
  from data_prep.llava_json.llava_json_dataset_builder import split_of
  assert split_of('retrieval_test.json', False) == 'test'
  assert split_of('all_valid.json', False) == 'val'
  assert split_of('interval.json', False) is None
