"""Rule-based CheXpert labeler: a radiology report -> 14 observation labels.

label_report(text) gives {observation: 1 | 0 | -1 | None} (positive, negative,
uncertain, not mentioned) in the spirit of the CheXpert labeler: find mentions
per clause, then classify each mention as negated, uncertain or positive with
cue phrases whose scope ends at the clause or at a scope breaker.

Rules were developed on even-numbered OpenI reports only; agreement with the
MeSH annotations of the odd ones is measured in tools/mesh_agreement.py.
"""

from __future__ import annotations

import re

from radjax.data.schema import CHEXPERT_OBSERVATIONS

_C = lambda p: re.compile(p)

# Mention patterns per observation. Word boundaries are explicit so "mass" does
# not fire inside "massive" and "line" not inside "linear".
MENTIONS: dict[str, str] = {
  'Enlarged Cardiomediastinum': (
    r'\b(?:(?:enlarg\w*|widen\w*|prominen\w*)\s+(?:of\s+the\s+)?(?:cardio)?mediastin\w*'
    r'|(?:cardio)?mediastin\w*(?:\s+(?:silhouette|contours?|width|shadow))?'
    r'\s+(?:is\s+|are\s+|appears?\s+|remains?\s+)?(?:\w+ly\s+)?(?:enlarged|widened|prominent)'
    r'|mediastinal\s+widening|widened\s+mediastinum)'
  ),
  'Cardiomegaly': (
    r'\b(?:cardiomegaly'
    r'|(?:enlarg\w*|large|increased)\s+(?:of\s+the\s+)?(?:heart|cardiac)'
    r'|(?:heart|cardiac)(?:\s+(?:size|silhouette|shadow|contours?))?\s+'
    r'(?:is\s+|are\s+|appears?\s+|remains?\s+|again\s+)*'
    r'(?:(?:mildly|moderately|markedly|severely|slightly|minimally|stably|significantly'
    r'|borderline|again|still)\s+)*(?:enlarged|large|increased)'
    r'|(?:heart|cardiac)(?:\s+(?:size|silhouette|shadow))?\s+(?:enlargement)'
    r'|(?:mild|moderate|marked|severe|stable|slight)\s+enlargement\s+of\s+the\s+(?:heart|cardiac))'
  ),
  'Lung Opacity': (
    r'\b(?:opaci\w*|infiltrat\w*|densit(?:y|ies)|air\s*space\s+(?:disease|process)'
    r'|airspace\s+(?:disease|process)|haz(?:y|iness)\s+(?:opacit\w*|density|lung|bas\w*)?)'
  ),
  # "Nodular opacity/density" is left to Lung Opacity (MeSH indexes it so), and a
  # bare "lesion" is too often osseous to count.
  'Lung Lesion': (
    r'\b(?:nodules?|masses|mass|(?:lung|pulmonary|cavitary|cavitating|parenchymal|spiculated'
    r'|hilar)\s+lesions?|tumou?rs?|neoplasms?|carcinoma|lung\s+cancer)\b'
  ),
  'Edema': (
    r'\b(?:o?edema(?:tous)?|(?:vascular|pulmonary|venous|interstitial)\s+(?:congestion|engorgement)'
    r'|(?:congestive\s+)?heart\s+failure|congestive\s+failure|chf|congestion|cephalization'
    r'|engorged'
    r'|vascular\s+(?:redistribution|prominence|cephalization)'
    r'|(?:increased|prominent)\s+(?:central\s+)?(?:pulmonary\s+|lung\s+)?vascular\w*'
    r'|prominence\s+of\s+the\s+(?:central\s+)?(?:pulmonary\s+)?vascula\w*'
    r'|(?:pulmonary\s+)?vascularity\s+(?:is\s+)?(?:\w+ly\s+)?(?:increased|prominent))\b'
  ),
  'Consolidation': r'\bconsolidat\w*',
  # "Infection" is left out: in these reports it is mostly "prior granulomatous
  # infection" or a hedge, and MeSH never indexes it as pneumonia.
  'Pneumonia': r'\b(?:pneumonia\w*|bronchopneumonia|pneumonitis)\b',
  'Atelectasis': (
    r'\b(?:atelecta\w*|(?:lobar|lobe|lung)\s+collapse|collapse\s+of\s+the\s+\w+\s+(?:lobe|lung))'
  ),
  'Pneumothorax': r'\b(?:hydro|hemo)?pneumothora\w*',
  'Pleural Effusion': (
    r'\b(?:(?<!pericardial\s)effusions?|pleural\s+fluid|hydrothora\w*|hydropneumothora\w*'
    r'|blunt\w*\s+(?:of\s+)?(?:the\s+)?(?:\w+\s+)?(?:costophrenic|cp)'
    r'|(?:costophrenic|cp)\s+(?:angles?|sulcus|sulci)(?:\s+(?:is|are))?\s+(?:\w+\s+)?blunt\w*)'
  ),
  'Pleural Other': (
    r'\b(?:pleural\s+(?:thickening|scar\w*|plaques?|calcifications?)'
    r'|(?:thickening|scarring)\s+of\s+the\s+(?:\w+\s+)?pleura|fibrothorax'
    r'|pleural[- ]parenchymal\s+scar\w*|apical\s+(?:pleural\s+)?(?:cap|thickening))'
  ),
  'Fracture': r'\bfractur\w*',
  'Support Devices': (
    r'\b(?:(?:endotracheal|et|ng|og|nasogastric|orogastric|enteric|feeding|chest|tracheostomy'
    r'|gastric|dobhoff)\s+tubes?|tracheostomy|catheters?|picc|(?:central|venous|port|midline'
    r'|ij|jugular|subclavian|arterial|swan[- ]ganz)\s+(?:venous\s+)?(?:catheters?|lines?)'
    r'|port-?a-?cath|power\s*port|pacemakers?|pacers?|defibrillators?|aicd|icd'
    r'|(?:pacing|pacemaker|cardiac)\s+leads?|leads?\s+(?:terminat|overl|project)\w*'
    r'|(?:surgical|vascular|cholecystectomy)\s+clips?|clips'
    r'|(?:monitor\w*|ecg|ekg|telemetry|external)\s+(?:\w+\s+)?leads?|xxxx\s+with\s+(?:its\s+)?tip'
    r'|(?:sternal|sternotomy|cerclage)\s+wires?|hardware|prosthe\w+|stents?'
    r'|valve\s+replacement|(?:mitral|aortic)\s+valve\s+(?:prosthesis|replacement)'
    r'|drains?|devices?|generator|loop\s+recorder|fixation|screws?|plates?|rods?'
    r'|(?:tissue\s+)?expanders?|implants?)\b'
  ),
}
_MENTIONS = {k: _C(v) for k, v in MENTIONS.items()}

