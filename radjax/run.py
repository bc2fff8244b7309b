"""What `main.py --mode=...` does: train, evaluate a checkpoint, or generate."""
import os

import jax
import ml_collections
import numpy as np
from absl import logging

from radjax import tasks
from radjax.core import config_checks, distributed, recipe
from radjax.core import workdir as workdir_lib
from radjax.data import chat, image_files, schema, tokens, volumes
from radjax.data import images as images_lib
from radjax.eval import evaluators, llm_cxr
from radjax.models import factory
from radjax.train import loop, pretrained, setup, writers


def make_task(config, name: str | None = None) -> tasks.Task:
  """The configured task (or `name`) with its tokenizer (config.data.tokenizer or the
  dataset's)."""
  cls = tasks.TASKS.get(name or config.task)
  needs = cls is None or cls.needs_tokenizer
  tokenizer = tokens.load_tokenizer(tokens.tokenizer_path(config)) if needs else None
  if name is not None:
    return tasks.TASKS[name](config, tokenizer)
  return tasks.make(config, tokenizer)


def load_trained(config, workdir: str, step: int | None = None, task=None):
  """The experiment with the params of the workdir's checkpoint (default: latest),
  restored straight into their shards; optimizer moments are never read."""
  # A config of another model: its knobs named.
  workdir_lib.check_resumable(config, workdir, train=False)
  exp = setup.build(config, task or make_task(config), pretrained=False, train=False)
  step = workdir_lib.latest_step(workdir) if step is None else step
  exp.state = exp.state.replace(params=workdir_lib.load_params(workdir, step,
                                                               target=exp.state.params))
  return exp, step


def evaluate(config, workdir: str) -> dict:
  exp, step = load_trained(config, workdir)
  split = config.eval.split
  evs = evaluators.make(exp, split)
  writer, _ = writers.make_writers(workdir, resume_step=None)
  # Another split than training's 'val' gets its own folder and scalar names, so its
  # scores neither replace nor pass for the val ones.
  out_dir = os.path.join(workdir, 'eval', str(step) if split == 'val' else f'{step}-{split}')
  metrics = evaluators.run_all(evs, exp.state.params, step, writer, out_dir=out_dir,
                               split=split)
  writer.write_scalars(step, metrics)
  writer.flush()
  logging.info('eval at step %d: %s', step, metrics)
  print(f'wrote {out_dir}/metrics.json: ' + ', '.join(f'{k}={v:.4g}' for k, v in metrics.items()))
  return metrics


def _answerer(config, workdir: str):
  """The trained model and its Answerer: a bare decoder (whatever task trained it) or a VLM."""
  task = make_task(config, 'lm') if config.model.kind == 'llm' else None
  exp, _ = load_trained(config, workdir, task=task)
  answerer = evaluators.answers.Answerer(exp)
  answerer.limit_context = True  # prompts a user typed
  return exp, answerer


def _check_decodes(entry: dict, path: str) -> None:
  """Every file is decoded before any is answered: one that fails in a later batch would
  lose the answers of the batches before it (they are printed at the end)."""
  if entry['kind'] == '2d':
    images_lib.decode_image(entry, 1, path)
  else:
    volumes.decode_volume(entry, path)


def _image_examples(image_paths: list[str], prompt: str, reads_3d: bool) -> list[dict]:
  """One example per image, or one with every image when the prompt places several. PNG,
  JPEG and single-frame DICOM are 2D; a `.npy` is a volume as the datasets store it
  ([rows, cols, slices] in [0, 1]; data_prep's volume readers write one from NIfTI or
  DICOM), for a 'vit3d' tower (radjax/data/image_files.py, as the web demo reads)."""
  images = []
  for path in image_paths:
    entry = image_files.read_entry(path)
    image_files.check_kind(entry, path, reads_3d)
    _check_decodes(entry, path)
    images.append(entry)
  if prompt.count(chat.IMAGE_MARK) > 1:
    return [{'id': ','.join(image_paths), 'images': images}]
  return [{'id': path, 'images': [im]} for path, im in zip(image_paths, images)]


