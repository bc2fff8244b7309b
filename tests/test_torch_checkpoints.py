"""PyTorch `.bin` / `.pth` weights, read with torch.load(weights_only=True) only: sharded
HF `pytorch_model-*.bin` directories (Vicuna v1's layout) import bit for bit like their
safetensors twin; a file needing arbitrary unpickling is refused with one clear line."""
import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from safetensors.torch import load_file  # noqa: E402

from radjax import convert  # noqa: E402
from radjax.convert import __main__ as convert_cli  # noqa: E402
from radjax.convert import common, hf_io  # noqa: E402
from tests.hf_models import tiny_llama  # noqa: E402


class TrainerState:
  """Any class outside torch's allow-list: unpickling it could run code."""

  def __init__(self):
    self.step = 7


def _write_bin_shards(st_dir: str, out: str, shards: int = 3) -> dict:
  """`out` as transformers' sharded .bin layout of the safetensors model in `st_dir`."""
  os.makedirs(out)
  shutil.copy(os.path.join(st_dir, 'config.json'), out)
  tensors = load_file(os.path.join(st_dir, 'model.safetensors'))
  names = sorted(tensors)
  weight_map = {}
  for k in range(shards):
    fn = f'pytorch_model-{k + 1:05d}-of-{shards:05d}.bin'
    part = {n: tensors[n] for n in names[k::shards]}
    torch.save(part, os.path.join(out, fn))
    weight_map.update({n: fn for n in part})
  with open(os.path.join(out, 'pytorch_model.bin.index.json'), 'w') as f:
    json.dump({'metadata': {}, 'weight_map': weight_map}, f)
  return weight_map


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=['f32', 'bf16'])
def test_sharded_bin_dir_matches_safetensors(dtype, tmp_path):
  st_dir, bin_dir = str(tmp_path / 'st'), str(tmp_path / 'bin')
  tiny_llama().to(dtype).save_pretrained(st_dir)
  weight_map = _write_bin_shards(st_dir, bin_dir)
  assert len(set(weight_map.values())) == 3
  st_cfg, st_sd = hf_io.load_hf_dir(st_dir)
  bin_cfg, bin_sd = hf_io.load_hf_dir(bin_dir)
  assert sorted(bin_sd) == sorted(st_sd)
  want = ml_dtypes.bfloat16 if dtype == torch.bfloat16 else np.float32
  for name, value in st_sd.items():
    assert value.dtype == want and bin_sd[name].dtype == want
    np.testing.assert_array_equal(bin_sd[name].view(np.uint8), value.view(np.uint8))
  cfg = convert.llm_config_from_hf(st_cfg)
  assert convert.llm_config_from_hf(bin_cfg) == cfg
  a = common.flatten(convert.params_from_hf(st_sd, cfg, scan=True))
  b = common.flatten(convert.params_from_hf(bin_sd, cfg, scan=True))
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)

  os.remove(os.path.join(bin_dir, 'pytorch_model-00002-of-00003.bin'))
  with pytest.raises(FileNotFoundError, match='pytorch_model-00002-of-00003.bin'):
    hf_io.load_hf_dir(bin_dir)


def test_single_bin_and_cli(tmp_path):
  st_dir, bin_dir = str(tmp_path / 'st'), str(tmp_path / 'bin')
  tiny_llama(seed=1).save_pretrained(st_dir)
  os.makedirs(bin_dir)
  shutil.copy(os.path.join(st_dir, 'config.json'), bin_dir)
  torch.save(load_file(os.path.join(st_dir, 'model.safetensors')),
             os.path.join(bin_dir, 'pytorch_model.bin'))
  assert convert_cli.main(['from-hf', '--family', 'llama', '--hf_dir', bin_dir,
                           '--out', str(tmp_path / 'wd')]) == 0
  _, st_sd = hf_io.load_hf_dir(st_dir)
  got = hf_io.load_state_dict_file(os.path.join(bin_dir, 'pytorch_model.bin'))
  assert sorted(got) == sorted(st_sd)
  for name, value in st_sd.items():
    np.testing.assert_array_equal(got[name], value)


def test_arbitrary_pickle_is_refused(tmp_path, capsys):
  path = str(tmp_path / 'ckpt.pth')
  torch.save({'model': {'llama_proj.weight': torch.zeros(2, 2)}, 'trainer': TrainerState()},
             path)
  with pytest.raises(common.ConversionError) as e:
    hf_io.load_state_dict_file(path)
  msg = str(e.value)
  assert '\n' not in msg and path in msg and 'arbitrary unpickling' in msg
  assert 'safetensors' in msg and 'TrainerState' in msg
  # The same through the CLI: exit 2, one line naming the shard.
  hf_dir = tmp_path / 'hf'
  tiny_llama().save_pretrained(hf_dir)
  os.remove(hf_dir / 'model.safetensors')
  torch.save({'w': torch.zeros(1), 'state': TrainerState()}, hf_dir / 'pytorch_model.bin')
  capsys.readouterr()
  assert convert_cli.main(['from-hf', '--family', 'llama', '--hf_dir', str(hf_dir),
                           '--out', str(tmp_path / 'wd')]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count('\n') == 0 and 'pytorch_model.bin: refused' in err


def test_other_bad_files_are_named(tmp_path):
  path = str(tmp_path / 'list.pth')
  torch.save([torch.zeros(1)], path)
  with pytest.raises(common.ConversionError, match='list.pth: holds a list'):
    hf_io.load_state_dict_file(path)
  torch.save({'epoch': 1, 'weights': {'a': torch.zeros(1)}}, path)
  with pytest.raises(common.ConversionError, match=r'list\.pth: not a dict of tensors'):
    hf_io.load_state_dict_file(path)
  torch.save({'model': {'a': torch.zeros(1), 'b': 3}}, path)
  with pytest.raises(common.ConversionError, match=r"entry 'b' is a int"):
    hf_io.load_state_dict_file(path)
  (tmp_path / 'junk.bin').write_bytes(b'not a checkpoint')
  with pytest.raises(common.ConversionError, match=r'junk\.bin: torch\.load\(weights_only=True\) '
                     r'cannot read it \(Unsupported operand'):
    hf_io.load_state_dict_file(str(tmp_path / 'junk.bin'))
  (tmp_path / 'w.npz').write_bytes(b'')
  with pytest.raises(common.ConversionError, match='w.npz: unknown weights format'):
    hf_io.load_state_dict_file(str(tmp_path / 'w.npz'))
