"""A model trained by the demo recipe exports to HF Llava and reports the same text in
transformers (processor + generate) as in radjax; importing the export back gives a
workdir that reports the same again."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from PIL import Image  # noqa: E402

from radjax import run as run_lib  # noqa: E402
from radjax.convert import __main__ as convert_cli  # noqa: E402
from radjax.core import workdir as workdir_lib  # noqa: E402
from radjax.data import instructions  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402


def _test_image(demo_data, path):
  from data_prep import writer
  from radjax.data import schema, source
  records = writer.read_records(source.split_files(demo_data, 'test')[0])
  with open(path, 'wb') as f:
    f.write(schema.decode(records[0])['images'][0]['data'])
  return path


def _onevision_inputs(hf_dir: str, image_path: str, messages) -> dict:
  """A LLaVA-OneVision export's inputs, as its processor makes them: its image processor and
  token count (transformers' own code) and its tokenizer and chat template. (Its
  LlavaOnevisionProcessor itself needs torchvision for its video half.)"""
  import json
  import os

  from transformers.models.llava_onevision import processing_llava_onevision as hf_proc
  from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
      LlavaOnevisionImageProcessorPil,
  )
  with open(os.path.join(hf_dir, 'processor_config.json')) as f:
    fields = json.load(f)
  image_fields = {k: v for k, v in fields['image_processor'].items()
                  if k not in ('image_processor_type', 'processor_class')}
  images = LlavaOnevisionImageProcessorPil(**image_fields)
  processor = hf_proc.LlavaOnevisionProcessor.__new__(hf_proc.LlavaOnevisionProcessor)
  processor.image_processor = images
  for k in ('num_image_tokens', 'vision_aspect_ratio', 'vision_feature_select_strategy'):
    setattr(processor, k, fields[k])
  tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
  prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  pixels = images(Image.open(image_path).convert('RGB'), return_tensors='pt')
  (h, w), tile = pixels['image_sizes'][0].tolist(), images.size['height']
  n = processor._get_number_of_features(h, w, tile, tile)
  inputs = tokenizer(prompt.replace(fields['image_token'], fields['image_token'] * n),
                     return_tensors='pt')
  return {**inputs, 'pixel_values': pixels['pixel_values'],
          'image_sizes': pixels['image_sizes']}


def hf_report(hf_dir: str, image_path: str, instruction: str, max_new_tokens: int):
  """What a transformers user runs on the export (the README's snippet)."""
  model = transformers.AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float32)
  messages = [{'role': 'user', 'content': [{'type': 'image'},
                                           {'type': 'text', 'text': instruction}]}]
  if model.config.model_type == 'llava_onevision':
    inputs = _onevision_inputs(hf_dir, image_path, messages)
    processor = transformers.AutoTokenizer.from_pretrained(hf_dir)
  else:
    processor = transformers.AutoProcessor.from_pretrained(hf_dir)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.open(image_path), text=prompt, return_tensors='pt')
  with torch.no_grad():
    out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
  new = out[0, inputs['input_ids'].shape[1]:]
  return processor.decode(new, skip_special_tokens=True).strip(), new.numpy()


def test_demo_model_reports_the_same_in_transformers(demo_data, tmp_path):
  config = tiny_config(demo_data)
  config.train.num_steps = 30  # enough that reports are sentences, not one repeated token
  config.eval.max_new_tokens = 24
  wd, hf_dir, back = str(tmp_path / 'w'), str(tmp_path / 'hf'), str(tmp_path / 'back')
  run_lib.main(config, wd, 'train')
  image = _test_image(demo_data, str(tmp_path / 'cxr.png'))
  ours = run_lib.main(config, wd, 'generate', [image])[0]

  assert convert_cli.main(['to-hf', '--workdir', wd, '--out', hf_dir]) == 0
  instruction = instructions.REPORT_INSTRUCTIONS[0]
  theirs, ids = hf_report(hf_dir, image, instruction, config.eval.max_new_tokens)
  assert len(set(ids.tolist())) > 2, ids  # a real report, not a degenerate repeat
  assert theirs == ours

  # HF -> radjax again: a workdir that --mode=generate reads with its own config.
  assert convert_cli.main(['from-hf', '--family', 'llava', '--hf_dir', hf_dir,
                           '--out', back]) == 0
  imported = workdir_lib.load_config(back)
  assert imported.model.kind == 'vlm'
  with imported.unlocked():
    imported.eval.max_new_tokens = config.eval.max_new_tokens
  assert run_lib.main(imported, back, 'generate', [image])[0] == ours
  trained = workdir_lib.load_params(wd)
  for a, b in zip(*(sorted(_flat(p).items()) for p in (trained, workdir_lib.load_params(back)))):
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


def _flat(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, f'{prefix}{k}/') if isinstance(v, dict) else {prefix + k: v})
  return out


