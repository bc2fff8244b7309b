"""LPIPS-style perceptual distance (Zhang et al. 2018) on VGG16 features, as Taming's
VQ-GAN loss uses it. Pure functions of a weights dict, so the frozen feature network is
a constant of the loss, never part of the trained state.

A constant of the jitted step, it has no logical axes: every device holds it whole, on
purpose. It is small next to what the step shards (VGG16's convs: 14.7M frozen weights,
56 MiB in f32, with no gradients or optimizer moments; the f16 codec: 75M trained ones,
each with two Adam moments), and split over fsdp it would be gathered again every step.

Weights (given by the user; nothing is downloaded): torchvision's `vgg16` state dict
(`features.{i}.weight` [O, I, 3, 3], `features.{i}.bias`) and optionally LPIPS's
linear heads (`lin{k}.model.1.weight` [1, C, 1, 1]). Without heads it is LPIPS's
baseline (`LPIPS(lpips=False)`, richzhang/PerceptualSimilarity lpips/lpips.py forward):
the squared differences of the unit-normalised features summed over channels, averaged
over space, summed over the 5 layers (each layer's term in [0, 4]: a scale of its own,
not the headed distance's).
"""
import jax
import jax.numpy as jnp
import numpy as np

# torchvision vgg16.features indices of the convs; a 'pool' follows the listed ones.
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_POOL_AFTER = (2, 7, 14, 21)
_TAPS = (2, 7, 14, 21, 28)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
# LPIPS's input scaling of [-1, 1] images.
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


def weights_from_state_dict(vgg: dict, heads: dict | None = None, source: str = '') -> dict:
  """{'convs': [(kernel HWIO, bias)], 'heads': [weights [C]] | None} from torch names."""
  convs = []
  for i in VGG16_CONVS:
    w, b = vgg.get(f'features.{i}.weight'), vgg.get(f'features.{i}.bias')
    if w is None or b is None or np.ndim(w) != 4:
      raise ValueError(f'{source}: not a torchvision vgg16 state dict (features.{i}.weight '
                       'and .bias missing)')
    convs.append((np.transpose(np.asarray(w, np.float32), (2, 3, 1, 0)),
                  np.asarray(b, np.float32)))
  lin = None
  if heads is not None:
    lin = []
    for k, i in enumerate(_TAPS):
      w = heads.get(f'lin{k}.model.1.weight')
      if w is None or np.size(w) != convs[VGG16_CONVS.index(i)][1].shape[0]:
        raise ValueError(f'{source}: no LPIPS head lin{k}.model.1.weight of the right width')
      lin.append(np.asarray(w, np.float32).reshape(-1))
  return {'convs': convs, 'heads': lin}


def _features(x, convs):
  out, conv = [], iter(convs)
  for i in VGG16_CONVS:
    kernel, bias = next(conv)
    x = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    x = jax.nn.relu(x + bias)
    if i in _TAPS:
      out.append(x)
    if i in _POOL_AFTER:
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
  return out


def distance(a, b, weights: dict):
  """Per-image perceptual distance of images [N, H, W, C] in [-1, 1] (C = 1 or 3)."""
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  if a.shape[-1] == 1:
    a, b = jnp.repeat(a, 3, -1), jnp.repeat(b, 3, -1)
  n = a.shape[0]
  feats = _features(jnp.concatenate([(a - _SHIFT) / _SCALE, (b - _SHIFT) / _SCALE]),
                    weights['convs'])
  total = jnp.zeros((n,), jnp.float32)
  for k, f in enumerate(feats):
    # LPIPS's normalize_tensor, f / (|f| + 1e-10), with the eps inside the root so that
    # an all-zero feature (ReLU) has a finite gradient; the two differ by < 1e-10 / |f|.
    f = f * jax.lax.rsqrt(jnp.sum(jnp.square(f), -1, keepdims=True) + 1e-20)
    d = jnp.square(f[:n] - f[n:])
    d = jnp.sum(d, -1) if weights['heads'] is None else d @ weights['heads'][k]
    total = total + jnp.mean(d, axis=(1, 2))
  return total
