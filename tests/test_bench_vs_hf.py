"""bench/vs_hf_train.py and bench/vs_hf_generate.py compare like with like: the HF twin
has radjax's parameter count and, given the converted weights, radjax's logits, loss and
greedy ids (micro sizes, CPU)."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from bench import hf_twin, vs_hf_generate, vs_hf_train, xla_options  # noqa: E402
from configs import demo  # noqa: E402
from radjax.core import sharding  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread():
  """The tests share 2 cores with other jobs; OpenMP barriers over 2 threads stall then."""
  before = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(before)


def _masked_ce(logits, targets, mask) -> float:
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  return float((nll * mask).sum() / mask.sum())


@pytest.mark.slow  # the bench's twin; logits parity itself is test_convert_llava's
def test_train_twin_has_radjax_params_logits_and_loss():
  config = demo.get_config('size=micro')  # with the demo's label head, left out here
  cfg, batch, sides = vs_hf_train.build_sides(config, 'demo', label_head=False)
  ours, hf = sides
  assert [ours['name'], hf['name']] == ['radjax', 'HF eager']
  assert ours['params'] == hf['params']
  exp = ours['exp']
  with sharding.activation_rules(exp.mesh, exp.rules):
    want = np.asarray(jax.jit(lambda p, t, i: exp.model.apply({'params': p}, t, i)[0])(
        exp.state.params, batch['tokens'], batch['images']))
  images = np.ascontiguousarray(batch['images'][:, 0].transpose(0, 3, 1, 2))
  with torch.no_grad():
    got = hf['model'](input_ids=torch.from_numpy(batch['tokens']).long(),
                      pixel_values=torch.from_numpy(images)).logits.numpy()
  assert np.abs(got - want).max() < 1e-4
  # The HF step's loss is radjax's token loss of the same logits (targets, mask).
  loss = _masked_ce(want, batch['targets'], batch['loss_mask'])
  assert abs(hf['first_loss']() - loss) < 1e-4
  assert hf_twin.timed(hf['run'], lambda: None) > 0


@pytest.mark.slow
def test_train_sides_step_in_turn_from_the_same_loss():
  """The whole comparison at micro size, the demo's label head included (two radjax steps
  compile: 85 s of CPU, 2.5 min under load)."""
  rows = vs_hf_train.compare(demo.get_config('size=micro'), 'demo', steps=1, warmup=1)
  plain, head, theirs = rows
  assert [r['side'] for r in rows] == ['radjax, no label head', 'radjax + label head (as run)',
                                       'HF eager']
  assert plain['params'] == theirs['params']
  assert 0 < head['params'] - theirs['params'] < 0.01 * theirs['params']  # the head alone
  assert abs(plain['loss0'] - theirs['loss0']) < 1e-4, (plain['loss0'], theirs['loss0'])
  assert head['loss0'] > plain['loss0']  # plus the label cross-entropy
  assert all(r['step_s'] > 0 and r['tokens_per_s'] > 0 for r in rows)
  assert theirs['vs_hf'] == 1.0 and plain['params_vs_hf'] == 0.0
  assert '| demo | HF eager |' in vs_hf_train.table(rows)
  assert plain['flops'] == theirs['flops'] > 0


def test_train_table_gives_each_side_its_flop_rate_and_mfu():
  """The same analytic FLOPs over each side's own median step: a side twice as fast shows
  twice the TFLOP/s and MFU; the MFU column only with a peak."""
  fields = dict(shape='8 x 2048', image_tokens=256, dtype='bfloat16', tokens=16384,
                flops=int(4e14))
  rows = vs_hf_train.with_ratios([
      dict(size='config', side='radjax', params=10, times=[1.0, 0.8, 0.9], loss0=1.0, **fields),
      dict(size='config', side='HF eager', params=10, times=[1.6, 1.8, 2.0], loss0=1.0,
           **fields)])
  assert [round(r['tflops_per_s'], 6) for r in rows] == [444.444444, 222.222222]
  assert rows[0]['vs_hf'] == pytest.approx(2.0)
  with_peak = vs_hf_train.table(rows, peak_tflops=989)
  assert '| MFU of 989 |' in with_peak
  assert '| 444 | 44.9 % | 2.00x |' in with_peak and '| 222 | 22.5 % | 1.00x |' in with_peak
  assert 'MFU' not in vs_hf_train.table(rows)


def test_dry_counts_the_full_config_on_both_sides():
  from configs import llava_tinyllama
  r = vs_hf_train.dry(llava_tinyllama.get_config(), 'config')
  assert r['radjax'] == r['hf'] and 1.40e9 < r['hf'] < 1.42e9
  assert r['image_tokens'] == 256 and r['shapes']['tokens'] == (8, 2048)


def test_generate_sides_decode_the_same_ids():
  config = demo.get_config('size=micro')
  reported = []  # what a run cut at its time limit has already printed
  rows = vs_hf_generate.compare(config, [2, 1], new_tokens=8, runs=1, hbm_gbps=100.0,
                                on_batch=lambda rows: reported.append(list(rows)))
  assert reported == [rows[:3], rows[3:]]
  rows = rows[:3]
  assert [r['side'] for r in rows] == ['radjax', 'HF dynamic cache', 'HF static cache']
  assert len({r['params'] for r in rows}) == 1
  assert all(r['same_ids'] == 1.0 for r in rows)  # float32: the same function
  cfg = vs_hf_generate.factory.llm_config(config.model)
  table = cfg.vocab_size * cfg.embed_dim  # untied: the input table is not read per step
  kv = 2 * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.dim_per_head * (rows[0]['prompt'] + 4)
  want = 2 * 100e9 / (4 * (rows[0]['params'] - table + kv))
  assert rows[0]['bound'] == pytest.approx(want)
  assert '% of bound' in vs_hf_generate.table(rows)


@pytest.mark.slow  # a bench check (20 s), as the twin's parity above
def test_hf_side_freezes_what_radjax_freezes_and_scores_the_same_targets():
  """The demo trains the projector and decoder on a frozen tower, with logits at the
  report's tokens only: the HF side then freezes the same tower, and the loss both sides
  start from covers the same last max_target_tokens positions."""
  config = demo.get_config('size=micro')
  with config.unlocked():
    config.optim.param_groups = (('vision/.*', 'frozen'), ('.*', 1.0))
    config.data.max_target_tokens = 7
  cfg, batch, sides = vs_hf_train.build_sides(config, 'demo', label_head=False)
  assert batch['loss_mask'].sum(1).tolist() == [7] * len(batch['loss_mask'])
  ours, theirs = sides
  model = theirs['model']
  assert vs_hf_train.frozen_modules(ours['exp']) == ['vision']
  tower = {n: p.detach().clone() for n, p in model.named_parameters()
           if n.startswith('model.vision_tower.')}
  assert tower and not any(p.requires_grad for n, p in model.named_parameters() if n in tower)
  trained = sum(p.numel() for g in theirs['opt'].param_groups for p in g['params'])
  assert trained == hf_twin.count_torch(model) - sum(p.numel() for p in tower.values())
  rows = vs_hf_train.run_sides(cfg, 'demo', sides, steps=1, warmup=1)
  assert abs(rows[0]['loss0'] - rows[1]['loss0']) < 1e-4, rows
  after = dict(model.named_parameters())
  assert all(torch.equal(after[n], p) for n, p in tower.items())


def test_compile_loss_falls_back_to_a_graph_break_once(monkeypatch):
  """torch 2.11 (the GPU image's) cannot compile Llava's forward with the placeholder count
  captured: the first call must recompile without the capture and go on, and say so; a
  compile that works keeps the capture and never recompiles."""
  monkeypatch.setattr(torch._dynamo.config, 'capture_scalar_outputs', False)
  compiles = []

  def fake_compile(fn):  # as torch 2.11 behaves on Llava's forward
    compiles.append(torch._dynamo.config.capture_scalar_outputs)
    if torch._dynamo.config.capture_scalar_outputs and fail:
      def broken(*args):
        raise torch._dynamo.exc.InternalTorchDynamoError('unbacked symbols')
      return broken
    return fn

  monkeypatch.setattr(vs_hf_train.torch, 'compile', fake_compile)
  square = lambda x: x * x
  for fail in (True, False):
    compiles.clear()
    fallbacks = []
    loss = vs_hf_train.compile_loss(square, lambda: fallbacks.append(1))
    assert [loss(torch.tensor(3.0)).item() for _ in range(3)] == [9.0] * 3
    assert compiles == ([True, False] if fail else [True])
    assert fallbacks == ([1] if fail else [])
    assert torch._dynamo.config.capture_scalar_outputs is (not fail)

  def always_broken(fn):
    def broken(*args):
      raise torch._dynamo.exc.InternalTorchDynamoError('still broken')
    return broken
  monkeypatch.setattr(vs_hf_train.torch, 'compile', always_broken)
  with pytest.raises(torch._dynamo.exc.InternalTorchDynamoError, match='still broken'):
    vs_hf_train.compile_loss(square)(torch.tensor(2.0))


def test_xla_option_variants_start_from_the_default_loss_and_bad_ones_are_named():
  config = demo.get_config('size=micro')
  rows = xla_options.compare(config, 'demo', ['xla_cpu_enable_fast_min_max=false'], steps=1,
                             lead=0)
  assert [r['variant'] for r in rows] == ['default', 'xla_cpu_enable_fast_min_max=false']
  assert rows[1]['loss0'] == rows[0]['loss0'] and rows[0]['vs_default'] == 1.0
  assert '| `xla_cpu_enable_fast_min_max=false` |' in xla_options.table(rows)
  with pytest.raises(Exception, match='xla_cpu_no_such_option'):
    xla_options.compare(config, 'demo', ['xla_cpu_no_such_option=1'], steps=1)
  assert xla_options.parse_variant('a=TRUE;b=-3;c=X,Y') == {'a': True, 'b': -3, 'c': 'X,Y'}
  with pytest.raises(ValueError, match="'oops' is not name=value"):
    xla_options.parse_variant('a=1;oops')
