"""Generation: greedy and beam search equal HF generate(); sampling warpers equal HF's;
stop strings; the VLM path under an 8-device mesh equals one device."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from data_prep import tokenizer as tokenizer_lib  # noqa: E402
from radjax.core import sharding  # noqa: E402
from radjax.eval.decoding import beam_search as beam_lib  # noqa: E402
from radjax.eval.decoding import generate as gen  # noqa: E402
from radjax.eval.decoding import sampling, stop_strings  # noqa: E402
from radjax.models import factory, vlm  # noqa: E402
from tests import hf_models  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

PROMPT_LEN, NEW = 12, 16
PAD = 0
TEXTS = ['The heart size is normal. No pleural effusion or pneumothorax is seen.',
         'Mild cardiomegaly with a small left pleural effusion; lungs are otherwise clear.',
         'There is no focal consolidation, and the mediastinal contours are stable.'] * 4


@pytest.fixture(scope='module')
def lm():
  hf = hf_models.tiny_llama(vocab_size=300)
  model, params = hf_models.to_radjax(hf)
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(10, 300, n)) for n in (5, 11, 8)]  # different lengths
  tokens, mask = gen.left_pad(prompts, PROMPT_LEN, PAD)
  greedy = gen.GenerationConfig(max_new_tokens=NEW, pad_id=PAD)
  ids, _ = gen.generate(model, params, tokens, mask, None, greedy)
  return dict(hf=hf, model=model, params=params, tokens=tokens, mask=mask,
              greedy=np.asarray(ids))


def _run(lm, cfg, rng=None):
  ids, scores = gen.generate(lm['model'], lm['params'], lm['tokens'], lm['mask'], None, cfg, rng)
  return np.asarray(ids), np.asarray(scores)


def _after_stop_is(ids, stops, fill):
  """ids with everything after each row's first stop token replaced by `fill`."""
  out = np.array(ids, copy=True)
  for row in out:
    hit = np.flatnonzero(np.isin(row, stops))
    if hit.size:
      row[hit[0] + 1:] = fill
  return out


def _hf_new_tokens(out, width=NEW):
  seq = out.sequences[:, PROMPT_LEN:].numpy()
  return np.pad(seq, ((0, 0), (0, width - seq.shape[1])), constant_values=PAD)


def test_greedy_equals_hf_left_padded(lm):
  out = hf_models.hf_generate(lm['hf'], lm['tokens'], lm['mask'], do_sample=False,
                              max_new_tokens=NEW, pad_token_id=PAD)
  np.testing.assert_array_equal(lm['greedy'], _hf_new_tokens(out))
  # With a stop token: HF pads finished rows, and so do we.
  eos = int(lm['greedy'][0, 3])
  ids, _ = _run(lm, gen.GenerationConfig(max_new_tokens=NEW, stop_ids=(eos,), pad_id=PAD))
  out = hf_models.hf_generate(lm['hf'], lm['tokens'], lm['mask'], do_sample=False,
                              max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=eos)
  np.testing.assert_array_equal(ids, _hf_new_tokens(out))
  assert (ids[0, 4:] == PAD).all()
  # The old entry point still repeats the first stop id after a stop.
  old = gen.greedy_generate(lm['model'], lm['params'], lm['tokens'], lm['mask'], None, NEW,
                            (eos,))
  np.testing.assert_array_equal(old, _after_stop_is(ids, [eos], eos))


@pytest.mark.parametrize('num_beams,length_penalty,early_stopping,num_stops',
                         [(3, 0.0, False, 1), (4, 1.5, False, 1), (3, 1.0, True, 2)])
def test_beam_search_equals_hf(lm, num_beams, length_penalty, early_stopping, num_stops):
  stops = [int(lm['greedy'][0, 3]), int(lm['greedy'][1, 1])][:num_stops]  # emitted early
  cfg = gen.GenerationConfig(max_new_tokens=NEW, decoding='beam', num_beams=num_beams,
                             length_penalty=length_penalty, early_stopping=early_stopping,
                             stop_ids=tuple(stops), pad_id=PAD)
  ids, scores = _run(lm, cfg)
  out = hf_models.hf_generate(lm['hf'], lm['tokens'], lm['mask'], do_sample=False,
                              num_beams=num_beams, max_new_tokens=NEW, pad_token_id=PAD,
                              eos_token_id=stops, length_penalty=length_penalty,
                              early_stopping=early_stopping, output_scores=True)
  # HF fills finished beams with eos when pad_token_id is 0 (`pad or eos`); compare up to it.
  want = _after_stop_is(_hf_new_tokens(out), stops, PAD)
  np.testing.assert_array_equal(ids, want)
  diff = np.abs(scores - out.sequences_scores.numpy()).max()
  print(f'beam {num_beams=} {length_penalty=} {early_stopping=}: max|dscore|={diff:.2e}')
  assert diff <= 1e-4
  if length_penalty <= 1.0:  # a stop token decides some hypothesis (1.5 favours long ones)
    assert np.isin(ids, stops).any(axis=1).sum() >= 1


