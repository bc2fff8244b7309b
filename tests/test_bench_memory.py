"""bench/memory.py's per-device bytes: exact on one device, ~8x less with fsdp=8, from
abstract shapes (nothing allocated)."""
from bench import memory
from configs import radfm


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


def test_dry_run_compiles_the_configured_mesh(capsys):
  from configs import demo
  config = demo.get_config('size=micro,task=lm')
  with config.unlocked():
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  out = memory.dry_run(config)
  assert out['mesh'] == {'data': 2, 'fsdp': 2, 'tensor': 2} and out['devices'] == 8
  assert out['peak'] >= out['argument'] > out['params'] + out['opt'] > 0
  assert 'dry run:' in capsys.readouterr().out
