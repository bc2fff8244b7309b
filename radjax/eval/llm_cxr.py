"""LLM-CXR at inference: one decoder reads and draws chest X-rays as VQ-GAN codes.

  report -> image   the draw request, then <image_begin>; decoding is held to exactly
                    the codec's grid of codes and <image_end> (GenerationConfig.image_span,
                    one pass, no retry loop); the codec decodes them -> [-1, 1] -> PNG
  image -> report   the codec encodes the image, the codes go in the read request as
                    tokens, the answer is free text (code tokens never generated)

The one path for `--mode=generate`, the evaluators, the faithfulness tool and the web demo.
"""
import dataclasses
import hashlib
import json
import os

import jax
import numpy as np
from PIL import Image

from radjax.core import workdir as workdir_lib
from radjax.data import chat, image_files, instructions
from radjax.data import images as images_lib
from radjax.eval.decoding import generate as generate_lib
from radjax.models import factory, vqgan

CODES_SUMMARY = 'codes.json'  # beside a dataset's codes: the codec and step that made them


def codes_summary(data_dir: str) -> dict | None:
  """What data_prep/encode_codes.py recorded of the codes in `data_dir` (None: no codes)."""
  path = os.path.join(data_dir, CODES_SUMMARY)
  if not data_dir or not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def codec_step(workdir: str, step: int | None) -> int:
  """config.codec.step as a checkpoint step (-1 or None: the codec's latest)."""
  return workdir_lib.latest_step(workdir) if step is None or step < 0 else step


def check_codes_made_by(data_dir: str, codec_workdir: str, step: int,
                        knobs: tuple[str, str] = ('--config.codec.workdir',
                                                  '--config.codec.step')) -> None:
  """The codes in `data_dir` were made by this codec at this step. A codec trained further,
  or another one, gives other codes: the decoder would then read and draw codes it never
  learned, with no error anywhere else. `knobs`: the caller's flags for codec and step."""
  made = codes_summary(data_dir)
  here = os.path.abspath(codec_workdir)
  if made is None or (os.path.abspath(made['codec']), made['step']) == (here, step):
    return
  raise workdir_lib.WorkdirError(
      f"{os.path.join(data_dir, CODES_SUMMARY)}: these codes were made by the codec "
      f"{made['codec']} at step {made['step']}, but this run's codec (config.codec) is {here} "
      f"at step {step}. Use the codec that made them ({knobs[0]}={made['codec']}, "
      f"{knobs[1]}={made['step']}), or encode the dataset with this one into a new "
      'dir (python -m data_prep.encode_codes)')


def codes_per_image(config) -> int:
  """The codes each record's `codes` must hold (0: the config reads no codes):
  config.data.codes_per_image, else the code grid of config.codec's codec; both given,
  they must agree."""
  if not config.data.get('codebook_size', 0):
    return 0
  given = int(config.data.get('codes_per_image', 0) or 0)
  workdir = config.get('codec', {}).get('workdir', '')
  if not workdir:
    if not given:
      raise ValueError(f'config.data.codebook_size={config.data.codebook_size} reads image '
                       'codes, but neither config.data.codes_per_image nor config.codec.workdir '
                       "says how many an image has (the codec's grid: LLM-CXR 16 x 16 = 256)")
    return given
  h, w = factory.part_config(workdir_lib.load_config(workdir).model, 'vqgan').code_grid
  if given and given != h * w:
    raise ValueError(f'config.data.codes_per_image={given} but the codec {workdir!r} '
                     f'(config.codec.workdir) makes {h * w} codes ({h} x {w}) per image')
  return h * w


def draw_knobs(config) -> dict:
  """config.codec's decoding of drawn images (LLM-CXR samples with top-p 0.92), checked
  now with the knobs named (config.eval has knobs of the same names, for reading)."""
  c = config.codec
  knobs = dict(decoding=c.get('decoding', 'sample'), temperature=float(c.get('temperature', 1.0)),
               top_p=float(c.get('top_p', 0.92)))
  try:
    generate_lib.GenerationConfig(**knobs)
  except ValueError as e:
    raise ValueError(f'config.codec.decoding / temperature / top_p = {knobs}: {e}') from e
  return knobs


