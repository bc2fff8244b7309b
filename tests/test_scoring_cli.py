"""`python -m radjax.eval score` with grounding/classification rows, per-sample output,
and the CheXbert (tiny random model saved here) and RadGraph (annotation file) plug-ins."""
import json
import os

import pytest

from radjax.data.schema import CHEXPERT_OBSERVATIONS
from radjax.eval import __main__ as cli
from radjax.eval.metrics import radgraph, scoring

REPORT_KEYS = ('BLEU-1', 'BLEU-4', 'ROUGE-L', 'CIDEr', 'clinical_f1_micro_14',
               'clinical_f1_macro_5', 'num_empty_generations')


def write_jsonl(path, rows):
  with open(path, 'w') as f:
    for r in rows:
      f.write((r if isinstance(r, str) else json.dumps(r)) + '\n')
  return str(path)


def run_score(tmp_path, rows, *extra):
  preds = write_jsonl(tmp_path / 'p.jsonl', rows)
  out, per = str(tmp_path / 'm.json'), str(tmp_path / 's.jsonl')
  rc = cli.main(['score', '--predictions', preds, '--out', out, '--no-meteor',
                 '--per-sample', per, *extra])
  if rc:
    return rc, None, None
  with open(out) as f:
    metrics = json.load(f)
  with open(per) as f:
    return rc, metrics, [json.loads(line) for line in f]


def test_plain_rows_keep_the_report_keys(tmp_path):
  rows = [{'id': 'a', 'generated': 'Heart is enlarged. No effusion.',
           'reference': 'Cardiomegaly. No pleural effusion.'},
          {'id': 'b', 'generated': '', 'reference': 'Small right pneumothorax.'}]
  rc, m, per = run_score(tmp_path, rows)
  assert rc == 0
  for k in REPORT_KEYS:
    assert k in m, k
  assert m['num_empty_generations'] == 1
  assert not any(k.startswith(('grounding', 'classification')) for k in m)
  assert [p['id'] for p in per] == ['a', 'b']
  # Both reports assert cardiomegaly and deny effusion: every observation agrees.
  assert per[0]['clinical_agreement_14'] == 1.0
  assert per[0]['labels_generated']['Cardiomegaly'] == 1
  assert per[1]['BLEU-4'] == 0.0 and per[1]['labels_generated'] == {}
  assert per[1]['clinical_agreement_14'] == pytest.approx(13 / 14)  # only Pneumothorax


def test_grounding_and_classification_rows(tmp_path):
  lesion = {'label': 'Lung Lesion', 'box': [0.1, 0.1, 0.3, 0.3]}
  rows = [
      {'id': 'g1', 'generated': 'A nodule located at the coordinates [0.1, 0.1, 0.3, 0.28].',
       'reference': 'Nodule.', 'boxes': [lesion]},
      {'id': 'g2', 'generated': 'Located at [0.5, 0.5, 0.2, 0.2] and [0.1, 0.2',  # 2 malformed
       'reference': 'Nodule.', 'boxes': [lesion]},
      {'id': 'g3', 'generated': '', 'reference': 'Normal.', 'boxes': []},
      {'id': 'c1', 'generated': 'The following abnormalities are identified: edema, '
       'cardiomegaly.', 'reference': 'x', 'labels': ['Edema']},
      {'id': 'c2', 'generated': 'None.', 'reference': 'x', 'labels': []},
  ]
  rc, m, per = run_score(tmp_path, rows)
  assert rc == 0
  assert m['num_malformed_boxes'] == 2 and m['num_empty_generations'] == 1
  assert m['grounding_num_rows'] == 3 and m['grounding_num_ref_boxes'] == 2
  # g1's box (IoU 0.9) finds one of the two lesions: AP 1/2, precision 1.
  assert m['grounding_AP@0.5/Lung Lesion'] == pytest.approx(0.5)
  assert m['grounding_mAP@0.5'] == pytest.approx(0.5)
  assert m['grounding_precision@0.5'] == 1.0 and m['grounding_recall@0.5'] == 0.5
  assert m['grounding_mean_iou'] == pytest.approx(0.9 / 2)
  assert per[0]['pred_boxes'] == [{'label': 'Lung Lesion', 'box': [0.1, 0.1, 0.3, 0.28]}]
  assert per[1]['num_malformed_boxes'] == 2 and per[1]['pred_boxes'] == []
  assert m['classification_num_examples'] == 2
  assert m['classification_Edema/f1'] == 1.0
  assert m['classification_micro_precision'] == 0.5  # Cardiomegaly is a false positive
  assert m['classification_samples_f1'] == pytest.approx((2 / 3 + 1) / 2)
  assert per[3]['pred_labels'] == ['Edema', 'Cardiomegaly']
  assert 'pred_labels' not in per[0] and 'pred_boxes' not in per[3]


