"""Hybrid meshes: config.mesh sizes within a host, config.mesh.dcn across hosts."""
import dataclasses

import jax
import ml_collections
import numpy as np
import pytest

from radjax.core import recipe as recipe_lib
from radjax.core import sharding


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  """What the hybrid layout reads of a device: its id, host and kind."""
  id: int
  process_index: int
  platform: str = 'cpu'
  device_kind: str = 'cpu'


def _mesh_cfg(data=-1, fsdp=1, tensor=1, dcn=(1, 1, 1)):
  cfg = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))
  cfg.dcn = ml_collections.ConfigDict(dict(zip(sharding.MESH_AXES, dcn)))
  return cfg


def _hosts(n_hosts, per_host):
  return [FakeDevice(h * 100 + i, h) for h in range(n_hosts) for i in range(per_host)]


def test_data_spans_hosts_and_fsdp_tensor_stay_within_one():
  devices = _hosts(4, 8)
  arr = sharding.hybrid_device_array(_mesh_cfg(data=1, fsdp=4, tensor=2, dcn=(4, 1, 1)),
                                     devices)
  assert arr.shape == (4, 4, 2)
  for d in range(4):  # each data index is one host, holding all its 8 devices
    assert {x.process_index for x in arr[d].ravel()} == {d}
  hosts = np.vectorize(lambda x: x.process_index)(arr)
  assert (hosts == hosts[:, :1, :1]).all()  # an fsdp/tensor group never leaves its host
  # -1 fills a host; dcn over fsdp puts the hosts along fsdp instead.
  assert sharding.hybrid_device_array(_mesh_cfg(dcn=(2, 1, 1)), _hosts(2, 4)).shape == (8, 1, 1)
  arr = sharding.hybrid_device_array(_mesh_cfg(data=1, fsdp=4, dcn=(1, 2, 1)), _hosts(2, 4))
  assert arr.shape == (1, 8, 1)
  assert [x.process_index for x in arr[0, :, 0]] == [0] * 4 + [1] * 4


def test_sizes_that_do_not_multiply_out_are_named_errors():
  with pytest.raises(ValueError, match=r'config\.mesh\.dcn: data\*fsdp\*tensor = 4 .* on 2 '
                                       'processes'):
    sharding.hybrid_device_array(_mesh_cfg(dcn=(4, 1, 1)), _hosts(2, 4))
  with pytest.raises(ValueError, match=r'data\*fsdp\*tensor = 6 but there are 4 devices '
                                       r'\(per one of the 2 processes'):
    sharding.hybrid_device_array(_mesh_cfg(data=3, fsdp=2, dcn=(2, 1, 1)), _hosts(2, 4))
  with pytest.raises(ValueError, match=r'config\.mesh\.dcn\.tensor=0 must be >= 1'):
    sharding.dcn_shape(_mesh_cfg(dcn=(1, 1, 0)))
  # One process: a dcn size > 1 has no hosts to span.
  with pytest.raises(ValueError, match='on 1 processes'):
    sharding.make_mesh(_mesh_cfg(dcn=(2, 1, 1)), jax.devices())


def test_default_dcn_keeps_the_one_host_mesh():
  mesh = sharding.make_mesh(_mesh_cfg(fsdp=4, tensor=2), jax.devices())
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 4, 'tensor': 2}
  assert sharding.dcn_shape(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))) == (1, 1, 1)


def test_processes_must_lie_along_the_batch_axes():
  """Each process reads its own half of a batch: hosts along tensor would each hold every
  row, filled with different examples."""
  ok = sharding.hybrid_device_array(_mesh_cfg(data=4, dcn=(2, 1, 1)), _hosts(2, 4))
  sharding.check_batch_over_processes(ok, ('data', 'fsdp'))
  ok = sharding.hybrid_device_array(_mesh_cfg(data=2, tensor=2, dcn=(1, 2, 1)), _hosts(2, 4))
  sharding.check_batch_over_processes(ok, ('data', 'fsdp'))
  bad = sharding.hybrid_device_array(_mesh_cfg(data=4, dcn=(1, 1, 2)), _hosts(2, 4))
  with pytest.raises(ValueError, match=r'the batch splits into 4 shards over data x fsdp, and '
                                       r'one of the 2 processes holds 4 of them, not its own 2'):
    sharding.check_batch_over_processes(bad, ('data', 'fsdp'))
  sharding.check_batch_over_processes(np.asarray(jax.devices()).reshape(4, 1, 2),
                                      ('data', 'fsdp'))  # one process: anything goes


