"""Faithfulness of drawn images in a finding classifier's eyes (tools/faithfulness.py
runs it): per-finding sensitivity / specificity of the classifier's calls against the
reports' labels, and the Frechet distance (FID's formula) between feature sets."""
import numpy as np
import scipy.linalg


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
  if not np.isfinite(covmean).all():  # near-singular product: nudge both (as FID does)
    eps = 1e-6 * np.eye(len(s1))
    covmean = scipy.linalg.sqrtm((s1 + eps) @ (s2 + eps))
  covmean = np.real(covmean)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def feature_distance(a: np.ndarray, b: np.ndarray) -> float:
  """Frechet distance between the Gaussians fitted to features a [N, D] and b [M, D]; NaN
  when either has under 2 rows (no covariance to fit)."""
  if min(len(a), len(b)) < 2:
    return float('nan')

  def stats(x):
    x = np.asarray(x, np.float64)
    return x.mean(0), np.cov(x, rowvar=False)
  return frechet_distance(*stats(a), *stats(b))


def finding_rates(probs: np.ndarray, labels: np.ndarray, names) -> dict:
  """Per finding: sensitivity / specificity of the calls (probs > 0.5) against labels
  (1 stated, 0 ruled out, anything else unknown), with their counts; and the means."""
  calls = np.asarray(probs) > 0.5
  labels = np.asarray(labels)
  out = {}
  for j, name in enumerate(names):
    pos, neg = labels[:, j] == 1, labels[:, j] == 0
    out[name] = {'sensitivity': float(calls[pos, j].mean()) if pos.any() else float('nan'),
                 'specificity': float((~calls[neg, j]).mean()) if neg.any() else float('nan'),
                 'stated': int(pos.sum()), 'ruled_out': int(neg.sum())}
  for key in ('sensitivity', 'specificity'):
    out[f'mean_{key}'] = float(np.nanmean([out[n][key] for n in names]))
  return out