@pytest.mark.parametrize('bad,msg', [
    ({'boxes': [{'label': 'x', 'box': [0.5, 0.1, 0.2, 0.3]}]}, 'boxes[0]'),
    ({'boxes': [{'label': 'x', 'box': [0.1, 0.1]}]}, 'boxes[0]'),
    ({'boxes': 'no'}, 'boxes must be a list'),
    ({'labels': 'Edema'}, 'labels must be a list'),
    ({'reference': ' ... '}, "reference ' ... ' has no words"),
])
def test_bad_reference_rows_name_file_and_line(tmp_path, capsys, bad, msg):
  good = {'id': 1, 'generated': 'a', 'reference': 'b'}
  rc, _, _ = run_score(tmp_path, [good, {**good, **bad}])
  assert rc == 2
  assert f'p.jsonl:2: {msg}' in capsys.readouterr().err


def _ann(*entities):
  """RadGraph annotation from (tokens, label, [(relation, target index)]) triples."""
  return {'text': '', 'entities': {str(i + 1): {'tokens': t, 'label': lab,
                                                'relations': [[r, str(j + 1)] for r, j in rel]}
                                   for i, (t, lab, rel) in enumerate(entities)}}


def test_radgraph_rewards_hand_computed():
  ref = _ann(('effusion', 'OBS-DP', [('located_at', 1)]), ('pleural', 'ANAT-DP', []),
             ('edema', 'OBS-DA', []))
  hyp = _ann(('effusion', 'OBS-DP', []), ('pleural', 'ANAT-DP', []))
  simple, partial, complete = radgraph.report_rewards(hyp, ref)
  # simple: hyp 2 entities, both in ref's 3 -> P 1, R 2/3, F1 0.8.
  assert simple == pytest.approx(0.8)
  # partial: "effusion" lacks its relation in hyp -> 1 of 2 and 1 of 3 match.
  assert partial == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
  # complete: ref {(effusion, OBS-DP, located_at, pleural), (pleural, ...), (edema, ...)}.
  assert complete == pytest.approx(partial)
  assert radgraph.report_rewards(_ann(), ref) == (0.0, 0.0, 0.0)
  assert radgraph.report_rewards(ref, ref) == (1.0, 1.0, 1.0)


def test_radgraph_file_in_the_cli(tmp_path, capsys):
  ann = _ann(('effusion', 'OBS-DP', []))
  ann_path = write_jsonl(tmp_path / 'rg.jsonl',
                         [{'id': 'a', 'generated': ann, 'reference': ann},
                          {'id': 'b', 'generated': _ann(), 'reference': ann}])
  rows = [{'id': i, 'generated': 'x', 'reference': 'y'} for i in 'ab']
  rc, m, per = run_score(tmp_path, rows, '--radgraph', ann_path)
  assert rc == 0 and m['radgraph_f1_simple'] == 0.5 and m['radgraph_num_reports'] == 2
  assert per[0]['radgraph_f1_complete'] == 1.0
  rc, _, _ = run_score(tmp_path, rows + [{'id': 'c', 'generated': '', 'reference': 'z'}],
                       '--radgraph', ann_path)
  assert rc == 2 and "missing for ids ['c']" in capsys.readouterr().err
  bad = write_jsonl(tmp_path / 'bad.jsonl', ['{"id": "a", "generated": {}}'])
  rc, _, _ = run_score(tmp_path, rows, '--radgraph', bad)
  assert rc == 2 and 'bad.jsonl:1' in capsys.readouterr().err
  # An id twice was the last row's, silently; a list id (any JSON id predictions take)
  # was a TypeError; so was a relation whose type is not a string.
  twice = write_jsonl(tmp_path / 'twice.jsonl', [{'id': 'a', 'generated': ann, 'reference': ann},
                                                 {'id': 'a', 'generated': ann, 'reference': ann}])
  rc, _, _ = run_score(tmp_path, rows, '--radgraph', twice)
  assert rc == 2 and "twice.jsonl: duplicate id 'a' (rows 1 and 2)" in capsys.readouterr().err
  listed = write_jsonl(tmp_path / 'list.jsonl', [{'id': [1, 2], 'generated': ann,
                                                  'reference': ann}])
  rc, m, _ = run_score(tmp_path, [{'id': [1, 2], 'generated': 'x', 'reference': 'y'}],
                       '--radgraph', listed)
  assert rc == 0 and m['radgraph_f1_simple'] == 1.0
  rel = _ann(('effusion', 'OBS-DP', []))
  rel['entities']['1']['relations'] = [[['located_at'], '1']]
  odd = write_jsonl(tmp_path / 'rel.jsonl', [{'id': 'a', 'generated': rel, 'reference': ann}])
  rc, _, _ = run_score(tmp_path, rows[:1], '--radgraph', odd)
  assert rc == 2 and 'rel.jsonl:1' in capsys.readouterr().err


