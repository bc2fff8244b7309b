"""Report-text metrics on real OpenI report pairs: pycocoevalcap wired as the literature
uses it (corpus-level BLEU, sentence-averaged ROUGE-L, lower-cased, no punctuation),
checked against from-scratch implementations of the two definitions."""
import collections
import math
import shutil

import pytest

pytest.importorskip('pycocoevalcap')

from radjax.eval.metrics import nlg_metrics  # noqa: E402


@pytest.fixture(scope='module')
def pairs():
  """(generated, reference): each OpenI report scored against the next one's text."""
  from data_prep import openi_reports
  texts = [f"{r['findings']} {r['impression']}".strip() for r in openi_reports.load_reports()]
  texts = [t for t in texts if t][:301]
  return texts[:-1], texts[1:]


def _ngrams(words, n):
  return collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(hyps, refs, max_n=4):
  """Papineni et al.: clipped n-gram counts summed over the corpus, one brevity penalty."""
  match, total = [0] * max_n, [0] * max_n
  hyp_len = ref_len = 0
  for h, r in zip(hyps, refs):
    h, r = h.split(), r.split()
    hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
    for n in range(1, max_n + 1):
      hc, rc = _ngrams(h, n), _ngrams(r, n)
      match[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
      total[n - 1] += max(len(h) - n + 1, 0)
  bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
  out, log_sum = [], 0.0
  for n in range(max_n):
    log_sum += math.log(match[n] / total[n])
    out.append(bp * math.exp(log_sum / (n + 1)))
  return out


def _lcs(a, b):
  prev = [0] * (len(b) + 1)
  for x in a:
    cur = [0]
    for j, y in enumerate(b):
      cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
    prev = cur
  return prev[-1]


def rouge_l(hyps, refs, beta=1.2):
  """Lin (2004) LCS F-measure per sentence pair, averaged (as the COCO scorer)."""
  scores = []
  for h, r in zip(hyps, refs):
    h, r = h.split(), r.split()
    lcs = _lcs(h, r)
    p, rec = lcs / len(h), lcs / len(r)
    scores.append(0.0 if lcs == 0 else (1 + beta**2) * p * rec / (rec + beta**2 * p))
  return sum(scores) / len(scores)


def test_metrics_match_the_definitions_on_openi_pairs(pairs):
  generated, references = pairs
  got = nlg_metrics.nlg_scores(generated, references, meteor=False)
  hyps = [nlg_metrics.normalize(g) for g in generated]
  refs = [nlg_metrics.normalize(r) for r in references]
  for n, want in enumerate(corpus_bleu(hyps, refs), 1):
    assert got[f'BLEU-{n}'] == pytest.approx(want, abs=1e-6), n
  assert got['ROUGE-L'] == pytest.approx(rouge_l(hyps, refs), abs=1e-9)
  # Corpus-level, not the mean of sentence BLEU (which the literature does not report).
  from pycocoevalcap.bleu.bleu import Bleu
  _, per_sentence = Bleu(4).compute_score({i: [r] for i, r in enumerate(refs)},
                                          {i: [h] for i, h in enumerate(hyps)}, verbose=0)
  assert abs(got['BLEU-4'] - sum(per_sentence[3]) / len(hyps)) > 1e-3
  assert 0.0 < got['CIDEr'] < 10.0


def test_normalisation_is_case_and_punctuation_blind(pairs):
  generated, references = pairs
  shouted = [g.upper().replace(' ', ' , ') for g in generated[:50]]
  a = nlg_metrics.nlg_scores(generated[:50], references[:50], meteor=False)
  b = nlg_metrics.nlg_scores(shouted, references[:50], meteor=False)
  for key in ('BLEU-4', 'ROUGE-L', 'CIDEr'):
    assert a[key] == pytest.approx(b[key], abs=1e-12), key


def test_r2gen_text_norm_is_r2gens_cleaner():
  """R2Gen keeps sentence ends as '.' tokens, deletes other marks ("1.5" -> "15", but '-'
  stays: its character class has the range ':' to '['), drops list numbering."""
  text = ('The heart is normal. 1. Lungs: clear, no effusion (small?) measuring 1.5 cm.\n'
          '2. Left-sided "line" in place..')
  assert nlg_metrics.normalize(text, 'r2gen') == (
      'the heart is normal . lungs clear no effusion small measuring 15 cm . left-sided line '
      'in place .')
  assert nlg_metrics.normalize(text) == ('the heart is normal 1 lungs clear no effusion small '
                                         'measuring 1 5 cm 2 left sided line in place')
  gen, ref = ['The heart is normal. A 1.5 cm nodule.'], ['The heart is normal. 1.5 cm nodule.']
  r2gen = nlg_metrics.nlg_scores(gen, ref, meteor=False, text_norm='r2gen')
  ours = nlg_metrics.nlg_scores(gen, ref, meteor=False)
  assert r2gen['BLEU-1'] != ours['BLEU-1'] and r2gen['num_empty_generations'] == 0
  with pytest.raises(ValueError, match="text_norm: 'ptb'"):
    nlg_metrics.normalize(text, 'ptb')
  from radjax.core import config_checks, defaults
  config = defaults.get_config()
  config.eval.text_norm = 'R2Gen'
  assert config_checks.errors(config) == [
    "config.eval.text_norm='R2Gen' is not one of ('radjax', 'r2gen')"]


def test_radjax_norm_drops_the_underscores_of_deidentified_text():
  # MIMIC-CXR writes '___' for removed names and dates: never a token of its own.
  assert nlg_metrics.normalize('Compared to ___, the ET_tube is in place') == (
      'compared to the et tube is in place')


def test_a_generation_without_words_counts_as_empty():
  s = nlg_metrics.nlg_scores(['...', 'heart size is normal'],
                             ['lungs are clear', 'heart size is normal'], meteor=False)
  assert s['num_empty_generations'] == 1


def test_cider_document_frequencies_come_from_the_references_only():
  refs = ['heart size is normal', 'small left pleural effusion', 'no pneumothorax is seen']
  gen1 = 'heart size is normal and the lungs are clear'
  # Row 2's generation shares no n-gram with its reference either way (its CIDEr is 0), so
  # only document frequencies taken from the generations could move the corpus score.
  a = nlg_metrics.nlg_scores([gen1, 'zzz yyy', 'no pneumothorax'], refs, meteor=False)
  b = nlg_metrics.nlg_scores([gen1, gen1, 'no pneumothorax'], refs, meteor=False)
  assert a['CIDEr'] == pytest.approx(b['CIDEr'], abs=1e-12) and a['CIDEr'] > 0


@pytest.mark.skipif(shutil.which('java') is None, reason='METEOR needs java')
def test_meteor_weighs_recall_over_precision():
  long, short = 'the heart size is normal and the lungs are clear', 'heart normal'
  missing = nlg_metrics.nlg_scores([short], [long])['METEOR']  # recall 2/10, precision 1
  padded = nlg_metrics.nlg_scores([long], [short])['METEOR']  # recall 1, precision 2/10
  assert missing < padded


def test_identical_texts_score_perfectly_with_either_text_norm():
  text = ['The heart is normal. A 1.5 cm nodule in the left upper lobe.']
  for norm in ('radjax', 'r2gen'):
    s = nlg_metrics.nlg_scores(text, text, meteor=False, text_norm=norm)
    for key in ('BLEU-1', 'BLEU-4', 'ROUGE-L'):
      assert s[key] == pytest.approx(1.0), (norm, key)
