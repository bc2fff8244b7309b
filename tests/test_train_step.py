"""The train step: sharded == single device, accumulation == big batch, freezing."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import linen as nn

from radjax.core import sharding
from radjax.train import optimizer, setup
from radjax.train import step as step_lib
from radjax.train.state import TrainState
from tests.conftest import build_experiment, tiny_config

IMAGE_ID = 4  # the demo tokenizer's <image>


def synthetic_batch(config, seed: int, batch_size: int):
  rng = np.random.default_rng(seed)
  t, v = config.data.max_len, config.model.vision
  n_img = (v.image_size // v.patch_size) ** 2
  tokens = rng.integers(10, 200, (batch_size, t)).astype(np.int32)
  tokens[:, 1:1 + n_img] = IMAGE_ID
  targets = np.roll(tokens, -1, axis=1)
  mask = np.zeros((batch_size, t), np.float32)
  for i in range(batch_size):  # answers of different lengths: token-count normalisation matters
    mask[i, n_img + 2: n_img + 2 + rng.integers(3, t - n_img - 2)] = 1
  images = rng.normal(size=(batch_size, 1, v.image_size, v.image_size, 3)).astype(np.float32)
  return {'tokens': tokens, 'targets': targets, 'loss_mask': mask, 'images': images,
          'image_mask': np.ones((batch_size, 1), bool)}


def run_steps(config, devices, batches, grad_norms=None):
  """(losses, initial params, final state, experiment); each step's gradient norm goes
  into `grad_norms` when given (AdamW's update hides a gradient's scale)."""
  exp = build_experiment(config, devices)
  with sharding.activation_rules(exp.mesh, exp.rules):
    fn = setup.jit_train_step(exp)
    state, losses = exp.state, []
    initial = jax.device_get(state.params)
    for b in batches:
      g = {k: jax.device_put(v, exp.batch_shardings[k]) for k, v in b.items()}
      state, metrics = fn(state, g)
      losses.append(float(metrics['loss']))
      if grad_norms is not None:
        grad_norms.append(float(metrics['grad_norm']))
  return losses, initial, jax.device_get(state), exp


def test_mesh_2x2x2_matches_one_device(demo_data):
  config = tiny_config(demo_data)
  config.runtime.dtype = 'float32'
  batches = [synthetic_batch(config, i, 8) for i in range(3)]
  single_norms, sharded_norms = [], []
  single, *_ = run_steps(config, jax.devices()[:1], batches, single_norms)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  sharded, _, _, parts = run_steps(config, jax.devices()[:8], batches, sharded_norms)
  np.testing.assert_allclose(sharded_norms, single_norms, rtol=1e-4)
  # Big parameters really are split, not replicated.
  spec = parts.state_shardings.params['llm']['layers']['mlp']['gate']['kernel'].spec
  assert spec == jax.sharding.PartitionSpec(None, 'fsdp', 'tensor')
  np.testing.assert_allclose(sharded, single, rtol=0, atol=1e-5)
  assert single[-1] < single[0]


def _check_accumulation_equals_one_big_batch(config, batches):
  big_norms, acc_norms = [], []
  big, _, big_state, _ = run_steps(config, jax.devices()[:1], batches, big_norms)
  config.optim.grad_accum = 4
  acc, _, acc_state, _ = run_steps(config, jax.devices()[:1], batches, acc_norms)
  np.testing.assert_allclose(acc, big, atol=1e-5)
  np.testing.assert_allclose(acc_norms, big_norms, rtol=1e-4)  # the gradient, not Adam's step
  for a, b in zip(jax.tree.leaves(acc_state.params), jax.tree.leaves(big_state.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_accumulated_microbatches_equal_one_big_batch(demo_data):
  config = tiny_config(demo_data)
  _check_accumulation_equals_one_big_batch(
      config, [synthetic_batch(config, i, 8) for i in range(2)])


def test_micro_batch_per_device_derives_the_accumulation_from_the_mesh(demo_data):
  """train.micro_batch_per_device=1 on 4 batch shards: a global batch of 8 is 2
  micro-batches, the same losses as one batch of 8 on one device."""
  config = tiny_config(demo_data)
  config.train.batch_size = config.eval.batch_size = 8
  batches = [synthetic_batch(config, i, 8) for i in range(2)]
  big, *_ = run_steps(config, jax.devices()[:1], batches)
  config.train.micro_batch_per_device = 1
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 1
  acc, _, _, exp = run_steps(config, jax.devices()[:4], batches)
  assert exp.config.optim.grad_accum == 2
  np.testing.assert_allclose(acc, big, atol=1e-5)
  config.train.micro_batch_per_device = 3
  with pytest.raises(ValueError, match=r"train\.batch_size=8 is not a multiple of config\."
                     r"train\.micro_batch_per_device=3 x the mesh's 4 batch shards \(12\)"):
    build_experiment(config, jax.devices()[:4])
  # An explicit grad_accum whose micro-batches (8 / 4 = 2 rows) do not fill 4 shards.
  config.train.micro_batch_per_device, config.optim.grad_accum = 0, 4
  with pytest.raises(ValueError, match=r'config\.train\.batch_size=8 as config\.optim\.'
                     r'grad_accum=4 micro-batches does not split over the 4 batch shards'):
    build_experiment(config, jax.devices()[:4])
  # Evaluation and generation read eval.batch_size only: a training batch (XrayGPT's 12)
  # or micro-batch setting that does not fit this mesh is not theirs to refuse.
  config.train.batch_size, config.train.micro_batch_per_device = 12, 5
  setup.preflight(config, jax.devices()[:4], train=False)
  with pytest.raises(ValueError, match=r'train\.batch_size=12'):
    setup.preflight(config, jax.devices()[:4])


def test_accumulation_equals_one_big_batch_with_the_label_loss(demo_data):
  """The auxiliary label loss is scaled by tokens per labelled example: the whole batch's,
  not each micro-batch's (which changed the loss and the gradients with grad_accum)."""
  from radjax import run
  from radjax.data import pipeline
  config = tiny_config(demo_data)
  config.data.label_loss_weight, config.data.box_token_weight = 1.0, 20.0
  ds = pipeline.train_dataset(config, run.make_task(config).processor, 'train')
  it = pipeline.make_iterator(ds, 0)
  batches = [{k: v for k, v in next(it).items() if k not in ('source', 'truncated')}
             for _ in range(2)]
  _check_accumulation_equals_one_big_batch(config, batches)