# ----- CheXbert -----

WORDS = ('no pleural effusion heart is enlarged normal cardiomegaly lungs are clear . ,').split()


def save_tiny_chexbert(path, fmt, forced_classes=None, seed=0, encoder_scale=1.0):
  """A random BERT with CheXbert's heads; `forced_classes[i]` makes head i always pick
  that class (zero weights, one-hot bias). `encoder_scale` multiplies the encoder's
  matrices: at BERT's init (std 0.02) the [CLS] vector, so every label, is the same
  whatever the text; x50 makes the labels follow it."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from radjax.eval.metrics import chexbert
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'vocab.txt'), 'w') as f:
    f.write('\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *WORDS]) + '\n')
  config = transformers.BertConfig(vocab_size=len(WORDS) + 5, hidden_size=16,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=64)
  config.to_json_file(os.path.join(path, 'config.json'))
  torch.manual_seed(seed)
  model = chexbert.build_model(config).eval()
  with torch.no_grad():
    for p in model.bert.encoder.parameters():
      if p.ndim == 2:
        p.mul_(encoder_scale)
  if forced_classes is not None:
    with torch.no_grad():
      for head, c in zip(model.linear_heads, forced_classes):
        head.weight.zero_()
        head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(c), head.out_features) * 5.0)
  # DataParallel's prefix, as in the published chexbert.pth.
  state = {f'module.{k}': v.contiguous() for k, v in model.state_dict().items()}
  if fmt == 'safetensors':
    from safetensors.torch import save_file
    save_file(state, os.path.join(path, 'model.safetensors'))
  else:
    torch.save({'epoch': 3, 'model_state_dict': state}, os.path.join(path, 'chexbert.pth'))
  return model


@pytest.mark.parametrize('fmt', ['safetensors', 'pth'])
def test_chexbert_loads_and_maps_heads_to_observations(tmp_path, fmt):
  from radjax.eval.metrics import chexbert
  # Heads 0..12 cycle blank/positive/negative/uncertain; No Finding positive.
  forced = [i % 4 for i in range(13)] + [1]
  save_tiny_chexbert(tmp_path / 'ck', fmt, forced)
  labels = chexbert.CheXbertLabeler(str(tmp_path / 'ck')).label(['heart is enlarged', '', 'x'])
  assert len(labels) == 3 and tuple(sorted(labels[0])) == tuple(sorted(CHEXPERT_OBSERVATIONS))
  want = {obs: {0: None, 1: 1, 2: 0, 3: -1}[i % 4]
          for i, obs in enumerate(chexbert.CONDITIONS[:13])}
  want['No Finding'] = 1
  assert labels[0] == want and labels[1] == want
  assert want['Enlarged Cardiomediastinum'] is None and want['Cardiomegaly'] == 1
  assert want['Lung Opacity'] == 0 and want['Lung Lesion'] == -1


def test_chexbert_weights_load_exactly(tmp_path):
  torch = pytest.importorskip('torch')
  from radjax.eval.metrics import chexbert
  model = save_tiny_chexbert(tmp_path / 'ck', 'safetensors', seed=1)
  loaded = chexbert.CheXbertLabeler(str(tmp_path / 'ck'), batch_size=2)
  enc = loaded.tokenizer(['no pleural effusion', 'heart is enlarged , lungs are clear'],
                         padding=True, return_tensors='pt')
  with torch.no_grad():
    want = model(enc['input_ids'], enc['attention_mask'])
    got = loaded.model(enc['input_ids'], enc['attention_mask'])
  for w, g in zip(want, got):
    torch.testing.assert_close(g, w, rtol=0, atol=0)
  texts = ['no pleural effusion', 'heart is enlarged', 'normal', 'lungs are clear', 'x']
  classes = [[{None: 0, 1: 1, 0: 2, -1: 3}[lab[o]] for o in chexbert.CONDITIONS]
             for lab in loaded.label(texts)]
  enc = loaded.tokenizer(texts, padding=True, return_tensors='pt')
  with torch.no_grad():
    ref = torch.stack([x.argmax(-1) for x in model(enc['input_ids'], enc['attention_mask'])], 1)
  assert classes == ref.tolist()  # batches of 2 with padding give the same labels


def test_chexbert_in_the_cli_and_clear_errors(tmp_path, capsys):
  save_tiny_chexbert(tmp_path / 'ck', 'safetensors', [1] * 13 + [0])
  rows = [{'id': 'a', 'generated': 'heart is enlarged', 'reference': 'normal'}]
  rc, m, _ = run_score(tmp_path, rows, '--chexbert', str(tmp_path / 'ck'))
  assert rc == 0
  # Both sides get the same labels from the forced heads, so every positive agrees.
  assert m['chexbert_f1_micro_14'] == 1.0 and m['chexbert_num_reports'] == 1
  assert m['clinical_f1_micro_14'] is not None  # the rule-based scores stay
  rc, _, _ = run_score(tmp_path, rows, '--chexbert', str(tmp_path / 'nowhere'))
  assert rc == 2 and 'not a directory' in capsys.readouterr().err
  (tmp_path / 'ck' / 'model.safetensors').write_bytes(b'\0' * 64)  # damaged
  rc, _, _ = run_score(tmp_path, rows, '--chexbert', str(tmp_path / 'ck'))
  err = capsys.readouterr().err
  assert rc == 2 and 'model.safetensors: not a readable checkpoint' in err
  assert 'Traceback' not in err
  os.remove(tmp_path / 'ck' / 'model.safetensors')
  (tmp_path / 'ck' / 'chexbert.pth').write_bytes(b'not a pickle')
  rc, _, _ = run_score(tmp_path, rows, '--chexbert', str(tmp_path / 'ck'))
  err = capsys.readouterr().err
  assert rc == 2 and 'chexbert.pth: not a readable checkpoint' in err
  assert 'weights_only=False' not in err
  os.remove(tmp_path / 'ck' / 'chexbert.pth')
  rc, _, _ = run_score(tmp_path, rows, '--chexbert', str(tmp_path / 'ck'))
  assert rc == 2 and 'model.safetensors' in capsys.readouterr().err
  # bert-base-uncased's own weights copied in beside chexbert.pth: the file read is named,
  # and the one not read.
  save_tiny_chexbert(tmp_path / 'ck', 'pth')
  from safetensors.torch import save_file
  torch = pytest.importorskip('torch')
  save_file({'cls.predictions.bias': torch.zeros(3)}, str(tmp_path / 'ck' / 'model.safetensors'))
  rc, _, _ = run_score(tmp_path, rows, '--chexbert', str(tmp_path / 'ck'))
  err = capsys.readouterr().err
  assert rc == 2 and 'model.safetensors: not a CheXbert checkpoint' in err
  assert 'chexbert.pth not read' in err


def test_score_rows_library_entry(tmp_path):
  m, per = scoring.score_rows([{'id': 0, 'generated': 'Edema.', 'reference': 'Edema.'}],
                              meteor=False)
  assert m['BLEU-1'] == pytest.approx(1.0) and per[0]['ROUGE-L'] == pytest.approx(1.0)


def test_chexbert_scores_read_generated_against_reference(tmp_path):
  """A random CheXbert whose labels follow the text: the scores are its labels of the
  generated reports (uncertain as positive) against its labels of the references;
  swapped, precision and recall trade places."""
  from radjax.eval.metrics import chexbert
  path = str(tmp_path / 'ck')
  save_tiny_chexbert(path, 'safetensors', seed=1, encoder_scale=50.0)
  gen = ['heart is enlarged', 'no pleural effusion', 'lungs are clear .']
  ref = ['normal', 'cardiomegaly , pleural effusion', 'heart is enlarged , lungs are clear']
  positive = [{o for o, v in labels.items() if v in (1, -1)}
              for labels in chexbert.CheXbertLabeler(path).label(gen + ref)]
  assert len({frozenset(p) for p in positive}) > 1  # not the same labels for every text
  tp = sum(len(g & r) for g, r in zip(positive[:3], positive[3:], strict=True))
  s = chexbert.chexbert_scores(gen, ref, path)
  assert s['chexbert_precision_micro_14'] == pytest.approx(tp / sum(map(len, positive[:3])))
  assert s['chexbert_recall_micro_14'] == pytest.approx(tp / sum(map(len, positive[3:])))
  assert s['chexbert_precision_micro_14'] != s['chexbert_recall_micro_14']
  swapped = chexbert.chexbert_scores(ref, gen, path)
  assert (swapped['chexbert_precision_micro_14'], swapped['chexbert_recall_micro_14']) == (
      s['chexbert_recall_micro_14'], s['chexbert_precision_micro_14'])


def test_chexbert_head_order_is_the_published_checkpoints():
  from radjax.eval.metrics import chexbert
  # stanfordmlgroup/CheXbert src/constants.py CONDITIONS: head i of chexbert.pth.
  assert chexbert.CONDITIONS == (
      'Enlarged Cardiomediastinum', 'Cardiomegaly', 'Lung Opacity', 'Lung Lesion', 'Edema',
      'Consolidation', 'Pneumonia', 'Atelectasis', 'Pneumothorax', 'Pleural Effusion',
      'Pleural Other', 'Fracture', 'Support Devices', 'No Finding')


def test_per_row_agreement_counts_uncertain_as_positive():
  row, = scoring.per_sample_scores(['Possible pneumothorax.'], ['Pneumothorax.'])
  assert row['labels_generated']['Pneumothorax'] == -1
  assert row['clinical_agreement_14'] == 1.0


def test_per_row_bleu_is_bleu_4():
  row, = scoring.per_sample_scores(['lungs clear heart normal'], ['heart normal lungs clear'])
  assert row['BLEU-4'] < 1e-3  # every unigram matches, no trigram or 4-gram does


def test_per_row_labels_are_spelt_as_the_metric_keys():
  metrics, rows = scoring.score_rows([{'id': 'a', 'generated': 'Cardiomegaly', 'reference': 'x',
                                       'labels': ['cardiomegaly']}], meteor=False)
  assert rows[0]['pred_labels'] == ['Cardiomegaly']
  assert metrics['classification_Cardiomegaly/f1'] == 1.0


def test_an_output_that_is_an_input_is_refused_and_the_input_kept(tmp_path, capsys):
  """`score --out P` with P the predictions (or `--per-sample P`, or `label --out R` with R
  the reports) replaced hours of generated reports with metrics, exit 0."""
  rows = [{'id': 'a', 'generated': 'No effusion.', 'reference': 'Small effusion.'}]
  preds = write_jsonl(tmp_path / 'p.jsonl', rows)
  before = open(preds).read()
  for argv, said in [
      (['score', '--predictions', preds, '--out', preds, '--no-meteor'],
       f'--out {preds} is the same file as --predictions'),
      (['score', '--predictions', preds, '--out', str(tmp_path / 'm.json'), '--no-meteor',
        '--per-sample', os.path.join(str(tmp_path), '.', 'p.jsonl')],
       'is the same file as --predictions'),
      (['score', '--predictions', preds, '--out', str(tmp_path / 'm.json'), '--no-meteor',
        '--per-sample', str(tmp_path / 'm.json')], 'is the same file as --out'),
      (['label', '--reports', preds, '--out', preds], 'is the same file as --reports')]:
    assert cli.main(argv) == 2
    assert said in capsys.readouterr().err
    assert open(preds).read() == before
  assert not (tmp_path / 'm.json').exists()


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path):
  """A .jsonl saved by a Windows tool starts with a UTF-8 BOM: its first row was 'not
  valid JSON'."""
  rows = [{'id': 'a', 'generated': 'No effusion.', 'reference': 'Small effusion.'}]
  rc, plain, _ = run_score(tmp_path, rows)
  path = tmp_path / 'p.jsonl'
  path.write_bytes(b'\xef\xbb\xbf' + path.read_bytes())
  out = str(tmp_path / 'bom.json')
  assert cli.main(['score', '--predictions', str(path), '--out', out, '--no-meteor']) == 0
  with open(out) as f:
    assert json.load(f) == plain