def test_one_beam_is_greedy_as_in_hf(lm):
  """HF decodes num_beams=1 greedily. A single beam differs: where the stop token ranks
  first it files that hypothesis and goes on with the runner-up, and early_stopping='never'
  with a length penalty then keeps a longer one."""
  stops = [int(lm['greedy'][0, 3]), int(lm['greedy'][1, 1])]  # emitted early
  cfg = gen.GenerationConfig(max_new_tokens=NEW, decoding='beam', num_beams=1,
                             length_penalty=2.0, early_stopping='never',
                             stop_ids=tuple(stops), pad_id=PAD)
  ids, _ = _run(lm, cfg)
  out = hf_models.hf_generate(lm['hf'], lm['tokens'], lm['mask'], do_sample=False,
                              num_beams=1, max_new_tokens=NEW, pad_token_id=PAD,
                              eos_token_id=stops, length_penalty=2.0, early_stopping='never')
  np.testing.assert_array_equal(ids, _after_stop_is(_hf_new_tokens(out), stops, PAD))


def test_beam_search_with_suppressed_ids_equals_hf(lm):
  """Every VLM generation suppresses ids (image tokens, vocabulary padding). HF's beam
  search masks the log-probs after the softmax, so the other ids' scores are not
  renormalised; masking the logits first ranked the beams otherwise."""
  suppress = sorted({int(t) for t in lm['greedy'][:, :6].ravel()})[:8]  # the likely ones
  stops = [int(lm['greedy'][0, 8])]
  cfg = gen.GenerationConfig(max_new_tokens=NEW, decoding='beam', num_beams=3,
                             stop_ids=tuple(stops), pad_id=PAD, suppress_ids=tuple(suppress))
  ids, scores = _run(lm, cfg)
  out = hf_models.hf_generate(lm['hf'], lm['tokens'], lm['mask'], do_sample=False,
                              num_beams=3, max_new_tokens=NEW, pad_token_id=PAD,
                              eos_token_id=stops, suppress_tokens=suppress, output_scores=True)
  np.testing.assert_array_equal(ids, _after_stop_is(_hf_new_tokens(out), stops, PAD))
  np.testing.assert_allclose(scores, out.sequences_scores.numpy(), atol=1e-4)
  assert not np.isin(ids, suppress).any()


def test_sampling_limits_equal_greedy_and_rng_is_deterministic(lm):
  key = jax.random.key(3)
  top1, _ = _run(lm, gen.GenerationConfig(max_new_tokens=NEW, decoding='sample', top_k=1,
                                          pad_id=PAD), key)
  np.testing.assert_array_equal(top1, lm['greedy'])
  zero, _ = _run(lm, gen.GenerationConfig(max_new_tokens=NEW, decoding='sample', temperature=0,
                                          pad_id=PAD))  # greedy; needs no key
  np.testing.assert_array_equal(zero, lm['greedy'])
  warm = gen.GenerationConfig(max_new_tokens=NEW, decoding='sample', temperature=1.5, top_k=50,
                              top_p=0.95, pad_id=PAD)
  a, b, c = (_run(lm, warm, k)[0] for k in (key, key, jax.random.key(4)))
  np.testing.assert_array_equal(a, b)
  assert (a != c).any() and (a != lm['greedy']).any()
  # Another temperature, top-p or penalty is an argument: the web demo's sliders compiled
  # the generator again for each new value (10-15 s on the micro model).
  compiled = gen._generate._cache_size()
  other = dataclasses.replace(warm, temperature=0.9, top_p=0.8)
  d = _run(lm, other, key)[0]
  assert gen._generate._cache_size() == compiled and (d != a).any()
  with pytest.raises(ValueError, match='rng'):
    _run(lm, warm)