@pytest.mark.parametrize('stage', [1, 2])
def test_an_xraygpt_model_exports_as_blip2_with_radjaxs_logits_and_reports(demo_data, tmp_path,
                                                                          stage):
  """XrayGPT's VLM (EVA + Q-Former + Vicuna) had no export (`to-hf`: 'qformer has no Llava
  equivalent'). It is a BLIP-2: its logits on a long prompt with the image's query tokens
  mid-sequence are radjax's, and the exported tokenizer's chat template with the BLIP image
  processor give the report radjax writes (stage 1's bare caption, stage 2's Vicuna turns)."""
  from configs import xraygpt
  from radjax.data import chat
  from radjax.eval import evaluators
  from tests import hf_models
  from tests.conftest import build_experiment
  config = xraygpt.get_config('size=micro')
  config.data.dir = demo_data
  if stage == 2:
    config.data.tasks, config.data.chat_format = ('report',), 'vicuna'
  config.eval.max_new_tokens = 12
  exp = build_experiment(config)
  params = jax.device_get(exp.state.params)
  wd, hf_dir = str(tmp_path / 'w'), str(tmp_path / 'hf')
  workdir_lib.save_params(wd, config, params)
  image = _test_image(demo_data, str(tmp_path / 'cxr.png'))
  ours = run_lib.main(config, wd, 'generate', [image])[0]
  assert convert_cli.main(['to-hf', '--workdir', wd, '--out', hf_dir]) == 0
  model = transformers.Blip2ForConditionalGeneration.from_pretrained(hf_dir,
                                                                     dtype=torch.float32)

  # Logits: 512 tokens, the image's queries at 100.
  tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
  image_id = tok.convert_tokens_to_ids(chat.IMAGE_MARK)
  queries = config.model.projector.num_queries
  tokens = hf_models.random_tokens(len(tok), 512)
  tokens[tokens == image_id] = 7
  tokens[0, 100:100 + queries] = image_id
  rng = np.random.default_rng(0)
  size = config.model.vision.image_size
  pixels = rng.normal(size=(1, 1, size, size, 3)).astype(np.float32)
  want = hf_models.vlm_logits(exp.model, exp.state.params, tokens, pixels)
  with torch.no_grad():
    got = model(input_ids=torch.from_numpy(tokens).long(),
                pixel_values=torch.from_numpy(pixels[:, 0].transpose(0, 3, 1, 2))).logits
  np.testing.assert_allclose(got.numpy(), np.asarray(want), atol=1e-4, rtol=1e-4)

  # The report: radjax's request as HF messages, the template, the image processor.
  example = {'id': image, 'images': [{}]}
  turns = evaluators.reports.ReportEvaluator(exp, config.eval.split).prompt_turns(example)
  assert len(turns) == (stage == 2)  # a caption follows its image with no request
  text = turns[0]['text'].replace(chat.IMAGE_MARK, '').strip() if turns else ''
  content = [{'type': 'image'}] + ([{'type': 'text', 'text': text}] if text else [])
  ids = tok.apply_chat_template([{'role': 'user', 'content': content}],
                                add_generation_prompt=True, return_tensors='pt')
  ids = ids['input_ids'] if hasattr(ids, 'keys') else ids
  assert int((ids == image_id).sum()) == queries
  pixel_values = transformers.AutoImageProcessor.from_pretrained(hf_dir)(
      Image.open(image), return_tensors='pt')['pixel_values']
  with torch.no_grad():
    # As README shows it: BLIP-2 hands generate over to its language model, whose own
    # defaults (20 tokens, no stop string) apply unless given the export's config.
    out = model.generate(input_ids=ids, pixel_values=pixel_values, tokenizer=tok,
                         generation_config=model.generation_config)
  theirs = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
  for stop in model.generation_config.stop_strings or ():
    theirs = theirs.split(stop)[0]
  assert theirs.strip() == ours

  # And back: `from-hf --family blip2` gives the same weights, format and report.
  back = str(tmp_path / 'back')
  assert convert_cli.main(['from-hf', '--family', 'blip2', '--hf_dir', hf_dir,
                           '--out', back]) == 0
  imported = workdir_lib.load_config(back)
  assert imported.data.chat_format == config.data.chat_format
  assert imported.model.projector.kind == 'qformer'
  with imported.unlocked():  # the recipe's task decides the request (stage 1: none)
    imported.eval.max_new_tokens = config.eval.max_new_tokens
    imported.data.tasks = config.data.tasks
  for a, b in zip(*(sorted(_flat(p).items()) for p in (params, workdir_lib.load_params(back)))):
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
  assert run_lib.main(imported, back, 'generate', [image])[0] == ours


def test_a_blip2_whose_queries_go_first_is_refused():
  """A BLIP-2 saved without image_token_id prepends its queries to the text: no splice
  site, so `from-hf --family blip2` says so rather than guess."""
  from radjax.convert import blip2
  from radjax.convert.hf_config import UnsupportedConfig
  hf = transformers.Blip2Config()
  hf.image_token_id = None
  with pytest.raises(UnsupportedConfig, match='image_token_id is unset: this BLIP-2 prepends'):
    blip2.import_vlm(hf, {}, scan=True)
