"""An Example's `labels` -> multi-label targets over named observations (a finding
classifier's, or a VLM's auxiliary label loss's).

CheXpert practice: an observation the record does not mention counts as negative, an
uncertain one (-1) as `uncertain_as` (RadVLM: positive); a record with no labels at
all is masked out rather than read as all-negative.
"""
import dataclasses

import numpy as np

from radjax.data import schema


def check_names(names, key: str = 'config.data.label_names') -> tuple[str, ...]:
  names = tuple(names)
  unknown = [n for n in names if n not in schema.CHEXPERT_OBSERVATIONS]
  if unknown:
    raise ValueError(f'{key}: {unknown} are not CheXpert observations '
                     f'{schema.CHEXPERT_OBSERVATIONS}')
  if len(set(names)) != len(names):
    raise ValueError(f'{key}: {names} lists an observation twice')
  return names


@dataclasses.dataclass(frozen=True)
class LabelTargets:
  names: tuple[str, ...]
  uncertain_as: int = 1

  def __call__(self, example: dict) -> dict:
    """{'labels' [L] float32 in {0, 1}, 'label_mask' [] float32 (1: the record has labels)}."""
    given = example.get('labels') or {}
    values = [given.get(n, 0) for n in self.names]
    y = np.array([self.uncertain_as if v == -1 else v for v in values], np.float32)
    return {'labels': y, 'label_mask': np.float32(bool(given))}

  def positives(self, example: dict) -> list[str]:
    y = self(example)['labels']
    return [n for n, v in zip(self.names, y) if v]


def from_config(data_cfg) -> LabelTargets | None:
  names = tuple(data_cfg.get('label_names', ()))
  if not names:
    return None
  uncertain = dict(data_cfg.get('task_options', {}) or {}).get('uncertain_as', 1)
  return LabelTargets(check_names(names), int(uncertain))
