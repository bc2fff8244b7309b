"""configs/xraygpt.py and configs/radvlm.py at full size against what the original
systems' code does (/work/shared/reference/seeds_spec.md; XrayGPT d0baa6a0, RadVLM
69fe9462): each test names the original's file and the fact it pins. The formulas the
tests compare with are written here from the originals' behaviour, not copied."""
from radjax.data import instructions, schema
from radjax.eval.evaluators import reports


def test_report_references_are_the_section_the_recipe_trains_on():
  """A model trained on one report section (XrayGPT's summaries and RadVLM's filtered
  reports are findings only; LLM-CXR stage 2 writes impressions) is scored against that
  section, not against 'Findings: ...\\nImpression: ...'."""
  both = schema.make_example(id='r', report={'findings': 'Clear lungs.',
                                             'impression': 'No acute process.'})
  impression_only = schema.make_example(id='i', report={'impression': 'Normal.'})
  ev = reports.ReportEvaluator.__new__(reports.ReportEvaluator)
  for section, want in (('findings', 'Clear lungs.'), ('impression', 'No acute process.'),
                        ('both', 'Findings: Clear lungs.\nImpression: No acute process.')):
    ev.options = instructions.options_from_config({'report_section': section})
    assert ev.reference(both) == want
  records = [schema.encode(ex) for ex in (impression_only, both)]
  assert [ex['id'] for ex in reports.examples_with_reports(records, 2, 'findings')] == ['r']
  assert [ex['id'] for ex in reports.examples_with_reports(records, 2)] == ['i', 'r']