def test_a_sampled_row_does_not_depend_on_its_batch(lm):
  """An evaluation's sampled report was a function of its row in the batch (one key drew the
  whole batch): the same record sampled in another batch size or order got another text."""
  warm = gen.GenerationConfig(max_new_tokens=NEW, decoding='sample', temperature=1.5,
                              top_k=50, pad_id=PAD)
  keys = sampling.row_keys(jax.random.key(5), 3)
  full, _ = _run(lm, warm, keys)
  order = [2, 0, 1]
  shuffled, _ = gen.generate(lm['model'], lm['params'], lm['tokens'][order], lm['mask'][order],
                             None, warm, keys[np.array(order)])
  np.testing.assert_array_equal(np.asarray(shuffled), full[order])
  alone, _ = gen.generate(lm['model'], lm['params'], lm['tokens'][1:2], lm['mask'][1:2], None,
                          warm, keys[1:2])
  np.testing.assert_array_equal(np.asarray(alone)[0], full[1])
  # One key: row r draws with fold_in(key, r); rows differ from each other's streams.
  np.testing.assert_array_equal(_run(lm, warm, jax.random.key(5))[0], full)
  np.testing.assert_array_equal(sampling.row_keys(jax.random.key(5), 2, first=1).shape, (2,))
  assert (jax.random.key_data(sampling.row_keys(jax.random.key(5), 2, first=1))
          == jax.random.key_data(keys[1:])).all()
  with pytest.raises(ValueError, match='one per row'):
    _run(lm, warm, sampling.row_keys(jax.random.key(5), 2))


@pytest.mark.parametrize('temperature,top_k,top_p', [(1.0, 7, 1.0), (0.7, 0, 0.8),
                                                     (1.3, 20, 0.6)])
def test_warpers_equal_hf_and_samples_stay_in_the_allowed_set(temperature, top_k, top_p):
  logits = np.random.default_rng(1).normal(0, 3, (64, 300)).astype(np.float32)
  logits[0, :4] = logits[0].max() + 1  # ties at the top-k boundary are kept, as HF keeps them
  procs = []
  if temperature != 1.0:
    procs.append(transformers.TemperatureLogitsWarper(temperature))
  if top_k:
    procs.append(transformers.TopKLogitsWarper(top_k))
  if top_p < 1.0:
    procs.append(transformers.TopPLogitsWarper(top_p))
  want = torch.from_numpy(logits)
  for proc in procs:
    want = proc(None, want)
  want = want.numpy()
  got = np.asarray(sampling.warp(logits, temperature, top_k, top_p))
  traced = jax.jit(lambda x, v: sampling.warp(x, temperature, top_k, top_p, v))(
      logits, sampling.knobs(temperature, top_p))  # generate's: the values as arguments
  np.testing.assert_array_equal(np.isfinite(traced), np.isfinite(got))
  np.testing.assert_allclose(np.asarray(traced)[np.isfinite(got)], got[np.isfinite(got)],
                             rtol=1e-6)
  np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
  np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-6)

  allowed = np.isfinite(want)
  keys = sampling.row_keys(jax.random.key(0), logits.shape[0])
  draws = jax.vmap(lambda i: sampling.sample_rows(keys, i, logits, temperature, top_k, top_p))(
      jnp.arange(256))
  draws = np.asarray(draws)  # [256, 64]
  assert allowed[np.arange(64)[None], draws].all()
  assert len(np.unique(draws[:, 1])) > 1  # really sampling, not argmax


def test_cold_sampling_is_argmax():
  logits = np.random.default_rng(2).normal(0, 3, (64, 300)).astype(np.float32)
  for seed in range(4):
    keys = sampling.row_keys(jax.random.key(seed), logits.shape[0])
    cold = sampling.sample_rows(keys, 0, logits, 1e-4, 0, 1.0)
    np.testing.assert_array_equal(cold, logits.argmax(-1))