# Statements that assert normality without a negation word. Each pattern gives
# 0 to the listed observations.
_LUNG_FIELDS = ('Lung Opacity', 'Consolidation', 'Pneumonia', 'Edema', 'Atelectasis')
_CARDIO = ('Cardiomegaly', 'Enlarged Cardiomediastinum')
_NORMAL_VERB = r'(?:is|are|appears?|remains?|was|were)'
_NORMAL_ADJ = (r'(?:normal|within\s+normal\s+limits|unremarkable|not\s+(?:enlarged|widened)'
               r'|upper\s+limits?\s+of\s+normal|top\s+normal|negative)')
NORMALS: list[tuple[str, tuple[str, ...]]] = [
  (rf'\bcardio-?\s*mediastinal(?:\s+(?:silhouette|contours?|shadow|size))?(?:\s+and\s+[\w ]+?)?'
   rf'\s+{_NORMAL_VERB}\s+(?:\w+\s+)?{_NORMAL_ADJ}', _CARDIO),
  (r'\bnormal(?:\s+|-)(?:appearing\s+)?(?:size[d]?\s+)?cardio-?\s*mediastinal', _CARDIO),
  (rf'\b(?:heart|cardiac)(?:\s+(?:size|silhouette|shadow|contours?))?'
   rf'(?:\s+and\s+[\w ]+?)?\s+{_NORMAL_VERB}\s+(?:\w+\s+)?(?:in\s+size\s+)?{_NORMAL_ADJ}',
   ('Cardiomegaly',)),
  (r'\b(?:heart|cardiac)(?:\s+(?:size|silhouette))?\s+(?:is\s+)?normal', ('Cardiomegaly',)),
  (r'\bnormal(?:\s+|-)(?:sized?\s+)?(?:heart|cardiac)', ('Cardiomegaly',)),
  (r'\b(?:heart|cardiac)\s+(?:size\s+)?(?:is\s+)?(?:within\s+normal|not\s+enlarged)',
   ('Cardiomegaly',)),
  (r'\bno\s+(?:evidence\s+of\s+)?(?:cardiac\s+enlargement|enlarged\s+heart)', ('Cardiomegaly',)),
  (rf'\bmediastin\w*(?:\s+(?:silhouette|contours?|width))?(?:\s+and\s+[\w ]+?)?'
   rf'\s+{_NORMAL_VERB}\s+(?:\w+\s+)?{_NORMAL_ADJ}', ('Enlarged Cardiomediastinum',)),
  (r'\bnormal\s+(?:\w+\s+)?mediastin\w*', ('Enlarged Cardiomediastinum',)),
  (rf'\blungs?\s+(?:fields?\s+)?(?:{_NORMAL_VERB}\s+)?(?:\w+\s+(?:and\s+)?)?clear\b', _LUNG_FIELDS),
  (r'\bclear\s+lungs?\b', _LUNG_FIELDS),
]
_NORMALS = [(_C(p), obs) for p, obs in NORMALS]

