"""A model trained by the demo recipe exports to HF Llava and reports the same text in
transformers (processor + generate) as in radjax; importing the export back gives a
workdir that reports the same again."""

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