def test_stop_strings_truncate_like_hf(lm):
  tok = tokenizer_lib.train_tokenizer(300, TEXTS)
  assert tok.get_vocab_size() == 300
  hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token='<pad>')

  def decode(ids):
    return hf_tok.decode(ids, clean_up_tokenization_spaces=False)

  # A stop string spanning two printable tokens of a greedy row (a random model mostly
  # emits stray bytes, which do not decode to text on their own).
  row, t, stop = next(
      (r, t, decode([a])[-1] + decode([b])[0]) for r, ids in enumerate(lm['greedy'])
      for t, (a, b) in enumerate(zip(ids[:-1], ids[1:]), 1)
      if (decode([a]) + decode([b])).isascii() and decode([a]).strip() and decode([b]).strip()
      and decode([a])[-1] + decode([b])[0] not in decode(ids[:t]))
  ids = gen.apply_stop_strings(lm['greedy'], decode, (stop,), PAD)
  assert (ids[row, t + 1:] == PAD).all() and (ids[row, :t + 1] == lm['greedy'][row, :t + 1]).all()
  # HF pads rows that stopped only when an eos criterion exists: give it one never emitted.
  unused = int(np.setdiff1d(np.arange(10, 300), lm['greedy'])[0])
  out = hf_models.hf_generate(lm['hf'], lm['tokens'], lm['mask'], do_sample=False,
                              max_new_tokens=NEW, pad_token_id=PAD, stop_strings=[stop],
                              tokenizer=hf_tok, eos_token_id=unused)
  np.testing.assert_array_equal(ids, _hf_new_tokens(out))
  # Inside the token loop (the table), greedy and sampling: the same ids.
  table = jnp.asarray(stop_strings.table(hf_tok, (stop,), 300))
  cfg = gen.GenerationConfig(max_new_tokens=NEW, pad_id=PAD, stop_strings=(stop,))
  np.testing.assert_array_equal(gen.generate(lm['model'], lm['params'], lm['tokens'], lm['mask'],
                                             None, cfg, None, table)[0], ids)
  cfg = dataclasses.replace(cfg, decoding='sample', temperature=1.5)
  key = jax.random.key(3)
  sampled = gen.apply_stop_strings(_run(lm, cfg, key)[0], decode, (stop,), PAD)
  np.testing.assert_array_equal(gen.generate(lm['model'], lm['params'], lm['tokens'], lm['mask'],
                                             None, cfg, key, table)[0], sampled)

  text = decode(lm['greedy'][0])
  assert gen.cut_at_stop_strings(text, (stop, 'never there')) == text[:text.find(stop)]
  assert gen.cut_at_stop_strings(text, ()) == text


def test_config_from_eval_defaults_to_greedy():
  c = tiny_config().eval
  cfg = gen.config_from_eval(c, (8, 2), 0)
  assert cfg.strategy == 'greedy' and cfg.max_new_tokens == c.max_new_tokens
  assert cfg.stop_ids == (8, 2) and cfg.pad_id == 0
  c.decoding, c.early_stopping, c.stop_strings = 'beam', 'never', ('Impression:',)
  cfg = gen.config_from_eval(c, (8, 2), 0)
  assert cfg.strategy == 'beam' and cfg.early_stopping == 'never'
  assert cfg.stop_strings == ('Impression:',)
  hash(cfg)
  with pytest.raises(ValueError, match='decoding'):
    gen.GenerationConfig(decoding='nucleus')
  for t in (float('nan'), float('inf'), -0.5):  # NaN sampled id 0 every step
    with pytest.raises(ValueError, match='finite temperature'):
      gen.GenerationConfig(decoding='sample', temperature=t)
  with pytest.raises(ValueError, match='prompt 1 encodes to no tokens'):
    gen.left_pad([[5, 6], []], 4, 0)