def check_config_codes(config) -> None:
  """Every dataset of `config` that holds codes was made by config.codec's codec, and its
  drawing knobs are valid."""
  if not config.data.get('codebook_size', 0):
    return
  draw_knobs(config)
  if not config.codec.workdir:
    return
  step = codec_step(config.codec.workdir, config.codec.step)
  for data_dir in [config.data.dir] + [spec.get('dir', '') for spec in
                                       config.data.mixture.values()]:
    check_codes_made_by(data_dir, config.codec.workdir, step)


class Codec:
  """A codec workdir's encoder and decoder: images [S, S, C] in [-1, 1] <-> code lists."""

  def __init__(self, workdir: str, step: int | None = None):
    config = workdir_lib.load_config(workdir)
    if config.model.kind != 'vqgan':
      raise ValueError(f'codec {workdir!r} is a {config.model.kind!r} workdir, not a vqgan '
                       '(config.codec.workdir)')
    self.workdir = workdir
    self.cfg = factory.part_config(config.model, 'vqgan')
    self.resize = config.data.get('resize', 'square')  # as the codec was trained
    self.step = codec_step(workdir, step)
    params = workdir_lib.load_params(workdir, self.step)
    model = vqgan.VQGAN(self.cfg)
    self._codes = jax.jit(lambda x: model.apply({'params': params}, x,
                                                method=vqgan.VQGAN.codes))
    self._decode = jax.jit(lambda c: model.apply({'params': params}, c,
                                                 method=vqgan.VQGAN.decode_codes))

  @property
  def num_codes(self) -> int:
    h, w = self.cfg.code_grid
    return h * w

  def load_image(self, path: str) -> np.ndarray:
    """An image file (PNG, JPEG, single-frame DICOM) -> [S, S, C] in [-1, 1], resized as
    the codec was trained (config.data.resize)."""
    entry = image_files.read_entry(path)
    image_files.check_kind(entry, path, reads_3d=False)
    return self.preprocess(entry, path)

  def preprocess(self, entry: dict, name: str) -> np.ndarray:
    """An Example's image entry -> [S, S, C] in [-1, 1]."""
    return images_lib.preprocess(entry, size=self.cfg.image_size,
                                 num_channels=self.cfg.num_channels, mean=(0.5,) * 3,
                                 std=(0.5,) * 3, record_id=name, resize=self.resize)

  def _batched(self, fn, arrays: np.ndarray, batch_size: int) -> np.ndarray:
    out = []
    for i in range(0, len(arrays), batch_size):
      chunk = arrays[i:i + batch_size]
      n = len(chunk)
      if n < batch_size:  # one static shape: pad the last batch
        chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]),
                                                chunk.dtype)])
      out.append(np.asarray(fn(chunk))[:n])
    return np.concatenate(out)

  def codes(self, images: list[np.ndarray], batch_size: int = 8) -> list[list[int]]:
    """Images -> their codes, row-major (LLM-CXR's order)."""
    if not images:  # a shard of text-only records: np.stack has nothing to stack
      return []
    grid = self._batched(self._codes, np.stack(images).astype(np.float32), batch_size)
    return [g.reshape(-1).tolist() for g in grid]

  def decode(self, codes: list[list[int]], batch_size: int = 8) -> np.ndarray:
    """Code lists (row-major, num_codes each) -> images [N, S, S, C] clipped to [-1, 1]."""
    h, w = self.cfg.code_grid
    arr = np.asarray(codes, np.int32)
    if arr.ndim != 2 or arr.shape[1] != h * w:
      raise ValueError(f'codes of shape {arr.shape}: the codec {self.workdir!r} decodes '
                       f'{h * w} codes ({h} x {w}) per image')
    bad = np.argwhere((arr < 0) | (arr >= self.cfg.codebook_size))
    if bad.size:
      i, j = bad[0]
      raise ValueError(f'code {arr[i, j]} (image {i}, position {j}; {len(bad)} such) is '
                       f'outside the codebook of {self.cfg.codebook_size} of the codec '
                       f'{self.workdir!r}')
    return np.clip(self._batched(self._decode, arr.reshape(-1, h, w), batch_size), -1.0, 1.0)


