"""configs/xraygpt.py, llm_cxr.py, radvlm.py and radfm.py at full size against what the
original systems' code does (/work/shared/reference/seeds_spec.md; XrayGPT d0baa6a0,
LLM-CXR 854a2330, RadVLM 69fe9462, RadFM 9efba84c): each test names the original's file
and the fact it pins. The formulas the tests compare with are written here from the
originals' behaviour, not copied."""
import io
import logging
import math

import jax
import numpy as np
import pytest
from PIL import Image
from transformers import PreTrainedTokenizerFast, SiglipVisionConfig

from configs import radvlm, xraygpt
from data_prep import tokenizer as tokenizer_lib
from radjax.convert import parts
from radjax.convert import vit as vit_convert
from radjax.core import config_checks
from radjax.data import chat, images, instructions, schema, tokens
from radjax.eval.evaluators import reports
from radjax.models import factory
from radjax.train import loss as loss_lib
from radjax.train import optimizer
from tests.test_chat import _sentencepiece_dir


def _xraygpt(stage):
  return xraygpt.get_config('' if stage == 1 else 'stage=2,stage1=/nowhere')


def test_report_references_are_the_section_the_recipe_trains_on():
  """A model trained on one report section (XrayGPT's summaries and RadVLM's filtered
  reports are findings only; LLM-CXR stage 2 writes impressions) is scored against that
  section, not against 'Findings: ...\\nImpression: ...'."""
  both = schema.make_example(id='r', report={'findings': 'Clear lungs.',
                                             'impression': 'No acute process.'})
  impression_only = schema.make_example(id='i', report={'impression': 'Normal.'})
  ev = reports.ReportEvaluator.__new__(reports.ReportEvaluator)
  for section, want in (('findings', 'Clear lungs.'), ('impression', 'No acute process.'),
                        ('both', 'Findings: Clear lungs.\nImpression: No acute process.'),
                        ('joined', 'Clear lungs. No acute process.')):
    ev.options = instructions.options_from_config({'report_section': section})
    assert ev.reference(both) == want
  records = [schema.encode(ex) for ex in (impression_only, both)]
  assert [ex['id'] for ex in reports.examples_with_reports(records, 2, 'findings')] == ['r']
  assert [ex['id'] for ex in reports.examples_with_reports(records, 2)] == ['i', 'r']


@pytest.mark.parametrize('recipe', ['xraygpt', 'radvlm'])
def test_full_recipes_answer_with_the_summary_as_it_is(recipe):
  """XrayGPT's filter_cap.json captions (the xraygpt_captions build stores them as
  findings) and RadVLM's GPT-4o-filtered findings are the answer verbatim: no
  'Findings: ' prefix (mimic_dataset.py / openi_dataset.py return ann['caption'])."""
  config = _xraygpt(1) if recipe == 'xraygpt' else radvlm.get_config('')
  options = instructions.options_from_config(config.data.task_options)
  summary = schema.make_example(id='s', report={'findings': 'The heart is normal in size.'})
  assert instructions.report_text(summary, None, options)[-1]['text'] == (
      'The heart is normal in size.')
  assert instructions.report(summary, None, options)[-1]['text'] == (
      'The heart is normal in size.')


def _lavis_lr(step, warmup, total, init_lr, min_lr, warmup_lr):
  """LAVIS's linear_warmup_cosine_lr (xraygpt/common/optims.py), from its behaviour."""
  if step < warmup:
    return min(init_lr, warmup_lr + (init_lr - warmup_lr) * step / max(warmup, 1))
  return (init_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * step / total)) + min_lr


@pytest.mark.parametrize('stage,lr,min_lr,warmup,total', [(1, 1e-4, 8e-5, 500, 4 * 5000),
                                                          (2, 3e-5, 1e-5, 200, 1 * 2501)])
