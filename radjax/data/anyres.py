"""AnyRes (LLaVA-NeXT / LLaVA-OneVision, RadVLM's 'anyres_max_9'): an image is read as a
base tile (the whole image squeezed to the tower's size) plus a grid of tiles at its own
aspect ratio, and the grid's features are packed after the base's.

The host does everything that depends on the image's size, so the model's shapes stay
static (config.model.anyres_grids / anyres_max_tiles):
- `tiles`: the grid (rows, cols) whose pixels best fit the image (most of the image's
  pixels kept, then least canvas wasted), the image resized into it keeping its
  proportions and centred on black, cut into 8-bit tiles; slot 0 is the base tile and
  slots past the grid are zeros (their pixel tables too: radjax/data/pixels.py). Every
  image has `slots` tile slots (processors.TileSlots).
- `plan`: which feature vectors make the image's token sequence, as up to 4 (index,
  weight) taps per token into the image's tile features (slot k, token t at k * T + t)
  followed by one extra row, the learned `image_newline` (index slots * T): the base's T
  tokens; then the grid's features stitched into one map, the black margin cut off, scaled
  down bilinearly (torch's align_corners=False) when the map holds more than
  ~max_tiles tiles' tokens, each row followed by a newline. Rows past the image's
  `count` tokens have zero weights; the prompt holds `count` placeholders for the image.
- An example with several images tiles none of them (LLaVA-OneVision's processor, and
  LLaVA-NeXT's 'pad' for multi-image samples): each is padded to a square in the mean
  colour and squeezed into the base tile, and its tokens are the base's and one newline
  (`square_tile`, `square_plan`).
"""
import dataclasses
import functools
import math

import numpy as np
from PIL import Image

# Tokens of a feature map scaled down only above this multiple of max_tiles' side
# (LLaVA-OneVision's pack_image_features: ratio > 1.1).
_SCALE_SLACK = 1.1


@dataclasses.dataclass(frozen=True)
class AnyRes:
  tile: int  # pixels per tile side (the tower's image_size)
  side: int  # feature tokens per tile side (image_size // patch_size)
  grids: tuple  # ((rows, cols), ...): the grids of tiles an image may be fit to
  max_tiles: int = 0  # > 0: a map over this many tiles' tokens is scaled down to it

  def __post_init__(self):
    if not self.grids or any(len(g) != 2 or min(g) < 1 for g in self.grids):
      raise ValueError(f'config.model.anyres_grids={self.grids!r}: need (rows, cols) pairs '
                       'of at least 1')
    if self.max_tiles < 0:
      raise ValueError(f'config.model.anyres_max_tiles={self.max_tiles} must be >= 0')

  @property
  def tile_tokens(self) -> int:
    return self.side * self.side

  @property
  def slots(self) -> int:
    """Tile slots per image: the base and the largest grid."""
    return 1 + max(r * c for r, c in self.grids)

  @functools.cached_property
  def max_tokens(self) -> int:
    """The most tokens an image of any size gets (the plan's length)."""
    best = 0
    for r, c in self.grids:
      h0, w0 = r * self.side, c * self.side
      for h, w in [(h0, w) for w in range(1, w0 + 1)] + [(h, w0) for h in range(1, h0)]:
        oh, ow = _scaled(h, w, self)
        best = max(best, oh * (ow + 1))
    return self.tile_tokens + best


def best_grid(height: int, width: int, spec: AnyRes) -> tuple[int, int]:
  """(rows, cols): the grid keeping most of the image's pixels, then wasting least canvas
  (LLaVA-NeXT's select_best_resolution)."""
  best, kept_best, waste_best = None, 0, math.inf
  for r, c in spec.grids:
    gh, gw = r * spec.tile, c * spec.tile
    scale = min(gw / width, gh / height)
    kept = min(int(width * scale) * int(height * scale), width * height)
    waste = gw * gh - kept
    if kept > kept_best or (kept == kept_best and waste < waste_best):
      best, kept_best, waste_best = (r, c), kept, waste
  return best


def fitted_size(height: int, width: int, grid_h: int, grid_w: int) -> tuple[int, int]:
  """(h, w) of the image resized to fit grid_h x grid_w pixels, proportions kept."""
  sw, sh = grid_w / width, grid_h / height
  if sw < sh:
    return min(math.ceil(height * sw), grid_h), grid_w
  return grid_h, min(math.ceil(width * sh), grid_w)


