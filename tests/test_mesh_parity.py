"""Every model family shards by the logical axis rules: on the four mesh shapes of a pod
(data=8, fsdp=8, fsdp=4 x tensor=2, data=2 x fsdp=2 x tensor=2) a train step gives the
one-device loss, gradient norm and updated parameters, generation the one-device tokens,
and at full size fsdp leaves no big parameter whole on every device. The demo VLM's step
on 2 x 2 x 2 is tests/test_train_step.py's, the codec's on fsdp=8 tests/test_vqgan.py's."""
import copy

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import classifier, demo, llm_cxr, radfm, radvlm, vqgan, xraygpt
from radjax import tasks
from radjax.core import sharding
from radjax.eval.decoding import generate as gen
from radjax.train import setup
from radjax.train import state as state_lib

IMAGE_ID = 4  # the demo tokenizer's <image> (no tokenizer is read here: synthetic batches)


def _neox(arg: str = 'size=micro,task=lm'):
  """The demo decoder with LLM-CXR's GPT-NeoX family (configs/llm_cxr.py's dolly-v2-3b:
  LayerNorm, plain GELU MLP with biases, parallel residual, 25% rotary)."""
  c = demo.get_config(arg)
  family = llm_cxr.get_config('').model.llm
  for k in ('norm', 'mlp', 'activation', 'linear_bias', 'qkv_bias', 'parallel_residual',
            'rotary_pct', 'rope_theta', 'norm_eps', 'tie_embeddings'):
    c.model.llm[k] = family[k]
  c.model.llm.num_kv_heads = c.model.llm.num_heads
  return c


def _qwen2_tied():
  """RadVLM's micro form (SigLIP, MLP projector, Qwen2 with q/k/v biases, AnyRes) with the
  small Qwen2s' tied embeddings: the table's gradient from both of its uses."""
  c = radvlm.get_config('size=micro')
  c.model.llm.tie_embeddings = True
  return c


def _linear_with_labels():
  """The demo VLM (LLaMA, 2D ViT) with a linear projector and the label head's losses."""
  c = demo.get_config('size=micro')
  c.model.projector.kind = 'linear'
  assert c.data.label_loss_weight > 0 and c.data.box_token_weight > 0
  return c


# family -> (config, the mesh data x fsdp x tensor its fast test runs on); the slow test
# runs it on the other three shapes.
CASES = {
    'qwen2_tied_siglip_mlp': (_qwen2_tied, (1, 4, 2)),
    'gpt_neox': (_neox, (2, 2, 2)),
    'eva_qformer_llama': (lambda: xraygpt.get_config('size=micro'), (1, 8, 1)),
    'vit3d_perceiver': (lambda: radfm.get_config('size=micro'), (2, 2, 2)),
    'vit_linear_label_head': (_linear_with_labels, (1, 4, 2)),
    'classifier': (lambda: classifier.get_config('size=micro'), (8, 1, 1)),
    'vqgan_and_discriminator': (lambda: vqgan.get_config('size=micro'), (1, 4, 2)),
}


def _config(make):
  c = make()
  c.optim.param_groups = (('.*', 1.0),)  # every part trained (XrayGPT's are frozen)
  c.optim.warmup_steps = 0  # a first step of lr 0 would leave every parameter as it was
  c.runtime.dtype = 'float32'
  c.train.batch_size = 8
  if c.model.image_token_id < 0:
    c.model.image_token_id = IMAGE_ID
  return c


