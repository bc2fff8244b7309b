r"""Hugging Face <-> radjax workdir conversion.

  python -m radjax.convert from-hf --family {llama,qwen2,gpt_neox,clip_vision,siglip_vision,
      blip2_vision,blip2_qformer,blip2,llava,llava_onevision,vqgan}
      --hf_dir DIR --out WORKDIR [--unscanned]
  python -m radjax.convert to-hf --workdir WORKDIR [--step N] --out DIR
      [--dtype float32|bfloat16] [--overwrite]
  python -m radjax.convert from-radfm --ckpt pytorch_model.bin --tokenizer LLAMA_DIR
      --out WORKDIR [--unscanned] [--vision_heads 8 --perceiver_heads 8 ...]
  python -m radjax.convert to-radfm --workdir WORKDIR [--step N] --out DIR
      [--dtype float32|bfloat16] [--overwrite]

--family llava_onevision reads a LlavaOnevisionForConditionalGeneration (RadVLM's start,
llava-onevision-qwen2-7b-si) whole: AnyRes tiling (config.model.anyres_grids,
anyres_max_tiles) and the projector's image_newline; `to-hf` of that workdir writes a
LLaVA-OneVision again.

--family blip2 reads a Blip2ForConditionalGeneration with a causal language model whole
(XrayGPT's layout: EVA, Q-Former, decoder); `to-hf` of a Q-Former VLM writes one.

--family vqgan reads a diffusers VQModel directory, or a Taming VQ-GAN checkpoint file as
--hf_dir (`last.ckpt`, read with torch.load(weights_only=True), or a `.safetensors` of its
state dict); `to-hf` of a codec workdir writes a diffusers VQModel directory.

A WORKDIR is an ordinary radjax workdir (config.json + orbax checkpoint), accepted by
`to-hf`, `main.py --config configs/workdir.py:WORKDIR --mode=generate` and
`config.model.<tower>.init_from`.
"""
import argparse
import json
import os
import shutil
import sys

from radjax.convert import export, hf_io
from radjax.convert.common import ConversionError
from radjax.convert.hf_config import UnsupportedConfig
from radjax.core import arg_types

# --family -> the HF model_type(s) it accepts (full CLIP/SigLIP/BLIP-2 models give their
# tower). Weights: safetensors, or PyTorch .bin shards read with weights_only=True.
FAMILIES = {'llama': ('llama',), 'qwen2': ('qwen2',), 'gpt_neox': ('gpt_neox',),
            'clip_vision': ('clip_vision_model', 'clip'),
            'siglip_vision': ('siglip_vision_model', 'siglip'), 'llava': ('llava',),
            'llava_onevision': ('llava_onevision',),
            'blip2_vision': ('blip-2', 'blip_2_vision_model'),
            'blip2_qformer': ('blip-2', 'blip_2_qformer'),
            'blip2': ('blip-2',),  # the whole Blip2ForConditionalGeneration (XrayGPT's VLM)
            'vqgan': ('VQModel',)}  # a diffusers directory (config.json _class_name)


def _check_new_workdir(out: str) -> None:
  """--out of an import: never a workdir already (its config.json and checkpoints would be
  replaced, or half of them); checked before anything is read or written."""
  from radjax.core import workdir
  if os.path.exists(out) and not os.path.isdir(out):
    raise ConversionError(f'--out={out} is a file; choose a new directory')
  if workdir.has_checkpoints(out) or os.path.exists(os.path.join(out, workdir.CONFIG_FILE)):
    raise ConversionError(f'--out={out} is a radjax workdir already (config.json or '
                          'checkpoints); choose a new directory')


def _import_tokenizer(hf_dir: str, out: str, config):
  """The HF directory's tokenizer into <out>: tokenizer.json alone is copied; with
  tokenizer_config.json (EOS and chat specials) or only a sentencepiece tokenizer.model
  (Vicuna), transformers saves it whole into <out>/tokenizer. config.data.tokenizer names it.
  Returns that transformers tokenizer (None when only tokenizer.json was copied, or none)."""
  has = {name: os.path.exists(os.path.join(hf_dir, name))
         for name in ('tokenizer.json', 'tokenizer_config.json', 'tokenizer.model')}
  os.makedirs(out, exist_ok=True)
  if has['tokenizer_config.json'] or has['tokenizer.model']:
    from radjax.data import tokens
    path = os.path.join(out, 'tokenizer')
    tokenizer = tokens.load_tokenizer(hf_dir, '--hf_dir')
    tokenizer.save_pretrained(path)
  elif has['tokenizer.json']:
    path = os.path.join(out, 'tokenizer.json')
    shutil.copy(os.path.join(hf_dir, 'tokenizer.json'), path)
    tokenizer = None  # no tokenizer_config.json: HF knows no BOS of it
  else:
    print(f'note: {hf_dir} has no tokenizer (tokenizer.json, tokenizer_config.json or '
          'tokenizer.model); generation will need --config.data.tokenizer=DIR',
          file=sys.stderr)
    return None
  config.data.tokenizer = os.path.abspath(path)
  return tokenizer