def tiles(img: Image.Image, spec: AnyRes) -> np.ndarray:
  """A decoded 8-bit image -> its base tile and its grid's tiles, 8-bit
  [1 + rows x cols, tile, tile, P] (P: 1 for 'L', 3 for 'RGB')."""
  w0, h0 = img.size
  rows, cols = best_grid(h0, w0, spec)
  t = spec.tile
  gh, gw = rows * t, cols * t
  nh, nw = fitted_size(h0, w0, gh, gw)
  canvas = Image.new(img.mode, (gw, gh), 0)  # black margins, as the processor pads
  canvas.paste(img.resize((nw, nh), Image.BICUBIC), ((gw - nw) // 2, (gh - nh) // 2))
  pixels = _planes(np.asarray(canvas))
  out = np.empty((1 + rows * cols, t, t, pixels.shape[-1]), np.uint8)
  # The 8-bit canvas is cut into tiles (a byte per pixel moved); the lookup to floats is
  # the device's (radjax/data/pixels.py).
  out[1:].reshape(rows, cols, t, t, -1)[...] = pixels.reshape(rows, t, cols, t, -1).swapaxes(1, 2)
  out[0] = _planes(np.asarray(img.resize((t, t), Image.BICUBIC)))
  return out


def _planes(pixels: np.ndarray) -> np.ndarray:
  """[H, W] gray or [H, W, 3] RGB -> [H, W, P]."""
  return pixels.reshape(*pixels.shape[:2], -1)


def _unpadded(height: int, width: int, rows: int, cols: int, side: int):
  """(top, bottom, left, right): the feature map's rows and columns that hold the image,
  not the black margin (LLaVA-NeXT's unpad_image, with transformers' rounding to 7 places,
  so exports give LLaVA-OneVision's logits; LLaVA-NeXT's own int() moves the margin by a
  row or column where the product lands just under a whole number: 260 of 18.5M sizes)."""
  ch, cw = rows * side, cols * side
  if width / height > cw / ch:
    pad = (ch - int(round(height * (cw / width), 7))) // 2
    return pad, ch - pad, 0, cw
  pad = (cw - int(round(width * (ch / height), 7))) // 2
  return 0, ch, pad, cw - pad


def _scaled(h: int, w: int, spec: AnyRes) -> tuple[int, int]:
  """The map's shape after anyres_max_tiles' bilinear scaling (unchanged under the cap)."""
  if not spec.max_tiles:
    return h, w
  ratio = math.sqrt(h * w / (spec.max_tiles * spec.tile_tokens))
  if ratio <= _SCALE_SLACK:
    return h, w
  return int(h // ratio), int(w // ratio)


def _taps(n_in: int, n_out: int):
  """Bilinear taps of torch's interpolate (align_corners=False): (i0, i1, w0, w1). A map
  can be empty (a strip of an image whose margin is all of a grid row)."""
  scale = n_in / n_out if n_out else 0.0
  src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
  i0 = src.astype(np.int64)
  w1 = src - i0
  return i0, np.minimum(i0 + 1, n_in - 1), 1.0 - w1, w1


def plan(height: int, width: int, spec: AnyRes) -> tuple[np.ndarray, np.ndarray, int]:
  """(index [max_tokens, 4] int32, weight [max_tokens, 4] float32, count): the image's
  token sequence as taps into its tile features plus the newline row (module doc)."""
  rows, cols = best_grid(height, width, spec)
  top, bottom, left, right = _unpadded(height, width, rows, cols, spec.side)
  h, w = bottom - top, right - left
  oh, ow = _scaled(h, w, spec)
  y0, y1, wy0, wy1 = _taps(h, oh)
  x0, x1, wx0, wx1 = _taps(w, ow)
  s, t = spec.side, spec.tile_tokens

  def feature(y, x):  # map coordinates -> the tile feature's index
    y, x = y + top, x + left
    return (1 + (y // s) * cols + x // s) * t + (y % s) * s + x % s

  yy = lambda a: a[:, None]
  xx = lambda a: a[None, :]
  grid_index = np.stack([feature(yy(y0), xx(x0)), feature(yy(y0), xx(x1)),
                         feature(yy(y1), xx(x0)), feature(yy(y1), xx(x1))], -1)
  grid_weight = np.stack([yy(wy0) * xx(wx0), yy(wy0) * xx(wx1),
                          yy(wy1) * xx(wx0), yy(wy1) * xx(wx1)], -1)
  newline_index = np.zeros((oh, 1, 4), np.int64)
  newline_index[..., 0] = spec.slots * t
  newline_weight = np.zeros((oh, 1, 4))
  newline_weight[..., 0] = 1.0
  grid_index = np.concatenate([grid_index, newline_index], 1).reshape(-1, 4)
  grid_weight = np.concatenate([grid_weight, newline_weight], 1).reshape(-1, 4)
  count = t + len(grid_index)
  index = np.zeros((spec.max_tokens, 4), np.int32)
  weight = np.zeros((spec.max_tokens, 4), np.float32)
  index[:t, 0], weight[:t, 0] = np.arange(t), 1.0
  index[t:count], weight[t:count] = grid_index, grid_weight
  return index, weight, count


def square_tile(img: Image.Image, spec: AnyRes, mean) -> np.ndarray:
  """One image of several -> its base tile [tile, tile, P], 8-bit: padded to a square in
  the mean colour (8-bit, as the processor's background), resized to the tile."""
  w, h = img.size
  fill = square_fill(mean)
  if img.mode == 'L' and len(set(fill)) > 1:
    img = img.convert('RGB')
  side = max(w, h)
  square = Image.new(img.mode, (side, side), fill[0] if img.mode == 'L' else fill)
  square.paste(img, ((side - w) // 2, (side - h) // 2))
  t = spec.tile
  return _planes(np.asarray(square.resize((t, t), Image.BICUBIC)))


def square_fill(mean) -> tuple:
  """The 8-bit mean colour square_tile pads with (one value per RGB channel)."""
  return tuple(int(m * 255) for m in mean[:3])


def square_plan(spec: AnyRes) -> tuple[np.ndarray, np.ndarray, int]:
  """The plan of a `square_tile`: the base's tokens, then one newline."""
  t = spec.tile_tokens
  index = np.zeros((spec.max_tokens, 4), np.int32)
  weight = np.zeros((spec.max_tokens, 4), np.float32)
  index[:t, 0], index[t, 0] = np.arange(t), spec.slots * t
  weight[:t + 1, 0] = 1.0
  return index, weight, t + 1
