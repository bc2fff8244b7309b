"""All report metrics for (generated, reference) pairs: clinical efficacy + NLG."""
from radjax.eval.clinical import clinical_scores
from radjax.eval.labeler import label_report
from radjax.eval.nlg_metrics import nlg_scores


def score_reports(generated: list[str], references: list[str], meteor: bool = True) -> dict:
  metrics = clinical_scores([label_report(g) for g in generated],
                            [label_report(r) for r in references])
  metrics.update(nlg_scores(generated, references, meteor=meteor))
  return metrics
