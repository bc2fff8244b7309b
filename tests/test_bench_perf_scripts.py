"""bench/compile_time.py, bench/remat.py and bench/frozen.py at micro size: scanned depth
does not grow the program, remat 'full' keeps fewer temporaries than 'none', and frozen
towers get no backward pass (fewer FLOPs, only the LLM's activation gradients)."""
import pytest

from bench import compile_time, compiled_step, frozen, memory, remat, train_step
from configs import demo, xraygpt


def _lm_micro():
  """The decoder alone at micro size, 128 tokens (activations that show next to weights)."""
  return compiled_step.with_overrides(demo.get_config('size=micro,task=lm'),
                                      {'data.max_len': 128, 'model.llm.num_layers': 1})


def test_scanned_depth_keeps_the_program_size_and_unrolled_grows_it():
  config = _lm_micro()
  # The program's size, from lowering alone (compile seconds are the bench's, not a test's).
  rows = {(n, scan): compile_time.compile_row(config, n, scan, compile=False) for n in (1, 3)
          for scan in (True, False)}
  scanned = rows[3, True]['hlo_lines'] / rows[1, True]['hlo_lines']
  unrolled = rows[3, False]['hlo_lines'] / rows[1, False]['hlo_lines']
  assert scanned < 1.05 < 1.3 < unrolled, (scanned, unrolled)
  assert rows[3, True]['params'] > rows[1, True]['params']
  assert '| 3 | on |' in compile_time.table(list(rows.values()))


def test_full_remat_keeps_fewer_temporaries_than_none():
  config = compiled_step.with_overrides(_lm_micro(), {'model.llm.num_layers': 2})
  rows = [remat.remat_row(config, p, ('llm',)) for p in ('none', 'full')]
  none, full = rows
  assert full['temp'] < none['temp'], (full['temp'], none['temp'])
  assert full['flops'] > none['flops']  # the forward recomputed in the backward pass
  # A budget between the two picks 'full'; no budget picks the least recompute.
  assert remat.recommend(rows, (full['peak'] + none['peak']) / 2)[0] == 'full'
  assert remat.recommend(rows)[0] == 'none'
  assert remat.recommend(rows, 1)[0] == ''


def _xraygpt_micro_unrolled():
  return compiled_step.with_overrides(xraygpt.get_config('size=micro'),
                                      {'runtime.scan_layers': False})


@pytest.mark.slow  # two unrolled XrayGPT compilations; test_models checks frozen parts
def test_frozen_llm_gets_activation_gradients_only():
  """XrayGPT's freeze adds to the all-frozen step (the forward) about one LLM forward: the
  activation gradients to the projector, no LLM weight gradients, no vision backward."""
  config = _xraygpt_micro_unrolled()
  rows = {name: frozen.freeze_row(config, name) for name in ('recipe', 'all frozen')}
  extra = rows['recipe']['flops'] - rows['all frozen']['flops']
  assert 0.8 < extra / frozen.llm_forward_flops(config) < 1.3, extra


@pytest.mark.slow
def test_frozen_towers_save_flops_and_temporaries():
  config = xraygpt.get_config('size=micro')
  rows = {name: frozen.freeze_row(config, name) for name in frozen.FREEZES}
  fwd = frozen.forward_flops(config)
  assert rows['all frozen']['flops'] < rows['recipe']['flops'] < rows['all trained']['flops']
  # Everything frozen: the step is the forward pass (+ the optimizer's elementwise work).
  assert rows['all frozen']['flops'] < 1.1 * fwd
  # Only the projector's output trained: the LLM's activation gradients (~ one LLM forward),
  # no LLM weight gradients (another LLM forward) and no vision backward.
  extra = rows['recipe']['flops'] - rows['all frozen']['flops']
  assert 0.8 < extra / frozen.llm_forward_flops(config) < 1.3
  assert rows['recipe']['temp'] < rows['all trained']['temp']