def _vlm_prompts(config, b: int):
  v = config.model.vision
  n_img = (v.image_size // v.patch_size) ** 2
  rng = np.random.default_rng(0)
  prompts = [[1, 6] + [4] * n_img  # the demo tokenizer's <image>
             + list(rng.integers(10, 200, 2 + i % 5)) + [8, 7] for i in range(b)]
  tokens, mask = gen.left_pad(prompts, n_img + 12, PAD)
  images = rng.normal(size=(b, 1, v.image_size, v.image_size, 3)).astype(np.float32)
  return {'tokens': tokens, 'prompt_mask': mask, 'images': images}


def _vlm_generate(config, model, boxed, devices, batch, cfgs):
  """Params and prompts placed as training places them (logical rules, batch-sharded)."""
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.rules_from_config(config.sharding.rules)
  params = jax.device_put(nn.meta.unbox(boxed),
                          sharding.logical_shardings(boxed, mesh, rules))
  g = {k: jax.device_put(v, sharding.batch_sharding(mesh, rules, v.ndim))
       for k, v in batch.items()}
  with sharding.activation_rules(mesh, rules):
    return [jax.device_get(gen.generate(model, params, g['tokens'], g['prompt_mask'],
                                        g['images'], c)) for c in cfgs]


def test_vlm_on_a_mesh_equals_one_device():
  config = tiny_config()
  config.runtime.dtype = 'float32'
  batch = _vlm_prompts(config, 8)
  model = vlm.VLM(factory.vlm_config(config.model, image_token_id=4),
                  factory.vlm_runtime(config))
  # Random values of the right shapes: compiling model.init would double this test's time.
  shapes = jax.eval_shape(model.init, jax.random.key(0), batch['tokens'][:1],
                          batch['images'][:1])['params']
  rng = np.random.default_rng(0)
  boxed = jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(x.dtype), shapes)
  cfgs = [gen.GenerationConfig(max_new_tokens=8, stop_ids=(8, 2), pad_id=PAD),
          gen.GenerationConfig(max_new_tokens=8, decoding='beam', num_beams=3,
                               length_penalty=1.5, stop_ids=(8, 2), pad_id=PAD)]
  single = _vlm_generate(config, model, boxed, jax.devices()[:1], batch, cfgs)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  sharded = _vlm_generate(config, model, boxed, jax.devices()[:8], batch, cfgs)
  for (ids1, s1), (ids8, s8) in zip(single, sharded):
    np.testing.assert_array_equal(ids8, ids1)
    np.testing.assert_allclose(s8, s1, atol=1e-5)
  greedy_ids, beam_scores = single[0][0], single[1][1]
  assert greedy_ids.shape == (8, 8) and np.all(beam_scores > -1e8)


@pytest.mark.parametrize('decoding', ['greedy', 'sample', 'beam'])
def test_image_span_emits_exactly_its_codes_then_closes(lm, decoding):
  """LLM-CXR's report -> image: `length` codes from the code range, then the closing id,
  in one pass; inside the span the choice is the unconstrained model's best code."""
  first, end, length, close = 100, 164, 10, 7
  cfg = gen.GenerationConfig(max_new_tokens=NEW, decoding=decoding, num_beams=3,
                             pad_id=PAD, image_span=(first, end, length, close))
  ids, _ = _run(lm, cfg, jax.random.key(0) if decoding == 'sample' else None)
  assert ((ids[:, :length] >= first) & (ids[:, :length] < end)).all(), ids
  assert (ids[:, length] == close).all(), ids
  free = _run(lm, gen.GenerationConfig(max_new_tokens=NEW, pad_id=PAD))[0]
  assert not ((free[:, :length] >= first) & (free[:, :length] < end)).all()  # it did constrain
  if decoding == 'greedy':  # step 0: the best code by the model's own logits
    logits, *_ = gen._prefill(lm['model'], lm['params'], lm['tokens'], lm['mask'], None, NEW)
    want = first + np.argmax(np.asarray(logits)[:, first:end], axis=-1)
    np.testing.assert_array_equal(ids[:, 0], want)
  with pytest.raises(ValueError, match='max_new_tokens'):
    gen.GenerationConfig(max_new_tokens=length, image_span=(first, end, length, close))


@pytest.mark.parametrize('length_penalty', [1.5, 0.5])
def test_beam_search_early_stopping_never_equals_hf(lm, length_penalty):
  """early_stopping='never' (config.eval.early_stopping: 'never') was never compared with
  HF: treating it as True, or its best-case length as the current one, went unnoticed."""
  stops = [int(lm['greedy'][0, 3])]
  cfg = gen.GenerationConfig(max_new_tokens=NEW, decoding='beam', num_beams=3,
                             length_penalty=length_penalty, early_stopping='never',
                             stop_ids=tuple(stops), pad_id=PAD)
  ids, scores = _run(lm, cfg)
  out = hf_models.hf_generate(lm['hf'], lm['tokens'], lm['mask'], do_sample=False,
                              num_beams=3, max_new_tokens=NEW, pad_token_id=PAD,
                              eos_token_id=stops, length_penalty=length_penalty,
                              early_stopping='never', output_scores=True)
  np.testing.assert_array_equal(ids, _after_stop_is(_hf_new_tokens(out), stops, PAD))
  np.testing.assert_allclose(scores, out.sequences_scores.numpy(), atol=1e-4)