def test_frozen_groups_stay_identical_and_hold_no_optimizer_state(demo_data):
  config = tiny_config(demo_data)
  config.optim.param_groups = (('vision/.*', 'frozen'), ('llm/.*', 'frozen'), ('.*', 1.0))
  batches = [synthetic_batch(config, i, 8) for i in range(2)]
  _, initial, final, parts = run_steps(config, jax.devices()[:1], batches)
  for tower in ('vision', 'llm'):
    for a, b in zip(jax.tree.leaves(initial[tower]), jax.tree.leaves(final.params[tower])):
      np.testing.assert_array_equal(a, b)
  assert any(np.abs(a - b).max() > 0 for a, b in zip(
      jax.tree.leaves(initial['projector']), jax.tree.leaves(final.params['projector'])))
  n_projector = sum(x.size for x in jax.tree.leaves(initial['projector']))
  n_state = sum(x.size for x in jax.tree.leaves(final.opt_state) if np.ndim(x) > 0)
  assert n_state == 2 * n_projector  # Adam's two moments, for the projector only
  assert parts.model.rt.vision.frozen and parts.model.rt.llm.frozen
  assert not parts.model.rt.projector.frozen


def test_every_parameter_must_match_a_group(demo_data):
  config = tiny_config(demo_data)
  config.optim.param_groups = (('vision/.*', 1.0),)
  with pytest.raises(ValueError, match='matches no rule'):
    build_experiment(config, jax.devices()[:1])


def test_qformer_projector_trains_from_config(demo_data):
  config = tiny_config(demo_data)
  config.model.projector.kind = 'qformer'
  config.model.projector.num_queries = 16  # as many placeholders as synthetic_batch writes
  batches = [synthetic_batch(config, 0, 8)] * 4
  losses, initial, final, exp = run_steps(config, jax.devices()[:1], batches)
  assert exp.task.model_cfg.tokens_per_image == 16
  assert set(final.params['projector']) == {'query_tokens', 'qformer', 'out'}
  assert losses[-1] < losses[0]


def test_heads_the_tensor_axis_does_not_divide_are_one_error_naming_them(demo_data):
  config = tiny_config(demo_data)  # llm: 4 heads, 2 kv heads
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 2, 4
  with pytest.raises(ValueError, match=r"parameter llm/layers/attn/k/kernel of shape "
                     r"\(2, 32, 2, 8\): its axis 2 \('kv_heads', size 2\) is split over mesh "
                     r"axes tensor=4 .*config\.mesh\.tensor"):
    build_experiment(config, jax.devices()[:8])


# The step's arithmetic on a linear least-squares problem, no data and no mesh: each pins
# one number a refactor could change silently.
def _optim(**kw):
  c = ml_collections.ConfigDict(dict(
      lr=0.1, warmup_steps=0, warmup_init_lr=0.0, min_lr_ratio=1.0, schedule='cosine',
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, clip_norm=0.0,
      param_groups=(('.*', 1.0),), grad_accum=1))
  c.update(kw)
  return c