def generate(config, workdir: str, image_paths: list[str], prompt: str = '') -> list[str]:
  """Answers `prompt` about each image (a VLM; default: the report request), or continues
  the conversation `prompt` (a bare decoder), in the workdir's chat format."""
  exp, answerer = _answerer(config, workdir)
  if exp.task.image_slots is None:
    if not prompt.strip():
      raise ValueError('--mode=generate on a decoder workdir needs --prompt (with words)')
    if image_paths:
      raise ValueError('--images given, but this workdir is a decoder without a vision tower')
    items = [({'id': '<prompt>', 'images': []}, [{'role': 'user', 'text': prompt}])]
    names = [prompt]
  else:
    if not image_paths:
      raise ValueError('--mode=generate needs --images=a.png[,b.png]')
    examples = _image_examples(image_paths, prompt, 'volume' in exp.task.slots)
    reporter = evaluators.reports.ReportEvaluator(exp, config.eval.split)
    items = [(ex, [{'role': 'user', 'text': prompt}] if prompt else reporter.prompt_turns(ex))
             for ex in examples]
    names = [ex['id'] for ex in examples]
  answerer.fit_batch(len(items))
  texts = answerer.answer(exp.state.params, items)
  for name, text in zip(names, texts):
    print(f'== {name}\n{text}\n')
  return texts


def classify(config, workdir: str, image_paths: list[str]) -> list[str]:
  """`--mode=generate` on a finding classifier (task 'classify'): each image's probability
  of each of its labels, the images preprocessed as its evaluation reads them."""
  if not image_paths:
    raise ValueError('--mode=generate on a classifier workdir needs --images=a.png[,b.png]')
  examples = _image_examples(image_paths, '', reads_3d=False)
  exp, _ = load_trained(config, workdir)
  vision, d = exp.task.model_cfg.vision, config.data
  x = np.stack([images_lib.preprocess(ex['images'][0], size=vision.image_size,
                                      num_channels=vision.num_channels, mean=d.image_mean,
                                      std=d.image_std, record_id=ex['id'])
                for ex in examples])
  predict = jax.jit(lambda params, x: exp.task.predict(exp.model, params, x)[0])
  with exp.context():
    probs = np.asarray(predict(exp.state.params, x))
  texts = ['\n'.join(f'{name}: {p:.3f}' for name, p in zip(d.label_names, row))
           for row in probs]
  for ex, text in zip(examples, texts):
    print(f"== {ex['id']}\n{text}\n")
  return texts


def chat_loop(config, workdir: str, image_paths: list[str], read=input, write=print) -> list:
  """`--mode=chat`: a multi-turn conversation on the command line about `image_paths`
  (shown with the first question). '/reset' starts over; an empty line or EOF ends it. A
  question refused (its answer would pass the context) is said, and left out."""
  exp, answerer = _answerer(config, workdir)
  if image_paths and exp.task.image_slots is None:
    if config.data.get('codebook_size', 0):  # LLM-CXR reads an image as its codes
      raise ValueError('--mode=chat takes no --images on a decoder that reads images as '
                       'codes; --mode=generate --images gives their reports')
    raise ValueError('--images given, but this workdir is a decoder without a vision tower')
  example = (_image_examples(image_paths, chat.IMAGE_MARK * len(image_paths),
                             'volume' in exp.task.slots)[0]
             if image_paths else {'id': '<chat>', 'images': []})
  answerer.fit_batch(1)
  turns = []
  write(f'chatting with {workdir} ({config.data.chat_format} format); '
        "'/reset' starts over, an empty line ends")
  while True:
    try:
      question = read('you> ').strip()
    except EOFError:
      break
    if not question:
      break
    if question == '/reset':
      turns = []
      continue
    turns.append({'role': 'user', 'text': question})
    try:
      answer = answerer.answer(exp.state.params, [(example, turns)])[0]
    except schema.SchemaError as e:  # past the context, a stray <image>: the chat goes on
      turns.pop()
      write(f"error: {e}; ask another question or '/reset'")
      continue
    turns.append({'role': 'assistant', 'text': answer})
    write(f'model> {answer}')
  return turns