def test_xraygpt_schedule_is_lavis_linear_warmup_cosine(stage, lr, min_lr, warmup, total):
  """train_configs/xraygpt_{mimic_pretrain,openi_finetune}.yaml: init_lr / min_lr /
  warmup_lr 1e-6 / warmup_steps / max_epoch x iters_per_epoch, LAVIS's schedule."""
  c = _xraygpt(stage)
  assert c.train.num_steps == total
  schedule = optimizer.make_schedule(c.optim, c.train.num_steps)
  for step in (0, 1, warmup // 2, warmup - 1, warmup, warmup + 1, total // 2, total - 1):
    np.testing.assert_allclose(float(schedule(step)),
                               _lavis_lr(step, warmup, total, lr, min_lr, 1e-6), rtol=1e-5)
  assert not config_checks.errors(c)


def test_cosine_schedule_is_unchanged_for_the_other_recipes():
  """'cosine' (the default) is HF's warmup + cosine over the remaining steps."""
  c = radvlm.get_config('')
  schedule = optimizer.make_schedule(c.optim, c.train.num_steps)
  w, n = c.optim.warmup_steps, c.train.num_steps
  assert float(schedule(0)) == 0.0 and float(schedule(w)) == pytest.approx(1e-5)
  np.testing.assert_allclose(float(schedule(w + (n - w) // 2)), 0.5e-5, rtol=1e-3)


def _deepspeed_warmup_lrs(updates, peak, warmup):
  """The lr of DeepSpeed's WarmupLR ('log', min lr 0) at each of `updates` updates, from
  its behaviour: get_lr reads last_batch_iteration (gamma = log(it + 1) / log(warmup),
  1 from it = warmup on), and the engine calls step() (it += 1) after each optimizer
  step, so update k runs at it = k - 2 (update 1: the lr before any step(), taken as 0 as
  DeepSpeed >= 0.15.3 sets it; 0.8.3 left the optimizer's configured lr there)."""
  lrs, it = [], -1
  for _ in range(updates):
    gamma = 0.0 if it < 0 else (1.0 if it >= warmup else math.log(it + 1) / math.log(warmup))
    lrs.append(peak * gamma)
    it += 1  # engine.step(): optimizer.step(), then lr_scheduler.step()
  return lrs


def test_llm_cxr_warms_up_on_deepspeeds_log_curve():
  """LLM-CXR's ds config: WarmupLR with warmup_num_steps 50 and no warmup_type, so
  DeepSpeed's default 'log', stepped after each update: update k (1-based) at
  lr * log(k - 1) / log(50), the peak from update 51, then constant. Written from
  DeepSpeed's behaviour, not radjax's code."""
  from configs import llm_cxr
  c = llm_cxr.get_config('')
  schedule = optimizer.make_schedule(c.optim, c.train.num_steps)
  want = _deepspeed_warmup_lrs(1000, 5e-6, 50)
  for update in (1, 2, 3, 5, 10, 25, 49, 50, 51, 52, 1000):
    np.testing.assert_allclose(float(schedule(update - 1)), want[update - 1], rtol=1e-5,
                               atol=1e-12)
  assert float(schedule(c.train.num_steps - 1)) == pytest.approx(5e-6)
  assert not config_checks.errors(c)


def test_llm_cxr_reads_reports_as_generate_eval_samples_them():
  """generate_eval.py reads each report (max_new_tokens=128) through training/generate.py's
  InstructionTextGenerationPipeline, whose defaults sample: do_sample=True, top_p 0.92,
  top_k 0, temperature 1, no repetition penalty; it draws images with the same knobs
  (config.codec). size=tiny keeps greedy reads (the README's measured numbers)."""
  from configs import llm_cxr
  from radjax.eval.decoding import generate as generate_lib
  for arg in ('', 'stage=2,stage1=/nowhere'):
    c = llm_cxr.get_config(arg)
    g = generate_lib.config_from_eval(c.eval, (), 0)
    assert (g.decoding, g.top_p, g.top_k, g.temperature, g.repetition_penalty,
            g.max_new_tokens) == ('sample', 0.92, 0, 1.0, 1.0, 128), arg
    assert (c.codec.decoding, c.codec.top_p, c.codec.temperature) == ('sample', 0.92, 1.0)
    assert not config_checks.errors(c)


def test_llm_cxr_trains_stage_1_on_findings_then_impression_unlabelled():
  """data/mimic_cxr.py _parse_report_fi: stage 1's text is FINDINGS + ' ' + IMPRESSION
  (no section labels); _parse_report_i: stage 2's the impression alone."""
  from configs import llm_cxr
  ex = schema.make_example(id='r', report={'findings': 'Clear lungs.',
                                           'impression': 'No acute process.'})
  for arg, want in (('', 'Clear lungs. No acute process.'),
                    ('stage=2,stage1=/nowhere', 'No acute process.')):
    c = llm_cxr.get_config(arg)
    options = instructions.options_from_config(c.data.task_options)
    assert instructions.report_answer(ex, options.report_section) == want, arg


def test_xraygpt_optimizer_is_lavis_adamw_on_llama_proj_only():
  """runner_base.py: AdamW(betas 0.9 / 0.999, weight_decay 0.05 on ndim >= 2), no
  gradient clipping (base_task.py steps the GradScaler straight); only llama_proj trains
  (freeze_vit, freeze_qformer, the LLM's requires_grad False)."""
  for stage in (1, 2):
    c = _xraygpt(stage)
    assert (c.optim.b1, c.optim.b2, c.optim.eps, c.optim.weight_decay) == (0.9, 0.999, 1e-8,
                                                                             0.05)
    assert c.optim.clip_norm == 0.0
    assert tuple(c.optim.param_groups) == (('projector/out/.*', 1.0), ('.*', 'frozen'))
  assert (_xraygpt(1).train.batch_size, _xraygpt(2).train.batch_size) == (3 * 4, 1 * 4)


def test_xraygpt_images_are_blip2s_crop_with_clip_normalisation():
  """blip_processors.py: RandomResizedCrop(224, scale (0.5, 1), bicubic), ToTensor,
  Normalize(CLIP mean / std); no flip, no intensity jitter."""
  c = _xraygpt(2)
  assert c.model.vision.image_size == 224 and tuple(c.data.crop_scale) == (0.5, 1.0)
  assert c.data.augment and not c.data.intensity_jitter
  np.testing.assert_allclose(c.data.image_mean, (0.48145466, 0.4578275, 0.40821073))
  np.testing.assert_allclose(c.data.image_std, (0.26862954, 0.26130258, 0.27577711))
  rng = np.random.default_rng(0)
  pixels = (rng.uniform(size=(40, 40, 3)) * 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, 'PNG')
  image = {'kind': '2d', 'format': 'png', 'data': buf.getvalue()}
  kw = dict(size=16, num_channels=3, mean=c.data.image_mean, std=c.data.image_std,
            record_id='x', crop_scale=(0.5, 1.0))
  plain = images.preprocess(image, rng=np.random.default_rng(1), jitter=False, **kw)
  crop = images.random_resized_crop(Image.fromarray(pixels), 16, (0.5, 1.0),
                                    np.random.default_rng(1))
  want = (np.asarray(crop, np.float32) / 255 - np.float32(c.data.image_mean)) / np.float32(
      c.data.image_std)
  np.testing.assert_allclose(plain, want, atol=1e-5)
  jittered = images.preprocess(image, rng=np.random.default_rng(1), jitter=True, **kw)
  assert not np.allclose(plain, jittered)


@pytest.fixture(scope='module')
def llama_like(tmp_path_factory):
  """A sentencepiece tokenizer with byte fallback: '\\n' is <0x0A>, as in LLaMA's."""
  return tokens.load_tokenizer(_sentencepiece_dir(tmp_path_factory.mktemp('sp')))


def _encoder(config, tokenizer, image_tokens=32):
  from radjax.tasks import base
  chat.prepare_tokenizer(tokenizer, chat.get_format(config.data.chat_format), images=True)
  return base.chat_encoder(config, tokenizer, image_tokens)


def test_xraygpt_stage1_is_bos_queries_and_32_caption_tokens_ended_by_newline(llama_like):
  """mini_gpt4.py forward: [BOS] + 32 image embeddings + tokenizer(caption + end_sym,
  truncation at max_txt_len) with end_sym '\\n' and max_txt_len 32 (the code's defaults:
  xraygpt_mimic_pretrain.yaml sets neither); loss on those caption tokens only."""
  c = _xraygpt(1)
  enc = _encoder(c, llama_like)
  short, long = 'No pneumothorax.', ' '.join(['The heart is normal in size.'] * 8)
  for caption in (short, long):
    turns = instructions.report_text(schema.make_example(id='x', report={'findings': caption}),
                                     None, instructions.options_from_config(c.data.task_options))
    arrays = enc.training_arrays(turns, 1, c.data.max_len, 'x')
    want = llama_like.encode(caption + '\n', add_special_tokens=False)[:32]
    seq = [llama_like.bos_token_id] + [enc.image_id] * 32 + want
    n = len(seq) - 1
    assert list(arrays['tokens'][:n]) == seq[:-1] and list(arrays['targets'][:n]) == seq[1:]
    np.testing.assert_array_equal(arrays['loss_mask'][:n], [0] * 32 + [1] * len(want))
    assert not arrays['loss_mask'][n:].any()
    assert arrays['truncated'] == (caption is long)
  assert llama_like.eos_token_id not in arrays['targets'][arrays['loss_mask'] > 0]
  assert enc.decode_answer(llama_like.encode('Clear lungs.\nNext', add_special_tokens=False)) \
      == 'Clear lungs.'


def test_xraygpt_stage2_caps_the_caption_at_160_tokens_and_averages_per_example(llama_like):
  """xraygpt_openi_finetune.yaml: max_txt_len 160 (truncated, not dropped), end_sym '###',
  batch_size_train 1 per GPU, so the loss is each caption's own token mean."""
  c = _xraygpt(2)
  enc = _encoder(c, llama_like)
  caption = ' '.join(['There is a small left pleural effusion.'] * 40)
  turns = instructions.report(schema.make_example(id='x', report={'findings': caption}), None,
                              instructions.options_from_config(c.data.task_options))
  arrays = enc.training_arrays(turns, 1, c.data.max_len, 'x')
  trained = arrays['targets'][arrays['loss_mask'] > 0]
  assert len(trained) == 160 and arrays['truncated'] == 1
  assert list(trained) == llama_like.encode(caption + '###', add_special_tokens=False)[:160]
  np.testing.assert_allclose(arrays['loss_mask'].sum(), 1.0, rtol=1e-6)
  assert _xraygpt(1).data.loss_norm == 'token'  # 3 per GPU: the token mean of the 3


def test_xraygpt_eval_decodes_as_minigpt4_test():
  """mini_gpt4.py MiniGPT4.test / conversation.py Chat.answer: do_sample, top_p 0.9,
  temperature 1.0, num_beams 1, max_new_tokens 300; the answer is cut at '###'. Neither
  passes top_k, so generate's default top_k 50 filters before the nucleus."""
  for stage in (1, 2):
    e = _xraygpt(stage).eval
    assert (e.decoding, e.top_p, e.temperature, e.top_k, e.max_new_tokens) == (
        'sample', 0.9, 1.0, 50, 300)
  assert chat.VICUNA.stop_strings == ('###',)


def test_xraygpt_towers_are_the_codes_eva_and_qformer():
  """blip2.py / eva_vit.py / mini_gpt4.py: EVA ViT-g 224/14 (1408 wide, 39 blocks,
  16 heads, MLP 6144, eps 1e-6), ln_vision; Q-Former of bert-base (12 layers, 768, 12
  heads, cross-attention every 2nd layer) with 32 queries; llama_proj 768 -> 4096;
  Vicuna-7B."""
  c = _xraygpt(1)
  v, p, lm = c.model.vision, c.model.projector, c.model.llm
  assert (v.variant, v.image_size, v.patch_size, v.embed_dim, v.num_layers, v.num_heads,
          v.mlp_dim, v.norm_eps, v.select_layer, v.keep_class_token) == (
              'eva', 224, 14, 1408, 39, 16, 6144, 1e-6, -1, True)
  assert (p.kind, p.num_queries, p.hidden_dim, p.num_layers, p.num_heads, p.mlp_dim,
          p.cross_attention_every, p.norm_eps) == ('qformer', 32, 768, 12, 12, 3072, 2, 1e-12)
  assert (lm.embed_dim, lm.num_layers, lm.num_heads, lm.mlp_dim) == (4096, 32, 32, 11008)


def test_radfm_crops_its_2d_images_without_intensity_jitter():
  """RadFM's 2D loaders (src/Dataset/dataset/chestxray.py, vqa.py, binary.py, ...):
  RandomResizedCrop([512, 512], scale (0.8, 1), bicubic) then ToTensor(): pixels in [0, 1],
  no normalisation, no colour or intensity jitter. The recipe's training image slots give
  the cropped pixels over that plain table."""
  from configs import radfm
  from radjax.tasks import vlm
  c = radfm.get_config('')
  assert c.data.augment and tuple(c.data.crop_scale) == (0.8, 1.0)
  assert c.model.vision.image_size == 512 and not c.data.intensity_jitter
  c.model.image_token_id = 32000  # RadFM's <image>; no tokenizer is read here
  slots = vlm.ImageTextToText(c, None).slots['image']
  pixels = (np.random.default_rng(0).uniform(size=(40, 40, 3)) * 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, 'PNG')
  example = schema.make_example(id='x', images=[{'kind': '2d', 'format': 'png',
                                                 'data': buf.getvalue()}])
  for seed in range(4):
    out = slots(example, np.random.default_rng(seed))
    assert out['image_mask'].tolist() == [True] + [False] * (c.data.max_images - 1)
    crop = images.random_resized_crop(Image.fromarray(pixels), 512, (0.8, 1.0),
                                      np.random.default_rng(seed))
    np.testing.assert_array_equal(out['images'][0], np.asarray(crop))
    np.testing.assert_array_equal(out['pixel_table'][0],
                                  np.repeat(np.arange(256, dtype=np.float32)[:, None] / 255,
                                            3, axis=1))


def test_radfm_cuts_a_long_example_at_2048_tokens_rather_than_skipping_it(tmp_path):
  """multi_dataset.py __getitem__: tokenizer(question + ' ' + answer, max_length=2048,
  truncation=True, padding='max_length'); the EOS goes into the first pad slot, so a cut
  example has none; labels mask the question. The example trains on what fits."""
  from configs import radfm
  c = radfm.get_config('')
  assert (c.data.max_len, c.data.too_long) == (2048, 'truncate')
  from radjax.tasks import base
  llama_like = tokens.load_tokenizer(_sentencepiece_dir(tmp_path))
  base.prepare_tokenizer(c, llama_like, images=True)  # <image_begin> / <image_end> too
  enc = base.chat_encoder(c, llama_like, 32)
  question, answer = 'Describe the case.', ' '.join(['The lesion enhances.'] * 700)
  turns = [{'role': 'user', 'text': question}, {'role': 'assistant', 'text': answer}]
  arrays = enc.training_arrays(turns, 0, c.data.max_len, 'long')
  ids = [llama_like.bos_token_id] + llama_like.encode(question + ' ' + answer,
                                                      add_special_tokens=False)
  assert len(ids) > c.data.max_len + 1 and arrays['truncated'] == 1
  assert list(arrays['tokens']) == ids[:c.data.max_len]
  assert list(arrays['targets']) == ids[1:c.data.max_len + 1]
  assert llama_like.eos_token_id not in arrays['targets']
  asked = len([llama_like.bos_token_id] + llama_like.encode(question, add_special_tokens=False))
  assert arrays['loss_mask'][:asked - 1].sum() == 0 and arrays['loss_mask'][asked:].all()


# ---- RadVLM --------------------------------------------------------------------------

# RadVLM's create_llava_dataset.py dataset_info: (pairs, times listed), README table.
RADVLM_PAIRS = {
    'mimic_reports': (230980, 1), 'chexpert_plus': (186463, 1), 'mimic_labels': (237912, 1),
    'chexpert': (191027, 1), 'chest_imagenome': (80000, 1), 'vindr_grounding': (16089, 3),
    'vindr_detection': (15000, 2), 'ms_cxr': (971, 3), 'padchest_gr': (4478, 2),
    'conversations': (86155, 1), 'mscxr_conversations': (862, 4),
    'padchest_conversations': (2225, 4)}


def test_radvlm_mixture_lists_every_dataset_of_create_llava_dataset():
  c = radvlm.get_config('')
  assert {k: v.repeat for k, v in c.data.mixture.items()} == {
      k: r for k, (_, r) in RADVLM_PAIRS.items()}
  pairs = sum(n * r for n, r in RADVLM_PAIRS.values())
  assert pairs == 1115021
  # 128 GPUs x 1 x 2 accumulation, drop_last, 1 epoch; HF warmup_ratio 0.03 rounds up.
  assert c.train.batch_size == 256 and c.train.num_steps == pairs // 256
  assert c.optim.warmup_steps == math.ceil(0.03 * c.train.num_steps) == 131


def test_radvlm_trains_phrase_grounding_on_train_and_val(caplog):
  """seeds_spec: MS-CXR's and PadChest-GR's train and valid are merged for training (971 =
  MS-CXR v1.0.0's train + validate images under MIMIC-CXR's split); the rest read train."""
  from radjax.eval.evaluators import eval_sets
  c = radvlm.get_config('')
  assert {k: tuple(v.splits) for k, v in c.data.mixture.items() if v.splits} == {
      'ms_cxr': ('train', 'val'), 'padchest_gr': ('train', 'val')}
  # Scoring MS-CXR on a split it trains on is named (the recipe reads its test split).
  c.data.mixture.ms_cxr.dir = '/data/ms_cxr'
  with caplog.at_level(logging.WARNING):
    assert eval_sets.resolve(c, 'phrase_grounding', 'val').split == 'test'
  assert not caplog.records
  c.eval.datasets.phrase_grounding.split = ''
  with caplog.at_level(logging.WARNING):
    eval_sets.resolve(c, 'phrase_grounding', 'val')
  assert "split 'val' of component 'ms_cxr', which trains on it" in caplog.text


def test_radvlm_grounds_anatomy_on_80000_chest_imagenome_images():
  """create_llava_dataset.py: Chest_ImaGenome_Dataset(split='train', pick_one_region=True)
  with num_samples=80000, one random region per image; the chest_imagenome build serves
  it through anatomical_grounding, a fixed 80,000 of its train records (max_records)."""
  m = radvlm.get_config('').data.mixture
  assert tuple(m.chest_imagenome.tasks) == ('anatomical_grounding',)
  assert m.chest_imagenome.max_records == RADVLM_PAIRS['chest_imagenome'][0] == 80000
  assert {k for k, v in m.items() if v.max_records} == {'chest_imagenome'}


def test_radvlm_scores_each_task_on_its_own_test_set():
  """radvlm/evaluation/evaluate_instructions.py load_dataset: report_generation reads
  MIMIC_Dataset_MM(split='test', only_frontal=True, filtered_reports_dir=...) (3,314),
  abnormality_classification CheXpert_Dataset_MM(split='test') (518), abnormality_grounding
  VinDr_CXR_Single_Label_Dataset(split='test') (2,108), region_grounding
  Chest_ImaGenome_Dataset(split='test', seed=4) (2,000 in the README's table),
  phrase_grounding MS_CXR(split='test') (189). Each evaluator reads the component of that
  dataset (config.eval.datasets; the split is config.eval.split, test always for VinDr,
  which has no val, and MS-CXR, whose val trains); the held-out loss keeps the default
  eval dataset."""
  from radjax.eval import evaluators
  from radjax.eval.evaluators import eval_sets
  from radjax.eval.evaluators.instruction import SCORERS
  c = radvlm.get_config('')
  d = c.eval.datasets
  assert {k: v.component for k, v in d.items()} == {
      'reports': 'mimic_reports', 'classification': 'chexpert', 'grounding': 'vindr_grounding',
      'anatomical_grounding': 'chest_imagenome', 'phrase_grounding': 'ms_cxr',
      'vqa': 'mimic_labels'}
  assert set(d) < set(c.eval.evaluators) and 'loss' in c.eval.evaluators and 'loss' not in d
  for name in ('classification', 'grounding', 'anatomical_grounding', 'phrase_grounding'):
    assert SCORERS[name][0] in c.data.mixture[d[name].component].tasks, name
  assert tuple(c.data.mixture.mimic_reports.tasks) == ('report',)
  assert (d.anatomical_grounding.max_records, d.anatomical_grounding.seed) == (2000, 4)
  assert {k: v.split for k, v in d.items() if v.split} == {
      'grounding': 'test', 'phrase_grounding': 'test'}
  assert {k for k, v in d.items() if v.max_records} == {'anatomical_grounding'}
  for name, comp in c.data.mixture.items():
    comp.dir = f'/data/{name}'
  evaluators.names(c, None)  # every entry checked
  s = eval_sets.resolve(c, 'anatomical_grounding', 'test')
  assert (s.dir, s.split, s.tasks, s.max_records, s.seed) == (
      '/data/chest_imagenome', 'test', ('anatomical_grounding',), 2000, 4)
  assert eval_sets.resolve(c, 'grounding', 'val').split == 'test'
  # CheXpert: valid.csv while training, the test split after (of the frontal build: below).
  assert [(s.dir, s.split) for s in (eval_sets.resolve(c, 'classification', split)
                                     for split in ('val', 'test'))] == [
      ('/data/chexpert', 'val'), ('/data/chexpert', 'test')]
  assert eval_sets.resolve(c, 'loss', 'val') == eval_sets.default(c, 'val')
  # size=tiny / micro read the embedded default, and task=lm its text.
  for arg in ('size=tiny', 'size=micro', 'task=lm'):
    assert not radvlm.get_config(arg).eval.datasets, arg


def test_radvlm_chexpert_is_the_frontal_build(tmp_path):
  """datasets.py CheXpert_Dataset_MM(only_frontal=True) keeps the Paths ending in
  frontal.jpg: 191,027 of the real train.csv's 223,414 (create_llava_dataset.py's count),
  518 of the test set's 668. The chexpert builder's frontal config keeps the same films of
  train.csv (the torchxrayvision wheel's copy), none rejected (Frontal/Lateral agrees with
  every file name), and the README's RadVLM build is that config, its dir the component's."""
  import gzip
  import os
  import re
  import shutil

  from etils import epath

  from data_prep import build as build_lib
  from tests import data_prep_fixtures as fx
  (tmp_path / 'CheXpert-v1.0-small').mkdir()
  with gzip.open(fx.txv_data('chexpert_train.csv.gz')) as f, open(
      tmp_path / 'CheXpert-v1.0-small/train.csv', 'wb') as out:
    shutil.copyfileobj(f, out)
  builder = build_lib.builder_class('chexpert')(data_dir=str(tmp_path / 'out'),
                                                config='frontal')
  items = builder.split_items(epath.Path(tmp_path))['train']
  assert not [i for i in items if i.get('reject')]
  assert len(items) == RADVLM_PAIRS['chexpert'][0] == 191027
  assert all(i['image'].endswith('frontal.jpg') for i in items)
  assert builder._filtered_by_view == {'train': 223414 - 191027}
  readme = open(os.path.join(os.path.dirname(__file__), '..', 'README.md')).read()
  command = re.search(r'python -m data_prep build chexpert [^\n]*\n[^\n]*\n[^\n]*', readme)
  assert command, 'the README gives no chexpert build'
  assert '--config frontal' in command.group(0), command.group(0)
  assert 'chexpert.dir=OUT/chexpert/frontal/1.0.0' in command.group(0), command.group(0)


def test_radvlm_trains_unaugmented_findings_with_the_scripts_optimizer():
  """finetune_radio_7b.sh: lr 1e-5 (vision 2e-6), cosine, warmup_ratio 0.03, weight_decay
  0, bf16, HF AdamW and max_grad_norm 1.0; LLaVA-NeXT's processor only resizes; the eval
  generates greedily up to 1500 tokens (inference_llavaov)."""
  c = radvlm.get_config('')
  assert not c.data.augment
  assert c.data.task_options.report_section == 'findings'
  assert (c.optim.lr, c.optim.min_lr_ratio, c.optim.weight_decay, c.optim.clip_norm,
          c.optim.schedule, c.optim.b2) == (1e-5, 0.0, 0.0, 1.0, 'cosine', 0.999)
  assert tuple(c.optim.param_groups) == (('vision/.*', 0.2), ('.*', 1.0))
  assert tuple(c.data.image_mean) == tuple(c.data.image_std) == (0.5, 0.5, 0.5)
  assert (c.eval.decoding, c.eval.max_new_tokens) == ('greedy', 1500)
  assert c.runtime.dtype == 'bfloat16' and c.data.loss_norm == 'example'


def test_radvlm_batch_is_one_example_per_gpu_twice_accumulated_on_128_gpus():
  """finetune_radio_7b.sh on 32 nodes x 4 GPUs: per-device batch 1, gradient accumulation
  2, global 256; parameters and moments split over every GPU (ZeRO-3)."""
  from radjax.core import sharding
  from radjax.train import setup
  c = radvlm.get_config('')
  assert (c.train.batch_size, c.train.micro_batch_per_device) == (256, 1)
  assert sharding.mesh_shape(c.mesh, 128) == (1, 128, 1)
  setup.derive_grad_accum(c, 128)
  assert c.optim.grad_accum == 2
  setup.derive_grad_accum(c, 8)
  assert c.optim.grad_accum == 32


def test_radvlm_tower_takes_siglip_so400m_and_reads_its_26th_layer():
  """finetune_radio_7b.sh: --vision_tower google/siglip-so400m-patch14-384 (27 layers),
  --mm_vision_select_layer -2 (siglip_encoder.py deletes the last layer and reads the
  26th's output, no post-norm, no head); mlp2x_gelu to Qwen2-7B's 3584."""
  c = radvlm.get_config('')
  target = factory.part_config(c.model, 'vision')
  hf = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                          num_attention_heads=16, image_size=384, patch_size=14)
  source = vit_convert.vit_config_from_hf(hf, select_layer=target.select_layer,
                                          keep_class_token=target.keep_class_token)
  parts.check_same('vision', source, target, True)  # init_from=SIGLIP_DIR fits
  assert target.layers_run == 26 and (target.image_size // target.patch_size) ** 2 == 729
  assert c.model.projector.kind == 'mlp' and c.model.llm.embed_dim == 3584


def test_radvlm_reads_films_as_anyres_max_9_over_grids_up_to_6x6():
  """finetune_radio_7b.sh: --image_aspect_ratio anyres_max_9, --image_grid_pinpoints
  (1x1),...,(6x6), --mm_patch_merge_type spatial_unpad: a film of 2,544 x 3,056 gets the
  base tile's 729 tokens and its 5 x 6 grid scaled to ~9 tiles' worth, with newlines."""
  from radjax.data import anyres
  c = radvlm.get_config('')
  cfg = factory.vlm_config(c.model, image_token_id=0)
  assert sorted(cfg.anyres_grids) == [(r, k) for r in range(1, 7) for k in range(1, 7)]
  assert cfg.anyres_max_tiles == 9 and cfg.projector.image_newline
  spec = anyres.AnyRes(tile=384, side=27, grids=cfg.anyres_grids, max_tiles=9)
  assert anyres.best_grid(3056, 2544, spec) == (6, 5)
  count = anyres.plan(3056, 2544, spec)[2]
  assert 729 + 8 * 729 < count <= 729 + 9 * 729 + 100 and count < c.data.max_len - 512


def test_radvlm_builds_its_films_at_the_size_anyres_reads():
  """RadVLM reads MIMIC-CXR-JPG's films whole (Chest_ImaGenome_Dataset's imread), so
  AnyRes fits a 2,544 x 3,056 film to 6 x 5 tiles: the README's build of the
  chest_imagenome component keeps that plan (a 512-px short side would read a 2 x 2 grid,
  3,159 tokens instead of 7,241, upsampled)."""
  import os
  import re

  from data_prep import downscale
  from radjax.data import anyres
  readme = open(os.path.join(os.path.dirname(__file__), '..', 'README.md')).read()
  command = re.search(r'python -m data_prep build chest_imagenome [^\n]*\n?[^\n]*', readme)
  assert command, 'the README gives no chest_imagenome build'
  side = re.search(r'--max_short_side (\d+)', command.group(0))
  spec = anyres.AnyRes(tile=384, side=27, grids=tuple(
      (r, k) for r in range(1, 7) for k in range(1, 7)), max_tiles=9)
  for w, h in [(2544, 3056), (3056, 2544)]:
    stored = downscale.target_size((w, h), int(side.group(1))) if side else None
    sw, sh = stored or (w, h)
    assert anyres.plan(sh, sw, spec)[2] == anyres.plan(h, w, spec)[2], command.group(0)


@pytest.fixture(scope='module')
def chatml_tokenizer():
  tok = PreTrainedTokenizerFast(
      tokenizer_object=__import__('tokenizers').Tokenizer.from_str(
          tokenizer_lib.train_tokenizer(vocab_size=600).to_str()),
      bos_token='<s>', eos_token='</s>', pad_token='<pad>', unk_token='<unk>')
  return chat.prepare_tokenizer(tok, chat.CHATML, images=True)


def _preprocess_qwen_targets(tok, turns, image_tokens):
  """LLaVA-NeXT's preprocess_qwen (finetuning/llava/train/train.py), from its behaviour:
  each turn rendered '<|im_start|>{role}\\n{text}<|im_end|>\\n' and tokenised whole; the
  system and user turns ignored, the assistant turns trained whole; then '\\n',
  <|im_start|> and <|im_end|> trained wherever they stand; image positions ignored."""
  start, end = (tok.convert_tokens_to_ids(t) for t in ('<|im_start|>', '<|im_end|>'))
  nl = tok.encode('\n', add_special_tokens=False)[0]
  image = tok.convert_tokens_to_ids('<image>')
  ids, trained = [], []
  turns = [{'role': 'system', 'text': 'You are a helpful assistant.'}] + turns
  for t in turns:
    text = t['text'].replace('<image>', '<image>' * image_tokens)
    new = [start] + tok.encode(f"{t['role']}\n{text}", add_special_tokens=False) + [end] + [nl]
    ids += new
    trained += [t['role'] == 'assistant'] * len(new)
  trained = [(w or i in (nl, start, end)) and i != image for i, w in zip(ids, trained)]
  return ids, trained


def test_radvlm_loss_mask_is_preprocess_qwens(chatml_tokenizer):
  c = radvlm.get_config('')
  enc = _encoder(c, chatml_tokenizer, image_tokens=3)
  turns = [{'role': 'user', 'text': '<image>\nIs there an effusion?'},
           {'role': 'assistant', 'text': 'Yes, on the left.'},
           {'role': 'user', 'text': 'Is the heart enlarged?'},
           {'role': 'assistant', 'text': 'No.'}]
  want_ids, want_trained = _preprocess_qwen_targets(chatml_tokenizer, turns, 3)
  arrays = enc.training_arrays(turns, 1, len(want_ids) + 3, 'r')
  n = len(want_ids) - 1
  assert list(arrays['tokens'][:n]) == want_ids[:-1]
  assert list(arrays['targets'][:n]) == want_ids[1:]
  mask = arrays['loss_mask']
  np.testing.assert_array_equal(mask[:n] > 0, want_trained[1:])
  # One example per device: the example's trained tokens share a weight of 1.
  np.testing.assert_allclose(mask[:n][mask[:n] > 0], 1 / sum(want_trained[1:]), rtol=1e-6)
  assert not mask[n:].any()
  # The generation prompt is the training text up to the first answer.
  head, _ = _preprocess_qwen_targets(chatml_tokenizer, turns[:1], 3)
  opening = [chatml_tokenizer.convert_tokens_to_ids('<|im_start|>')] + chatml_tokenizer.encode(
      'assistant\n', add_special_tokens=False)
  assert enc.prompt(turns[:1], 1) == head + opening == want_ids[:len(head) + len(opening)]


def test_example_loss_norm_gives_the_mean_of_per_example_means(chatml_tokenizer):
  """loss_norm='example': sum(w * nll) / sum(w) over a batch is the mean over examples of
  each example's own token mean (HF's loss with one example per device, averaged)."""
  c = radvlm.get_config('')
  enc = _encoder(c, chatml_tokenizer, image_tokens=2)
  rows = [enc.training_arrays([{'role': 'user', 'text': q}, {'role': 'assistant', 'text': a}],
                              1, 64, 'r')
          for q, a in (('Effusion?', 'Yes.'),
                       ('Describe.', 'The heart is normal in size. No pneumothorax.'))]
  nll = np.random.default_rng(0).uniform(size=(2, 64)).astype(np.float32)
  w = np.stack([r['loss_mask'] for r in rows])
  per_example = [nll[i][w[i] > 0].mean() for i in range(2)]
  np.testing.assert_allclose(float((nll * w).sum() / w.sum()), np.mean(per_example), rtol=1e-5)
  logits = np.log(np.full((2, 64, 3), 1 / 3, np.float32))
  sums = loss_lib.token_losses(logits, np.zeros((2, 64), np.int32), w)
  assert float(sums['weight_sum']) == pytest.approx(2.0)


def test_xraygpt_stage1_takes_blip2s_qformer_but_a_new_llama_proj(demo_data, tmp_path):
  """mini_gpt4.py: MiniGPT4.__init__ loads BLIP-2's .pth (load_from_pretrained, strict=False)
  before it builds llama_proj, so stage 1 trains a new linear layer; BLIP-2's own projection
  (into T5 / OPT: `t5_proj`, an HF BLIP-2's language_projection) is never read. Stage 2
  takes every part, llama_proj included, from stage 1."""
  from safetensors.numpy import save_file

  from radjax.convert import common
  from radjax.convert import qformer as qformer_convert
  from tests.conftest import build_experiment

  def projector(config):
    return common.flatten(jax.device_get(build_experiment(config).state.params['projector']))

  config = xraygpt.get_config('size=micro')
  config.data.dir = demo_data
  new = projector(config)
  cfg = factory.part_config(config.model, 'projector', in_dim=config.model.vision.embed_dim,
                            out_dim=config.model.llm.embed_dim)
  blip2 = {k: v + 1.0 for k, v in new.items()}  # a BLIP-2 whose every tensor differs
  path = str(tmp_path / 'blip2.safetensors')
  save_file({k: np.ascontiguousarray(v) for k, v in
             qformer_convert.hf_from_params(common.unflatten(blip2), cfg).items()}, path)
  config.model.projector.init_from = path
  got = projector(config)
  for name, value in got.items():
    want = new[name] if name.startswith('out/') else blip2[name]
    np.testing.assert_array_equal(value, want, err_msg=name)
  config.model.projector.init_fresh = ''  # stage 2's: llama_proj from the file too
  got = projector(config)
  for name, value in got.items():
    np.testing.assert_array_equal(value, blip2[name], err_msg=name)
  config.model.projector.init_fresh = 'nothing/.*'
  with pytest.raises(ValueError, match=r"config\.model\.projector\.init_fresh='nothing/\.\*' "
                                       'matches none'):
    projector(config)
