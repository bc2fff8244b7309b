"""Procedural axial chest CT volumes with known findings, in vectorised numpy.

No CT can be downloaded here, so the embedded 3D dataset draws its volumes: body wall
(skin, subcutaneous fat, muscle), both lungs tapering to the apices and sitting on the
diaphragm domes, the heart and pericardial fat, the descending aorta, trachea and main
bronchi, spine and ribs, the liver below the right dome; and findings whose ground
truth is known by construction: lung nodules or masses (each with its 3D box), pleural
effusion layering in the dependent pleural space of one or both sides, cardiomegaly.

Layout and coordinates follow data_prep/volumes.py (an axial series as displayed):
the array is (rows, cols, slices); rows run anterior -> posterior, columns the
patient's right -> left, slices inferior -> superior. A 3D box is [x1, y1, z1, x2, y2,
z2] in [0, 1]: x along columns, y along rows, z along slices, as fractions of the
volume's extent (voxel i spans [i / n, (i + 1) / n]). Values are Hounsfield units until
`window` maps them to [0, 1].

Sampling and drawing are separate: `sample_case(rng, findings)` draws every random
number into a `Case`; `render_hu(case)` is a pure function of it. A test can drop a
finding from a case (dataclasses.replace) and see exactly which voxels it changed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_prep import volume_ops

FINDINGS = ('nodule', 'pleural_effusion', 'cardiomegaly')
SIDES = ('right', 'left')  # the patient's
SLICE_RANGE = (16, 48)  # inclusive; drawn per volume when slices is not given
MASS_MM = 30.0  # a lung lesion of 3 cm or more is a mass, below it a nodule
MIN_SIDE, MIN_SLICES = 16, 4  # the smallest volume the anatomy is drawn on
EFFUSION_DEPTH = {'small': 0.10, 'moderate': 0.20, 'large': 0.30}  # normalised rows

HU = {'air': -1000.0, 'lung': -850.0, 'fat': -100.0, 'fluid': 10.0, 'soft': 40.0,
      'nodule': 30.0, 'blood': 45.0, 'liver': 60.0, 'cancellous': 300.0, 'bone': 800.0}

_f32 = np.float32


@dataclasses.dataclass(frozen=True)
class Nodule:
  centre: tuple[int, int, int]  # voxel (row, col, slice): always inside the lesion
  diameter_mm: float
  side: str  # 'right' | 'left'
  lobe: str  # 'upper' | 'middle' | 'lower'

  @property
  def phrase(self) -> str:
    return 'mass' if self.diameter_mm >= MASS_MM else 'nodule'


@dataclasses.dataclass(frozen=True)
class Case:
  """Everything random about one volume; render_hu(case) draws it."""
  shape: tuple[int, int, int]  # (rows, cols, slices)
  spacing: tuple[float, float, float]  # [sx, sy, sz] mm
  body: tuple[float, float, float, float]  # rx, ry, centre y, fat thickness (fraction)
  lung_z: tuple[float, float]  # base and apex as fractions of the slices
  lungs: tuple[tuple[float, float, float, float, float], ...]  # per side: cx, cy, rx, ry, dome
  heart: tuple[float, float, float, float, float, float]  # cx, cy, h, rx, ry, rh
  airway: tuple[float, float, float]  # trachea centre y, radius, carina height (lung h)
  rib_phase: float
  noise_seed: int
  noise_hu: float
  nodules: tuple[Nodule, ...] = ()
  effusion: tuple[tuple[str, str], ...] = ()  # (side, 'small'|'moderate'|'large')
  cardiomegaly: bool = False

  @property
  def findings(self) -> set[str]:
    return ({'nodule'} if self.nodules else set()) | (
      {'pleural_effusion'} if self.effusion else set()) | (
      {'cardiomegaly'} if self.cardiomegaly else set())


def _grid(shape):
  """Voxel-centre coordinates: x in [-1, 1] over columns, y over rows, z in [0, 1]."""
  rows, cols, slices = shape
  y = ((np.arange(rows, dtype=_f32) + 0.5) / rows * 2 - 1)[:, None, None]
  x = ((np.arange(cols, dtype=_f32) + 0.5) / cols * 2 - 1)[None, :, None]
  z = ((np.arange(slices, dtype=_f32) + 0.5) / slices)[None, None, :]
  return x, y, z


def _lung_height(case: Case, z):
  base, apex = case.lung_z
  return (z - base) / (apex - base)


def _taper(h):
  """Cross-section scale of a lung at height h: full below 0.6, narrowing to the apex."""
  return np.sqrt(np.clip((1.0 - h) / 0.4, 0.0, 1.0))


def _lobe(side: str, v: float, h: float) -> str:
  """Lobe of a point at height h and anterior-posterior offset v (-1 anterior .. 1)
  in a lung: the oblique fissure rises posteriorly; the right middle lobe lies in
  front, below the horizontal fissure."""
  if h < 0.5 + 0.35 * v:
    return 'lower'
  if side == 'right' and h < 0.62 and v < 0:
    return 'middle'
  return 'upper'


def sample_case(rng: np.random.Generator, findings=(), *, rows: int = 64, cols: int = 64,
                slices: int | None = None, num_nodules: int | None = None) -> Case:
  """Draws one volume's anatomy and the given findings (a subset of FINDINGS)."""
  findings = set(findings)
  unknown = findings - set(FINDINGS)
  if unknown:
    raise ValueError(f'unknown findings {sorted(unknown)}; known: {FINDINGS}')
  u = rng.uniform
  if slices is None:
    slices = int(rng.integers(SLICE_RANGE[0], SLICE_RANGE[1] + 1))
  if min(rows, cols) < MIN_SIDE or slices < MIN_SLICES:
    raise ValueError(f'volume ({rows}, {cols}, {slices}) too small: need {MIN_SIDE} x '
                     f'{MIN_SIDE} x {MIN_SLICES} or more')
  fov, extent = u(340.0, 390.0), u(260.0, 320.0)  # mm: in-plane field of view, z coverage
  spacing = (fov / cols, fov / rows, extent / slices)
  body = (u(0.86, 0.94), u(0.62, 0.70), u(0.02, 0.08), u(0.05, 0.09))
  lung_z = (u(0.10, 0.18), u(0.88, 0.96))
  lungs = tuple((sign * u(0.40, 0.45), u(-0.04, 0.04), u(0.30, 0.34), u(0.46, 0.52),
                 u(0.22, 0.30)) for sign in (-1.0, 1.0))  # right lung on the image left
  grow = (u(1.25, 1.40), u(1.10, 1.20)) if 'cardiomegaly' in findings else (1.0, 1.0)
  heart = (u(0.08, 0.14), u(-0.22, -0.14), u(0.26, 0.32), u(0.26, 0.30) * grow[0],
           u(0.22, 0.26) * grow[0], u(0.20, 0.24) * grow[1])
  airway = (u(-0.34, -0.28), u(0.055, 0.07), u(0.68, 0.74))
  case = Case(shape=(rows, cols, slices), spacing=spacing, body=body, lung_z=lung_z,
              lungs=lungs, heart=heart, airway=airway, rib_phase=u(0.0, 1.0),
              noise_seed=int(rng.integers(2**31)), noise_hu=u(8.0, 16.0),
              cardiomegaly='cardiomegaly' in findings)
  if 'pleural_effusion' in findings:
    where = rng.choice(['right', 'left', 'both'], p=[0.35, 0.35, 0.3])
    size = str(rng.choice(list(EFFUSION_DEPTH)))
    case = dataclasses.replace(
      case, effusion=tuple((s, size) for s in (SIDES if where == 'both' else (str(where),))))
  if 'nodule' in findings:
    n = num_nodules or int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))
    case = dataclasses.replace(case, nodules=tuple(_sample_nodule(rng, case) for _ in range(n)))
  return case