def _batch(task, config, rng, kind: str = '') -> dict:
  """Random arrays of the task's batch spec: image placeholders after BOS, answers of
  different lengths, labels and boxes in range, AnyRes plans reading the base tile."""
  spec = task.batch_spec(kind) if kind else task.batch_spec()
  b, out = config.train.batch_size, {}
  for k, f in spec.items():
    shape = (b, *f.shape)
    if k in ('tile_index', 'tile_weight'):
      out[k] = np.zeros(shape, f.dtype)
      out[k][..., 0] = 0 if k == 'tile_index' else 1
    elif k == 'labels':
      out[k] = rng.integers(0, 2, shape).astype(f.dtype)
    elif k in ('label_mask', 'box_mask', 'image_mask', 'depth_mask'):
      out[k] = np.ones(shape, f.dtype)
    elif k == 'box_targets':
      out[k] = rng.uniform(size=shape).astype(f.dtype)
    elif k == 'images' and np.issubdtype(f.dtype, np.integer):  # 8-bit pixels
      out[k] = rng.integers(0, 256, shape).astype(f.dtype)
    elif k in ('volumes', 'volume_norm'):  # volume slots' voxels, each slot a scan
      out[k] = _volume_field(k, shape, rng)
    elif np.issubdtype(f.dtype, np.integer):
      out[k] = rng.integers(10, 1000, shape).astype(f.dtype)
    elif k == 'loss_mask':
      out[k] = np.zeros(shape, f.dtype)
      for i in range(b):
        out[k][i, shape[1] // 3: shape[1] // 3 + rng.integers(3, shape[1] // 2)] = 1
    else:
      out[k] = rng.normal(size=shape).astype(f.dtype)
  if config.task == 'vlm':
    n = task.model_cfg.tokens_per_image * out['image_mask'].shape[1]
    out['tokens'][:, 1:1 + n] = IMAGE_ID
    out['targets'] = np.roll(out['tokens'], -1, axis=1)
  return out


def _volume_field(k: str, shape, rng) -> np.ndarray:
  """Compact volume slots (radjax/data/pixels.py): voxels in [0, 1], every slot a scan
  (its norm rows mean 0, std 1)."""
  if k == 'volumes':
    return rng.uniform(size=shape).astype(np.float16)
  norm = np.zeros(shape, np.float32)
  norm[..., 1, :] = 1
  return norm


def _steps(config, devices, batches):
  """(per-step metrics, initial and final params, experiment) of the jitted train step."""
  exp = setup.build(config, tasks.make(config, None), devices)
  initial = jax.device_get(exp.state.params)
  with exp.context():
    step, state, metrics = setup.jit_train_step(exp), exp.state, []
    for b in batches:
      g = {k: jax.device_put(v, sharding.batch_sharding(exp.mesh, exp.rules, v.ndim))
           for k, v in b.items()}
      state, m = step(state, g)
      metrics.append({k: float(m[k]) for k in ('loss', 'grad_norm')})
  return metrics, initial, jax.device_get(state.params), exp


MESHES = ((8, 1, 1), (1, 8, 1), (1, 4, 2), (2, 2, 2))


def _check_steps_equal_one_device(family, meshes):
  config = _config(CASES[family][0])
  task = tasks.make(config, None)
  kind = 'volume' if 'volume' in getattr(task, 'slots', {}) else ''  # RadFM's CT step
  rng = np.random.default_rng(0)
  batches = [_batch(task, config, rng, kind) for _ in range(2)]
  want, initial, want_params, _ = _steps(config, jax.devices()[:1], batches)
  # The parameters moved (a step of lr 0 would pass the comparisons below unseen).
  moved = max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(want_params), jax.tree.leaves(initial)))
  assert moved > 1e-4
  for mesh in meshes:
    sharded = copy.deepcopy(config)
    sharded.mesh.data, sharded.mesh.fsdp, sharded.mesh.tensor = mesh
    got, got_initial, got_params, exp = _steps(sharded, jax.devices()[:8], batches)
    assert dict(exp.mesh.shape) == dict(zip(sharding.MESH_AXES, mesh))
    # Born sharded from the one-device init.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got_initial, initial)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g['loss'], w['loss'], rtol=1e-6, atol=1e-5, err_msg=str(mesh))
      np.testing.assert_allclose(g['grad_norm'], w['grad_norm'], rtol=1e-5, err_msg=str(mesh))
    # Adam moves every trained leaf by ~lr = 1e-3 a step whatever its gradient's size, so
    # a gradient of the wrong sign or shard shows; a gradient that is 0 exactly (a key
    # bias under softmax, a bias a norm cancels) moves by float noise, up to ~1e-5.
    flat = jax.tree_util.tree_flatten_with_path(got_params)[0]
    for (path, g), w in zip(flat, jax.tree.leaves(want_params)):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=3e-5,
                                 err_msg=f'{mesh} {jax.tree_util.keystr(path)}')