def to_uint8(image: np.ndarray) -> np.ndarray:
  """[S, S, C] in [-1, 1] -> 8-bit [S, S] (grayscale) or [S, S, 3]."""
  x = np.round((np.clip(image, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
  return x[..., 0] if x.shape[-1] == 1 else x


def save_png(image: np.ndarray, path: str) -> str:
  """Written whole or not at all: a kill mid-write leaves no truncated PNG at `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  Image.fromarray(to_uint8(image)).save(tmp, format='PNG')
  os.replace(tmp, path)
  return path


def draw_request(report: str) -> list[dict]:
  """The report -> CXR request (wording variant 0 of codes_from_report)."""
  return [{'role': 'user', 'text': instructions.CODES_DRAW_QUESTIONS[0].format(report.strip())}]


def read_request(codes, codebook_size: int, num_codes: int = 0, record_id: str = ''
                 ) -> list[dict]:
  """The CXR -> report request (wording variant 0 of report_from_codes); num_codes > 0:
  the codes an image must have."""
  return [{'role': 'user', 'text': instructions.CODES_READ_QUESTIONS[0].format(
      chat.render_codes(codes, codebook_size, record_id, num_codes))}]


@dataclasses.dataclass
class Drawn:
  images: np.ndarray  # [N, S, S, C] in [-1, 1]
  codes: list[list[int]]


class LlmCxr:
  """A trained LLM-CXR experiment (params loaded) with its Answerer and its codec.

  Drawing decodes as config.codec.decoding / temperature / top_p say (LLM-CXR samples
  with top-p 0.92); reading as config.eval says, code tokens suppressed."""

  step: int | None = None  # the decoder's checkpoint step (radjax/run.py load_llm_cxr)

  def __init__(self, exp, answerer, codec: Codec):
    self.exp, self.answerer, self.codec = exp, answerer, codec
    config, tok = exp.config, answerer.encoder.tokenizer
    k = int(config.data.codebook_size)
    if k != codec.cfg.codebook_size:
      raise ValueError(f'config.data.codebook_size={k} but the codec {codec.workdir!r} has '
                       f'{codec.cfg.codebook_size} codes (config.codec.workdir)')
    self.codebook_size, self.num_codes = k, codec.num_codes
    self.first_code, self.end_code = chat.code_ids(tok, k)
    self.begin_id, self.close_id = (tok.convert_tokens_to_ids(t)
                                    for t in (chat.IMAGE_BEGIN, chat.IMAGE_END))
    base = answerer.gen_cfg
    image_ids = tuple(range(self.first_code, self.end_code)) + (self.begin_id, self.close_id)
    self.read_cfg = dataclasses.replace(
        base, suppress_ids=tuple(sorted(set(base.suppress_ids) | set(image_ids))))
    self.draw_cfg = dataclasses.replace(
        base, max_new_tokens=self.num_codes + 1, top_k=0, repetition_penalty=1.0,
        num_beams=1, image_span=(self.first_code, self.end_code, self.num_codes, self.close_id),
        **draw_knobs(config))

  @classmethod
  def from_experiment(cls, exp):
    """An experiment with its params loaded (radjax/run.py load_llm_cxr builds it) and the
    codec of config.codec, the one that made its datasets' codes."""
    config = exp.config
    if not config.codec.workdir:
      raise ValueError('config.codec.workdir is empty: this LLM-CXR workdir names no codec '
                       '(train one with configs/vqgan.py and pass codec=DIR to '
                       'configs/llm_cxr.py, or set --config.codec.workdir)')
    from radjax.eval.evaluators import answers
    return cls(exp, answers.Answerer(exp), Codec(config.codec.workdir, config.codec.step))

  @staticmethod
  def check(config):
    """Before loading anything: a decoder of codes, whose datasets' codes its codec made."""
    if config.model.kind != 'llm' or not config.data.get('codebook_size', 0):
      raise ValueError('an LLM-CXR workdir is a decoder (config.model.kind=llm) with '
                       'config.data.codebook_size > 0')
    codes_per_image(config)  # config.data.codes_per_image agrees with the codec
    check_config_codes(config)

  @property
  def params(self):
    return self.exp.state.params

  def draw(self, reports: list[str], seed: int | None = None) -> Drawn:
    """Reports -> images [N, S, S, C] in [-1, 1] and their codes."""
    items = [({'id': f'report_{i}', 'images': []}, draw_request(r))
             for i, r in enumerate(reports)]
    rows = self.answerer.answer_ids(self.params, items, self.draw_cfg, seed,
                                    answer_prefix=(self.begin_id,))
    n, codes = self.num_codes, []
    for row in rows:
      span = np.asarray(row[:n]) - self.first_code
      # The constraint makes these impossible; a failure here is a decoding bug.
      if span.min() < 0 or span.max() >= self.codebook_size or int(row[n]) != self.close_id:
        raise AssertionError('constrained decoding left the image span')
      codes.append(span.tolist())
    return Drawn(self.codec.decode(codes), codes)

  def read(self, images: list[np.ndarray], seed: int | None = None) -> list[str]:
    """Images [S, S, C] in [-1, 1] -> generated reports."""
    return self.read_codes(self.codec.codes(images), seed)

  def read_codes(self, codes: list[list[int]], seed: int | None = None) -> list[str]:
    items = [({'id': f'image_{i}', 'images': []},
              read_request(c, self.codebook_size, self.num_codes, f'image_{i}'))
             for i, c in enumerate(codes)]
    return self.answerer.answer(self.params, items, self.read_cfg, seed)


def png_name(report: str, seed: int, drawer: str = '') -> str:
  """A stable file name for the image drawn from `report` with `seed` by `drawer` (what
  else decides it: the decoder's step, the codec, the draw knobs), so another checkpoint's
  drawing of the same report goes beside an earlier one, not over it."""
  key = f'{seed}\n{report}' + (f'\n{drawer}' if drawer else '')
  return 'draw_' + hashlib.sha1(key.encode()).hexdigest()[:10] + '.png'


def drawn_by(model: 'LlmCxr') -> str:
  """What besides the report and seed decides a drawing (png_name)."""
  return (f'step {model.step}; codec {os.path.abspath(model.codec.workdir)} step '
          f'{model.codec.step}; {model.draw_cfg}')


def check_request(image_paths: list[str], prompt: str) -> None:
  if not image_paths and not prompt:
    raise ValueError('--mode=generate on an LLM-CXR workdir needs --prompt "<report>" (draw '
                     'a CXR) or --images x.png (write its report)')


def generate(model: LlmCxr, workdir: str, image_paths: list[str], prompt: str = '',
             out_dir: str = '', write=print) -> list[str]:
  """`--mode=generate` on an LLM-CXR workdir: reports for `image_paths`, else a PNG drawn
  from the report `prompt` under out_dir (default <workdir>/generated). Returns the
  reports or the PNG paths."""
  check_request(image_paths, prompt)
  config = model.exp.config
  model.answerer.fit_batch(len(image_paths) or 1)
  if image_paths:
    reports = model.read([model.codec.load_image(p) for p in image_paths])
    for path, text in zip(image_paths, reports):
      write(f'== {path}\n{text}\n')
    return reports
  drawn = model.draw([prompt], seed=config.seed)
  path = save_png(drawn.images[0], os.path.join(out_dir or os.path.join(workdir, 'generated'),
                                                png_name(prompt, config.seed, drawn_by(model))))
  write(path)
  return [path]
