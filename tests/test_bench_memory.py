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
