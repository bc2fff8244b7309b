"""radjax/eval/metrics/faithfulness.py: the Frechet distance against closed forms, and the
per-finding rates of a classifier's calls against the reports' labels."""
import numpy as np
import pytest

from radjax.eval.metrics import faithfulness


def test_frechet_distance_matches_closed_forms():
  rng = np.random.default_rng(0)
  d = 6
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  a, b = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
  # Diagonal covariances: ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2.
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = faithfulness.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  assert got == pytest.approx(want, rel=1e-9)
  # A rotation of both leaves it unchanged (full, non-diagonal covariances).
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  rotated = faithfulness.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2,
                                          q @ np.diag(b) @ q.T)
  assert rotated == pytest.approx(want, rel=1e-7)
  # Equal Gaussians: zero; a pure shift: the squared distance of the means.
  s = np.cov(rng.normal(size=(50, d)), rowvar=False)
  assert faithfulness.frechet_distance(mu1, s, mu1, s) == pytest.approx(0.0, abs=1e-7)
  assert faithfulness.frechet_distance(mu1, s, mu1 + 2.0, s) == pytest.approx(4.0 * d, rel=1e-7)


def test_feature_distance_fits_gaussians_to_samples():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4000, 3))
  y = rng.normal(size=(4000, 3)) * 2.0 + 1.0  # N(1, 4 I): FD = 3 * 1 + 3 * (2 - 1)^2 = 6
  assert faithfulness.feature_distance(x, y) == pytest.approx(6.0, rel=0.05)


def test_finding_rates_count_stated_and_ruled_out_reports():
  names = ('Cardiomegaly', 'Pleural Effusion')
  labels = np.array([[1, 0], [1, 1], [0, -2], [0, 0]])
  probs = np.array([[0.9, 0.2], [0.3, 0.8], [0.6, 0.9], [0.1, 0.7]])
  out = faithfulness.finding_rates(probs, labels, names)
  assert out['Cardiomegaly'] == {'sensitivity': 0.5, 'specificity': 0.5, 'stated': 2,
                                 'ruled_out': 2}
  eff = out['Pleural Effusion']  # the unknown label (-2) counts in neither
  assert (eff['sensitivity'], eff['specificity'], eff['stated'], eff['ruled_out']) == (
      1.0, 0.5, 1, 2)
  assert out['mean_sensitivity'] == pytest.approx(0.75)


def test_a_single_image_has_no_distance():
  """--n 1: the rates stand; the distance is NaN, not scipy's internal error."""
  one, many = np.ones((1, 4)), np.random.default_rng(2).normal(size=(8, 4))
  assert np.isnan(faithfulness.feature_distance(one, many))
  assert np.isnan(faithfulness.feature_distance(many[:0], many[:0]))


def test_a_section_is_scored_on_what_it_states():
  """Drawn from impressions alone (stage 2), the labels are what each impression says, not
  the record's labels of the whole report."""
  from tools import faithfulness as tool
  names = ('Cardiomegaly', 'Pleural Effusion', 'Pneumothorax')
  records = [{'labels': {'Cardiomegaly': 1, 'Pleural Effusion': 0, 'Pneumothorax': 0}}] * 2
  impressions = ['Cardiomegaly. No pneumothorax.', 'Possible small left effusion.']
  np.testing.assert_array_equal(tool._labels(records, impressions, 'impression', names),
                                [[1, -2, 0], [-2, -2, -2]])
  np.testing.assert_array_equal(tool._labels(records, impressions, 'both', names),
                                [[1, 0, 0], [1, 0, 0]])