def test_many_small_replicated_parameters_are_warned_of_as_a_sum():
  """Many small parameters without logical axes: none alone passes the threshold, but
  every device holding all of them is worth a warning; sharded ones do not count."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(8), ('fsdp',))
  replicated = NamedSharding(mesh, PartitionSpec())
  split = NamedSharding(mesh, PartitionSpec('fsdp'))
  conv = jax.ShapeDtypeStruct((256, 1024), np.float32)  # 1 MiB each
  params = {f'conv{i}': conv for i in range(5)}
  shardings = {f'conv{i}': replicated for i in range(5)}
  assert sharding.warn_replicated(params, shardings, warn_mib=4.0) == ['*']
  assert sharding.warn_replicated(params, shardings, warn_mib=6.0) == []
  shardings['conv0'] = shardings['conv1'] = split
  assert sharding.warn_replicated(params, shardings, warn_mib=4.0) == []
  big = {'embed': jax.ShapeDtypeStruct((8192, 1024), np.float32)}  # 32 MiB: named itself
  assert sharding.warn_replicated(big, {'embed': replicated}, warn_mib=4.0) == ["['embed']"]
  # Replicas by choice (a mesh of data only: configs/classifier.py, eval): nothing to warn.
  replicas = NamedSharding(Mesh(np.asarray(jax.devices()[:8]).reshape(8, 1), ('data', 'fsdp')),
                           PartitionSpec())
  assert sharding.warn_replicated(big, {'embed': replicas}, warn_mib=4.0) == []


@pytest.mark.parametrize('recipe, sharded', [
    ('llava_tinyllama', True), ('radvlm', True), ('xraygpt', True), ('llm_cxr', True),
    ('radfm', True), ('classifier', False), ('vqgan', False), ('demo', False),
    ('radvlm:size=tiny', False)])
def test_billion_parameter_recipes_split_their_state_over_every_device(recipe, sharded):
  """A 7B recipe launched on 8 GPUs with its defaults must not copy 90 GiB of parameters
  and AdamW moments onto each (the seeds train them with ZeRO-3); small models replicate."""
  name, _, arg = recipe.partition(':')
  config = recipe_lib.load(f'configs/{name}.py' + (f':{arg}' if arg else ''))
  assert sharding.mesh_shape(config.mesh, 8) == ((1, 8, 1) if sharded else (8, 1, 1))


def test_two_remaining_axes_are_named_with_the_fix():
  with pytest.raises(ValueError, match=r'only one of .* may be -1 .*got data=-1, fsdp=-1, '
                                       r'tensor=1: .*--config\.mesh\.data=1'):
    sharding.mesh_shape(_mesh_cfg(data=-1, fsdp=-1), 8)


def test_a_remaining_axis_without_a_size_names_the_knobs():
  """'8 devices are not divisible by 3' did not say the 3 was config.mesh.fsdp."""
  with pytest.raises(ValueError, match=r'8 devices are not divisible by fsdp=3 x tensor=1 '
                                       r'\(= 3\), so config\.mesh\.data=-1 has no size'):
    sharding.mesh_shape(_mesh_cfg(data=-1, fsdp=3), 8)


def test_default_rules_resolve_the_models_logical_axes_to_these_specs():
  """The default rule table, resolved: weights on fsdp x tensor, a projector's vision
  side on fsdp unless its LLM side ('embed') holds it, norms replicated, the batch over
  data x fsdp, or over data alone beside an fsdp-split axis. No model test reads a
  projector's or the LLM embedding's spec, so a rule edit there passed every test."""
  import flax.linen as nn
  from jax.sharding import PartitionSpec as P

  from radjax.core import defaults
  rules = sharding.rules_from_config(defaults.DEFAULT_RULES)
  want = {
      ('embed', 'mlp'): P('fsdp', 'tensor'), ('mlp', 'embed'): P('tensor', 'fsdp'),
      ('vision_embed', 'embed'): P(None, 'fsdp'), ('vision_embed', 'mlp'): P('fsdp', 'tensor'),
      ('vision_embed', 'heads', 'kv'): P('fsdp', 'tensor', None),
      ('vocab', 'embed'): P('tensor', 'fsdp'),
      ('embed', 'kv_heads', 'kv'): P('fsdp', 'tensor', None),
      ('layers', 'embed', 'heads', 'kv'): P(None, 'fsdp', 'tensor', None), ('norm',): P(None),
      ('act_batch', 'act_len', 'act_embed'): P(('data', 'fsdp'), None, None),
      ('act_batch', 'embed'): P('data', 'fsdp'),
      ('act_batch', 'act_len', 'act_mlp'): P(('data', 'fsdp'), None, 'tensor'),
  }
  for names, spec in want.items():
    assert nn.logical_to_mesh_axes(names, rules) == spec, names
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), sharding.MESH_AXES)
  assert sharding.batch_sharding(mesh, rules, 3).spec == P(('data', 'fsdp'), None, None)