@pytest.mark.parametrize('family', list(CASES))
def test_train_steps_on_a_mesh_equal_one_device(family):
  _check_steps_equal_one_device(family, [CASES[family][1]])


@pytest.mark.slow
@pytest.mark.parametrize('family', list(CASES))
def test_train_steps_on_every_mesh_shape_equal_one_device(family):
  _check_steps_equal_one_device(family, [m for m in MESHES if m != CASES[family][1]])


# Full sizes, abstract (nothing allocated), on data=1 x fsdp=8.
FULL = {'radvlm': radvlm, 'xraygpt': xraygpt, 'radfm': radfm, 'llm_cxr': llm_cxr,
        'vqgan': vqgan, 'classifier': classifier}


@pytest.mark.parametrize('recipe', list(FULL))
def test_fsdp_splits_every_big_parameter_of_each_full_recipe(recipe):
  """Each device holds about an eighth of every recipe's parameters; what stays whole
  (norms, biases, the projectors' vision-side input axis) is small, and nothing reaches
  the replicated-parameter warning."""
  c = FULL[recipe].get_config('')
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 8, 1
  c.runtime.attention_impl = 'xla'  # cuDNN's check wants a GPU; the parameters are the same
  if c.model.image_token_id < 0:
    c.model.image_token_id = IMAGE_ID
  task = tasks.make(c, None)
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:8])
  rules = sharding.rules_from_config(c.sharding.rules)
  params, shardings = state_lib.abstract_params(task.model(), task.init_inputs(), mesh, rules)
  total = held = 0
  for path, a in jax.tree_util.tree_flatten_with_path(params)[0]:
    size = a.size * a.dtype.itemsize
    shard = int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize
    total, held = total + size, held + shard
    assert shard < 16 * 2 ** 20 or shard * 8 == size, (jax.tree_util.keystr(path), a.shape,
                                                         a.sharding.spec)
  assert held <= 1.02 * total / 8, held / total
  assert sharding.warn_replicated(params, shardings, c.sharding.replicated_warn_mib) == []


def _generate(config, mesh, model, params, batch, cfgs):
  """Params and prompts placed as training places them; the ids and scores of each cfg."""
  config = copy.deepcopy(config)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
  devices = jax.devices()[:int(np.prod(mesh))]
  m = sharding.make_mesh(config.mesh, devices)
  rules = sharding.rules_from_config(config.sharding.rules)
  placed = jax.device_put(nn.meta.unbox(params), sharding.logical_shardings(params, m, rules))
  put = lambda x: jax.device_put(x, sharding.batch_sharding(m, rules, x.ndim))
  g = jax.tree.map(put, batch)
  with sharding.activation_rules(m, rules):
    return [jax.device_get(gen.generate(model, placed, g['tokens'], g['mask'], g.get('images'),
                                        c, jax.random.key(3) if c.strategy == 'sample' else None))
            for c in cfgs]


@pytest.mark.parametrize('family, mesh', [('gpt_neox', (2, 2, 2)),
                                          ('vit3d_perceiver', (1, 4, 2))])