def _adds_bos(tokenizer) -> bool:
  """Whether HF's `tokenizer(text)` starts with its BOS (LLaMA's tokenizers), or it has
  none (Qwen2's); False for a BOS it never adds (GPT-NeoX's <|endoftext|>)."""
  bos = tokenizer.bos_token_id
  return bos is None or tokenizer('x')['input_ids'][:1] == [bos]


def _chat_format_of(tokenizer, template: str | None = None, system_turn: bool = False,
                    image_tokens: int = 1) -> tuple[str, str] | None:
  """(format, system prompt): the radjax chat format, and the system prompt ('' for the
  format's default), whose template renders conversations as `template` (default: the
  tokenizer's own chat template) does (a VLM that `to-hf` exported, with its
  config.data.system_prompt: both come back), or None. A template without the BOS that the
  tokenizer adds when it encodes the text (LLaVA-1.5's, through its LlavaProcessor)
  matches a format that starts with it. `system_turn`: every conversation opens with a
  system turn, so a template that writes none unless given one (LLaVA-OneVision's ChatML)
  matches a format whose default system prompt it leaves out (the prompt is then '').
  `image_tokens`: the template writes each image as that many `<image>` (a BLIP-2's)."""
  from radjax.data import chat
  template = template or getattr(tokenizer, 'chat_template', None)
  if not isinstance(template, str):
    return None
  bos = tokenizer.bos_token
  adds_bos = bos is not None and _adds_bos(tokenizer)
  mark = 'RADJAX_SYSTEM_PROMPT'

  def render(t, convs):
    try:
      return [tokenizer.apply_chat_template(c, chat_template=t, tokenize=False,
                                            add_generation_prompt=True) for c in convs]
    except Exception:  # a template that needs other fields than these conversations give
      return None

  # Every content a list of items, as HF processors pass it (LLaVA-1.5's template renders
  # only those), then later turns as plain strings.
  first = {'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'Q1'}]}
  for text in (lambda t: [{'type': 'text', 'text': t}], lambda t: t):
    conversations = ([first], [first, {'role': 'assistant', 'content': text('A1')},
                               {'role': 'user', 'content': text('Q2')}])
    if system_turn:
      conversations = tuple([{'role': 'system', 'content': text(mark)}, *c]
                            for c in conversations)
    want = render(template, conversations)
    if want is None:
      continue
    fed = [bos + w if adds_bos and not w.startswith(bos) else w for w in want]
    # The system prompt a conversation without a system turn gets: where an explicit system
    # turn's text stands (as the format renders it), in the conversation without one.
    with_system = None if system_turn else render(
        template, ([{'role': 'system', 'content': text(mark)}, first],))
    for name, fmt in chat.FORMATS.items():
      if system_turn and not fmt.default_system:
        continue  # no default to leave out: the search without system turns decided it
      system = ''
      if fmt.system and with_system and with_system[0].count(mark) == 1:
        before, after = with_system[0].split(mark)
        if (want[0].startswith(before) and want[0].endswith(after)
            and len(want[0]) >= len(before) + len(after)):
          system = want[0][len(before):len(want[0]) - len(after)]
      system = '' if system == fmt.default_system else system
      if render(chat.chat_template(fmt, system, image_tokens=image_tokens),
                conversations) in (want, fed):
        return name, system
  return None


def _processor_chat_template(hf_dir: str) -> str | None:
  """The chat template a processor keeps apart from its tokenizer, in the files
  transformers before v5 wrote (llava-hf's chat_template.json, or processor_config.json)."""
  for name in ('chat_template.json', 'processor_config.json'):
    path = os.path.join(hf_dir, name)
    if os.path.exists(path):
      from radjax.core import files
      raw = files.read_json(path, ConversionError)
      template = raw.get('chat_template') if isinstance(raw, dict) else None
      if isinstance(template, str):
        return template
  return None


def _set_chat_format(config, tokenizer, hf_dir: str) -> None:
  """An imported VLM prompts in the chat format (and with the system prompt) its HF chat
  template renders (the tokenizer's, else the processor's); a template that renders a
  format only when given a system turn (LLaVA-OneVision's ChatML) is that format with its
  default system prompt, said in a note; a template that is none of radjax's formats is
  said, with the format the workdir uses instead."""
  template = getattr(tokenizer, 'chat_template', None) or _processor_chat_template(hf_dir)
  # A BLIP-2 has no processor that expands <image>: its template writes every query token.
  queries = (config.model.projector.num_queries if config.model.projector.kind == 'qformer'
             else 1)
  found = _chat_format_of(tokenizer, template, image_tokens=queries)
  if not found and template:
    found = _chat_format_of(tokenizer, template, system_turn=True, image_tokens=queries)
    if found:
      from radjax.data import chat
      print(f"note: {hf_dir}'s chat template is radjax's {found[0]!r} format except that it "
            "writes no system turn unless given one; the workdir prompts with the format's "
            f'default system prompt {chat.get_format(found[0]).default_system!r} (set '
            'config.data.system_prompt for another)', file=sys.stderr)
  if found:
    config.data.chat_format, config.data.system_prompt = found
  elif template:
    print(f"note: {hf_dir}'s chat template is none of radjax's chat formats (radjax/data/"
          f'chat.py); the workdir prompts in config.data.chat_format='
          f'{config.data.chat_format!r}, which the model may not have been trained on',
          file=sys.stderr)


def _import_stop_tokens(config, tokenizer, hf_dir: str, hf_cfg) -> None:
  """The ids generation_config.json (else config.json) ends generations at besides the
  tokenizer's EOS (Llama-3-Instruct's <|eot_id|>) -> config.eval.stop_tokens."""
  path = os.path.join(hf_dir, 'generation_config.json')
  eos = getattr(hf_cfg, 'eos_token_id', None)
  if os.path.exists(path):
    with open(path) as f:
      eos = json.load(f).get('eos_token_id', eos)
  eos = [eos] if isinstance(eos, int) else list(eos or ())
  if not eos or not config.data.tokenizer:
    return
  if tokenizer is None:
    from radjax.data import tokens
    tokenizer = tokens.load_tokenizer(config.data.tokenizer)
  # One id that is not the tokenizer's EOS stops generation too (a Llama-3-Instruct
  # fine-tune: eos_token_id 128009, <|eot_id|>, its tokenizer's EOS <|end_of_text|>).
  extra = [i for i in eos if i != tokenizer.eos_token_id]
  if not extra:
    return
  names = tokenizer.convert_ids_to_tokens(extra)
  if None in names:
    raise ConversionError(f'{hf_dir}: eos_token_id {extra[names.index(None)]} is not in its '
                          'tokenizer')
  config.eval.stop_tokens = tuple(names)


def _import_stop_strings(config, hf_dir: str) -> None:
  """generation_config.json's stop_strings -> config.eval.stop_strings, less the chat
  format's own; a VLM whose template reads as 'none' but stops at '\\n' is 'caption' (the
  two render one template: only caption's turns end at '\\n', XrayGPT's stage 1)."""
  from radjax.data import chat
  path = os.path.join(hf_dir, 'generation_config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    strings = json.load(f).get('stop_strings') or []
  strings = [strings] if isinstance(strings, str) else list(strings)
  if config.model.kind == 'vlm' and config.data.chat_format == 'none' and '\n' in strings:
    config.data.chat_format = 'caption'
  own = chat.get_format(config.data.chat_format).stop_strings
  extra = tuple(s for s in strings if s not in own)
  if extra:
    config.eval.stop_strings = extra


def cmd_from_hf(args) -> None:
  from radjax.core import workdir
  _check_new_workdir(args.out)
  if args.family == 'vqgan':
    config, params = export.import_vqgan(args.hf_dir)
    workdir.save_params(args.out, config, params)
    print(f'wrote {args.out} (vqgan, {export.count(params) / 1e6:.2f}M params with a fresh '
          'discriminator)')
    return
  hf_cfg, state_dict = hf_io.load_hf_dir(args.hf_dir)
  if hf_cfg.model_type not in FAMILIES[args.family]:
    raise ConversionError(f'--family={args.family} but {args.hf_dir}/config.json has '
                          f'model_type={hf_cfg.model_type!r}')
  config, params = export.import_hf(args.family, hf_cfg, state_dict, scan=not args.unscanned)
  if args.family == 'llava_onevision':
    # LLaVA-OneVision trains in ChatML (LLaVA-NeXT's qwen_1_5): the format the workdir keeps
    # where the directory's chat template is none of radjax's.
    config.data.chat_format = 'chatml'
  if config.model.kind in ('vision', 'vlm'):
    export.image_stats_from_dir(config, args.hf_dir)
  if config.model.kind == 'llm':  # a base decoder continues text; a recipe picks its chat
    config.data.chat_format, config.task = 'none', 'lm'
  if config.model.kind in ('llm', 'vlm'):  # a tower alone reads no text
    tokenizer = _import_tokenizer(args.hf_dir, args.out, config)
    if config.model.kind == 'llm' and tokenizer is not None and not _adds_bos(tokenizer):
      config.data.chat_format = 'text'  # prompts as HF encodes them: no BOS first
    if config.model.kind == 'vlm' and tokenizer is not None:
      _set_chat_format(config, tokenizer, args.hf_dir)
    _import_stop_tokens(config, tokenizer, args.hf_dir, hf_cfg)
    _import_stop_strings(config, args.hf_dir)
  workdir.save_params(args.out, config, params)
  print(f'wrote {args.out} ({config.model.kind}, {export.count(params) / 1e6:.2f}M params)')


RADFM_SHAPE_FLAGS = ('depth_patch_size', 'vision_heads', 'perceiver_heads', 'llm_heads')


def _radfm_shape_flags(args) -> dict:
  """The head counts and depth patch: a flag, else the radfm_shape.json that `to-radfm`
  wrote beside --ckpt (an export of 2-head towers read as RadFM's 8 heads gave other
  logits without a word), else RadFM's values. A flag that contradicts the file is refused."""
  from radjax.convert import radfm
  path = os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), radfm.SHAPE_FILE)
  saved = {}
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
  defaults = radfm.RadFMShape()
  out = {}
  for key in RADFM_SHAPE_FLAGS:
    given = getattr(args, key)
    if given is not None and key in saved and saved[key] != given:
      raise ConversionError(f'--{key} {given} contradicts {path}: {key} {saved[key]}')
    out[key] = given if given is not None else saved.get(key, getattr(defaults, key))
  return out


