"""The model side of the web demo, free of Gradio: a workdir's VLM (or LLM-CXR decoder,
`CodesReporter`) answering about one uploaded image through the one generation path
(radjax/eval/evaluators/answers.py), so a report with the workdir's own decoding equals
`--mode=generate`'s on the same file."""
import dataclasses

from radjax import run
from radjax.core import workdir as workdir_lib
from radjax.data import chat, schema
from radjax.eval import evaluators
from radjax.eval.decoding import generate as generate_lib
from radjax.eval.metrics import grounding, labeler
from radjax.serve import uploads

LABEL_WORDS = {1: 'positive', 0: 'negative', -1: 'uncertain', None: 'not mentioned'}


@dataclasses.dataclass(frozen=True)
class Decoding:
  """The page's decoding knobs; temperature and top_p apply to 'sample', beams to 'beam',
  the repetition penalty to every decoding."""
  decoding: str = 'greedy'
  temperature: float = 1.0
  top_p: float = 1.0
  num_beams: int = 1
  repetition_penalty: float = 1.0
  seed: int = 0

  @classmethod
  def of(cls, g: generate_lib.GenerationConfig, seed: int) -> 'Decoding':
    return cls(g.decoding, g.temperature, g.top_p, g.num_beams, g.repetition_penalty, seed)

  def applied_to(self, g: generate_lib.GenerationConfig) -> generate_lib.GenerationConfig:
    """g with these knobs; a value out of range is the page's error, named."""
    try:
      return dataclasses.replace(g, decoding=self.decoding, temperature=float(self.temperature),
                                 top_p=float(self.top_p), num_beams=int(self.num_beams),
                                 repetition_penalty=float(self.repetition_penalty))
    except ValueError as e:
      raise uploads.UploadError(f'decoding knobs: {e}') from e


def _for_uploads(answerer):
  """The answerer set for the page: one upload a request decodes as the smallest batch the
  mesh splits (not config.eval.batch_size copies of it: 8x the work and memory at the
  default), and a typed prompt past the model's context is refused."""
  answerer.fit_batch(1)
  answerer.limit_context = True
  return answerer


class Reporter:
  """A trained or imported VLM workdir, loaded once."""

  def __init__(self, workdir: str, step: int | None = None):
    self.workdir = workdir
    self.config = workdir_lib.load_config(workdir)
    if self.config.model.kind != 'vlm':
      raise workdir_lib.WorkdirError(
          f'{workdir}/config.json: model.kind={self.config.model.kind!r}; the web demo needs '
          'a VLM workdir or an LLM-CXR one (a bare decoder chats with main.py --mode=chat)')
    self.exp, self.step = run.load_trained(self.config, workdir, step)
    self.reports = evaluators.reports.ReportEvaluator(self.exp, self.config.eval.split)
    self.answerer = _for_uploads(self.reports.answerer)
    self.reads_3d = 'volume' in self.exp.task.slots

  def default_decoding(self) -> Decoding:
    """The workdir's config.eval decoding, which `--mode=generate` uses."""
    return Decoding.of(self.answerer.gen_cfg, int(self.config.seed))

  def generation_config(self, d: Decoding) -> generate_lib.GenerationConfig:
    return d.applied_to(self.answerer.gen_cfg)

  def example(self, path: str | None):
    """(example, RGB preview) of one uploaded file, checked against the vision tower;
    an undecodable image is refused here, before generation."""
    entry, name = uploads.read_upload(path)
    uploads.check_kind(entry, name, self.reads_3d)
    return {'id': name, 'images': [entry]}, uploads.preview(entry, name)

  def report_turns(self, example: dict) -> list[dict]:
    """The report request the evaluators and `--mode=generate` send."""
    return self.reports.prompt_turns(example)

  def answer(self, example: dict, turns: list[dict], d: Decoding) -> str:
    """The model's next turn after `turns` about the example's image."""
    gen_cfg = self.generation_config(d)
    try:
      return self.answerer.answer(self.exp.state.params, [(example, turns)], gen_cfg,
                                  int(d.seed))[0]
    except schema.SchemaError as e:  # the image's decode, e.g. a side under 8 pixels
      raise uploads.UploadError(str(e)) from e