def _sample_nodule(rng: np.random.Generator, case: Case) -> Nodule:
  """A lesion centred on a voxel well inside a lung: away from the mediastinum (the
  heart's side) and above the dome, so its centre voxel is always lung."""
  for _ in range(100):
    nodule = _try_nodule(rng, case)
    if nodule is not None:
      return nodule
  raise RuntimeError('no place for a nodule outside the heart in 100 draws')


def _try_nodule(rng: np.random.Generator, case: Case) -> Nodule | None:
  rows, cols, slices = case.shape
  side_index = int(rng.integers(2))
  side = SIDES[side_index]
  cx, cy, rx, ry, _ = case.lungs[side_index]
  h = rng.uniform(0.35, 0.80)
  lateral = 1.0 if side == 'left' else -1.0  # +x is the patient's left
  r, theta = np.sqrt(rng.uniform(0.0, 0.5)), rng.uniform(-0.5 * np.pi, 0.5 * np.pi)
  du, dv = lateral * r * np.cos(theta), r * np.sin(theta)  # lateral half of the section
  scale = float(_taper(h))
  x, y = cx + du * rx * scale, cy + dv * ry * scale
  base, apex = case.lung_z
  z = base + h * (apex - base)
  centre = (min(rows - 1, int((y + 1) / 2 * rows)), min(cols - 1, int((x + 1) / 2 * cols)),
            min(slices - 1, int(z * slices)))
  hx, hy, hh, hrx, hry, hrh = case.heart
  gy, gx = (centre[0] + 0.5) / rows * 2 - 1, (centre[1] + 0.5) / cols * 2 - 1
  gh = float(_lung_height(case, (centre[2] + 0.5) / slices))
  if ((gx - hx) / hrx) ** 2 + ((gy - hy) / hry) ** 2 + ((gh - hh) / hrh) ** 2 < 1.3 ** 2:
    return None  # in the heart or its fat: not a lung nodule
  if side in dict(case.effusion):
    scaled = ry * float(_taper(gh))
    depth = EFFUSION_DEPTH[dict(case.effusion)[side]] * (1.3 - gh)
    if gh < 0.8 and (gy - cy) / scaled > 1.0 - (depth + 0.1) / scaled:
      return None  # in the pleural fluid (or touching it): it would not show
  smallest = 2.2 * max(case.spacing[:2])  # at least ~2 voxels across in-plane
  if rng.random() < 0.15:
    diameter = rng.uniform(MASS_MM, 42.0)
  else:
    diameter = rng.uniform(max(6.0, smallest), 28.0)
  return Nodule(centre=centre, diameter_mm=round(float(max(diameter, smallest)), 1), side=side,
                lobe=_lobe(side, dv, h))