# Phrases that look like negation but are not; removed before cue search.
_PSEUDO = _C(
  r'\b(?:no|without)\s+(?:\w+\s+){0,2}?(?:change|increase|decrease|worsening|improvement'
  r'|progression|difference)\b|\bnot\s+only\b|\bno\s+longer\s+(?:able|possible)\b'
  r'|\bnot\s+(?:well\s+)?(?:assessed|evaluated|visualized\s+well)\b'
)
# Uncertainty phrases containing a negation word; matched first so "cannot be
# excluded" reads as uncertain, not negated.
_NEG_UNCERTAIN = _C(
  r'\b(?:cannot|can\s*not|could\s+not|not|no)\s+(?:be\s+)?(?:entirely\s+|completely\s+|totally\s+)?'
  r'(?:exclude\w*|rule\w*\s+out|ruled\s+out|be\s+ruled\s+out)'
  r'|\bnot\s+(?:\w+\s+)?(?:excluded|ruled\s+out)\b'
)
_PRE_NEG = _C(
  r'\b(?:no|not|without|negative\s+for|free\s+of|absence\s+of|absent|resolved|resolution\s+of'
  r'|clear\s+of|no\s+longer|removal\s+of|removed|nor|neither|rather\s+than|instead\s+of'
  r'|does\s+not|do\s+not|unlikely)\b'
)
# "Has not resolved" and "not yet cleared" say it is still there: the filler word before
# resolved / cleared is never a negation.
_FILLER = r'(?:(?!not\b|yet\b)\w+\s+)?'
_POST_NEG = _C(
  rf'^[^,:]{{0,60}}?\b(?:(?:is|are|was|were|has|have)\s+{_FILLER}(?:not\s+(?:seen|identified'
  r'|present|visualized|appreciated|demonstrated|evident|noted|visible|detected|apparent)'
  rf'|absent|resolved|cleared|gone|no\s+longer|ruled\s+out|excluded)|(?:has|have)\s+{_FILLER}resolved'
  r'|(?<!not\s)(?<!yet\s)resolved|unlikely|not\s+(?:seen|identified|present|visualized|appreciated|demonstrated|evident'
  r'|noted|visible|detected|apparent|likely)|not\s+definitely\s+seen|no\s+longer\s+(?:seen|present|visualized|evident|visible)'
  r'|removed|(?:appears?|is|are)\s+(?:within\s+(?:the\s+)?(?:limits\s+of\s+)?normal|normal))\b'
  # A structured line's answer: "Pneumothorax: none.", "Pneumothorax? No."
  r'|^\s*[:?]\s*(?:none|no|absent|negative)\b'
)
_UNCERTAIN = (
  r'\b(?:may|might|possibl[ey]|probabl[ey]|likely|question(?:able)?|questionably|suspicious'
  r'|suspect\w*|concern(?:ing)?\s+for|suggest\w*|could|differential|versus|vs|indeterminate'
  r'|equivocal|borderline|presum\w*|favor\w*|worrisome|uncertain|cannot|can\s*not|not\s+excluded'
  r'|UNCERTAIN|represents?|reflects?|vs\.|compatible|consideration|considered|suspicion'
  r'|setting)\b'
)
_PRE_UNC = _C(_UNCERTAIN)
# After a mention only cues that keep the mention as their subject count, so in
# "opacity which may represent atelectasis" the opacity stays positive.
_POST_UNC = _C(
  r'^\s*(?:\([^)]*\)\s*)?(?:versus|vs\.?|or\b|/|(?:is|are|was|were)\s+(?:\w+\s+)?(?:possible'
  r'|likely|suspected|questioned|questionable|not\s+excluded|UNCERTAIN|considered|uncertain|equivocal)'
  r'|(?:may|might|could|can)\s+(?:\w+\s+)?(?:be|exist|present)|UNCERTAIN|cannot|can\s*not'
  r'|suspected|questioned|not\s+excluded)'
)
# Hypothetical and boilerplate mentions ("if there is concern for fracture",
# "evaluation for pneumothorax is limited") assert nothing and are skipped.
_PRE_HYPO = _C(
  r'\b(?:if|evaluat\w*\s+for|assess\w*\s+for|to\s+(?:exclude|evaluate|assess|identify|detect)'
  r'|rule[- ]?out|recommend\w*|follow[- ]?up|correlat\w*\s+(?:\w+\s+){0,3}?for|history\s+of'
  r'|obscure)\b'
)
_POST_HYPO = _C(r'^[^,]{0,30}?\b(?:may\s+not\s+be|(?:is|are)\s+limited|would\s+be)\b')
# A condition ("if there is concern for fracture") reaches to its comma: its own "there
# is" does not end it the way _BREAK ends other cues.
_IF = _C(r'\bif\b')
_IF_END = _C(r'[,:]|\bthen\b')
# Words that end a cue's scope between the cue and the mention.
_BREAK = _C(
  r'\b(?:is|are|was|were|has|have|shows?|demonstrates?|which|whereas|though'
  r'|there|with|and\s+(?:a|an|the|there|mild|small|moderate|large|minimal)|while|since'
  r'|consistent|compatible|secondary|due|now|again|noted|seen|present)\b|[:]'
)
# A graded item after a comma ("no pneumothorax, mild cardiomegaly") is a finding of its
# own unless the list goes on to an "or" ("no consolidation, large effusion, or
# pneumothorax": "no large effusion").
_GRADED_ITEM = _C(r',\s*(?:(?:a|an|the)\s+)?(?:mild|mildly|small|moderate|moderately|large'
                  r'|minimal|marked|markedly|severe|enlarged|increased|new|persistent|trace)\b')