def test_greedy_scores_count_tokens_up_to_the_stop_token_only(lm):
  """generate()'s greedy scores are the summed log-probs of each row's tokens up to its
  stop token: the fill after it adds nothing (a row that stopped at token 4 of 16 scores
  what a 4-token run scores)."""
  eos = int(lm['greedy'][0, 3])
  long_ids, long_scores = _run(lm, gen.GenerationConfig(max_new_tokens=NEW, stop_ids=(eos,),
                                                        pad_id=PAD))
  short_ids, short_scores = _run(lm, gen.GenerationConfig(max_new_tokens=4, stop_ids=(eos,),
                                                          pad_id=PAD))
  assert (long_ids[0, 4:] == PAD).all()
  np.testing.assert_array_equal(long_ids[0, :4], short_ids[0])
  np.testing.assert_allclose(long_scores[0], short_scores[0], rtol=1e-5)
  assert np.all(np.isfinite(long_scores)) and np.all(long_scores < 0)


def _counted_token_loop(lm, cfg, stop_table=None) -> tuple:
  """(ids, decode steps the loop ran) for the fixture's prompts: greedy, or beam search
  when cfg's strategy is beam (then the best hypotheses)."""
  decode, calls = gen._decoder(lm['model'], lm['params']), []

  def counted(*args):
    jax.debug.callback(lambda: calls.append(1))
    return decode(*args)

  logits, cache, key_mask, positions = gen._prefill(lm['model'], lm['params'], lm['tokens'],
                                                    lm['mask'], None, NEW)
  if cfg.strategy == 'beam':
    ids, _ = beam_lib.beam_search(counted, logits, cache, key_mask, positions, PROMPT_LEN, NEW,
                                  cfg.num_beams, cfg.length_penalty, cfg.early_stopping,
                                  cfg.stop_ids, PAD, stop_table=stop_table)
  else:
    ids, _ = gen._token_loop(counted, logits, cache, key_mask, positions, PROMPT_LEN, cfg, None,
                             jnp.int32(PAD), sampling.knobs(1.0, 1.0, 1.0), stop_table=stop_table)
  jax.effects_barrier()
  return ids, len(calls)


def test_the_token_loop_ends_once_every_row_has_stopped(lm):
  """Decoding ran all max_new_tokens steps whatever the rows did (XrayGPT's eval: ~300
  steps where its reports end near 60); it ends when every row has stopped, with the same
  ids: each row's stop token, then the fill."""
  first = lm['greedy'][:, 0]
  cfg = gen.GenerationConfig(max_new_tokens=NEW, stop_ids=tuple(sorted({int(t) for t in first})),
                             pad_id=PAD)
  ids, steps = _counted_token_loop(lm, cfg)
  assert steps == 1, steps  # the first token's step, not NEW
  np.testing.assert_array_equal(np.asarray(ids)[:, 0], first)
  assert (np.asarray(ids)[:, 1:] == PAD).all()
  np.testing.assert_array_equal(ids, _run(lm, cfg)[0])


def test_the_token_loop_ends_once_every_row_has_met_a_stop_string(lm):
  """XrayGPT's answers end with '###', not EOS: with the stop strings' table the loop
  ends when every row has completed one (the step of the last row to), not after
  max_new_tokens, and each row keeps the token that completed it, then the fill."""
  hf_tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizer_lib.train_tokenizer(300, TEXTS), pad_token='<pad>')

  def decode(ids):
    return hf_tok.decode(ids, skip_special_tokens=True)

  # One printable character each row emits alone (a random model mostly emits stray bytes).
  stops = tuple({next(decode([t]) for t in row if decode([t]).isascii()
                      and decode([t]).strip().isprintable() and decode([t]).strip())
                 for row in lm['greedy']})
  ends = [gen.stop_string_length(row, decode, stops) for row in lm['greedy']]
  assert None not in ends and max(ends) < NEW, ends
  cfg = gen.GenerationConfig(max_new_tokens=NEW, pad_id=PAD, stop_strings=stops)
  ids, steps = _counted_token_loop(lm, cfg, jnp.asarray(stop_strings.table(hf_tok, stops, 300)))
  assert steps == max(ends), (steps, ends)
  np.testing.assert_array_equal(ids, gen.apply_stop_strings(lm['greedy'], decode, stops, PAD))


