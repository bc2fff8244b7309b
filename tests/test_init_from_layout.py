"""init_from a workdir of a part with no HF conversion (RadFM's vit3d tower and perceiver):
the other layer layout (runtime.scan_layers) is restacked; a checkpoint that lacks some of
the part's params is an error naming them; a config field that shapes only the params
init_fresh names may differ, any other difference is an error naming the field."""
import re

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import radfm
from radjax.convert import common
from radjax.core import workdir
from radjax.models import factory, registry
from radjax.models.runtime import Runtime
from radjax.train import pretrained
from tests.conftest import build_experiment


def _config(demo_data, scan: bool):
  c = radfm.get_config('size=micro')
  c.data.dir = demo_data
  c.runtime.scan_layers = scan
  c.data.keyword_terms = ''  # its default reads ~/.cache's CT set, which nothing here needs
  return c


def _unscanned(part: dict) -> dict:
  """{'a/b' path: array} of a part's params with 'layers' split into 'layers_<i>'."""
  out = {}
  for name, x in common.flatten(part).items():
    if name.startswith('layers/'):
      for i in range(x.shape[0]):
        out[name.replace('layers/', f'layers_{i}/', 1)] = x[i]
    else:
      out[name] = x
  return out


@pytest.mark.parametrize('saved_scanned', [True, False], ids=['scanned', 'unscanned'])
def test_vit3d_and_perceiver_from_a_workdir_of_the_other_layout(demo_data, tmp_path,
                                                                saved_scanned):
  source = _config(demo_data, saved_scanned)
  source.seed = 1  # not the target's init
  params = jax.device_get(build_experiment(source).state.params)
  workdir.save_params(str(tmp_path / 'wd'), source, params)
  config = _config(demo_data, not saved_scanned)
  for part in ('vision', 'projector'):
    config.model[part].init_from = str(tmp_path / 'wd')
  got = jax.device_get(build_experiment(config).state.params)
  for part in ('vision', 'projector'):
    want, have = params[part], got[part]
    want, have = (_unscanned(want), common.flatten(have)) if saved_scanned else (
        common.flatten(want), _unscanned(have))
    assert sorted(have) == sorted(want), part
    for name in want:
      np.testing.assert_array_equal(have[name], want[name], err_msg=f'{part}/{name}')


def test_a_checkpoint_without_some_of_the_part_is_named(demo_data, tmp_path):
  source = _config(demo_data, True)
  params = jax.device_get(build_experiment(source).state.params)
  del params['projector']['norm']  # e.g. a workdir written before the part had it
  workdir.save_params(str(tmp_path / 'wd'), source, params)
  config = _config(demo_data, True)
  config.model.projector.init_from = str(tmp_path / 'wd')
  with pytest.raises(ValueError, match=r"projector\.init_from='.*wd': its checkpoint has no "
                                       r"\['norm/bias', 'norm/scale'\]"):
    build_experiment(config)


@pytest.fixture(scope='module')
def perceiver_workdir(demo_data, tmp_path_factory):
  """A RadFM micro workdir whose checkpoint holds its projector (scanned layers, 8 latents,
  2 perceiver layers: all a projector's init_from reads), and those params."""
  source = _config(demo_data, True)
  cfg = factory.parts_of(source.model)['projector']
  assert (cfg.kind, cfg.num_queries, cfg.num_layers) == ('perceiver', 8, 2)
  model = registry.module('projector', cfg, Runtime(scan_layers=True))
  params = nn.meta.unbox(model.init(jax.random.key(1), *registry.example_inputs(
      'projector', cfg))['params'])  # seed 1: not the target's init
  wd = str(tmp_path_factory.mktemp('perceiver') / 'wd')
  workdir.save_params(wd, source, {'projector': jax.device_get(params)})
  return wd, common.flatten(jax.device_get(params))


def _projector_from(demo_data, wd: str, fresh: str, **fields):
  config = _config(demo_data, True)
  for name, value in fields.items():
    config.model.projector[name] = value
  config.model.projector.init_from, config.model.projector.init_fresh = wd, fresh
  return config


def _loaded(config) -> dict:
  """{'a/b' path: array} of what the projector's init_from loader hands create_train_state."""
  return common.flatten(pretrained.loaders(config, {'projector': 'projector'})['projector'](
      None))