_LIST_GOES_ON = _C(r'\b(?:or|nor)\b|/')
# So is an item after a comma that its own words assert ("negative for pneumothorax or
# effusion, cardiomegaly noted"), when the list does not go on after it.
_AFTER_COMMA = _C(r',\s*(?:(?:the|a|an)\s+)?$')
_ASSERTED = _C(r'^[^,]{0,30}?\b(?:noted|seen|present|identified|demonstrated|evident|visible'
               r'|observed)\b')

# A question mark followed by its answer ("Pneumothorax? No.") does not end the sentence.
_SENTENCE = _C(r'(?<!\d)\.(?!\d)|\?(?!\s*(?:no|none|yes|absent|negative|present)\b)|[;!\n]'
               r'|\s\d\.\s')
_CLAUSE = _C(r'\b(?:but|however|although|except|aside\s+from|apart\s+from|other\s+than)\b')


def _clauses(text: str) -> list[str]:
  out = []
  for sentence in _SENTENCE.split(text.lower()):
    out.extend(c for c in _CLAUSE.split(sentence) if c.strip())
  return out


def _mask(clause: str) -> str:
  # Same-length replacement keeps mention offsets valid.
  clause = _PSEUDO.sub(lambda m: '_' * len(m.group()), clause)
  # Padded with spaces so the UNCERTAIN cue keeps its word boundary.
  return _NEG_UNCERTAIN.sub(lambda m: 'UNCERTAIN'.ljust(len(m.group()))
                            if len(m.group()) >= 9 else '_' * len(m.group()), clause)