def test_generation_on_a_mesh_equals_one_device(family, mesh):
  """Greedy, sampled and beam-searched tokens of a decoder alone and of RadFM's volume VLM
  (depth-masked CT slots) on a mesh are the one-device ones."""
  config = _config(CASES[family][0])
  task = tasks.make(config, None)
  model, rng, b = task.model(), np.random.default_rng(0), 8
  inputs = task.init_inputs()
  shapes = jax.eval_shape(lambda k: model.init(k, *inputs), jax.random.key(0))['params']
  params = jax.tree.map(lambda x: rng.normal(0, 0.2, x.shape).astype(x.dtype), shapes)
  n_img = task.model_cfg.tokens_per_image if config.task == 'vlm' else 0
  prompts = [[1, 6] + [IMAGE_ID] * n_img + list(rng.integers(10, 200, 2 + i % 5)) + [8, 7]
             for i in range(b)]
  tokens, mask = gen.left_pad(prompts, n_img + 12, 0)
  batch = {'tokens': tokens, 'mask': mask}
  if config.task == 'vlm':
    spec = task.batch_spec('volume')
    depth = spec['depth_mask'].shape[-1]
    depth_mask = np.arange(depth)[None, None] < rng.integers(depth // 2, depth + 1, (b, 1, 1))
    shape = lambda k: (b, *spec[k].shape)
    batch['images'] = {  # volume slots as they travel: float16 voxels, 8-bit 2D planes
        **{k: _volume_field(k, shape(k), rng) for k in ('volumes', 'volume_norm')},
        'images': np.zeros(shape('images'), np.uint8),
        'pixel_table': np.zeros(shape('pixel_table'), np.float32), 'depth_mask': depth_mask}
  cfgs = [gen.GenerationConfig(max_new_tokens=8, pad_id=0),
          gen.GenerationConfig(max_new_tokens=8, decoding='sample', temperature=1.5, pad_id=0),
          gen.GenerationConfig(max_new_tokens=8, decoding='beam', num_beams=3, pad_id=0)]
  want = _generate(config, (1, 1, 1), model, params, batch, cfgs)
  got = _generate(config, mesh, model, params, batch, cfgs)
  for (ids, scores), (want_ids, want_scores), c in zip(got, want, cfgs):
    np.testing.assert_array_equal(ids, want_ids, err_msg=c.strategy)
    np.testing.assert_allclose(scores, want_scores, atol=1e-4, err_msg=c.strategy)
  assert len({tuple(r) for r in want[0][0]}) > 1  # prompts that lead somewhere different


def test_an_fsdp_size_that_does_not_divide_a_parameter_is_one_error_naming_it():
  """Six devices on fsdp: the micro decoder's width of 32 does not split six ways. Refused
  before anything is compiled, naming the parameter, its axis and the knob (XLA's own
  error names neither); replicating it silently would hide the cost at full size."""
  c = _config(lambda: xraygpt.get_config('size=micro'))
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 6, 1
  task = tasks.make(c, None)
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:6])
  rules = sharding.rules_from_config(c.sharding.rules)
  with pytest.raises(ValueError, match=r"^parameter llm/embedder/embedding of shape "
                     r"\(2048, 32\): its axis 1 \('embed', size 32\) is split over mesh axes "
                     r"fsdp=6 \(6 shards\), which do not divide 32; use a config\.mesh\.fsdp "
                     r"that divides 32, or map 'embed' to None in config\.sharding\.rules$"):
    state_lib.abstract_params(task.model(), task.init_inputs(), mesh, rules)


def test_a_misspelt_rule_name_is_one_error_naming_it():
  """flax skips a rule whose logical name nothing uses: ('embd', 'fsdp') left every
  embedding replicated, found (at best) by the replicated-size warning at full size."""
  c = _config(lambda: xraygpt.get_config('size=micro'))
  c.sharding.rules = (('embd', 'fsdp'),) + tuple(c.sharding.rules)
  with pytest.raises(ValueError, match=r"^config\.sharding\.rules: 'embd' names no axis of "
                                       r"this model's parameters or activations .*act_batch"):
    setup.build(c, tasks.make(c, None), jax.devices()[:1])
  c.sharding.rules = c.sharding.rules[1:]  # the default table serves every model
  setup.build(c, tasks.make(c, None), jax.devices()[:1])