def cmd_from_radfm(args) -> None:
  """RadFM's single state dict (+ LLaMA's tokenizer dir, and its config.json when there
  is one, as RadFM's Language_files has) -> a VLM workdir."""
  from radjax.convert import radfm
  from radjax.core import workdir
  from radjax.data import tokens
  _check_new_workdir(args.out)
  shape = radfm.RadFMShape(**_radfm_shape_flags(args))
  hf_llm = None
  if os.path.exists(os.path.join(args.tokenizer, 'config.json')):
    hf_llm = hf_io.load_hf_config(args.tokenizer)
    heads = getattr(hf_llm, 'num_attention_heads', None)
    if args.llm_heads and args.llm_heads != heads:  # the config.json decides
      raise ConversionError(f'--llm_heads={args.llm_heads}, but '
                            f'{os.path.join(args.tokenizer, "config.json")} says '
                            f'num_attention_heads={heads}; leave --llm_heads out')
  tokenizer = tokens.load_tokenizer(args.tokenizer, '--tokenizer')
  state_dict = hf_io.load_state_dict_file(args.ckpt)
  config, params = radfm.import_checkpoint(state_dict, tokenizer, shape,
                                           scan=not args.unscanned, hf_llm_config=hf_llm,
                                           source=args.ckpt)
  del state_dict
  tok_dir = os.path.join(args.out, 'tokenizer')
  tokenizer.save_pretrained(tok_dir)
  config.data.tokenizer = os.path.abspath(tok_dir)
  workdir.save_params(args.out, config, params)
  print(f'wrote {args.out} (RadFM vlm, {export.count(params) / 1e6:.2f}M params, vocab '
        f'{config.model.llm.vocab_size})')