def test_llava_state_per_device_on_8_devices_within_the_target():
  """Issue 15's target from abstract shapes: per-device params on 8 devices <= 1.1x an
  even split; what is not split evenly is listed: small norms and biases only (the
  projector's first kernel, 7 MiB beyond its share, was whole while 'vision_embed' mapped
  to no mesh axis)."""
  from bench import memory, replicated
  from configs import llava_tinyllama
  config = compiled_step.with_overrides(llava_tinyllama.get_config(),
                                        {'runtime.attention_impl': 'xla'})
  exp = memory.experiment(config, 8)
  per_device = memory.per_device_bytes(exp.state.params)
  even = 4 * memory.count(exp.state.params) / 8
  assert per_device <= 1.1 * even, per_device / even
  leaves = replicated.uneven_leaves(exp.state.params, 8)
  assert abs(sum(x['excess'] for x in leaves) - (per_device - even)) < 1e-3 * even
  assert all(x['bytes'] < 2 ** 20 for x in leaves), leaves  # no big leaf left whole
  assert sum(x['excess'] for x in leaves) < 0.005 * even


@pytest.mark.parametrize('target_tokens', [0, 16])
def test_analytic_flops_agree_with_xla_and_count_the_head_where_the_loss_is(target_tokens):
  """bench/train_step.py's MFU rests on the analytic count: it must be XLA's count of the
  compiled step (unrolled; XLA adds the elementwise ops, attention's causal blocks skip some
  scores) within 10 %, with the LM head over the last max_target_tokens positions only."""
  config = compiled_step.with_overrides(
      demo.get_config('size=micro'),
      {'runtime.scan_layers': False, 'data.max_len': 96,
       'data.max_target_tokens': target_tokens})
  exp = memory.experiment(config, 1)
  analytic = train_step.analytic_flops(config, exp.state.params, exp.labels)['total']
  xla = compiled_step.flops(compiled_step.lower_and_compile(config)['compiled'])
  assert 0.9 < analytic / xla < 1.1, (analytic, xla)


def test_analytic_flops_count_every_anyres_tile():
  """RadVLM's AnyRes: the tower runs on every tile slot of every image (5 at micro size), so
  the analytic count stays XLA's within 10 %."""
  from configs import radvlm
  config = compiled_step.with_overrides(
      radvlm.get_config('size=micro'), {'runtime.scan_layers': False, 'data.max_len': 96})
  assert config.model.anyres_grids
  exp = memory.experiment(config, 1)
  analytic = train_step.analytic_flops(config, exp.state.params, exp.labels)
  xla = compiled_step.flops(compiled_step.lower_and_compile(config)['compiled'])
  assert 0.9 < analytic['total'] / xla < 1.1, (analytic, xla)


def test_padding_bench_packs_the_demo_recipes(demo_data):
  """bench/padding.py on the demo's recipes: packing turns off what it refuses (the demo
  caps targets per example) and fills the decoder's rows."""
  from bench import padding
  from radjax import run
  rates = {}
  for pack in (False, True):
    config, note = padding.with_packing(demo.get_config('task=lm'), pack)
    config.data.dir = demo_data
    run.make_task(config)  # the packed config is one the task accepts
    rates[pack] = padding.measure(config, 2)
  config, note = padding.with_packing(demo.get_config(''), True)  # the demo as it runs
  assert config.data.max_target_tokens == 0 and 'no target cap' in note
  config.data.dir = demo_data
  run.make_task(config)
  assert rates[True]['padding'] < rates[False]['padding'] and rates[True]['per_row'] > 1


def test_anyres_stages_times_each_stage_of_a_film(demo_data):
  """bench/anyres_stages.py on one film at micro size: every stage of its table is timed
  (it broke once, silently, when anyres.tiles lost an argument)."""
  from bench import anyres_stages, data_pipeline
  from configs import radvlm
  config = radvlm.get_config('size=micro')
  config.data.dir = demo_data
  config = data_pipeline.with_anyres(config)
  results = {'jpeg_film': anyres_stages.stages(
      config, anyres_stages.film(config, 'jpeg_film'), repeats=1)}
  assert results['jpeg_film']['film'].startswith('2544 x 3056, grid')
  table = anyres_stages.table(results)
  assert all(f'| {stage} | ' in table for stage in anyres_stages.STAGES)
