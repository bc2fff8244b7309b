"""init_from a workdir of a part with no HF conversion (RadFM's vit3d tower and perceiver):
the other layer layout (runtime.scan_layers) is restacked; a checkpoint that lacks some of
the part's params is an error naming them."""
import jax
import numpy as np
import pytest

from configs import radfm
from radjax.convert import common
from radjax.core import workdir
from radjax.train import pretrained
from tests.conftest import build_experiment


def _config(demo_data, scan: bool):
  c = radfm.get_config('size=micro')
  c.data.dir = demo_data
  c.runtime.scan_layers = scan
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
