"""HF's repetition penalty in generate(): greedy and beam search equal HF
generate(repetition_penalty=...) token for token on prompts whose greedy output repeats;
padding is never a seen id; a VLM counts its image placeholders as HF does; p <= 0 fails."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from radjax.convert import llava  # noqa: E402
from radjax.eval.decoding import generate as gen  # noqa: E402
from radjax.eval.decoding import repetition  # noqa: E402
from radjax.models import vlm  # noqa: E402
from radjax.models.runtime import Runtime  # noqa: E402
from tests import hf_models  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

PROMPT_LEN, NEW, PAD, PENALTY = 32, 24, 0, 1.3


@pytest.fixture(scope='module')
def lm():
  hf = hf_models.tiny_llama(vocab_size=300)
  model, params = hf_models.to_radjax(hf)
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(10, 300, n)) for n in (20, 32, 26)]  # rows 0, 2 left-padded
  return dict(hf=hf, model=model, params=params, prompts=prompts)


def _hf(lm, pad: int, **kw):
  tokens, mask = gen.left_pad(lm['prompts'], PROMPT_LEN, pad)
  out = hf_models.hf_generate(lm['hf'], tokens, mask, do_sample=False, max_new_tokens=NEW,
                              pad_token_id=pad, **kw)
  return out.sequences[:, PROMPT_LEN:].numpy(), out


def _ours(lm, pad: int, cfg: gen.GenerationConfig, rng=None):
  tokens, mask = gen.left_pad(lm['prompts'], PROMPT_LEN, pad)
  ids, scores = gen.generate(lm['model'], lm['params'], tokens, mask, None, cfg, rng)
  return np.asarray(ids), np.asarray(scores)


def _repeats(ids) -> bool:
  """Some row holds a 3-gram twice."""
  return any(len(grams) > len(set(grams))
             for grams in ([tuple(row[i:i + 3]) for i in range(len(row) - 2)] for row in ids))


@pytest.mark.parametrize('num_beams', [1, 3], ids=['greedy', 'beam'])
def test_equals_hf_on_output_that_repeats_without_it(lm, num_beams):
  plain, _ = _hf(lm, PAD, num_beams=num_beams)
  assert _repeats(plain)  # the penalty has repeats to break
  want, out = _hf(lm, PAD, num_beams=num_beams, repetition_penalty=PENALTY,
                  output_scores=True)
  assert (want != plain).any()
  cfg = gen.GenerationConfig(max_new_tokens=NEW, decoding='beam' if num_beams > 1 else 'greedy',
                             num_beams=num_beams, repetition_penalty=PENALTY, pad_id=PAD)
  ids, scores = _ours(lm, PAD, cfg)
  np.testing.assert_array_equal(ids, want)
  if num_beams > 1:
    np.testing.assert_allclose(scores, out.sequences_scores.numpy(), atol=1e-4)


def test_sampling_penalises_before_the_warpers(lm):
  """top_k=1 after the penalty is the penalised argmax (before it, the plain one)."""
  want, _ = _hf(lm, PAD, repetition_penalty=PENALTY)
  cfg = gen.GenerationConfig(max_new_tokens=NEW, decoding='sample', top_k=1, temperature=0.7,
                             repetition_penalty=PENALTY, pad_id=PAD)
  np.testing.assert_array_equal(_ours(lm, PAD, cfg, jax.random.key(0))[0], want)


def test_padding_is_never_a_seen_id(lm):
  """HF v5 skips a prompt's leading padding. With the pad id the most-padded row would
  emit first, counting padding (HF v4's processor) changes that row."""
  first, _ = _hf(lm, PAD, repetition_penalty=PENALTY)
  pad = int(first[0, 0])
  assert pad not in lm['prompts'][0]
  want, _ = _hf(lm, pad, repetition_penalty=PENALTY)
  counted, _ = _hf(lm, pad, logits_processor=transformers.LogitsProcessorList(
      [transformers.RepetitionPenaltyLogitsProcessor(PENALTY)]))
  assert (counted[0] != want[0]).any()
  cfg = gen.GenerationConfig(max_new_tokens=NEW, repetition_penalty=PENALTY, pad_id=pad)
  np.testing.assert_array_equal(_ours(lm, pad, cfg)[0], want)

  # Right padding and holes do not count either; ids past the head are dropped.
  tokens = np.array([[5, 5, 7, 9, 9], [9, 9, 3, 4, 12]])
  mask = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 0, 1]], bool)
  seen = np.asarray(repetition.seen_in_prompt(tokens, mask, 10))
  assert [np.flatnonzero(r).tolist() for r in seen] == [[5, 7], [3, 9]]


def test_vlm_counts_image_placeholders_as_hf_does():
  """HF counts a LLaVA's image token ids (in its input_ids) as seen. The image id's head
  row is made the first answer token's, a little larger, so the plain model emits it."""
  image_id, new = 4, 12
  hf = hf_models.tiny_llava(320, image_id, 2)
  rng = np.random.default_rng(0)
  prompts = [list(hf_models.llava_prompt(rng, n, [2], 320, image_id)[0]) for n in (40, 34)]
  tokens, mask = gen.left_pad(prompts, 40, PAD)
  pixels = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)

  def theirs(**kw):
    with torch.no_grad():
      out = hf.generate(input_ids=torch.from_numpy(tokens).long(),
                        attention_mask=torch.from_numpy(mask).long(),
                        pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)),
                        do_sample=False, max_new_tokens=new, pad_token_id=PAD, **kw)
    return out[:, tokens.shape[1]:].numpy()

  with torch.no_grad():
    hf.lm_head.weight[image_id] = hf.lm_head.weight[int(theirs()[0, 0])] * 1.05
  assert theirs()[0, 0] == image_id
  want = theirs(repetition_penalty=PENALTY)
  assert want[0, 0] != image_id
  cfg = llava.vlm_config_from_hf(hf.config)
  params = llava.params_from_hf({k: v.numpy() for k, v in hf.state_dict().items()}, cfg,
                                scan=True)
  model = vlm.VLM(cfg, vlm.VLMRuntime(*(Runtime(scan_layers=True),) * 3))
  gen_cfg = gen.GenerationConfig(max_new_tokens=new, repetition_penalty=PENALTY, pad_id=PAD)
  ids, _ = gen.generate(model, params, tokens, mask, pixels[:, None], gen_cfg)
  np.testing.assert_array_equal(np.asarray(ids), want)


@pytest.mark.parametrize('value', [0.0, -1.3, float('nan')])
def test_a_penalty_not_above_zero_names_its_key(value):
  with pytest.raises(ValueError, match='repetition_penalty'):
    gen.GenerationConfig(repetition_penalty=value)
  c = tiny_config().eval
  c.repetition_penalty = value
  with pytest.raises(ValueError, match=r'config\.eval\.repetition_penalty'):
    gen.config_from_eval(c, (2,), PAD)
  c.repetition_penalty = 1.2
  assert gen.config_from_eval(c, (2,), PAD).repetition_penalty == 1.2