def load_llm_cxr(config, workdir: str, step: int | None = None):
  """An LLM-CXR workdir's decoder (latest or `step` params) with its codec
  (radjax/eval/llm_cxr.py): the one loader of generate, the web demo and the tools."""
  llm_cxr.LlmCxr.check(config)
  exp, step = load_trained(config, workdir, step, task=make_task(config, 'lm'))
  model = llm_cxr.LlmCxr.from_experiment(exp)
  model.step = step
  return model


def pre_stage(config, workdir: str):
  """(config, workdir) of config.train.pre_stage, or None: the recipe with this config's
  model.<pre_stage_part> architecture, this config's data.dir and builder_kwargs where
  both name the same data.builder, and config.train.pre_stage_set applied, trained in
  <workdir>/pre_stage."""
  spec = config.train.get('pre_stage', '')
  if not spec:
    return None
  part, stage_dir = config.train.pre_stage_part, os.path.join(workdir, 'pre_stage')
  stage = recipe.load(spec, 'config.train.pre_stage')
  # Parts each model kind composes: every config has every model.<part> section, so a
  # classifier stage for 'llm' trained whole and only then failed to start the llm from it.
  if part not in factory.parts_of(stage.model) or part not in factory.parts_of(config.model):
    raise ValueError(f'config.train.pre_stage_part={part!r}: not a model part of both this '
                     f'config ({config.model.kind}) and the pre-stage {spec!r} '
                     f'({stage.model.kind})')
  stage.model[part] = ml_collections.ConfigDict(config.model[part].to_dict())
  if stage.data.builder and stage.data.builder == config.data.builder:
    # The same dataset: where this run reads it (--config.data.dir=...), not the stage
    # recipe's default place.
    stage.data.dir = config.data.dir
    stage.data.builder_kwargs = ml_collections.ConfigDict(config.data.builder_kwargs.to_dict())
  if stage.model[part].init_from == stage_dir:  # this run's own, set after the stage
    stage.model[part].init_from = ''
  for pair in config.train.get('pre_stage_set', ()):
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
      raise ValueError(f'config.train.pre_stage_set: {pair!r} is not a (key, value) pair; '
                       "write (('train.num_steps', 600), ...)")
    key, value = pair
    recipe.set_value(stage, key, value, f'config.train.pre_stage_set {key!r}')
  return stage, stage_dir


def check_before_pre_stage(config, stage) -> None:
  """The main stage's checks that need no model: its config, batch sizes over the mesh,
  data processing and eval split fail now, not after the pre-stage has trained; and the
  stage's own batch sizes, named as the stage's."""
  try:
    setup.preflight(stage)
  except ValueError as e:
    raise ValueError(f'{e} (in the pre-stage {config.train.pre_stage!r}: set its knobs with '
                     "config.train.pre_stage_set, e.g. (('train.batch_size', N),))") from e
  task = make_task(config)
  setup.preflight(config)
  pretrained.check_paths(config)
  task.processor()
  chosen = evaluators.names(config, task)
  if chosen:
    evaluators.check_split(config, config.eval.split, chosen)


def train_pre_stage(config, workdir: str) -> bool:
  """Trains (or resumes) config.train.pre_stage to its num_steps, then points this config's
  model.<pre_stage_part>.init_from at it. A finished stage goes through loop.train too (it
  returns at once), so a damaged newest checkpoint is set aside and retrained and a lost
  final eval redone. False when the stage stopped early (preempted): no main stage then."""
  got = pre_stage(config, workdir)
  if got is None:
    return True
  stage, stage_dir = got
  logging.info('pre-stage %s into %s', config.train.pre_stage, stage_dir)
  try:
    loop.train(stage, stage_dir, make_task(stage))
  except workdir_lib.WorkdirError as e:  # the fix is the run's config, not the stage's
    message = str(e).replace(f'configs/workdir.py:{stage_dir})',
                             f'configs/workdir.py:{workdir})')
    raise workdir_lib.WorkdirError(
        f'{message.rstrip(".")} (the stage is config.train.pre_stage with pre_stage_set).'
    ) from e
  reached = workdir_lib.latest_step(stage_dir)
  if reached < stage.train.num_steps:
    logging.warning('pre-stage stopped at step %d of %d (preempted); rerun the same command '
                    'to go on', reached, stage.train.num_steps)
    return False
  config.model[config.train.pre_stage_part].init_from = stage_dir
  return True