def _problem(seed=0):
  """A linear least-squares 'model' with per-token weights, in the loss_fn convention:
  sums, the step divides once by the total weight."""
  r = np.random.default_rng(seed)
  params = {'a': {'kernel': jnp.asarray(r.normal(size=(3, 2)), jnp.float32),
                  'bias': jnp.asarray(r.normal(size=(2,)), jnp.float32)},
            'b': {'kernel': jnp.asarray(r.normal(size=(2, 2)), jnp.float32)}}
  batch = {'x': jnp.asarray(r.normal(size=(4, 3)), jnp.float32),
           'y': jnp.asarray(r.normal(size=(4, 2)), jnp.float32),
           'w': jnp.asarray([1.0, 0.0, 2.0, 0.5], jnp.float32)}

  def loss_fn(p, b, rng):
    del rng
    h = b['x'] @ p['a']['kernel'] + p['a']['bias']
    err = jnp.sum((h @ p['b']['kernel'] - b['y']) ** 2, axis=-1)
    return {'loss_sum': jnp.sum(err * b['w']), 'weight_sum': jnp.sum(b['w'])}
  return params, batch, loss_fn


def _step(optim_cfg, params, loss_fn, batch, accum=1):
  labels = optimizer.param_labels(params, optim_cfg.param_groups)
  tx, schedule = optimizer.make_optimizer(optim_cfg, 10, labels)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=tx.init(params), rng=jax.random.key(0))
  fn = step_lib.make_train_step(loss_fn, tx, optimizer.trainable_mask(labels), schedule, accum)
  return jax.jit(fn)(state, batch)


def _mean_grads(params, loss_fn, batch):
  def mean(p):
    s = loss_fn(p, batch, None)
    return s['loss_sum'] / s['weight_sum']
  return jax.grad(mean)(params)


@pytest.mark.parametrize('accum', [1, 2])
def test_step_gradient_is_the_weighted_mean_loss_gradient(accum):
  """grad_norm is that of d(sum w * loss / sum w): the division happens, once, over every
  micro-batch's weights (Adam hides the gradient's scale; clipping and grad_norm do not)."""
  params, batch, loss_fn = _problem()
  _, metrics = _step(_optim(), params, loss_fn, batch, accum)
  want = optax.tree.norm(_mean_grads(params, loss_fn, batch))
  np.testing.assert_allclose(float(metrics['grad_norm']), float(want), rtol=1e-5)


def test_clip_norm_scales_the_update_to_the_clipped_gradient():
  """optim.clip_norm rescales the gradient before AdamW. Adam's first step is lr * g /
  (|g| + eps) elementwise, scale-free while eps << |g|; with eps >> |g| it is ~ lr * g /
  eps, so the clip (to a tenth of the norm here) shows as a tenth of the step."""
  params, batch, loss_fn = _problem()
  grads = _mean_grads(params, loss_fn, batch)
  norm = float(optax.tree.norm(grads))
  new, _ = _step(_optim(clip_norm=norm / 10, eps=10.0), params, loss_fn, batch)
  moved = optax.tree.norm(jax.tree.map(jnp.subtract, params, new.params))
  want = optax.tree.norm(jax.tree.map(lambda g: 0.1 * (g / 10) / (jnp.abs(g / 10) + 10.0),
                                      grads))
  np.testing.assert_allclose(float(moved), float(want), rtol=1e-4)


def test_a_frozen_group_neither_moves_nor_counts_in_the_clipped_norm():
  """Frozen parameters keep their values, and their gradients (non-zero here: 'b' sits on
  the path of 'a') are left out of grad_norm and so of the global-norm clip."""
  params, batch, loss_fn = _problem()
  cfg = _optim(param_groups=(('b/.*', 'frozen'), ('.*', 1.0)), clip_norm=1.0)
  new, metrics = _step(cfg, params, loss_fn, batch)
  np.testing.assert_array_equal(new.params['b']['kernel'], params['b']['kernel'])
  grads = _mean_grads(params, loss_fn, batch)
  assert float(optax.tree.norm(grads['b'])) > 0
  np.testing.assert_allclose(float(metrics['grad_norm']), float(optax.tree.norm(grads['a'])),
                             rtol=1e-5)


