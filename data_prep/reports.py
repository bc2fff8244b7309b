"""Free-text radiology reports -> the schema's findings / impression sections."""

from __future__ import annotations

import re

# A section header: an upper-case name at the start of a line, then a colon.
_HEADER = re.compile(r'^[ \t]*([A-Z][A-Z /&,()-]*?)[ \t]*:', re.M)
FINDINGS = ('FINDINGS', 'FINDINGS AND IMPRESSION', 'FINDINGS/IMPRESSION', 'FINDINGS/ IMPRESSION',
            'FINDING')
IMPRESSION = ('IMPRESSION', 'CONCLUSION', 'IMPRESSIONS', 'SUMMARY')


def sections(text: str) -> dict[str, str]:
  """{HEADER: body with whitespace collapsed}; text before the first header is dropped.
  A repeated header keeps its first non-empty body (MIMIC-CXR repeats a header with one
  of them empty)."""
  out = {}
  found = list(_HEADER.finditer(text))
  for m, nxt in zip(found, found[1:] + [None]):
    body = ' '.join(text[m.end():nxt.start() if nxt else len(text)].split())
    name = m.group(1).strip()
    if not out.get(name):
      out[name] = body
  return out


def findings_impression(text: str) -> dict[str, str]:
  """The findings and impression sections of a report ('' where absent)."""
  parts = sections(text)
  pick = lambda names: next((parts[n] for n in names if parts.get(n)), '')
  return {'findings': pick(FINDINGS), 'impression': pick(IMPRESSION)}