def maybe_initialize_distributed():
  """Joins a multi-process run the environment describes (radjax/core/distributed.py);
  main.py has already done so from its flags."""
  distributed.initialize()


def check_config(config, train: bool = True) -> None:
  """The checks that need neither data nor a tokenizer: the knobs' values and the model's
  parts (each part's sizes; a codec's discriminator, which only training runs); before a
  dataset is built or read (a missing one takes hours to build before a one-line size
  error)."""
  config_checks.check(config)
  parts = factory.parts_of(config.model)
  if train and 'vqgan' in parts:
    parts['vqgan'].check_discriminator()


def check_flags(mode: str, images=(), prompt: str = '', out_dir: str = '') -> None:
  """--images, --prompt and --out_dir are generate's (--images chat's too): a mode that
  would not read one refuses it, not runs as if it were not given."""
  if mode == 'generate':
    return
  given = [flag for flag, value in (('--images', images), ('--prompt', prompt),
                                    ('--out_dir', out_dir)) if value]
  if mode == 'chat':
    given = [flag for flag in given if flag != '--images']
  if given:
    reads = ('its questions from the terminal' if mode == 'chat' else
             'config.data.dir' if mode in ('train', 'eval') else 'the config alone')
    raise ValueError(f'{given[0]}: --mode={mode} reads {reads}, not {given[0]}; '
                     '--mode=generate takes --images / --prompt / --out_dir')


def main(config, workdir: str, mode: str, images: list[str] | None = None, prompt: str = '',
         out_dir: str = ''):
  check_flags(mode, images, prompt, out_dir)
  maybe_initialize_distributed()
  if mode in ('train', 'eval'):
    check_config(config, train=mode == 'train')
  logging.info('process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  if mode in ('train', 'eval'):
    llm_cxr.check_config_codes(config)  # codes the decoder learns or is scored on
  if mode == 'train':
    pretrained.check_not_this_workdir(config, workdir)
    stage = pre_stage(config, workdir)
    if stage:
      check_before_pre_stage(config, stage[0])
    if not train_pre_stage(config, workdir):
      return {}
    return loop.train(config, workdir, make_task(config))
  if mode == 'eval':
    return evaluate(config, workdir)
  if prompt and not prompt.strip():  # else a blank user turn, answered as if asked
    raise ValueError(f'--prompt={prompt!r} has no words; leave it out for the default '
                     'request')
  if mode in ('generate', 'chat') and config.model.kind == 'vqgan':
    raise ValueError(f'--mode={mode}: a codec workdir answers no prompts; encode images with '
                     '`python -m data_prep.encode_codes --codec WORKDIR`')
  if mode == 'generate' and config.model.kind == 'llm' and config.data.get('codebook_size', 0):
    llm_cxr.check_request(images or [], prompt)  # a decoder reading and drawing VQ-GAN codes
    return llm_cxr.generate(load_llm_cxr(config, workdir), workdir, images or [], prompt,
                            out_dir)
  if out_dir:
    raise ValueError(f'--out_dir={out_dir}: only an LLM-CXR workdir writes files in '
                     f'--mode=generate (its drawings); --mode={mode} on this workdir prints')
  if config.task == 'classify':
    if mode == 'chat' or prompt:
      raise ValueError(f"--mode={mode}{' --prompt' if prompt else ''}: a finding classifier "
                       'answers no prompts; --mode=generate --images a.png prints its '
                       'probability of each finding')
    return classify(config, workdir, images or [])
  if mode == 'generate':
    return generate(config, workdir, images or [], prompt)
  if mode == 'chat':
    return chat_loop(config, workdir, images or [])
  raise ValueError(f'--mode={mode!r}')
