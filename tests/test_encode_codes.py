"""data_prep/encode_codes.py: a dataset's records get their image's codes from a codec
workdir (the same codes the codec gives that image), everything else unchanged; a killed
run resumes by reusing finished shards; the result reads through radjax/data/source.py."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from configs import vqgan as vqgan_recipe
from data_prep import encode_codes
from radjax.core import workdir as workdir_lib
from radjax.data import schema, source
from radjax.models import factory, vqgan


def _codec_workdir(path):
  c = vqgan_recipe.get_config('size=micro')
  cfg = factory.part_config(c.model, 'vqgan')
  with jax.threefry_partitionable(False):  # CPU compiles the default threefry slowly
    params = jax.jit(vqgan.VQGAN(cfg).init)(jax.random.key(0),
                                            jnp.zeros((1, 32, 32, 1)))['params']
  workdir_lib.save_params(path, c, jax.device_get(nn.meta.unbox(params)))
  return cfg


def test_codes_fill_the_records_and_a_killed_run_resumes(demo_data, tmp_path, monkeypatch):
  codec_dir, out = str(tmp_path / 'codec'), str(tmp_path / 'with_codes')
  cfg = _codec_workdir(codec_dir)
  summary = encode_codes.encode_dataset(demo_data, codec_dir, out, ('val', 'test'),
                                        batch_size=6, log=lambda *_: None)
  assert summary['grid'] == [16, 16] and summary['splits']['val']['encoded'] == 16
  before = [schema.decode(r) for r in source.open_split(demo_data, 'val')]
  after = [schema.decode(r) for r in source.open_split(out, 'val')]
  assert [e['id'] for e in after] == [e['id'] for e in before]
  for a, b in zip(after, before):
    assert len(a['codes']) == 256 and all(0 <= c < cfg.codebook_size for c in a['codes'])
    assert {**a, 'codes': None} == b  # nothing else changed
  # The stored codes are the codec's codes of the record's image.
  codec = encode_codes.Codec(codec_dir)
  image = codec.preprocess(before[3]['images'][0], before[3]['id'])
  assert codec.codes([image], 1)[0] == after[3]['codes']
  assert os.path.exists(os.path.join(out, 'manifest.json'))
  with open(os.path.join(out, 'codes.json')) as f:
    assert json.load(f)['codebook_size'] == cfg.codebook_size

  # A run killed after the val shard: test's shard and the manifest are missing.
  test_shard = source.split_files(out, 'test')[0]
  first_codes = [schema.decode(r)['codes'] for r in source.open_split(out, 'test')]
  os.remove(test_shard)
  os.remove(os.path.join(out, 'manifest.json'))
  encoded = []
  real = encode_codes.encode_shard
  monkeypatch.setattr(encode_codes, 'encode_shard',
                      lambda codec, src, dst, bs: encoded.append(dst) or real(codec, src, dst, bs))
  again = encode_codes.encode_dataset(demo_data, codec_dir, out, ('val', 'test'), batch_size=6,
                                      log=lambda *_: None)
  assert encoded == [test_shard]  # val's shard was reused, not recomputed
  assert again['splits']['val'] == {**summary['splits']['val'], 'shards_reused': 1}
  assert [schema.decode(r)['codes'] for r in source.open_split(out, 'test')] == first_codes
  assert os.path.exists(os.path.join(out, 'manifest.json'))


def test_wrong_inputs_are_errors_naming_the_flag(demo_data, tmp_path, capsys):
  assert encode_codes.main(['--dataset', str(tmp_path), '--codec', str(tmp_path),
                            '--out', str(tmp_path / 'o')]) == 2
  assert encode_codes.main(['--dataset', demo_data, '--codec', demo_data,
                            '--out', demo_data]) == 2
  assert not os.path.exists(os.path.join(demo_data, 'codes.json'))  # never written into
  (tmp_path / 'a_file').write_text('x')
  assert encode_codes.main(['--dataset', demo_data, '--codec', str(tmp_path),
                            '--out', str(tmp_path / 'a_file')]) == 2
  assert 'a_file' in capsys.readouterr().err.splitlines()[-1]


def test_another_codec_step_into_the_same_out_is_refused(demo_data, tmp_path):
  """Reused shards would hold one codec's codes under a summary naming another."""
  codec_dir, out = str(tmp_path / 'codec'), str(tmp_path / 'with_codes')
  _codec_workdir(codec_dir)
  encode_codes.encode_dataset(demo_data, codec_dir, out, ('test',), batch_size=8,
                              log=lambda *_: None)
  before = {n: open(os.path.join(out, n), 'rb').read() for n in os.listdir(out)}
  # Step 0 is the codec's only checkpoint: asking for step 3 names what the codes came from.
  with pytest.raises(ValueError, match=r'codes\.json: these codes were made by the codec '
                     r'.*codec at step 0, but .* at step 3\. .*\(--codec=.*, --step=0\)'):
    encode_codes.encode_dataset(demo_data, codec_dir, out, ('test',), step=3)
  assert encode_codes.main(['--dataset', demo_data, '--codec', codec_dir, '--out', out,
                            '--splits', 'test', '--step', '3']) == 2
  assert {n: open(os.path.join(out, n), 'rb').read() for n in os.listdir(out)} == before
  # A codec step that does not exist, into a new dir: named, before anything is written.
  with pytest.raises(workdir_lib.NoCheckpoint, match=r'no checkpoint of step 3 .* \[0\]'):
    encode_codes.encode_dataset(demo_data, codec_dir, str(tmp_path / 'new'), ('test',), step=3)
  assert not os.path.exists(tmp_path / 'new' / 'codes.json')
  # A codes.json alone (a run that failed at its first shard) does not hold --out to its
  # codec: there are no codes to mix.
  other, retry = str(tmp_path / 'other_codec'), tmp_path / 'retry'
  _codec_workdir(other)
  retry.mkdir()
  (retry / 'codes.json').write_bytes(before['codes.json'])
  summary = encode_codes.encode_dataset(demo_data, other, str(retry), ('test',), batch_size=8,
                                        log=lambda *_: None)
  assert summary['codec'] == os.path.abspath(other)


def test_a_shard_of_records_without_images_is_copied_with_no_codes(demo_data, tmp_path):
  """A text-only shard (a report-only split, or records whose images were dropped) has
  nothing to encode: its records keep codes None, as the docstring promises."""
  from array_record.python.array_record_module import ArrayRecordWriter

  from data_prep.writer import WRITER_OPTIONS
  codec_dir = str(tmp_path / 'codec')
  _codec_workdir(codec_dir)
  records = [schema.decode(r) for r in source.open_split(demo_data, 'val')][:3]
  src, dst = str(tmp_path / 'val-00000-of-00001.array_record'), str(tmp_path / 'out')
  writer = ArrayRecordWriter(src, WRITER_OPTIONS)
  for ex in records:
    writer.write(schema.encode({**ex, 'images': []}))
  writer.close()
  counts = encode_codes.encode_shard(encode_codes.Codec(codec_dir), src, dst, 4)
  assert counts == {'records': 3, 'encoded': 0, 'without_images': 3}
  from array_record.python.array_record_module import ArrayRecordReader
  reader = ArrayRecordReader(dst)
  out = [schema.decode(r) for r in reader.read_all()]
  reader.close()
  assert [e['id'] for e in out] == [e['id'] for e in records]
  assert all(e.get('codes') is None for e in out)