def _in_scope(cues, before: str) -> bool:
  """Whether the last cue in `before` reaches its end (no breaker in between)."""
  matches = list(cues.finditer(before))
  last = matches[-1] if matches else None
  return last is not None and not _BREAK.search(before[last.end():])


def _negated_before(clause: str, start: int, end: int) -> bool:
  """A negation cue before the mention reaches it: no breaker, and no graded item that
  ends the negated list (the mention's first word counts: "no effusion, enlarged heart")."""
  before = clause[:start]
  if not _in_scope(_PRE_NEG, before):
    return False
  cue_end = list(_PRE_NEG.finditer(before))[-1].end()
  lead = re.match(r'\w*', clause[start:end]).group()
  item = _GRADED_ITEM.search(before[cue_end:] + lead)
  if item is not None:
    return bool(_LIST_GOES_ON.search(clause[cue_end + item.end():]))
  after = clause[end:]
  if _AFTER_COMMA.search(before[cue_end:]) and _ASSERTED.search(after):
    return bool(_LIST_GOES_ON.search(after))
  return True


def _in_condition(before: str) -> bool:
  matches = list(_IF.finditer(before))
  return bool(matches) and not _IF_END.search(before[matches[-1].end():])


def _classify(clause: str, start: int, end: int) -> int | None:
  before, after = clause[:start], clause[end:]
  if _in_scope(_PRE_HYPO, before) or _POST_HYPO.search(after) or _in_condition(before):
    return None
  if _negated_before(clause, start, end) or _POST_NEG.search(after):
    return 0
  if _in_scope(_PRE_UNC, before) or _POST_UNC.search(after):
    return -1
  return 1


# CheXpert's aggregator: heart failure stated or suspected (an Edema mention) makes
# Cardiomegaly at least uncertain.
_HEART_FAILURE = _C(r'\b(?:chf|(?:congestive\s+)?heart\s+failure|congestive\s+failure)\b')


def _merge(old: int | None, new: int | None) -> int | None:
  # Precedence across mentions: positive (1) > uncertain (-1) > negative (0).
  rank = {None: -1, 0: 0, -1: 1, 1: 2}  # None: not mentioned
  return new if rank[new] > rank[old] else old


def label_report(text: str) -> dict[str, int | None]:
  """CheXpert labels of one report: 1 positive, 0 negative, -1 uncertain, None unmentioned."""
  labels: dict[str, int | None] = {obs: None for obs in CHEXPERT_OBSERVATIONS}
  if not re.search(r'[^\W_]', text or ''):
    return labels  # a report without words ('', '.') asserts nothing, not even No Finding
  for raw in _clauses(text or ''):
    clause = _mask(raw)
    covered = []
    for pattern, observations in _NORMALS:
      for m in pattern.finditer(clause):
        covered.append((m.start(), m.end()))
        for obs in observations:
          labels[obs] = _merge(labels[obs], 0)
    for obs, pattern in _MENTIONS.items():
      for m in pattern.finditer(clause):
        # A mention inside a normal statement ("heart size is normal") is not a finding.
        if any(s <= m.start() and m.end() <= e for s, e in covered):
          continue
        label = _classify(clause, m.start(), m.end())
        labels[obs] = _merge(labels[obs], label)
        if obs == 'Edema' and label in (1, -1) and _HEART_FAILURE.fullmatch(m.group()):
          labels['Cardiomegaly'] = _merge(labels['Cardiomegaly'], -1)
  others = [v for k, v in labels.items() if k not in ('No Finding', 'Support Devices')]
  # CheXpert: No Finding is positive when nothing but support devices is positive or uncertain.
  labels['No Finding'] = None if any(v in (1, -1) for v in others) else 1
  return labels


def report_text(findings: str, impression: str) -> str:
  """The text a report is labeled on: findings then impression."""
  return '. '.join(t for t in (findings, impression) if t)