def nodule_box(case: Case, nodule: Nodule) -> list[float]:
  """[x1, y1, z1, x2, y2, z2] in [0, 1] around the lesion's sphere."""
  rows, cols, slices = case.shape
  r, c, s = nodule.centre
  radius = nodule.diameter_mm / 2
  sx, sy, sz = case.spacing
  out = []
  for centre, step, n in ((c, sx, cols), (r, sy, rows), (s, sz, slices)):
    out.append((centre + 0.5 - radius / step) / n)
  for centre, step, n in ((c, sx, cols), (r, sy, rows), (s, sz, slices)):
    out.append((centre + 0.5 + radius / step) / n)
  return [round(float(np.clip(v, 0.0, 1.0)), 4) for v in out]


def heart_box(case: Case) -> list[float]:
  """[x1, y1, z1, x2, y2, z2] around the heart and its fat (what cardiomegaly changes)."""
  cx, cy, h, rx, ry, rh = case.heart
  base, apex = case.lung_z
  z0, z1 = base + (h - rh * 1.2) * (apex - base), base + (h + rh * 1.2) * (apex - base)
  box = [(cx - rx * 1.2 + 1) / 2, (cy - ry * 1.2 + 1) / 2, z0,
         (cx + rx * 1.2 + 1) / 2, (cy + ry * 1.2 + 1) / 2, z1]
  return [float(np.clip(v, 0.0, 1.0)) for v in box]


def _lung_masks(case: Case, x, y, h):
  """Per side: (aerated lung mask, u, v, taper) before the heart is carved out."""
  scale = _taper(h)
  out = []
  for cx, cy, rx, ry, dome in case.lungs:
    u = (x - cx) / (rx * scale + 1e-6)
    v = (y - cy) / (ry * scale + 1e-6)
    q = u * u + v * v
    # The dome: the centre of the section reaches lowest-h first.
    out.append(((q < 1.0) & (h > dome * (1.0 - q)) & (h <= 1.0), u, v, scale))
  return out