def _check_out(out: str, workdir: str) -> None:
  """--out may not be the workdir, inside it, or another radjax workdir (its config.json
  would be overwritten)."""
  from radjax.core import workdir as workdir_lib
  if os.path.exists(out) and not os.path.isdir(out):
    raise ConversionError(f'--out={out} is a file; choose a directory for the HF model')
  real_out, real_wd = os.path.realpath(out), os.path.realpath(workdir)
  if os.path.commonpath([real_out, real_wd]) == real_wd:
    raise ConversionError(f'--out={real_out} is the workdir or inside it ({real_wd}); choose '
                          'a directory outside it')
  if workdir_lib.has_checkpoints(out):
    raise ConversionError(f'--out={out} is a radjax workdir (it has checkpoints); choose '
                          'another directory for the HF model')


def _replace_dir(out: str, write) -> None:
  """`write(folder)` into a sibling of `out`, then that folder becomes `out`: a failed or
  killed export leaves `out` as it was, and a replaced one keeps no file of the old model
  (a stale shard, a processor config) for from_pretrained to pick up."""
  out = os.path.abspath(out)
  partial = f'{out}.partial-{os.getpid()}'
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  try:
    write(partial)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
  old = f'{out}.replaced-{os.getpid()}'
  if os.path.exists(out):
    os.rename(out, old)
  os.rename(partial, out)
  shutil.rmtree(old, ignore_errors=True)


