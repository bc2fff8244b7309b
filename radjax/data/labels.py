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
  """names: the observations; box_labels (a subset) also get per-token targets from the
  Example's boxes on a grid x grid patch grid (config.data.box_token_labels)."""
  names: tuple[str, ...]
  uncertain_as: int = 1
  box_labels: tuple[str, ...] = ()
  grid: int = 0
  # Patches per image side, fractional where the tower drops the last pixels (image_size
  # not a multiple of patch_size: 70 px in 16 px patches is 4.375): 0 = grid.
  patches_per_side: float = 0.0

  def __call__(self, example: dict) -> dict:
    """{'labels' [L] float32 in {0, 1}, 'label_mask' [] float32 (1: the record has labels)},
    and with box_labels 'box_targets' [grid * grid, B] and 'box_mask' [B] (box_tokens)."""
    given = example.get('labels') or {}
    values = [given.get(n, 0) for n in self.names]
    y = np.array([self.uncertain_as if v == -1 else v for v in values], np.float32)
    out = {'labels': y, 'label_mask': np.float32(bool(given))}
    if self.box_labels:
      out.update(self.box_tokens(example, dict(zip(self.names, y))))
    return out

  @property
  def box_indices(self) -> tuple[int, ...]:
    return tuple(self.names.index(n) for n in self.box_labels)

  def box_tokens(self, example: dict, y: dict) -> dict:
    """Per box label: 1 on the patches a box of that label overlaps, 0 elsewhere. A
    negative record's patches are all 0; a positive record without a box of the label
    (its location unknown) is masked out, as is a record without labels."""
    g = self.grid
    side = self.patches_per_side or g  # box fractions of the image -> patch indices
    targets = np.zeros((g, g, len(self.box_labels)), np.float32)
    known = np.zeros((len(self.box_labels),), np.float32)
    labelled = bool(example.get('labels'))
    for j, name in enumerate(self.box_labels):
      boxes = [b['box'] for b in example.get('boxes') or () if b.get('label') == name]
      for x1, y1, x2, y2 in boxes:  # a patch counts when the box overlaps it
        c0, c1 = int(np.floor(x1 * side)), max(int(np.ceil(x2 * side)),
                                               int(np.floor(x1 * side)) + 1)
        r0, r1 = int(np.floor(y1 * side)), max(int(np.ceil(y2 * side)),
                                               int(np.floor(y1 * side)) + 1)
        targets[r0:min(r1, g), c0:min(c1, g), j] = 1.0
      known[j] = labelled and (bool(boxes) or y[name] == 0)
    return {'box_targets': targets.reshape(g * g, -1), 'box_mask': known}

  def positives(self, example: dict) -> list[str]:
    y = self(example)['labels']
    return [n for n, v in zip(self.names, y) if v]


def from_config(data_cfg, grid: int = 0, patches_per_side: float = 0.0
                ) -> LabelTargets | None:
  """The targets config.data names; grid: the vision tower's patches per side, which
  box_token_weight > 0 needs (the box targets' grid); patches_per_side: image_size /
  patch_size (the pixels past the grid are dropped)."""
  names = tuple(data_cfg.get('label_names', ()))
  if not names:
    return None
  uncertain = dict(data_cfg.get('task_options', {}) or {}).get('uncertain_as', 1)
  if uncertain not in (0, 1) or isinstance(uncertain, bool):  # -1 made the loss unbounded
    raise ValueError(f'config.data.task_options.uncertain_as={uncertain!r}: 0 (uncertain is '
                     'negative, U-Zeros) or 1 (positive, U-Ones)')
  names = check_names(names)
  if not float(data_cfg.get('box_token_weight', 0.0)):
    return LabelTargets(names, int(uncertain))
  box_labels = tuple(data_cfg.get('box_token_labels', ()))
  if not box_labels or set(box_labels) - set(names):
    raise ValueError(f'config.data.box_token_labels={box_labels} must name some of '
                     f'config.data.label_names={names} (box_token_weight > 0)')
  if data_cfg.get('augment', False):
    raise ValueError('config.data.box_token_weight > 0 with config.data.augment=True: the '
                     'box targets do not follow the random crop; set one of them off')
  if grid <= 0:
    raise ValueError('config.data.box_token_weight > 0 needs a 2D patch tower')
  return LabelTargets(names, int(uncertain), box_labels, grid, patches_per_side)
