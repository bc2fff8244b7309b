"""How a batch's images travel (config.data.pixels), and the one lookup that turns them
into the tower's normalised floats.

'uint8' / 'gray8': `images` holds 8-bit pixels [..., H, W, P] and `pixel_table` one float32
[256, C] table per H x W plane (an image slot, an AnyRes tile slot): each 8-bit value's
normalised value per channel, the record's contrast/brightness jitter folded in
(radjax/data/images.py pixel_table). P is the tower's C ('uint8'), or 1 ('gray8', and any
1-channel tower): a film's gray value, looked up in each of the C columns. An unused plane
has a zero table, so it reads as zeros, as the float32 slots did. The device does the
lookup as the first op of the step, before the tower (and of generation's prefill): P
bytes per pixel cross from the reader to the device instead of 4 x C (RadVLM's 37 AnyRes
tiles of 384 px: 5.5 MB gray, 65 MB as float32 RGB), through Grain's worker processes,
prefetch buffers and the host-to-device copy.
'float32': the host does the same lookup, and `images` holds the floats (no table).

The lookup is a gather of floats the host computed, so both sides give the same bits.

Volume slots (VolumeSlots, a 'vit3d' tower's volume batches: [..., H, W, D, C] floats,
zero past each slot's depth_mask) travel compactly too, unless 'float32': a 3D slot's
voxels as stored (float16 in [0, 1], one channel) in `volumes` [..., H, W, D] with its
per-channel mean and std in `volume_norm` [..., 2, C] (zeros in any other slot: so it
marks the 3D slots); a 2D slot's image once, as 8-bit planes and a table (`images`,
`pixel_table`, as above), not repeated along depth. The device repeats and normalises
(`volume_floats`; in training slot by slot inside the tower's slot scan, radjax/models/
vlm.py, so that one slot's floats are live at a time) as the host's float32 path does:
2 bytes per voxel instead of 4 x C
(RadFM's full recipe, 10 slots of 512 x 512 x 64: 0.34 GB an example instead of 2.0 GB;
BENCHMARKS.md). A 2D slot's floats are the host's bits; a scan's are within 1 ulp, as XLA
computes x / std as x * (1 / std) (exact for RadFM's mean 0, std 1). A float32 `npy`
volume (data_prep stores float16) is rounded to float16 on the way.
"""
import jax.numpy as jnp
import numpy as np

from radjax.core import config_checks
from radjax.data import images as images_lib

MODES = config_checks.CHOICES['data.pixels']
TABLE = 'pixel_table'
LEVELS = 256  # rows of a table: one per 8-bit value
VOLUMES = 'volumes'  # a volume batch's 3D slots, float16 [..., H, W, D]
NORM = 'volume_norm'  # their mean and std per channel [..., 2, C]; zeros: not a 3D slot


def mode_of(config) -> str:
  """config.data.pixels (a workdir written before the knob: 'uint8', the same floats)."""
  mode = config.data.get('pixels', 'uint8')
  if mode not in MODES:
    raise ValueError(f'config.data.pixels={mode!r} is not one of {MODES}')
  return mode


def channels(mode: str, num_channels: int) -> int:
  """P: the channels an 8-bit image plane holds."""
  return 1 if mode == 'gray8' else num_channels


def fields(mode: str, lead: tuple, size: int, num_channels: int) -> dict:
  """{key: (shape, dtype)} of image slots [*lead, size, size, ...] as `mode` sends them:
  8-bit planes [..., P] and their tables [*lead, 256, C], or float32 images [..., C]."""
  if mode == 'float32':
    return {'images': ((*lead, size, size, num_channels), np.float32)}
  return {'images': ((*lead, size, size, channels(mode, num_channels)), np.uint8),
          TABLE: ((*lead, LEVELS, num_channels), np.float32)}


def empty(mode: str, lead: tuple, size: int, num_channels: int) -> dict:
  """Zero slots of `fields`: what a slot processor fills; slots left as they are read as
  zeros (a zero table looks every value up as 0)."""
  return {k: np.zeros(shape, dtype)
          for k, (shape, dtype) in fields(mode, lead, size, num_channels).items()}


def put(slots: dict, at, planes: np.ndarray, table: np.ndarray) -> None:
  """One image's 8-bit planes ([n,] H, W, 1 or 3) and its table into `slots` at index `at`:
  as they are, with the table (a gray plane to each of P channels), or ('float32' slots)
  looked up here, straight into them."""
  if TABLE in slots:
    slots['images'][at] = planes
    slots[TABLE][at] = table
  else:
    lookup(planes, table, out=slots['images'][at])


def lookup(pixels, table, out=None):
  """8-bit planes [..., H, W, P] through their tables [..., 256, C] -> [..., H, W, C]
  float32: numpy arrays on the host (one table may serve every plane; into `out` when
  given), jax arrays (or tracers) on the device. The same gather, so the same floats."""
  lead, (h, w, p), c = pixels.shape[:-3], pixels.shape[-3:], table.shape[-1]
  if isinstance(pixels, np.ndarray) and isinstance(table, np.ndarray):
    out = np.empty((*lead, h, w, c), np.float32) if out is None else out
    tables = np.broadcast_to(table, (*lead, LEVELS, c))
    for i in np.ndindex(*lead):  # np.take into place, a gray plane contiguous
      images_lib.lookup_pixels(pixels[i][..., 0] if p == 1 else pixels[i], tables[i],
                               gray=p == 1, out=out[i])
    return out
  # P = 1: the index broadcasts over the C columns (the gray -> C repeat)
  flat = pixels.reshape(*lead, h * w, p)
  out = jnp.take_along_axis(table, flat, axis=-2, mode='promise_in_bounds')
  return out.reshape(*lead, h, w, c)


