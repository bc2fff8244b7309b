"""Reports for synthetic radiographs, composed from real OpenI sentences.

The demo images are synthetic, but their text should read like radiology, so
every sentence comes verbatim (whitespace-normalised) from an Indiana University
/ OpenI report. A sentence enters a pool only when two independent signals agree:
its report's MeSH annotation carries the finding (or is exactly "normal"), and
the sentence itself states it by keyword, with no negation, hedging, comparison
with a prior study, measurement, or mention of anything else. A third check: radjax's
report labeler (the one that scores generated reports) must read a finding sentence as
that finding's observation and a normal sentence as denying what it covers. Without it
"patchy airspace disease" (CheXpert: Lung Opacity) stood for consolidation and
"masslike opacification" for a nodule, and the reference reports themselves scored
only 0.89 finding micro-F1 against the labels they were written for.

Sentences are then matched to the picture: a sentence may not name another side,
lung zone, size or nodule/mass than the renderer drew. The one edit we allow is
mirroring left<->right when too few sentences exist for a side (OpenI has almost
no left pneumothorax); it is marked in the pool and never applied to sentences
naming side-specific anatomy (lingula, middle lobe).

Pools are built once per process, de-duplicated and sorted, so the same rng gives
the same report on every machine.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace

import numpy as np

from data_prep import openi_reports
from radjax.data.schema import DEMO_FINDINGS as FINDING_TO_OBSERVATION
from radjax.eval.metrics.labeler import label_report

FINDINGS = tuple(FINDING_TO_OBSERVATION)
# Reading order of a report: heart, lungs, pleura.
_ORDER = ('cardiomegaly', 'consolidation', 'nodule', 'pleural_effusion', 'pneumothorax')
MAX_WORDS = 60
MAX_SENTENCE_WORDS = 16
MIN_CANDIDATES = 3  # below this, mirrored sentences join the candidates

# MeSH major headings (qualifiers stripped) that annotate each finding.
MESH_HEADINGS = {
  'cardiomegaly': {'Cardiomegaly', 'Cardiac Shadow/enlarged'},
  'pleural_effusion': {'Pleural Effusion'},
  'pneumothorax': {'Pneumothorax'},
  'nodule': {'Nodule', 'Mass'},
  'consolidation': {'Consolidation', 'Pulmonary Consolidation', 'Pneumonia', 'Infiltrate'},
}

_I = re.IGNORECASE
# What a sentence must say to state each finding.
KEYWORDS = {
  'cardiomegaly': re.compile(
    r'cardiomegaly|\b(heart|cardiac silhouette|cardiac size|heart size|cardiomediastinal'
    r' silhouette)( size)? (is |are |appears )?(moderately |markedly |significantly )?'
    r'enlarged|enlarged (heart|cardiac)|cardiac enlargement',
    _I,
  ),
  'pleural_effusion': re.compile(r'(?<!pericardial )effusion|pleural fluid', _I),
  'pneumothorax': re.compile(r'(?<![a-z])pneumothora(x|ces)', _I),
  'nodule': re.compile(r'\bnodul(e|es|ar)\b|\bmass(es|like)?\b', _I),
  'consolidation': re.compile(r'consolidat|air ?space (disease|opacit)', _I),
}
# Any of these in a positive sentence would make it wrong or ambiguous for a
# single synthetic frontal image: negation, hedging, comparison with priors,
# measurements, several lesions, and other abnormalities the image does not show.
_NEGATION = re.compile(r'\b(no|not|without|negative|resolved|removed|free|clear|normal)\b', _I)
_HEDGE = re.compile(
  r'\b(may|might|possibl\w*|probabl\w*|likely|could|cannot|suspicious|suspect\w*|suggest\w*|'
  r'question\w*|versus|vs|borderline|concern\w*|represent\w*|consistent|compatible|'
  r'correlat\w*|or|upper limits?|top normal|uncertain|worrisome|appear to be)\b|[?/;:]',
  _I,
)
_COMPARISON = re.compile(
  r'\b(interval|prior|previous\w*|again|unchanged|stable|increas\w*|decreas\w*|improv\w*|'
  r'worsen\w*|persist\w*|residual|redemonstrat\w*|recurren\w*|remain\w*|develop\w*|new|since|'
  r'compar\w*|now|current\w*|known|history|still|similar|continued|smaller|larger|'
  r'associated|otherwise|also)\b',
  _I,
)
_OTHER = re.compile(
  r'atelecta|edema|pneumon|infect|granulom|calcif|scar|emphysem|fractur|catheter|tube|'
  r'pacemaker|sternotomy|hernia|aort|hil(um|ar)|mediastin|lymph|thicken|fibro|cavit|'
  r'malignan|cancer|neoplas|carcinom|metasta|goiter|congest|vascular|interstitial|venous|'
  r'hypertension|obstructive|atheroscl|atri(al|um)|globular|failure|loculat|hydro|hemo|'
  r'chest wall|breast|nipple|lateral view|frontal|\bPA\b|decubitus|film|portable|kyphos|'
  r'scolio|spine|degenerat|osseous|bony|bone|\bribs?\b|diaphragm|hyperinfl|hypoinfl|volume|'
  r'elevat|multi|diffuse|innumerable|numerous|several|patient|clinical|\bCT\b|surgical|'
  r'clip|postop|CABG|shift|collapse|lobectomy|pneumonectomy|pericardial|markings|lucen|'
  r'air-fluid|XXXX|\d',
  _I,
)
# Opacity words name a finding of their own, except for the lung lesions.
_OPACITY = re.compile(r'opaci|densit', _I)
# More than one lesion: the renderer draws one nodule and one consolidation.
_PLURAL_LESION = re.compile(
  r'\b(nodules|masses|consolidations|opacities|two|three|few|couple)\b', _I
)

_SIDE = {
  'left': re.compile(r'\bleft\b|\blingula', _I),
  'right': re.compile(r'\bright\b', _I),
  'bilateral': re.compile(r'\b(bilateral\w*|bibasilar|biapical|both)\b|effusions', _I),
}
_ZONE = {
  'upper': re.compile(r'\b(upper|apex|apical|apices)\b', _I),
  'middle': re.compile(r'\b(middle|mid ?lung|mid chest|lingula\w*)\b', _I),
  'lower': re.compile(r'\b(lower|base|bases|basilar|basal|bibasilar)\b', _I),
}
_SEVERITY = {
  'small': re.compile(r'\b(small|tiny|trace|minimal|mild\w*|slight\w*|thin)\b', _I),
  'moderate': re.compile(r'\bmoderate\w*\b', _I),
  'large': re.compile(r'\b(large|massive|marked\w*|severe|significant\w*)\b', _I),
}
# Sentences naming side-specific anatomy cannot be mirrored.
_UNMIRRORABLE = re.compile(r'lingula|middle lobe', _I)

# A normal sentence covers a finding by denying it or by calling the organ normal.
_NORMAL_HEART = re.compile(
  r'\b(heart|cardiac|cardiomediastinal)\b.*\b(normal|within normal limits|unremarkable|'
  r'not enlarged)\b|\bno cardiomegaly\b',
  _I,
)
_CLEAR_LUNGS = re.compile(r'\blungs? (are |is )?(well expanded and )?clear\b|\bclear lungs\b', _I)
_NORMAL_OTHER = re.compile(
  r'atelecta|edema|granulom|calcif|scar|emphysem|catheter|tube|pacemaker|sternotomy|hernia|'
  r'aort|hil(um|ar)|lymph|thicken|fibro|degenerat|spine|spondyl|osteophyt|kyphos|scolio|'
  r'XXXX|\d|prior|previous|again|unchanged|stable|interval|compar|tortuous|hyperinfl|'
  r'hypoinfl|low lung volumes|lateral|frontal|\bPA\b|film|portable|borderline|upper limit|'
  r'top limit|top normal|mild|minimal|trace|possibl|\bmay\b|suggest|\bbut\b|although|'
  r'however|surgical|clip|deformit|fractur|bon(e|y)|osseous|\bnow\b|remain|injury|trauma|'
  r'suprapatellar|knee|otherwise|specifically|upper lobe|lower lobe|cavitary|technique',
  _I,
)
_DENIAL = r'\b(no|without|negative for|free of|not)\b[^.]*'
_DENIES = {
  'pleural_effusion': re.compile(_DENIAL + r'(effusion|pleural fluid)', _I),
  'pneumothorax': re.compile(_DENIAL + r'pneumothora', _I),
  'nodule': re.compile(_DENIAL + r'(nodul|mass)', _I),
  'consolidation': re.compile(
    _DENIAL + r'(consolidation|air ?space|infiltrate|pneumonia|opacit)', _I
  ),
}
_NORMAL_IMPRESSION = re.compile(
  r'^(no acute (cardiopulmonary|pulmonary)? ?(disease|abnormalit\w*|findings?|process)'
  r'( identified| are seen)?|normal chest|no active (cardiopulmonary )?disease|'
  r'negative chest)\.$',
  _I,
)


def split_sentences(text: str) -> list[str]:
  """Sentences of a report section, whitespace-normalised and capitalised."""
  out = []
  for s in re.split(r'(?<=[.!])\s+', text or ''):
    s = ' '.join(s.split()).rstrip('. ')
    if len(s) > 2:
      out.append(s[0].upper() + s[1:] + '.')
  return out


def sentence_side(sentence: str) -> str | None:
  """Laterality a sentence states: "left", "right", "bilateral" or None."""
  left = bool(_SIDE['left'].search(sentence))
  right = bool(_SIDE['right'].search(sentence))
  if _SIDE['bilateral'].search(sentence) or (left and right):
    return 'bilateral'
  return 'left' if left else 'right' if right else None


@dataclass(frozen=True, order=True)
class Sentence:
  """A pool sentence with what it claims, for matching against the image."""

  text: str
  side: str | None = None
  zones: frozenset = frozenset()  # empty: no zone named
  severity: frozenset = frozenset()  # empty: no size named
  phrase: str | None = None  # "nodule" / "mass" for lung lesions
  mirrored: bool = False

  @classmethod
  def parse(cls, text: str, finding: str | None = None) -> Sentence:
    phrase = None
    if finding == 'nodule':
      phrase = 'mass' if re.search(r'\bmass', text, _I) else 'nodule'
    return cls(
      text=text,
      side=sentence_side(text),
      zones=frozenset(z for z, p in _ZONE.items() if p.search(text)),
      severity=frozenset(s for s, p in _SEVERITY.items() if p.search(text)),
      phrase=phrase,
    )

  def mirror(self) -> Sentence | None:
    if self.side not in ('left', 'right') or _UNMIRRORABLE.search(self.text):
      return None
    swap = {'left': 'right', 'right': 'left', 'Left': 'Right', 'Right': 'Left'}
    text = re.sub(r'\b(left|right|Left|Right)\b', lambda m: swap[m.group(1)], self.text)
    return replace(self, text=text, side=swap[self.side], mirrored=True)


@dataclass(frozen=True)
class Target:
  """What the image shows for one finding (from the renderer's meta)."""

  side: str | None = None
  zone: str | None = None
  severity: str | None = None
  phrase: str | None = None


def _fits(s: Sentence, t: Target, relax: tuple[str, ...] = ()) -> bool:
  if t.side is not None and s.side not in (None, t.side):
    return False
  if 'zone' not in relax and t.zone and s.zones and t.zone not in s.zones:
    return False
  if 'severity' not in relax and t.severity and s.severity and t.severity not in s.severity:
    return False
  if 'phrase' not in relax and t.phrase and s.phrase and s.phrase != t.phrase:
    return False
  return True


# Relaxed in this order, only when nothing fits. Naming a mass a nodule is a
# lesser error than naming the wrong lobe.
RELAX_LEVELS = ((), ('severity',), ('severity', 'phrase'), ('severity', 'phrase', 'zone'))


def candidates(
  pool: tuple[Sentence, ...],
  target: Target,
  relax: tuple[str, ...] = (),
  exclude: frozenset | set = frozenset(),
) -> list[Sentence]:
  """Sentences of `pool` agreeing with the image (mirrored ones if fewer than 3)."""
  found = [s for s in pool if s.text not in exclude and _fits(s, target, relax)]
  if len(found) < MIN_CANDIDATES:
    mirrors = (s.mirror() for s in pool)
    found += [m for m in mirrors if m and m.text not in exclude and _fits(m, target, relax)]
  return found


def choose(
  rng: np.random.Generator,
  pools: tuple[tuple[Sentence, ...], ...],
  target: Target,
  avoid: set[str] = frozenset(),
) -> str:
  """A random sentence from the first pool that has one fitting the image.

  Tries every pool (first without, then with, the `avoid` texts) at one
  relaxation level before relaxing further: agreeing with the image matters
  more than variety.
  """
  for relax in RELAX_LEVELS:
    for exclude in (avoid, frozenset()):
      for pool in pools:
        found = candidates(pool, target, relax, exclude)
        if found:
          return found[rng.integers(len(found))].text
  fallback = [s for s in pools[0] if s.side is None] or list(pools[0])
  return fallback[rng.integers(len(fallback))].text


def _report_has(report: dict, finding: str) -> bool:
  for term in report['mesh']:
    parts = [p.strip() for p in term.split('/')]
    if parts[0] in MESH_HEADINGS[finding] or '/'.join(parts[:2]) in MESH_HEADINGS[finding]:
      return True
  return False


def is_positive_sentence(sentence: str, finding: str) -> bool:
  """True if `sentence` plainly states `finding` and nothing else."""
  if len(sentence.split()) > MAX_SENTENCE_WORDS or not KEYWORDS[finding].search(sentence):
    return False
  if any(p.search(sentence) for p in (_NEGATION, _HEDGE, _COMPARISON, _OTHER)):
    return False
  if finding in ('nodule', 'consolidation'):
    if _PLURAL_LESION.search(sentence):
      return False
  elif _OPACITY.search(sentence):
    return False
  if finding == 'cardiomegaly' and _SEVERITY['small'].search(sentence):
    return False  # the renderer's cardiomegaly is never mild
  # It must not (also) speak about another target finding.
  if any(KEYWORDS[f].search(sentence) for f in FINDINGS if f != finding):
    return False
  labels = label_report(sentence)
  return labels[FINDING_TO_OBSERVATION[finding]] == 1 and all(
      labels[FINDING_TO_OBSERVATION[f]] not in (1, -1) for f in FINDINGS if f != finding)


def normal_coverage(sentence: str) -> tuple[frozenset, frozenset]:
  """(findings a normal sentence denies, findings it must not be paired with)."""
  covers = {f for f, p in _DENIES.items() if p.search(sentence)}
  if _NORMAL_HEART.search(sentence) and not KEYWORDS['cardiomegaly'].search(sentence):
    covers.add('cardiomegaly')
  excludes = set(covers)
  if _CLEAR_LUNGS.search(sentence):
    # "Lungs are clear" denies parenchymal disease and reads wrong next to any
    # lung or pleural finding.
    covers |= {'consolidation', 'nodule'}
    excludes |= {'consolidation', 'nodule', 'pleural_effusion', 'pneumothorax'}
  # A sentence that names a finding without denying it is not a normal sentence.
  for f in FINDINGS:
    if f not in covers and f != 'cardiomegaly' and KEYWORDS[f].search(sentence):
      return frozenset(), frozenset()
  labels = label_report(sentence)
  if any(labels[FINDING_TO_OBSERVATION[f]] in (1, -1) for f in FINDINGS):
    return frozenset(), frozenset()  # the labeler would read a finding into it
  return frozenset(covers), frozenset(excludes)


@dataclass
class SentencePools:
  """Sentence pools; every tuple is sorted so choices depend only on the rng."""

  findings: dict = field(default_factory=dict)  # finding -> tuple[Sentence]
  impressions: dict = field(default_factory=dict)  # finding -> tuple[Sentence]
  normal: tuple = ()  # (text, covers, excludes)
  normal_impressions: tuple = ()

  def sizes(self) -> dict:
    count = {f: len(self.findings[f]) for f in FINDINGS}
    count.update({f'{f}_impression': len(self.impressions[f]) for f in FINDINGS})
    count['normal'] = len(self.normal)
    count['normal_impression'] = len(self.normal_impressions)
    return count


def build_pools(reports: tuple[dict, ...] | None = None) -> SentencePools:
  """Scans the OpenI reports once and returns the sentence pools."""
  reports = openi_reports.load_reports() if reports is None else reports
  pos = {f: set() for f in FINDINGS}
  imp = {f: set() for f in FINDINGS}
  normal, normal_imp = {}, set()
  for report in reports:
    for finding in FINDINGS:
      if not _report_has(report, finding):
        continue
      for section, target in (('findings', pos), ('impression', imp)):
        for s in split_sentences(report[section]):
          if is_positive_sentence(s, finding):
            target[finding].add(s)
    if [m.lower() for m in report['mesh']] == ['normal']:
      for s in split_sentences(report['findings']) + split_sentences(report['impression']):
        if len(s.split()) > MAX_SENTENCE_WORDS or _NORMAL_OTHER.search(s):
          continue
        covers, excludes = normal_coverage(s)
        if covers:
          normal[s] = (covers, excludes)
      normal_imp.update(
        s for s in split_sentences(report['impression']) if _NORMAL_IMPRESSION.match(s)
      )
  pools = SentencePools(
    # Telegraphic impression sentences read fine in FINDINGS too, and the
    # rarer findings need them to have enough candidates per side and zone.
    findings={f: tuple(Sentence.parse(s, f) for s in sorted(pos[f] | imp[f])) for f in FINDINGS},
    impressions={f: tuple(Sentence.parse(s, f) for s in sorted(imp[f])) for f in FINDINGS},
    normal=tuple((s, *normal[s]) for s in sorted(normal)),
    normal_impressions=tuple(sorted(normal_imp)),
  )
  for f in FINDINGS:
    if not pools.findings[f]:
      raise RuntimeError(f'no OpenI sentence found for {f}; is the archive complete?')
  if not pools.normal_impressions:
    raise RuntimeError('no normal OpenI impression found')
  return pools


@functools.lru_cache(maxsize=1)
def default_pools() -> SentencePools:
  return build_pools()


def labels_for(findings: set[str]) -> dict[str, int]:
  """CheXpert labels: the five observations 1/0, and No Finding iff none present."""
  labels = {FINDING_TO_OBSERVATION[f]: int(f in findings) for f in FINDINGS}
  labels['No Finding'] = int(not findings)
  return labels


def targets_from_meta(meta: dict | None) -> dict[str, Target]:
  """Per-finding Target from the renderer's meta (sides, zones, severity, phrase)."""
  meta = meta or {}
  get = lambda key, f: (meta.get(key) or {}).get(f)  # noqa: E731
  return {
    f: Target(
      side=get('sides', f),
      zone=get('zones', f),
      severity=get('severity', f),
      phrase=meta.get('nodule_phrase') if f == 'nodule' else None,
    )
    for f in FINDINGS
  }


def compose(
  rng: np.random.Generator,
  findings: set[str],
  meta: dict | None = None,
  pools: SentencePools | None = None,
) -> tuple[dict, dict]:
  """Returns ({"findings", "impression"}, CheXpert labels) for a finding set.

  `meta` is the renderer's meta; it steers sentence choice towards sentences
  that agree with the picture (side, zone, size, nodule vs mass).
  """
  pools = pools or default_pools()
  findings = set(findings)
  unknown = findings - set(FINDINGS)
  if unknown:
    raise ValueError(f'unknown findings {sorted(unknown)}')
  targets = targets_from_meta(meta)
  present = [f for f in _ORDER if f in findings]

  best = None
  for _ in range(8):  # redraw if a long draw exceeds the word budget
    chosen = []  # (reading-order key, text)
    for f in present:
      chosen.append((_ORDER.index(f), choose(rng, (pools.findings[f],), targets[f])))
    needed = set(FINDINGS) - findings
    while needed:
      usable = [(s, c) for s, c, x in pools.normal if c & needed and not x & findings]
      # Avoid denying the same thing twice: prefer sentences covering only
      # what is still needed.
      options = [(s, c) for s, c in usable if c <= needed] or usable
      if not options:
        break
      # Prefer sentences covering several findings: shorter reports.
      weights = np.array([len(c & needed) ** 2 for _, c in options], dtype=np.float64)
      text, covers = options[rng.choice(len(options), p=weights / weights.sum())]
      chosen.append((min(_ORDER.index(f) for f in covers), text))
      needed -= covers
    chosen.sort(key=lambda t: t[0])
    findings_text = ' '.join(text for _, text in chosen)

    if present:
      used = {text for _, text in chosen}
      parts = []
      for f in present:
        both = (pools.impressions[f], pools.findings[f])
        parts.append(choose(rng, both, targets[f], avoid=used))
      impression = ' '.join(parts)
    else:
      impression = pools.normal_impressions[rng.integers(len(pools.normal_impressions))]
    report = {'findings': findings_text, 'impression': impression}
    words = len(findings_text.split()) + len(impression.split())
    if best is None or words < best[0]:
      best = (words, report)
    if words <= MAX_WORDS:
      break
  return best[1], labels_for(findings)