def _trained(args):
  """(config, step, params) of an export's --workdir, once its --out is known to be free:
  not a workdir, and empty unless --overwrite."""
  from radjax.core import workdir
  _check_out(args.out, args.workdir)
  if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
    names = sorted(os.listdir(args.out))
    raise FileExistsError(f'--out={args.out} is not empty ({", ".join(names[:4])}'
                          f'{", ..." if len(names) > 4 else ""}): the export would mix its '
                          'files with what is there. Choose a new directory, or add '
                          '--overwrite to replace it whole')
  config = workdir.load_config(args.workdir)
  step = (workdir.latest_step(args.workdir) if args.step is None
          else workdir.check_step(args.workdir, args.step))
  return config, step, workdir.load_params(args.workdir, step)


def cmd_to_radfm(args) -> None:
  """A RadFM-layout VLM workdir -> RadFM's tensors (model.safetensors) for its own code."""
  from radjax.convert import radfm
  config, step, params = _trained(args)
  _replace_dir(args.out, lambda out: radfm.export_dir(config, params, out, args.dtype))
  print(f'wrote {args.out}/{radfm.WEIGHTS} from {args.workdir} step {step} (RadFM '
        f'MultiLLaMAForCausalLM tensors, {args.dtype})')


def cmd_to_hf(args) -> None:
  config, step, params = _trained(args)
  _replace_dir(args.out, lambda out: export.export_hf(config, params, out, args.dtype))
  print(f'wrote {args.out} from {args.workdir} step {step} ({config.model.kind}, '
        f'{args.dtype})')


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m radjax.convert',
                                   description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('from-hf', help='HF model directory -> radjax workdir')
  p.add_argument('--family', required=True, choices=sorted(FAMILIES))
  p.add_argument('--hf_dir', required=True)
  p.add_argument('--out', required=True, help='the new workdir')
  p.add_argument('--unscanned', action='store_true',
                 help='store layers as layers_{i} (config.runtime.scan_layers=False)')
  p.set_defaults(func=cmd_from_hf)
  for name, func, what in (('to-hf', cmd_to_hf, 'radjax workdir -> HF model directory'),
                           ('to-radfm', cmd_to_radfm,
                            "RadFM-layout VLM workdir -> RadFM's tensors")):
    p = sub.add_parser(name, help=what)
    p.add_argument('--workdir', required=True)
    p.add_argument('--step', type=int, default=None, help='default: the latest checkpoint')
    p.add_argument('--out', required=True)
    p.add_argument('--dtype', default='float32', choices=sorted(hf_io.DTYPES))
    p.add_argument('--overwrite', action='store_true',
                   help='replace a non-empty --out whole (else refused)')
    p.set_defaults(func=func)
  p = sub.add_parser('from-radfm', help="RadFM's pytorch_model.bin -> radjax VLM workdir")
  p.add_argument('--ckpt', required=True, help='its pytorch_model.bin (or .safetensors)')
  p.add_argument('--tokenizer', required=True,
                 help="LLaMA's tokenizer: a directory (RadFM's Language_files) or tokenizer.json")
  p.add_argument('--out', required=True, help='the new workdir')
  p.add_argument('--unscanned', action='store_true',
                 help='store layers as layers_{i} (config.runtime.scan_layers=False)')
  # What the tensors' shapes do not say: default the radfm_shape.json beside --ckpt (a
  # `to-radfm` export), else RadFM's values (4, 8, 8, 0).
  p.add_argument('--depth_patch_size', type=arg_types.int_at_least(1), default=None)
  p.add_argument('--vision_heads', type=arg_types.int_at_least(1), default=None)
  p.add_argument('--perceiver_heads', type=arg_types.int_at_least(1), default=None)
  p.add_argument('--llm_heads', type=arg_types.int_at_least(0), default=None,
                 help="0: the tokenizer dir's config.json, else hidden size / 128")
  p.set_defaults(func=cmd_from_radfm)
  args = parser.parse_args(argv)
  from radjax.core.workdir import WorkdirError
  try:
    args.func(args)
  except (ConversionError, UnsupportedConfig, WorkdirError, FileNotFoundError,
          FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except OSError as e:  # unreadable input, unwritable output
    print(f'error: {e.filename or ""}: {e.strerror or e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