def test_weight_decay_reaches_kernels_only_and_lr_multipliers_scale_the_step():
  """A zero gradient leaves only AdamW's decoupled decay: lr x wd x kernel on kernels, none
  on biases; a group at multiplier 0.5 moves half as far."""
  params, batch, _ = _problem()
  zero_loss = lambda p, b, rng: {'loss_sum': 0.0 * sum(jnp.sum(x) for x in
                                                        jax.tree.leaves(p)),
                                 'weight_sum': jnp.sum(b['w'])}
  cfg = _optim(weight_decay=0.5, param_groups=(('b/.*', 0.5), ('.*', 1.0)))
  new, _ = _step(cfg, params, zero_loss, batch)
  np.testing.assert_array_equal(new.params['a']['bias'], params['a']['bias'])
  np.testing.assert_allclose(new.params['a']['kernel'], params['a']['kernel'] * (1 - 0.1 * 0.5),
                             rtol=1e-6)
  np.testing.assert_allclose(new.params['b']['kernel'],
                             params['b']['kernel'] * (1 - 0.05 * 0.5), rtol=1e-6)


def test_weight_decay_reaches_every_weight_matrix_of_the_label_head():
  """The label head's per-label linear ('out', not a Dense kernel) is a weight matrix and
  decays like the query's kernel; its bias and norm scale do not (the kernel-only rule left
  'out' undecayed in the classifier and the demo's label loss)."""
  from radjax.models import classifier
  feats = jnp.ones((2, 5, 8), jnp.float32)
  params = nn.meta.unbox(classifier.LabelHead(3).init(jax.random.key(0), feats)['params'])
  params = jax.tree.map(lambda x: x + 1.0, params)  # nonzero, so decay shows
  zero_loss = lambda p, b, rng: {'loss_sum': 0.0 * sum(jnp.sum(x) for x in
                                                        jax.tree.leaves(p)),
                                 'weight_sum': jnp.sum(b['w'])}
  new, _ = _step(_optim(weight_decay=0.5), params, zero_loss, {'w': jnp.ones(2)})
  for name in ('out', 'query'):
    got, was = new.params[name], params[name]
    got, was = (got['kernel'], was['kernel']) if name == 'query' else (got, was)
    np.testing.assert_allclose(got, was * (1 - 0.1 * 0.5), rtol=1e-6, err_msg=name)
  np.testing.assert_array_equal(new.params['bias'], params['bias'])
  np.testing.assert_array_equal(new.params['norm']['scale'], params['norm']['scale'])


def test_param_groups_match_whole_paths():
  """A rule names a whole path (re.fullmatch): 'vision' matches no 'vision/...' parameter,
  and 'proj/.*' does not catch 'projector/...'."""
  params = {'vision': {'kernel': 0}, 'projector': {'kernel': 0}}
  labels = optimizer.param_labels(params, (('proj/.*', 'frozen'), ('.*', 1.0)))
  assert labels == {'vision': {'kernel': 'group1'}, 'projector': {'kernel': 'group1'}}
  with pytest.raises(ValueError, match='matches no rule'):
    optimizer.param_labels(params, (('vision', 'frozen'), ('projector/.*', 1.0)))


def test_adam_betas_reach_their_moments():
  """b1 and b2 are not interchangeable: AdamW's first step is the same for any betas (bias
  correction), its second is not; compare the second step with optax's own adamw."""
  params, batch, loss_fn = _problem()
  cfg = _optim(b1=0.5, b2=0.99)
  labels = optimizer.param_labels(params, cfg.param_groups)
  tx, schedule = optimizer.make_optimizer(cfg, 10, labels)
  fn = jax.jit(step_lib.make_train_step(loss_fn, tx, optimizer.trainable_mask(labels),
                                        schedule))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.key(0))
  ref, ref_state = params, optax.adamw(0.1, b1=0.5, b2=0.99, eps=1e-8,
                                       weight_decay=0.0).init(params)
  for _ in range(2):
    state, _ = fn(state, batch)
    updates, ref_state = optax.adamw(0.1, b1=0.5, b2=0.99, eps=1e-8, weight_decay=0.0).update(
        _mean_grads(ref, loss_fn, batch), ref_state, ref)
    ref = optax.apply_updates(ref, updates)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_batch_without_loss_tokens_gives_a_zero_finite_step():
  """A batch whose every weight is 0 (all padding) divides by max(0, 1): zero gradients,
  no NaN (which would stop the run as a non-finite state)."""
  params, batch, loss_fn = _problem()
  new, metrics = _step(_optim(), params, loss_fn, {**batch, 'w': jnp.zeros(4)})
  assert float(metrics['grad_norm']) == 0.0
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_a_warmup_longer_than_the_run_ends_at_the_last_step():
  """optim.warmup_steps >= train.num_steps (a short run with the default 100-step warmup):
  the warmup is cut to num_steps - 1 steps, so the run's last step is at the peak lr."""
  sched = optimizer.make_schedule(_optim(lr=1e-3, warmup_steps=100, min_lr_ratio=0.1), 10)
  assert float(sched(0)) == 0.0
  assert float(sched(9)) == pytest.approx(1e-3)