def volume_fields(mode: str, lead: tuple, size: int, depth: int, num_channels: int) -> dict:
  """{key: (shape, dtype)} of volume slots [*lead, size, size, depth, C] as `mode` sends
  them: a 2D slot's 8-bit planes and table (`fields`), a 3D slot's float16 voxels and its
  mean and std; or float32 volumes [..., C] alone. The depth_mask is the caller's."""
  if mode == 'float32':
    return {'images': ((*lead, size, size, depth, num_channels), np.float32)}
  return {**fields(mode, lead, size, num_channels),
          VOLUMES: ((*lead, size, size, depth), np.float16),
          NORM: ((*lead, 2, num_channels), np.float32)}


def empty_volumes(mode: str, lead: tuple, size: int, depth: int, num_channels: int) -> dict:
  """Zero slots of `volume_fields`: slots left as they are read as zeros."""
  return {k: np.zeros(shape, dtype) for k, (shape, dtype)
          in volume_fields(mode, lead, size, depth, num_channels).items()}


def put_volume(slots: dict, at, vol: np.ndarray, mean, std) -> None:
  """A scan resized to [H, W, d] (d <= the slots' depth; voxels in [0, 1]) into the
  compact volume slots at index `at`: its voxels as float16 (what data_prep stores: a
  float32 npy is rounded to it), its mean and std rows."""
  c = slots[NORM].shape[-1]
  slots[VOLUMES][at][..., :vol.shape[-1]] = vol
  slots[NORM][at] = (np.asarray(mean[:c], np.float32), np.asarray(std[:c], np.float32))


def volume_floats(batch: dict, rows=()):
  """Compact volume slots -> the tower's float32 volumes [..., H, W, D, C], as the host's
  float32 path (radjax/data/volumes.py sample_input) builds them: a 3D slot's voxels
  to float32, repeated to C channels, (x - mean) / std; a 2D slot's looked-up image
  repeated along depth; zero past each slot's depth_mask. numpy arrays on the host (the
  same bits), jax arrays (or tracers) on the device (a scan's within 1 ulp: XLA divides
  by a broadcast std as a multiply by its reciprocal). rows: the in-plane rows and
  columns to keep (nearest voxel; the model's resize, radjax/models/vlm.py), picked
  before the floats are built."""
  host = all(isinstance(batch[k], np.ndarray)
             for k in ('images', TABLE, VOLUMES, NORM, 'depth_mask'))
  xp = np if host else jnp
  planes, voxels = batch['images'], batch[VOLUMES]  # [..., H, W, P], [..., H, W, D]
  if len(rows):
    pick = lambda a: xp.take(xp.take(a, xp.asarray(rows), axis=-3), xp.asarray(rows), axis=-2)
    planes, voxels = pick(planes), pick(voxels)
  flat = lookup(planes, batch[TABLE])  # [..., H, W, C]: the 2D slots' images
  norm = batch[NORM]
  mean, std = norm[..., 0, :], norm[..., 1, :]
  is_3d = std[..., :1] > 0  # [..., 1]: config.data.image_std > 0, so only a 3D slot's
  std = xp.where(is_3d, std, np.float32(1))  # no 0 / 0 in the branch not taken
  at = lambda a: a[..., None, None, None, :]  # [..., C] -> [..., H, W, D, C]
  vol = (voxels.astype(np.float32)[..., None] - at(mean)) / at(std)
  x = xp.where(at(is_3d), vol, flat[..., :, :, None, :])
  return xp.where(batch['depth_mask'][..., None, None, :, None], x, np.float32(0))


def model_inputs(batch: dict, compact_volumes: bool) -> dict:
  """`as_floats`, but with compact_volumes (a model that expands volume slots one at a
  time, radjax/models/vlm.py VLMRuntime.volume_floats) compact volume slots stay as they
  came: `images` is then the dict of their fields, which `volume_floats` takes (with the
  depth_mask)."""
  if compact_volumes and VOLUMES in batch:
    out = {k: v for k, v in batch.items() if k not in (TABLE, VOLUMES, NORM)}
    out['images'] = {k: batch[k] for k in ('images', TABLE, VOLUMES, NORM)}
    return out
  return as_floats(batch)


def as_floats(batch: dict) -> dict:
  """A batch (or a model's image inputs) with `images` as the tower's floats and no table
  (compact volume slots: [..., H, W, D, C], `volume_floats`); one without a table
  (float32 pixels or volumes, text) as it is."""
  if TABLE not in batch:
    return batch
  out = {k: v for k, v in batch.items() if k not in (TABLE, VOLUMES, NORM)}
  out['images'] = (volume_floats(batch) if VOLUMES in batch
                   else lookup(batch['images'], batch[TABLE]))
  return out
