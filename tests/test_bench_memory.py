"""bench/memory.py's per-device bytes: exact on one device, ~8x less with fsdp=8, from
abstract shapes (nothing allocated)."""
import pytest

from bench import memory
from configs import radfm
from radjax.data import mixture
from tests.conftest import FAST_COMPILE


def test_fsdp_shrinks_params_and_moments_per_device():
  config = radfm.get_config('size=micro')
  one, eight = memory.experiment(config, 1), memory.experiment(config, 8)
  n = memory.count(one.state.params)
  assert n == memory.count(eight.state.params)
  assert memory.per_device_bytes(one.state.params) == 4 * n  # f32 master weights
  assert memory.per_device_bytes(one.state.opt_state) >= 8 * n  # AdamW's two moments
  whole = [memory.per_device_bytes(e.state.params) + memory.per_device_bytes(e.state.opt_state)
           for e in (one, eight)]
  # Small norms and biases stay replicated, so a micro model shrinks a little under 8x.
  assert 6.0 < whole[0] / whole[1] <= 8.0


def test_compiled_step_peak_per_device_shrinks_as_fsdp_grows():
  from configs import demo
  config = demo.get_config('size=micro,task=lm')  # the decoder alone: 4 compiles in seconds
  with config.unlocked():
    config.data.max_len = 128  # activations big enough to show next to the weights
  peaks = [memory.peak(memory.compiled_memory(memory.experiment(config, n))[0])
           for n in (1, 2, 4, 8)]
  assert all(a > b for a, b in zip(peaks, peaks[1:])), peaks
  assert peaks[0] / peaks[-1] > 3, peaks


def test_a_dry_run_steps_in_the_micro_batches_training_does():
  """RadVLM's micro_batch_per_device=1: a dry run compiles the step in the micro-batches
  a run derives (it took the batch whole: 4.4x the temporaries on a tiny model), and a
  batch the mesh cannot split is the training run's named error, not XLA's."""
  from configs import demo
  config = demo.get_config('size=micro,task=lm')
  with config.unlocked():
    config.train.batch_size, config.train.micro_batch_per_device = 32, 1
  assert memory.experiment(config, 8).config.optim.grad_accum == 4
  with config.unlocked():
    config.train.batch_size, config.train.micro_batch_per_device = 12, 0
  with pytest.raises(ValueError, match=r'config.train.batch_size=12 does not split over the 8'):
    memory.experiment(config, 8)