def _pairs_across_tokens(row, decode) -> list[str]:
  """The two printable ASCII characters on each side of a boundary between two tokens
  that decode to text alone (a random model mostly emits stray bytes, which do not)."""
  return [decode([a])[-1] + decode([b])[0] for a, b in zip(row[:-1], row[1:])
          if (decode([a]) + decode([b])).isascii() and decode([a]).strip()
          and decode([b]).strip()]


@pytest.mark.parametrize('with_letters', [False, True])
def test_beam_search_stops_at_stop_strings_as_hf(lm, with_letters):
  """Beam search ignored the stop strings' table (XrayGPT's answers, closed by '###', ran
  all max_new_tokens and were cut after). As HF's StopStringCriteria in beam search, a
  candidate that completes one finishes its hypothesis as a stop id does, and the search
  ends when HF's does. Strings across two tokens late in the rows need each beam's matcher
  state to follow it through the reordering; with every ASCII letter of the rows too,
  every prompt fills its finished set early and the loop ends before max_new_tokens."""
  hf_tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizer_lib.train_tokenizer(300, TEXTS), pad_token='<pad>')

  def decode(ids):
    return hf_tok.decode(ids, skip_special_tokens=True)

  cfg = gen.GenerationConfig(max_new_tokens=NEW, decoding='beam', num_beams=3,
                             early_stopping=True, pad_id=PAD)
  free = _run(lm, cfg)[0]
  pairs = [_pairs_across_tokens(row, decode) for row in free]
  if with_letters:  # a character of several byte tokens is a string the table misses
    stops = [p[0] for p in pairs] + sorted({c for row in free for c in decode(row)
                                            if c.isascii() and c.isalpha()})
  else:  # each row's second pair (its first if it has one): the beams have diverged
    stops = [p[min(1, len(p) - 1)] for p in pairs]
  stops = tuple(dict.fromkeys(stops))
  table = jnp.asarray(stop_strings.table(hf_tok, stops, 300))
  ids, scores = gen.generate(lm['model'], lm['params'], lm['tokens'], lm['mask'], None,
                             dataclasses.replace(cfg, stop_strings=stops), None, table)
  out = hf_models.hf_generate(lm['hf'], lm['tokens'], lm['mask'], do_sample=False,
                              num_beams=3, max_new_tokens=NEW, pad_token_id=PAD,
                              early_stopping=True, stop_strings=list(stops),
                              tokenizer=hf_tok, output_scores=True)
  want = _hf_new_tokens(out)
  np.testing.assert_array_equal(ids, np.where(want < 0, PAD, want))  # HF fills -1 without eos
  np.testing.assert_allclose(scores, out.sequences_scores.numpy(), atol=1e-4)
  assert all(gen.stop_string_length(row, decode, stops) for row in np.asarray(ids))
  assert (np.asarray(ids) != free).any()
  counted, steps = _counted_token_loop(lm, cfg, table)
  np.testing.assert_array_equal(counted, ids)
  assert steps == len(out.scores), (steps, len(out.scores))
  if with_letters:
    assert steps < NEW, steps


def test_a_rows_first_token_is_matched_from_the_stop_tables_start_row(lm):
  """Each row starts at the table's START row, which reads the answer's first token as
  decoding writes it (sentencepiece drops its word-start space: a first ' left' is
  'left'), not at the matcher's empty state: a table whose START row alone completes a
  stop at each row's first token ends the loop after that token."""
  first = np.asarray(lm['greedy'][:, 0])
  table = np.full((stop_strings._STATES + 1, 300), stop_strings._STATES, np.int32)
  table[stop_strings.MATCHED] = stop_strings.MATCHED
  table[stop_strings.START, first] = stop_strings.MATCHED
  cfg = gen.GenerationConfig(max_new_tokens=NEW, pad_id=PAD)
  ids, steps = _counted_token_loop(lm, cfg, jnp.asarray(table))
  assert steps == 1, steps
  np.testing.assert_array_equal(np.asarray(ids)[:, 0], first)
  assert (np.asarray(ids)[:, 1:] == PAD).all()