class CodesReporter(Reporter):
  """An LLM-CXR workdir (a decoder reading and drawing VQ-GAN codes; config.codec.workdir
  names its codec): an upload is read through its codes, and reports are drawn."""

  def __init__(self, workdir: str, step: int | None = None):
    self.workdir = workdir
    self.config = workdir_lib.load_config(workdir)
    self.model = run.load_llm_cxr(self.config, workdir, step=step)
    self.exp, self.answerer = self.model.exp, _for_uploads(self.model.answerer)
    self.step = workdir_lib.latest_step(workdir) if step is None else step
    self.reads_3d = False

  def default_decoding(self) -> Decoding:
    return Decoding.of(self.model.read_cfg, int(self.config.seed))

  def generation_config(self, d: Decoding) -> generate_lib.GenerationConfig:
    return d.applied_to(self.model.read_cfg)  # code tokens never written into a report

  def _codes(self, example: dict) -> list[int]:
    entry = example['images'][0]
    try:
      return self.model.codec.codes([self.model.codec.preprocess(entry, example['id'])])[0]
    except schema.SchemaError as e:
      raise uploads.UploadError(str(e)) from e

  def report_turns(self, example: dict) -> list[dict]:
    """The read request with the upload's codes (what `--mode=generate --images` sends)."""
    from radjax.eval import llm_cxr
    return llm_cxr.read_request(self._codes(example), self.model.codebook_size)

  def with_codes(self, example: dict, turns: list[dict]) -> list[dict]:
    """`turns` with the upload's codes before the first user turn's text, as the read
    request has them, unless they are there (a report asked first): the decoder sees the
    image nowhere else."""
    if not example.get('images'):
      return turns
    codes = chat.render_codes(self._codes(example), self.model.codebook_size)
    first = next((i for i, t in enumerate(turns) if t['role'] == 'user'), None)
    if first is None or turns[first]['text'].startswith(codes):
      return turns
    turn = {**turns[first], 'text': f"{codes}\n{turns[first]['text']}"}
    return turns[:first] + [turn] + turns[first + 1:]

  def answer(self, example: dict, turns: list[dict], d: Decoding) -> str:
    """The next turn after `turns` about the upload, whose codes they hold (with_codes)."""
    turns = self.with_codes(example, turns)
    try:
      return self.answerer.answer(self.exp.state.params,
                                  [({'id': example['id'], 'images': []}, turns)],
                                  self.generation_config(d), int(d.seed))[0]
    except schema.SchemaError as e:  # a conversation past the model's context
      raise uploads.UploadError(str(e)) from e

  def draw(self, report: str, seed: int):
    """A report -> the drawn CXR as an 8-bit PIL image (what `--mode=generate --prompt`
    writes with config.seed)."""
    from PIL import Image

    from radjax.eval import llm_cxr
    if not (report or '').strip():
      raise uploads.UploadError('type a report to draw first')
    drawn = self.model.draw([report.strip()], seed=int(seed))
    return Image.fromarray(llm_cxr.to_uint8(drawn.images[0]))


def load(workdir: str, step: int | None = None) -> Reporter:
  """The web demo's model side for a workdir: LLM-CXR (a decoder with a codec) or a VLM."""
  config = workdir_lib.load_config(workdir)
  if config.model.kind == 'llm' and config.data.get('codebook_size', 0):
    return CodesReporter(workdir, step)
  return Reporter(workdir, step)


def observation_rows(report: str) -> list[list[str]]:
  """[observation, what the report labeler reads] for the 14 CheXpert observations."""
  return [[obs, LABEL_WORDS[value]] for obs, value in labeler.label_report(report).items()]


def boxes_in(text: str) -> list[dict]:
  """Boxes the answer states ([x1, y1, x2, y2] fractions of the image), with their labels."""
  return grounding.parse_boxes(text)[0]
