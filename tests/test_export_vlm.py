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


def hf_report(hf_dir: str, image_path: str, instruction: str, max_new_tokens: int):
  """What a transformers user runs on the export (the README's snippet)."""
  processor = transformers.AutoProcessor.from_pretrained(hf_dir)
  model = transformers.LlavaForConditionalGeneration.from_pretrained(hf_dir,
                                                                    dtype=torch.float32)
  messages = [{'role': 'user', 'content': [{'type': 'image'},
                                           {'type': 'text', 'text': instruction}]}]
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