@pytest.mark.parametrize('fresh, fields, kept', [
    ('latents', {'num_queries': 4}, r'(?!latents).*'),
    ('layers/.*', {'num_layers': 3}, r'(?!layers/).*'),
], ids=['other_latents', 'another_depth'])
def test_init_fresh_lets_a_perceiver_workdir_of_other_shapes_load(demo_data, perceiver_workdir,
                                                                  fresh, fields, kept):
  """The perceiver has no HF conversion: whether a changed field shapes only init_fresh's
  params is read from the model's own init. 4 latents, not the workdir's 8 (or 3 layers,
  not 2): the loader hands over the rest of the projector as saved, the fresh params not."""
  wd, held = perceiver_workdir
  loaded = _loaded(_projector_from(demo_data, wd, fresh, **fields))
  assert sorted(loaded) == sorted(n for n in held if re.fullmatch(kept, n))
  for name, value in loaded.items():
    np.testing.assert_array_equal(value, held[name], err_msg=name)


@pytest.mark.slow  # three RadFM micro builds: ~50 s on a busy 2-core machine
def test_a_perceiver_of_other_latents_trains_from_the_workdir_with_new_latents(
    demo_data, perceiver_workdir):
  """End to end: 4 latents, not the workdir's 8, with init_fresh='latents': the state holds
  the workdir's projector but for the latents, which are the new run's initialisation."""
  wd, held = perceiver_workdir
  scratch = _config(demo_data, True)
  scratch.model.projector.num_queries = 4
  scratch = common.flatten(jax.device_get(build_experiment(scratch).state.params['projector']))
  config = _projector_from(demo_data, wd, 'latents', num_queries=4)
  got = common.flatten(jax.device_get(build_experiment(config).state.params['projector']))
  assert sorted(got) == sorted(held) and got['latents'].shape == (4, 48)
  for name, value in got.items():
    want = scratch[name] if name == 'latents' else held[name]
    np.testing.assert_array_equal(value, want, err_msg=name)
  assert not np.array_equal(scratch['fc/kernel'], held['fc/kernel'])  # the two inits differ


@pytest.mark.parametrize('fresh, fields, message', [
    ('', {'num_queries': 4}, r'projector\.num_queries=4 but the pretrained model has 8: '
                             r'latents has shape \(8, 48\) there, \(4, 48\) here'),
    ('latents', {'num_layers': 3}, r'projector\.num_layers=3 but the pretrained model has 2: '
                                   r'layers/fc1/kernel has shape \(2, 48, 96\) there, '
                                   r'\(3, 48, 96\) here'),
    # A field that shapes no param changes what the weights mean: no init_fresh excuses it.
    ('.*', {'norm_eps': 1e-3}, r'projector\.norm_eps=0\.001 but the pretrained model has '
                               r'1e-05$'),
], ids=['no_init_fresh', 'depth_not_fresh', 'shapes_nothing'])
def test_a_perceiver_change_init_fresh_does_not_cover_is_named(demo_data, perceiver_workdir,
                                                               fresh, fields, message):
  wd, _ = perceiver_workdir
  config = _projector_from(demo_data, wd, fresh, **fields)
  with pytest.raises(common.ConversionError, match=message):
    _loaded(config)


def test_relayout_keeps_the_layer_order_past_ten_and_is_undone_by_its_inverse():
  """'layers_10' sorts before 'layers_2' as text: a 12-layer tower's stack must follow
  the layer numbers. Restacking then splitting gives the params back; a part already in
  the asked layout, or without a layer stack, is left as it is."""
  n = 12
  unscanned = {f'layers_{i}': {'mlp': {'kernel': np.full((2, 3), i, np.float32)}}
               for i in range(n)}
  unscanned['norm'] = {'scale': np.ones((3,), np.float32)}
  scanned = pretrained._relayout(unscanned, scan=True)
  assert sorted(scanned) == ['layers', 'norm']
  np.testing.assert_array_equal(scanned['layers']['mlp']['kernel'][:, 0, 0], np.arange(n))
  back = pretrained._relayout(scanned, scan=False)
  assert sorted(common.flatten(back)) == sorted(common.flatten(unscanned))
  for name, x in common.flatten(unscanned).items():
    np.testing.assert_array_equal(common.flatten(back)[name], x, err_msg=name)
  assert pretrained._relayout(scanned, scan=True) is scanned
  assert pretrained._relayout(unscanned, scan=False) is unscanned
  flat = {'norm': unscanned['norm']}
  assert pretrained._relayout(flat, scan=True) is flat
