"""Multi-label classification metrics: label lists parsed from text, P/R/F1 per label.

Answers look like RadVLM's "The following abnormalities are identified: Cardiomegaly,
Edema and Pleural Effusion." A "name: value" pair ("Cardiomegaly: present; Edema:
absent", values present/absent, yes/no, positive/negative, true/false, 1/0) reads as the
name or its negation; then text up to a colon is dropped, the rest is split on
commas, semicolons, newlines, " and " and " or "; each item is matched
case-insensitively to a vocabulary name, else to every vocabulary name it contains,
else to the CheXpert observations the labeler's mention patterns find ("enlarged
heart" -> Cardiomegaly). Negated items assert no label: from a negation on to the end of
its clause (a sentence, or up to ";" or "but": "There is no pneumothorax or effusion",
"cardiomegaly without edema"), or one ending "is not seen" / "absent"; so do "none" /
"no abnormalities". Items matching nothing are returned as unknown (and
kept, lower-cased, when there is no vocabulary).

Averages (sklearn's definitions): per-label and macro with 0/0 = 0 (sklearn's
zero_division=0); micro pools every (example, label) decision; example-based
("samples") averages per-example P/R/F1, where an example with no true and no
predicted label scores 1 (it is exactly right) and other 0/0 are 0.
"""

from __future__ import annotations

import re

import numpy as np

from radjax.data.schema import CHEXPERT_OBSERVATIONS
from radjax.eval.metrics import labeler
from radjax.eval.metrics.clinical import prf

# A negation covers the rest of its clause ("no pneumothorax or effusion"), never the next.
_CLAUSE = re.compile(r'\.(?=\s|$)|[;\n]|\bbut\b|\bhowever\b', re.IGNORECASE)
_SPLIT = re.compile(r',|\band\b|\bor\b|\bnor\b|&|\bwith\b|(?=\bwithout\b)', re.IGNORECASE)
_STRIP = " \t.\"'`*-•()"
_THERE = re.compile(r'^there\s+(?:is|are|was|were)\s+', re.IGNORECASE)
_ARTICLE = re.compile(r'^(?:a|an|the|some|mild|small|moderate|large|possible)\s+', re.IGNORECASE)
_NEGATED = re.compile(r'^(?:no|not|without|negative\s+for|absence\s+of|free\s+of)\b',
                      re.IGNORECASE)
# "pneumothorax is not seen", "edema absent": this item only.
_NEGATED_AFTER = re.compile(r'\s+(?:(?:is|are)\s+)?(?:not\s+(?:seen|present|identified|'
                            r'visible|evident|noted)|absent|ruled\s+out|excluded)$',
                            re.IGNORECASE)
_NONE = re.compile(r'^(?:none|nothing|normal|no(?:\s+\w+)?\s+(?:abnormalit\w*|findings?|lesions?'
                   r'|disease|pathology))$|^no$', re.IGNORECASE)


_VALUE_POSITIVE = ('present', 'positive', 'yes', 'true', '1')
_KEY_VALUE = re.compile(r'([^:;,\n.?!]+?)\s*:\s*(present|positive|yes|true|1|absent|not\s+present|'
                        r'negative|no|false|0|none)\s*(?=[;,\n.]|$)', re.IGNORECASE)


def _key_values(text: str) -> str:
  """'Cardiomegaly: present; Edema: absent' -> 'Cardiomegaly; no Edema;'."""
  def pair(match):
    key = match.group(1)
    if match.group(2).lower() in _VALUE_POSITIVE:
      return f'{key};'
    return f'{key[:len(key) - len(key.lstrip())]}no {key.strip()};'  # its space before kept
  return _KEY_VALUE.sub(pair, text)


def _items(text: str) -> list[tuple[str, bool]]:
  """(item, negated) in order: a clause's items from its first negated one on are
  negated, and an item ending in "is not seen" / "absent" is."""
  text = _key_values(text or '')
  head, colon, rest = text.partition(':')
  # A preamble ("The following abnormalities are identified:") is one clause at the start.
  body = rest if colon and not _CLAUSE.search(head) else text
  items = []
  for clause in _CLAUSE.split(body):
    negated = False
    for raw in _SPLIT.split(clause):
      item = _THERE.sub('', raw.strip(_STRIP)).strip(_STRIP)
      while _ARTICLE.match(item):
        item = _ARTICLE.sub('', item, count=1).strip(_STRIP)
      if not item:
        continue
      negated = negated or bool(_NEGATED.match(item))
      after = _NEGATED_AFTER.search(item)
      if after:
        item = item[:after.start()].strip(_STRIP)
      items.append((item, negated or bool(after)))
  return items


def parse_labels(text: str, vocab=None) -> tuple[list[str], list[str]]:
  """(labels in order of first mention, unknown items) from a label-list answer."""
  names = {}
  for v in vocab or ():
    if v and v.strip():
      names.setdefault(v.strip().lower(), v.strip())  # the first spelling wins
  labels, unknown = [], []
  for item, negated in _items(text):
    low = item.lower()
    # A name that reads as a negation itself ("No Finding") is that label.
    named_negation = low in names and _NEGATED.match(low)
    if (low not in names and _NONE.match(low)) or (negated and not named_negation):
      continue
    found = [names[low]] if low in names else [
        name for key, name in sorted(names.items(), key=lambda kv: -len(kv[0]))
        if re.search(rf'(?<!\w){re.escape(key)}(?!\w)', low)]
    if not found:
      found = [obs for obs, pattern in labeler._MENTIONS.items()
               if pattern.search(low) and (not names or obs.lower() in names)]
      found = [names.get(obs.lower(), obs) for obs in found]
    if not found:
      unknown.append(item)
      if not names:
        found = [low]
    labels.extend(f for f in found if f not in labels)
  return labels, unknown