def render_hu(case: Case) -> np.ndarray:
  """The volume in HU, float32 (rows, cols, slices); a pure function of `case`."""
  x, y, z = _grid(case.shape)
  h = _lung_height(case, z)
  shape = case.shape
  vol = np.full(shape, HU['air'], _f32)

  brx, bry, bcy, fat = case.body
  q_body = (x / brx) ** 2 + ((y - bcy) / bry) ** 2
  body = np.broadcast_to(q_body < 1.0, shape)
  vol[body] = HU['fat']
  inner = (x / (brx * (1 - fat))) ** 2 + ((y - bcy) / (bry * (1 - fat))) ** 2
  vol[np.broadcast_to((inner < 1.0) | (q_body > 0.97), shape) & body] = HU['soft']  # skin

  lungs = _lung_masks(case, x, y, h)
  # Liver under the right dome; a region of its own so the abdomen is not uniform.
  right_section = lungs[0][1] ** 2 + lungs[0][2] ** 2
  liver = (inner < 1.0) & (x < 0.15) & (h < 0.3 * (1.0 - np.minimum(right_section, 1.0)))
  vol[liver] = HU['liver']

  cx, cy, hh, rx, ry, rh = case.heart
  q_heart = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((h - hh) / rh) ** 2
  heart_fat = q_heart < 1.2 ** 2
  masks = [lung & ~heart_fat for lung, *_ in lungs]
  for m in masks:
    vol[m] = HU['lung']
  vol[heart_fat] = HU['fat']
  vol[q_heart < 1.0] = HU['blood']

  depth = dict(case.effusion)
  for side, m, (_, u, v, scale), (lcx, lcy, _, lry, _) in zip(SIDES, masks, lungs, case.lungs):
    if side in depth:
      # Fluid layers against the posterior chest wall (the patient lies supine), thicker
      # towards the base.
      edge = v > 1.0 - EFFUSION_DEPTH[depth[side]] * (1.3 - h) / (lry * scale + 1e-6)
      vol[m & edge & (h < 0.8)] = HU['fluid']

  aorta = ((x - 0.14) ** 2 + (y - 0.32) ** 2 < 0.065 ** 2) & (h < 0.85) & (inner < 1.0)
  vol[np.broadcast_to(aorta, shape)] = HU['blood']

  ty, tr, carina = case.airway
  # Trachea above the carina, then the main bronchi diverging (the right one steeper).
  bx = np.where(x < 0, -0.9, 1.4) * np.clip(carina - h, 0.0, None)
  airway_x = np.where(h >= carina, 0.0, bx)
  d2 = (x - airway_x) ** 2 + (y - ty) ** 2
  radius = np.where(h >= carina, tr, tr * 0.75)
  in_airway = (h > carina - 0.2) & (inner < 1.0)
  vol[in_airway & (d2 < (radius + 0.02) ** 2)] = HU['soft']  # airway wall
  vol[in_airway & (d2 < radius ** 2)] = HU['air']

  # Spine: vertebral body (cancellous, cortical rim) and the canal behind it.
  vb = x ** 2 + (y - (bcy + 0.42)) ** 2
  vol[np.broadcast_to(vb < 0.11 ** 2, shape)] = HU['bone']
  vol[np.broadcast_to(vb < 0.09 ** 2, shape)] = HU['cancellous']
  vol[np.broadcast_to(x ** 2 + (y - (bcy + 0.58)) ** 2 < 0.045 ** 2, shape)] = HU['soft']
  # Ribs: a band just inside the body wall, cut into sloping segments along z.
  band = (inner > 0.80) & (inner < 0.90) & (y > bcy - 0.55)
  angle = np.arctan2(y - bcy, x) / (2 * np.pi)
  ribs = np.sin(2 * np.pi * (z * 11.0 + 3.5 * np.abs(angle) + case.rib_phase)) > 0.5
  vol[band & ribs & (h < 1.05)] = HU['bone']

  for nodule in case.nodules:
    vol[nodule_mask(case, nodule)] = HU['nodule']

  noise = np.random.default_rng(case.noise_seed).standard_normal(shape, dtype=_f32)
  vol += noise * _f32(case.noise_hu) * (vol > HU['air'] + 1)  # air outside stays clean
  return vol


def nodule_mask(case: Case, nodule: Nodule) -> np.ndarray:
  """Voxels whose centres lie inside the lesion's sphere (its centre voxel always)."""
  rows, cols, slices = case.shape
  sx, sy, sz = case.spacing
  r, c, s = nodule.centre
  dy = ((np.arange(rows) - r) * sy)[:, None, None]
  dx = ((np.arange(cols) - c) * sx)[None, :, None]
  dz = ((np.arange(slices) - s) * sz)[None, None, :]
  return dx * dx + dy * dy + dz * dz <= (nodule.diameter_mm / 2) ** 2


def meta(case: Case) -> dict:
  """What the report and conversation composers need, all plain Python."""
  return {
    'findings': sorted(case.findings),
    'nodules': [{'diameter_mm': n.diameter_mm, 'side': n.side, 'lobe': n.lobe,
                 'phrase': n.phrase, 'box': nodule_box(case, n)} for n in case.nodules],
    'effusion': dict(case.effusion),
    'cardiomegaly': case.cardiomegaly,
    'spacing': list(case.spacing),
    'shape': list(case.shape),
  }


def render(case: Case, window: str | tuple[float, float] = 'lung') -> np.ndarray:
  """The volume windowed to [0, 1] (data_prep/volume_ops.py), float32."""
  if isinstance(window, str):
    if window not in volume_ops.WINDOWS:
      raise ValueError(f'unknown window {window!r}; known: {sorted(volume_ops.WINDOWS)}')
    window = volume_ops.WINDOWS[window]
  return volume_ops.window(render_hu(case), *window)