def test_dry_run_compiles_the_configured_mesh(tmp_path):
  """main.py --mode=dry_run on 8 emulated devices (a process of its own, as users run it),
  its programs kept in the configured compilation cache."""
  import os
  import re
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count=8 {FAST_COMPILE}')
  proc = subprocess.run(
      [sys.executable, 'main.py', '--config', 'configs/demo.py:size=micro,task=lm',
       '--workdir', '/nonexistent/dry', '--mode=dry_run', '--config.mesh.data=2',
       '--config.mesh.fsdp=2', '--config.mesh.tensor=2',
       '--config.runtime.attention_impl=cudnn',  # a GPU recipe checked on a CPU
       f'--config.runtime.compilation_cache_dir={tmp_path}/xla'],
      cwd=root, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [x for x in proc.stdout.splitlines() if x.startswith('dry run:')][0]
  assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in line and 'on 8 cpu devices' in line
  sizes = dict(re.findall(r'(\w+) ([\d.]+) MiB', line))
  assert float(sizes['peak']) >= float(sizes['argument']) > float(sizes['params']) > 0
  assert "attention_impl 'cudnn' compiled as 'xla'" in proc.stdout
  assert not os.path.exists('/nonexistent/dry')  # a dry run writes nothing
  assert any(name.startswith('jit_train_step') for name in os.listdir(tmp_path / 'xla'))


def test_a_volume_tower_compiles_its_image_and_its_volume_step():
  """RadFM's batches come in two kinds (2D images, volumes with a depth mask), each with
  its own batch size: each compiles with the batches training feeds it (volumes of
  data.volume_batch_size, as deep as the deepest bucket)."""
  import math
  config = radfm.get_config('size=micro')
  assert config.train.batch_size == 8
  config.data.volume_batch_size = 2
  exp = memory.experiment(config, 1)
  volume = exp.task.batch_spec('volume')
  assert 'depth_mask' not in exp.task.batch_spec('image')
  assert volume['volumes'].shape[-1] == config.model.vision.max_depth
  batches = memory.step_batches(exp)
  assert batches['image']['images'].shape == (8, 1, 32, 32, 3)
  # float16 voxels [.., D] and a 2D slot's 8-bit planes (radjax/data/pixels.py)
  assert batches['volume']['volumes'].shape == (2, 1, 32, 32, 48)
  assert batches['volume']['images'].shape == (2, 1, 32, 32, 3)
  assert batches['volume']['depth_mask'].shape == (2, 1, 48)
  steps, _ = memory.compiled_steps(exp)
  assert {k: m['batch'] for k, m in steps.items()} == {'image': 8, 'volume': 2}
  # The compiled step's arguments are the state and the batch it was given (XLA prunes
  # unused inputs, a few bytes here): two volumes, not train.batch_size's eight.
  state = memory.per_device_bytes(exp.state)
  one_volume = math.prod(volume['volumes'].shape) * 2
  for kind, batch in batches.items():
    fed = sum(math.prod(x.shape) * x.dtype.itemsize for x in batch.values())
    assert abs(steps[kind]['argument'] - (state + fed)) < one_volume, kind
  mem, _ = memory.compiled_memory(exp)  # the largest: here eight images over two volumes
  assert memory.peak(mem) == memory.peak(steps['image']) > memory.peak(steps['volume']) > 0


def test_a_dry_run_compiles_only_the_kinds_the_data_gives():
  """No volume step without a volume component (a 'vit3d' tower on 2D images), no 2D step
  when every component holds volumes (RadFM's builds store its 2D images as volumes of
  one slice), and the 2D step alone without a mixture (config.data.dir)."""
  config = radfm.get_config('size=micro')
  config.data.volume_batch_size = 2
  exp = memory.experiment(config, 1)
  assert list(memory.step_batches(exp)) == ['image', 'volume']
  for keep, kinds in (('ct', ['volume']), ('cxr', ['image'])):
    only = radfm.get_config('size=micro')
    only.data.volume_batch_size = 2
    with only.unlocked():
      only.data.mixture = {keep: only.data.mixture[keep].to_dict()}
    exp = memory.experiment(only, 1)
    batches = memory.step_batches(exp)
    assert list(batches) == kinds
    assert batches[kinds[0]]['images'].shape[0] == (2 if kinds == ['volume'] else 8)
  full = radfm.get_config('')  # config.data.dir, no mixture: 2D images
  assert mixture.train_kinds(full) == ('image',)
  radiopaedia = radfm.get_config('data=radiopaedia')  # RadFM's 3D builds: volumes only
  assert mixture.train_kinds(radiopaedia) == ('volume',)
  assert radiopaedia.data.volume_batch_size == radiopaedia.train.batch_size


def test_vqgan_step_compiles_in_bfloat16(monkeypatch):
  """configs/vqgan.py at full size trains in bf16: both branches of the GAN switch must
  give the same dtypes. Its params (and so the bytes the bench counts) stay float32; every
  convolution of the step the bench compiles, the codec's and the discriminator's, computes
  in bf16."""
  import re
  import types

  import jax

  from configs import vqgan
  config = vqgan.get_config('size=micro')
  with config.unlocked():
    config.runtime.dtype = 'bfloat16'
  lowered, jit_step = [], memory.setup.jit_train_step

  def spied(exp):  # the step the bench lowers, kept to read its ops
    step = jit_step(exp)

    def lower(*args):
      lowered.append(step.lower(*args))
      return lowered[-1]
    return types.SimpleNamespace(lower=lower)

  monkeypatch.setattr(memory.setup, 'jit_train_step', spied)
  exp = memory.experiment(config, 1)
  mem, _ = memory.compiled_memory(exp)
  assert memory.peak(mem) > 0
  assert {x.dtype.name for x in jax.tree.leaves(exp.state.params)} == {'float32'}
  (step,) = lowered
  convs = re.findall(r'stablehlo\.convolution.*?-> tensor<[^>]*x(\w+)>', step.as_text())
  assert len(convs) > 20 and set(convs) == {'bf16'}, convs


def _radvlm_without_data(tmp_path):
  """configs/radvlm.py (AnyRes, a five-component mixture) at size=micro, its data unbuilt as
  a user planning a run has it: the first component's dir unset (as the full recipe ships
  it), the others' missing."""
  from configs import radvlm
  config = radvlm.get_config('size=micro')
  config.data.dir, config.data.builder = '', ''
  for i, name in enumerate(config.data.mixture):
    config.data.mixture[name].dir = '' if i == 0 else str(tmp_path / 'unbuilt' / name)
  return config


def test_a_dry_run_needs_no_data(demo_data, tmp_path):
  """--mode=dry_run's shapes come from the config alone (max_len, image slots, AnyRes tile
  slots): with no dataset built it gives what it gives with one, and reads no dir."""
  from configs import radvlm
  built = radvlm.get_config('size=micro')
  built.data.dir = demo_data
  for name in built.data.mixture:
    built.data.mixture[name].dir = demo_data
  unbuilt = _radvlm_without_data(tmp_path)
  want, got = memory.dry_run(built), memory.dry_run(unbuilt)
  assert got['count'] == want['count'] > 0
  assert {k: v for k, v in got.items() if k != 'compile_secs'} == \
      {k: v for k, v in want.items() if k != 'compile_secs'}
  assert not (tmp_path / 'unbuilt').exists()


def test_training_without_data_is_a_named_error_before_the_model_is_built(demo_data, tmp_path,
                                                                          monkeypatch):
  """What a dry run does not need, a train run does: the first component's unset dir is
  named before the model is built (or its init_from weights read)."""
  import os

  from radjax import run
  from radjax.train import setup
  config = _radvlm_without_data(tmp_path)
  config.data.tokenizer = os.path.join(demo_data, 'tokenizer.json')  # the task builds

  def no_model(*args, **kwargs):
    raise AssertionError('the model was built before the data was checked')
  monkeypatch.setattr(setup, 'build', no_model)
  with pytest.raises(ValueError, match=r'config\.data\.mixture\.boxes\.dir: missing'):
    run.main(config, str(tmp_path / 'w'), 'train')
  config.data.mixture.boxes.dir = demo_data  # the next one is not there
  with pytest.raises(FileNotFoundError, match=r"config\.data\.mixture\.conversations\.dir: "
                                              r"'.*unbuilt/conversations' is not a directory"):
    run.main(config, str(tmp_path / 'w'), 'train')


@pytest.mark.parametrize('recipe, mesh', [('radvlm:size=micro', (2, 4, 1)),
                                          ('demo:size=micro,task=lm', (2, 2, 2))])
def test_no_device_gathers_the_whole_batch_of_activations(recipe, mesh):
  """With the batch over data x fsdp (both > 1), the token lookup's gradient once had to go
  from the batch's layout to the table's (embed over fsdp), which XLA could only do by
  gathering the whole [B, T, E] on every device ("Involuntary full rematerialization");
  radjax/models/llm.py Decoder.embed steps through the table's layout with one all-to-all.
  No all-gather of the compiled step may give a device the global batch's activations."""
  import importlib
  import re

  from radjax.train import setup
  name, _, arg = recipe.partition(':')
  config = importlib.import_module(f'configs.{name}').get_config(arg)
  with config.unlocked():
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
  exp = memory.experiment(config, 8, fsdp=False)
  batch = memory.step_batches(exp)['image']
  with exp.context():
    hlo = setup.jit_train_step(exp).lower(exp.state, batch).compile().as_text()
  assert 'all-to-all' in hlo
  b, t = config.train.batch_size, config.data.max_len
  whole = re.findall(rf'= (?:f32|bf16)\[{b},{t},\d+\]\S* all-gather(?:-start)?\(', hlo)
  assert not whole, whole