def multilabel_scores(predicted: list, truth: list, labels=None) -> dict[str, float]:
  """P/R/F1 per label ("<label>/precision", ..., "<label>/support") and averaged
  ("{micro,macro,samples}_{precision,recall,f1}", "exact_match", "num_examples").

  `predicted` and `truth` are per-example collections of label names; `labels` fixes
  the label set and order (default: every label seen, sorted). Labels outside
  `labels` are ignored.
  """
  if len(predicted) != len(truth):
    raise ValueError(f'{len(predicted)} predictions vs {len(truth)} references')
  if labels is None:
    labels = sorted({x for row in list(predicted) + list(truth) for x in row})
  labels = list(labels)
  pred = np.array([[x in set(p) for x in labels] for p in predicted], bool)
  true = np.array([[x in set(t) for x in labels] for t in truth], bool)
  pred, true = pred.reshape(len(predicted), len(labels)), true.reshape(len(truth), len(labels))
  tp, fp, fn = (pred & true).sum(0), (pred & ~true).sum(0), (~pred & true).sum(0)
  out: dict[str, float] = {'num_examples': float(len(truth))}
  per = prf(tp, fp, fn)
  for i, x in enumerate(labels):
    out[f'{x}/precision'], out[f'{x}/recall'], out[f'{x}/f1'] = (float(m[i]) for m in per)
    out[f'{x}/support'] = float(true[:, i].sum())
  micro = prf(tp.sum(), fp.sum(), fn.sum())
  etp, efp, efn = (pred & true).sum(1), (pred & ~true).sum(1), (~pred & true).sum(1)
  sample = prf(etp, efp, efn)
  both_empty = (etp + efp + efn) == 0
  for i, name in enumerate(('precision', 'recall', 'f1')):
    out[f'micro_{name}'] = float(micro[i])
    out[f'macro_{name}'] = float(np.mean(per[i])) if labels else 0.0
    s = np.where(both_empty, 1.0, sample[i])
    out[f'samples_{name}'] = float(np.mean(s)) if len(s) else 0.0
  out['exact_match'] = float(np.mean((pred == true).all(1))) if len(truth) else 0.0
  return out


def classification_scores(generated: list[str], reference_labels: list, vocab=None) -> dict:
  """Flat "classification_*" metrics for answers in `generated` against reference label
  lists. Answers are parsed with `vocab`, default the 14 CheXpert observations (their
  spelling wins; a wrongly named observation is then a false positive) plus every
  reference label. Scores are over the labels in references or parsed answers."""
  if len(generated) != len(reference_labels):
    raise ValueError(f'{len(generated)} answers vs {len(reference_labels)} references')
  if vocab is None:
    vocab = list(CHEXPERT_OBSERVATIONS) + [x for row in reference_labels for x in row]
  canon: dict[str, str] = {}
  for v in vocab:
    canon.setdefault(v.strip().lower(), v.strip())
  truth = [[canon.get(x.strip().lower(), x.strip()) for x in row] for row in reference_labels]
  parsed = [parse_labels(g, canon.values()) for g in generated]
  scores = multilabel_scores([p for p, _ in parsed], truth)
  out = {f'classification_{k}': v for k, v in scores.items()}
  out['classification_num_unknown_labels'] = float(sum(len(u) for _, u in parsed))
  return out


def auroc(scores, truth) -> float:
  """Area under the ROC curve of `scores` for binary `truth` (the Mann-Whitney U
  statistic, ties counting half); nan when only one class is present."""
  scores, truth = np.asarray(scores, np.float64), np.asarray(truth, bool)
  pos, neg = int(truth.sum()), int((~truth).sum())
  if not pos or not neg:
    return float('nan')
  order = np.argsort(scores, kind='mergesort')
  ranks = np.empty(len(scores), np.float64)
  sorted_scores = scores[order]
  # Average ranks over ties (1-based).
  starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
  ends = np.r_[starts[1:], len(scores)]
  for s, e in zip(starts, ends):
    ranks[order[s:e]] = (s + e + 1) / 2
  return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * neg))


def probability_scores(probs, truth, names, threshold: float = 0.5) -> dict[str, float]:
  """Per label AUROC and P/R/F1 at `threshold`, with micro F1 and macro AUROC, for
  probabilities [N, L] against 0/1 truth [N, L] (names: the L labels)."""
  probs, truth = np.asarray(probs), np.asarray(truth) > 0.5
  pred = probs >= threshold
  as_lists = lambda m: [[n for n, v in zip(names, row) if v] for row in m]
  out = multilabel_scores(as_lists(pred), as_lists(truth), list(names))
  aucs = [auroc(probs[:, i], truth[:, i]) for i in range(len(names))]
  for name, a in zip(names, aucs):
    out[f'{name}/auroc'] = a
  valid = [a for a in aucs if a == a]
  out['macro_auroc'] = float(np.mean(valid)) if valid else float('nan')
  return out
