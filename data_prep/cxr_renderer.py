"""Procedural PA chest radiographs with known findings, in vectorised numpy.

Nothing real can be downloaded here, so the embedded demo dataset draws its
images: a plausible PA chest film (lungs, heart, mediastinum, diaphragm, ribs,
clavicles, spine) whose findings are known by construction. Each finding is made
pronounced enough to survive a downscale to 64x64, so a tiny model trained for
minutes on a CPU can be measured learning it.

Conventions: PA view, displayed as a radiologist reads it, so the patient's right
is on the image left and the heart bulges to the image right. Bright = dense.
Anatomy is drawn in normalised coordinates (x, y) in [-1, 1] (y down); a random
similarity transform maps them to pixels. Sides in `meta` are the patient's.
"""

from __future__ import annotations

import math

import numpy as np

FINDINGS = ('cardiomegaly', 'pleural_effusion', 'pneumothorax', 'nodule', 'consolidation')
SIZE_RANGE = (224, 256)  # side length, inclusive, drawn per image
# Nodules below 3 cm are "nodules", larger ones "masses"; with a ~30 cm wide chest
# spanning ~1.4 normalised units, 3 cm diameter is a radius of ~0.07.
MASS_RADIUS = 0.07

_f32 = np.float32


def _ramp(d: np.ndarray, width: float) -> np.ndarray:
  """Soft inside-indicator of a signed distance d (>0 inside): a linear ramp.

  Cheaper than a sigmoid and just as good at these resolutions.
  """
  return np.clip(d * _f32(1.0 / width) + _f32(0.5), 0.0, 1.0)


def _superellipse(x, y, cx, cy, rx, ry, p: int = 2):
  """Approximate signed distance (>0 inside) to a superellipse of integer order p.

  Integer p keeps this to multiplications: float powers cost ~20x more.
  """
  u, v = (x - cx) / rx, (y - cy) / ry
  if p == 2:
    q = u * u + v * v
  else:
    u, v = np.abs(u), np.abs(v)
    q = u * u * u if p == 3 else u**p
    q = q + (v * v * v if p == 3 else v**p)
  return (1.0 - q) * np.asarray(np.minimum(rx, ry) / p, dtype=_f32)


def _blur3(img: np.ndarray) -> np.ndarray:
  """Separable [1, 2, 1]/4 blur with edge replication."""
  p = np.pad(img, 1, mode='edge')
  h = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]
  return (h[:-2] + 2 * h[1:-1] + h[2:]) * _f32(1 / 16)


class _Anatomy:
  """Per-image random anatomy parameters (drawn in a fixed order from the rng)."""

  def __init__(self, rng: np.random.Generator, findings: set[str]):
    u = rng.uniform
    self.W = u(0.64, 0.72)  # lateral inner ribcage half-width
    self.apex = u(-0.80, -0.70)  # lung apex height
    cp_right = u(0.50, 0.56)  # costophrenic angle height, patient's right
    self.cp = (cp_right, cp_right + u(0.02, 0.06))  # left dome sits lower
    self.dome = u(0.14, 0.20)  # dome height above the costophrenic angle
    self.med = u(0.03, 0.06)  # medial lung edge
    ctr = u(0.58, 0.66) if 'cardiomegaly' in findings else u(0.38, 0.45)
    self.ctr = ctr  # cardiothoracic ratio
    self.heart_hw = ctr * self.W
    self.heart_hh = u(0.24, 0.27) * (1.15 if 'cardiomegaly' in findings else 1.0)
    self.heart_cx = u(0.08, 0.12)
    self.heart_cy = u(0.20, 0.24)
    self.heart_tilt = u(-0.5, -0.35)
    self.rib_sp = u(0.125, 0.145)
    self.rib_phase = u(0.0, 1.0)
    self.rib_curve = u(0.26, 0.34)
    self.mark_phase = u(0, 2 * np.pi, size=(2, 3)).astype(_f32)
    self.mark_freq = u(10, 18, size=(2, 3)).astype(_f32)
    self.scale = u(0.92, 1.03)
    self.angle = math.radians(u(-4, 4))
    self.shift = (u(-0.04, 0.04), u(-0.04, 0.04))
    self.gamma = u(0.8, 1.25)
    self.contrast = u(0.9, 1.15)
    self.brightness = u(-0.05, 0.05)
    self.noise = u(0.008, 0.025)
    self.blur = rng.random() < 0.5