def test_top_p_boundary_and_the_most_likely_token_are_hfs():
  """HF's TopPLogitsWarper drops the tokens whose cumulative probability is <= 1 - top_p
  (a token exactly at the boundary goes) and always keeps the most likely one (a top_p
  so small that 1 - top_p rounds to 1.0 in float32 removed every token of most rows)."""
  flat = np.zeros((2, 4), np.float32)  # probabilities 0.25: cumulative sums are exact
  want = transformers.TopPLogitsWarper(0.75)(None, torch.from_numpy(flat)).numpy()
  assert np.isfinite(want).sum(-1).tolist() == [3, 3]
  for values in (None, sampling.knobs(1.0, 0.75)):
    got = np.asarray(sampling.warp(flat, 1.0, 0, 0.75, values))
    assert np.isfinite(got).sum(-1).tolist() == [3, 3]
  logits = np.random.default_rng(1).normal(0, 3, (64, 300)).astype(np.float32)
  for values in (None, sampling.knobs(1.0, 1e-9)):
    got = np.asarray(sampling.warp(logits, 1.0, 0, 1e-9, values))
    np.testing.assert_array_equal(np.isfinite(got), logits == logits.max(-1, keepdims=True))


def test_generation_config_edges():
  """max_new_tokens and num_beams below 1 are refused; without a pad id finished rows
  repeat the first stop id; config.eval.early_stopping's strings map to HF's values; a
  stop string at the very start of an answer cuts all of it."""
  for kw in (dict(max_new_tokens=0), dict(num_beams=0)):
    with pytest.raises(ValueError, match='max_new_tokens and num_beams must be >= 1'):
      gen.GenerationConfig(**kw)
  assert gen.GenerationConfig(stop_ids=(5, 9)).fill_id == 5
  assert gen.GenerationConfig(stop_ids=(5, 9), pad_id=0).fill_id == 0
  c = tiny_config().eval
  for value, want in [('true', True), ('False', False), ('never', 'never')]:
    c.early_stopping = value
    got = gen.config_from_eval(c, (8,), 0).early_stopping
    assert got == want and type(got) is type(want), (value, got)
  with pytest.raises(ValueError, match='early_stopping'):
    c.early_stopping = 'sometimes'
    gen.config_from_eval(c, (8,), 0)
  assert gen.cut_at_stop_strings('###Findings: clear.', ('###',)) == ''
  assert gen.cut_at_stop_strings('a.###b', ('zzz', '###')) == 'a.'
  decode = lambda ids: ''.join(chr(ord('a') + i) for i in ids)  # noqa: E731
  assert gen.stop_string_length([0, 1, 2], decode, ('bc',)) == 3  # completed by the last id
  assert gen.stop_string_length([0, 1, 2], decode, ('cb',)) is None


def test_beam_search_keeps_num_beams_running_when_more_stop_ids_than_beams_lead():
  """HF takes max(2, 1 + len(stop_ids)) * num_beams candidates so that num_beams of them
  are still running when stop ids fill the top (here 3 stop ids lead the first step with
  2 beams: with 2 * num_beams candidates the second running beam, token 5, was lost, and
  with it the best hypothesis [5, 1], which length_penalty=2 favours). early_stopping=
  'never' bounds a running beam by its score over max_new_tokens ** length_penalty, so the
  search stays open after step 0 filled the finished set (over the current length it
  closed there and returned [1])."""
  import jax.numpy as jnp

  from radjax.eval.decoding import beam_search as beam_lib
  v, stops = 8, (1, 2, 3)
  p0 = np.array([0.015, 0.3, 0.25, 0.2, 0.12, 0.08, 0.02, 0.015])
  after_5 = np.zeros(v, np.float32)
  after_5[1] = 10.0  # after token 5, stop id 1 is almost certain

  def decode(tokens, positions, cache, index, key_mask):
    rows = jnp.where((tokens == 5)[:, None], jnp.asarray(after_5), jnp.zeros((v,)))
    return rows, cache

  logits = jnp.log(jnp.asarray(p0, jnp.float32))[None]
  ids, score = beam_lib.beam_search(decode, logits, {'c': jnp.zeros((1, 1, 1))},
                                    jnp.ones((1, 3), bool), jnp.array([1]), 1, 2, 2, 2.0,
                                    'never', stops, 0)
  np.testing.assert_array_equal(np.asarray(ids), [[5, 1]])
  want = (np.log(0.08) + float(jax.nn.log_softmax(jnp.asarray(after_5))[1])) / 2 ** 2
  np.testing.assert_allclose(np.asarray(score), [want], rtol=1e-5)