def _grid(size: int, a: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
  """Anatomy coordinates of every pixel centre (inverse of the random transform)."""
  c = (np.arange(size, dtype=_f32) + 0.5) * _f32(2.0 / size) - 1
  u, v = c[None, :] - a.shift[0], c[:, None] - a.shift[1]
  cos, sin = math.cos(a.angle), math.sin(a.angle)
  x = ((cos * u + sin * v) / a.scale).astype(_f32)
  y = ((-sin * u + cos * v) / a.scale).astype(_f32)
  return x, y


def _to_image(x: float, y: float, a: _Anatomy) -> tuple[float, float]:
  """Forward transform of one anatomy point to normalised image coords [-1, 1]."""
  cos, sin = math.cos(a.angle), math.sin(a.angle)
  x, y = x * a.scale, y * a.scale
  return cos * x - sin * y + a.shift[0], sin * x + cos * y + a.shift[1]


def _pleural_space(xs, y, a: _Anatomy, cp) -> np.ndarray:
  """Signed distance to one hemithorax's pleural space, above the costophrenic level.

  xs is the mirrored coordinate (lateral positive). The lateral/apical outline
  is the upper half of a superellipse centred at the costophrenic level.
  """
  cx = 0.30
  d = _superellipse(xs, y, cx, cp, a.W - cx, cp - a.apex, p=2)
  return np.minimum(np.minimum(d, xs - a.med), cp + 0.03 - y)


def _lung(xs, y, a: _Anatomy, cp, pleura=None) -> np.ndarray:
  """Signed distance to the aerated lung: pleural space above the diaphragm dome."""
  if pleura is None:
    pleura = _pleural_space(xs, y, a, cp)
  t = (xs - 0.30) / (a.W - 0.30)
  t = np.clip(1.0 - t * t, 0.0, 1.0)
  dome = cp - a.dome * t  # dome peaks mid-lung, falls to the costophrenic angle
  return np.minimum(pleura, dome - y)


def render(rng: np.random.Generator, findings: set[str]) -> tuple[np.ndarray, dict]:
  """Draws one radiograph with the given findings (a subset of FINDINGS).

  Returns (uint8 HxW array, meta). Deterministic given rng. meta holds:
    boxes          [{"box": [x1, y1, x2, y2] in [0, 1], "label", "phrase"}]: the enlarged
                   heart's silhouette, the nodule's disc, and the extent of
                   consolidation, pneumothorax and each effusion (VinDr-CXR boxes these
                   findings too)
    sides          {finding: "left"|"right"|"bilateral"}  (patient's side)
    zones          {finding: "upper"|"middle"|"lower"}    (nodule, consolidation)
    severity       {finding: "small"|"moderate"|"large"}  (effusion, pneumothorax,
                   cardiomegaly)
    ctr            cardiothoracic ratio drawn; size: side length in pixels
    nodule_phrase  "nodule" (< 3 cm) | "mass" | None
  The report composer uses these to pick sentences that agree with the image.
  """
  findings = set(findings)
  unknown = findings - set(FINDINGS)
  if unknown:
    raise ValueError(f'unknown findings {sorted(unknown)}; known: {FINDINGS}')
  size = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
  a = _Anatomy(rng, findings)
  x, y = _grid(size, a)
  ax = np.abs(x)
  right = x < 0  # patient's right = image left
  rf = right.astype(_f32)  # float masks blend faster than np.where
  cp = a.cp[1] + (a.cp[0] - a.cp[1]) * rf
  e = 2.5 / size  # ~1 pixel soft edge
  meta: dict = {
    'boxes': [],
    'sides': {},
    'zones': {},
    'severity': {},
    'ctr': float(a.ctr),
    'size': size,
    'nodule_phrase': None,
  }
  if 'cardiomegaly' in findings:
    meta['severity']['cardiomegaly'] = 'moderate' if a.ctr < 0.62 else 'large'

  # --- soft tissue: chest wall following the ribcage, shoulders, abdomen below.
  chest = _superellipse(ax, y, 0.0, cp + 0.45, a.W + 0.15, cp + 0.45 - a.apex + 0.2, p=3)
  # Shoulders: the outline turns outwards above the axillae.
  shoulder = (-0.30 - y) - 0.7 * np.clip(ax - a.W - 0.12, 0, None)
  body = _ramp(np.maximum(chest, shoulder), 0.03)
  wall = np.clip((ax - a.W + 0.05) / 0.2, 0, 1)  # chest wall thins towards the skin
  tissue = 0.06 + body * (0.62 - 0.14 * wall + 0.06 * _ramp(y - cp - 0.1, 0.3))

  # --- lungs, then everything that displaces air from them.
  pleura = _pleural_space(ax, y, a, cp)
  lung = _ramp(_lung(ax, y, a, cp, pleura), e)

  # Pneumothorax: the lung collapses towards the hilum on one side; the pleural
  # space lateral and apical to it holds air without vessel markings.
  ptx = np.zeros_like(x)
  pleural_line = ptx
  if 'pneumothorax' in findings:
    side_right = rng.random() < 0.5
    meta['sides']['pneumothorax'] = 'right' if side_right else 'left'
    small = rng.random() < 0.4
    meta['severity']['pneumothorax'] = 'small' if small else 'moderate'
    kx = rng.uniform(0.70, 0.80) if small else rng.uniform(0.52, 0.68)
    ky = rng.uniform(0.80, 0.88) if small else rng.uniform(0.66, 0.80)
    # Collapse towards the hilum laterally and towards the base vertically:
    # upright patients lose the apex and the lateral rim first.
    hx, hy = 0.14, 0.45
    collapsed = _ramp(_lung(hx + (ax - hx) / kx, hy + (y - hy) / ky, a, cp), e)
    on_side = rf if side_right else 1 - rf
    ptx = on_side * lung * (1 - collapsed)
    lung = lung - on_side * (lung - collapsed)
    pleural_line = on_side * 4 * collapsed * (1 - collapsed)
  # Effusion: dependent fluid with a meniscus climbing the lateral chest wall,
  # filling the costophrenic angle and hiding the dome.
  fluid = np.zeros_like(x)
  if 'pleural_effusion' in findings:
    side = rng.choice(['right', 'left', 'bilateral'], p=[0.35, 0.35, 0.3])
    meta['sides']['pleural_effusion'] = str(side)
    severity = str(rng.choice(['small', 'moderate', 'large'], p=[0.35, 0.45, 0.2]))
    meta['severity']['pleural_effusion'] = severity
    level_range = {'small': (0.18, 0.26), 'moderate': (0.0, 0.15), 'large': (-0.3, -0.05)}
    lat = np.clip((ax - a.med) / (a.W - a.med), 0, 1)
    for s_right in (True, False):
      if side == 'bilateral' or (side == 'right') == s_right:
        meniscus = rng.uniform(0.2, 0.35) * lat * np.sqrt(lat)
        top = rng.uniform(*level_range[severity]) - meniscus
        f = _ramp(y - top, 0.06) * _ramp(pleura + 0.02, e)
        fluid = np.maximum(fluid, f * (rf if s_right else 1 - rf))
    lung = lung * (1 - fluid)
    ptx = ptx * (1 - fluid)

  heart = _ramp(_heart(x, y, a), e)
  medi_hw = 0.10 + 0.07 * np.exp(-(((y + 0.30) / 0.08) ** 2)) * (x > 0)  # aortic knob
  mediastinum = _ramp(medi_hw - np.abs(x - 0.01), e) * _ramp(a.heart_cy - y, 0.05)
  not_soft = (1 - heart) * (1 - mediastinum)
  air = lung * not_soft
  # Lungs look darkest mid-zone: soft tissue overlaps the apices and bases.
  air_depth = 0.42 - 0.10 * _ramp(-0.45 - y, 0.3) - 0.06 * _ramp(y - 0.15, 0.3)

  # --- vessel markings radiating from each hilum, only inside aerated lung.
  dx, dy = ax - (0.17 - 0.02 * rf), y + 0.02
  r = np.sqrt(dx * dx + dy * dy)
  theta = np.arctan2(dy, dx)
  streak = np.zeros_like(x)
  for j in range(3):
    freq = a.mark_freq[1, j] + (a.mark_freq[0, j] - a.mark_freq[1, j]) * rf
    ph = a.mark_phase[1, j] + (a.mark_phase[0, j] - a.mark_phase[1, j]) * rf
    # The r term bends the streaks so they branch instead of meeting in a star.
    streak += np.cos(freq * theta + ph + 14 * r)
  markings = np.clip(streak * (1 / 3) - 0.1, 0, 1) * np.exp(-r * 2.5) * _ramp(r - 0.12, 0.1)
  hilum = np.exp(-(r * r) * 100)

  # --- bones: ribs via one periodic field per family (cheap: no per-rib loop).
  s = ax / a.W
  rib_zone = _ramp(a.W + 0.05 - ax, 0.03) * _ramp(ax - 0.06, 0.03)
  rib_zone *= _ramp(y - a.apex + 0.1, 0.04) * (0.15 + 0.85 * _ramp(cp - 0.05 - y, 0.1))
  # Posterior ribs leave the spine, rise slightly, then curve down laterally.
  s2 = s * s
  phase = (y + a.rib_curve * (0.7 * s - 0.5 * s2 - 0.9 * s2 * s2)) / a.rib_sp + a.rib_phase
  frac = np.abs(phase - np.floor(phase) - 0.5)
  posterior = _ramp(0.16 - frac, 0.08) + 0.6 * _ramp(0.025 - np.abs(frac - 0.15), 0.03)
  # Anterior ribs: fainter, sloping down towards the midline.
  t = np.clip(1 - s, 0, 1)
  ant_phase = (y - 0.45 * t * np.sqrt(t)) / (a.rib_sp * 1.3) + a.rib_phase * 0.7
  anterior = _ramp(0.11 - np.abs(ant_phase - np.floor(ant_phase) - 0.5), 0.08)
  # Bone contrast is lower over dense soft tissue (exponential attenuation).
  rib_zone *= 0.45 + 0.55 * air
  ribs = rib_zone * (0.07 * posterior + 0.035 * anterior * _ramp(s - 0.35, 0.15))
  clav_y = -0.74 - 0.2 * (ax - 0.08) + 0.04 * np.sin(6 * ax)
  clavicle = _ramp(0.035 - np.abs(y - clav_y), 0.015) * _ramp(ax - 0.08, 0.03)
  clavicle *= _ramp(0.68 - ax, 0.06)
  vert = 0.75 + 0.25 * np.cos(y * (2 * np.pi / 0.12))
  spine = _ramp(0.06 - ax, 0.015) * vert * _ramp(0.95 - y, 0.1)
  trachea = _ramp(0.03 - np.abs(x + 0.01), 0.012) * _ramp(-0.25 - y, 0.06)

  img = (
    tissue
    - air_depth * (air + ptx * not_soft)
    - 0.13 * ptx * not_soft
    + 0.14 * markings * air
    + 0.07 * hilum * not_soft
    + ribs
    + 0.13 * clavicle
    + 0.06 * spine
    - 0.12 * trachea
    + 0.07 * pleural_line * not_soft
  )
  if 'cardiomegaly' in findings:  # the enlarged silhouette, as VinDr-CXR boxes it
    _add_box(meta, heart > 0.5, 'Cardiomegaly', 'cardiomegaly')
  if 'pneumothorax' in findings:
    _add_box(meta, ptx > 0.5, 'Pneumothorax', 'pneumothorax')
  if 'pleural_effusion' in findings:
    for side_mask in (rf, 1 - rf):
      _add_box(meta, fluid * side_mask > 0.5, 'Pleural Effusion', 'effusion')
  # --- lesions inside the lung fields.
  lung_region = (lung > 0.5) & (not_soft > 0.5)
  if 'nodule' in findings:
    _nodule(rng, img, x, y, a, lung_region, meta)
  if 'consolidation' in findings:
    _consolidation(rng, img, x, y, a, air, lung_region, meta)

  # --- exposure, blur, noise.
  img = np.clip(img, 0, 1) ** _f32(a.gamma)
  img = (img - 0.5) * a.contrast + 0.5 + a.brightness
  if a.blur:
    img = _blur3(img)
  img = img + a.noise * rng.standard_normal(img.shape, dtype=_f32)
  assert img.dtype == _f32, img.dtype
  out = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
  return out, meta


def _heart(x, y, a: _Anatomy) -> np.ndarray:
  """Signed distance to the cardiac silhouette.

  A tilted ellipse (the ventricles) resting on the diaphragm, joined to the
  mediastinum by a flared trapezoid, which gives the concave "cardiac waist"
  on the left border instead of a ball.
  """
  dx, dy = x - a.heart_cx, y - a.heart_cy
  c, s = math.cos(a.heart_tilt), math.sin(a.heart_tilt)
  u, v = c * dx + s * dy, -s * dx + c * dy
  ellipse = _superellipse(u, v, 0.0, 0.0, a.heart_hw, a.heart_hh, p=2.0)
  top = a.heart_cy - a.heart_hh - 0.12
  t = np.clip((y - top) / (a.heart_cy - top), 0, 1)
  t = t * np.sqrt(t)
  left = -0.09 + t * (a.heart_cx - 0.85 * a.heart_hw + 0.09)
  right = 0.12 + t * (a.heart_cx + 0.9 * a.heart_hw - 0.12)
  cone = np.minimum(np.minimum(x - left, right - x), np.minimum(y - top, a.heart_cy - y))
  return np.maximum(ellipse, cone)


def _pick_lung_point(rng, region, margin_px: int, fallback=None) -> tuple[int, int]:
  """A random pixel (row, col) of `region`, preferably margin_px from its edge.

  Falls back to the whole region, then to `fallback`, when erosion (or a large
  effusion hiding a lung zone) leaves no pixel.
  """
  ok = region
  if margin_px > 0:  # cheap erosion by shifting the mask
    m = margin_px
    ok = ok.copy()
    ok[m:] &= region[:-m]
    ok[:-m] &= region[m:]
    ok[:, m:] &= region[:, :-m]
    ok[:, :-m] &= region[:, m:]
  for mask in (ok, region, fallback):
    idx = np.flatnonzero(mask) if mask is not None else np.empty(0)
    if idx.size:
      k = int(idx[rng.integers(idx.size)])
      return divmod(k, region.shape[1])
  return region.shape[0] // 2, region.shape[1] // 4  # no aerated lung at all: mid right


def _zone(cx: float, cy: float, a: _Anatomy) -> str:
  """Upper / middle / lower lung zone of a point, by height between apex and base."""
  t = (cy - a.apex) / (a.cp[0 if cx < 0 else 1] - a.apex)
  return 'upper' if t < 0.4 else 'middle' if t < 0.68 else 'lower'


def _window(row: int, col: int, half_px: float, size: int) -> tuple[slice, slice]:
  """Pixel window around (row, col): lesions are local, so only draw them there."""
  h = int(math.ceil(half_px)) + 2
  rows = slice(max(row - h, 0), min(row + h + 1, size))
  return rows, slice(max(col - h, 0), min(col + h + 1, size))


def _nodule(rng, img, x, y, a: _Anatomy, lung_region, meta) -> None:
  """Adds a bright round (mass: lobulated) opacity to img; records its box."""
  r = rng.uniform(0.045, 0.12)
  size = x.shape[0]
  r_px = r * a.scale * size / 2
  row, col = _pick_lung_point(rng, lung_region, int(math.ceil(r_px)) + 1)
  cx, cy = float(x[row, col]), float(y[row, col])
  win = _window(row, col, 1.15 * r_px, size)
  dx, dy = x[win] - cx, y[win] - cy
  d = np.sqrt(dx * dx + dy * dy)
  phrase = 'mass' if r >= MASS_RADIUS else 'nodule'
  rr = r
  if phrase == 'mass':
    rr = r * (1 + 0.08 * np.cos(3 * np.arctan2(dy, dx) + rng.uniform(0, 6.3)))
  q = d / rr
  profile = np.sqrt(np.clip(1 - q * q, 0, 1))
  edge = _ramp(rr - d, 2.0 / size)
  img[win] += 0.30 * (0.35 * edge + 0.65 * profile)
  meta['nodule_phrase'] = phrase
  meta['sides']['nodule'] = 'right' if cx < 0 else 'left'
  meta['zones']['nodule'] = _zone(cx, cy, a)
  # Box in image coordinates: a disc stays a disc under a similarity transform.
  u, v = _to_image(cx, cy, a)
  rad = r * 1.08 * a.scale  # 1.08 covers the lobulation
  box = [(u - rad + 1) / 2, (v - rad + 1) / 2, (u + rad + 1) / 2, (v + rad + 1) / 2]
  box = [min(max(float(b), 0.0), 1.0) for b in box]
  meta['boxes'].append({'box': box, 'label': 'Lung Lesion', 'phrase': phrase})


def _consolidation(rng, img, x, y, a: _Anatomy, aerated, lung_region, meta) -> None:
  """Adds a patchy, fluffy opacity made of several blobs, confined to the lung."""
  size = x.shape[0]
  # Lower or upper zone (lower lobes are the commonest site). Mid-zone clouds
  # are avoided: on the left that is the lingula, which the OpenI sentences
  # rarely name, so reports could not say where the opacity is.
  t = (y - a.apex) / (a.cp[1] + (a.cp[0] - a.cp[1]) * (x < 0) - a.apex)
  zone = (t > 0.68) if rng.random() < 0.7 else (t > 0.15) & (t < 0.4)
  # Keep the centre well inside the lung so the heart does not hide the cloud.
  row, col = _pick_lung_point(rng, lung_region & zone, size // 14, fallback=lung_region)
  cx, cy = float(x[row, col]), float(y[row, col])
  meta['sides']['consolidation'] = 'right' if cx < 0 else 'left'
  meta['zones']['consolidation'] = _zone(cx, cy, a)
  win = _window(row, col, 0.6 * a.scale * size / 2, size)
  xw, yw = x[win], y[win]
  cloud = np.zeros_like(xw)
  for _ in range(int(rng.integers(6, 10))):
    bx, by = cx + rng.normal(0, 0.09), cy + rng.normal(0, 0.11)
    inv = 1 / (2 * rng.uniform(0.06, 0.10) ** 2)
    cloud += rng.uniform(0.5, 1.0) * np.exp(-((xw - bx) ** 2 + (yw - by) ** 2) * inv)
  # Mottled texture: a few random plane waves, so it reads as patchy not round.
  tex = np.zeros_like(xw)
  for _ in range(3):
    k = rng.uniform(18, 35)
    ang = rng.uniform(0, np.pi)
    tex += np.cos((k * math.cos(ang)) * xw + (k * math.sin(ang)) * yw + rng.uniform(0, 6.3))
  cloud = np.clip(cloud, 0, 1.2) * (0.8 + 0.2 / 3 * tex)
  opacity = 0.36 * np.clip(cloud, 0, 1) * aerated[win]
  img[win] += opacity
  # Box where the cloud adds more than ~5 grey levels (of 255): its visible extent.
  visible = np.zeros(img.shape, bool)
  visible[win] = opacity > 0.02
  _add_box(meta, visible, 'Consolidation', 'consolidation')


def _add_box(meta: dict, mask: np.ndarray, label: str, phrase: str) -> None:
  """Appends the bounding box of the pixels in mask (none: no box) to meta['boxes']."""
  rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
  if not rows.size:
    return
  n = mask.shape[0]
  box = [cols[0] / n, rows[0] / n, (cols[-1] + 1) / n, (rows[-1] + 1) / n]
  meta['boxes'].append({'box': [float(b) for b in box], 'label': label, 'phrase': phrase})


def tune_allocator() -> None:
  """Makes glibc keep freed memory instead of returning it to the OS.

  Every numpy temporary of a 256x256 float32 image (256 KB) is above glibc's
  default mmap threshold, so each one is a fresh mmap and 64 page faults; with
  these settings rendering is 3-4x faster. Process-global, so the builder only
  calls it inside its own worker processes. No-op where glibc is absent.
  """
  import ctypes

  try:
    libc = ctypes.CDLL('libc.so.6')
  except OSError:
    return
  m_trim_threshold, m_mmap_threshold = -1, -3
  libc.mallopt(m_mmap_threshold, 16 << 20)
  libc.mallopt(m_trim_threshold, 128 << 20)
