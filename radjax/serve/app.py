"""The Gradio page: upload -> report (streamed to the page) -> the labeler's 14
observations; decoding knobs; follow-up questions; boxes drawn on the image; with an
LLM-CXR workdir, a second tab that draws a chest X-ray from a report.

The report is generated whole by the jitted generator (one compiled scan over
max_new_tokens) and then streamed to the page word by word: what the page shows while it
streams is the final text, not tokens as they decode. Errors in the input are shown in
the page (gr.Error), never a stack trace."""
import os
import time
import traceback

os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')  # before gradio is imported
os.environ.setdefault('HF_HUB_DISABLE_TELEMETRY', '1')

import gradio as gr  # noqa: E402
from absl import logging  # noqa: E402
from gradio import route_utils  # noqa: E402

from radjax.eval.decoding import generate as generate_lib  # noqa: E402
from radjax.serve import drawing, uploads  # noqa: E402
from radjax.serve import reporter as reporter_lib  # noqa: E402

HEADERS = ['observation', 'report labeler']
WORD_DELAY_S = 0.01
MAX_QUESTION_CHARS = 2000  # a question's prefill memory grows with its length squared
# System fonts only: the default theme would fetch Google Fonts from the browser.
THEME = gr.themes.Default(font=['ui-sans-serif', 'system-ui', 'sans-serif'],
                          font_mono=['ui-monospace', 'monospace'])


def _shown(fn):
  """Runs a handler; input errors become gr.Error with their message, anything else is
  logged with its traceback here and shown as one line."""
  def wrapped(*args):
    try:
      yield from fn(*args)
    except gr.Error:
      raise
    except uploads.UploadError as e:
      raise gr.Error(str(e), print_exception=False) from None
    except Exception as e:  # the page gets one line, the log gets the traceback
      logging.error('serve: %s', traceback.format_exc())
      raise gr.Error(f'internal error ({type(e).__name__}): {e}', print_exception=False) from None
  wrapped.__name__ = fn.__name__
  return wrapped


def _words(text: str):
  """Growing prefixes of `text`, a word at a time."""
  parts = text.split(' ')
  for i in range(1, len(parts) + 1):
    yield ' '.join(parts[:i])


def _seed(value) -> int:
  """The seed box's number (empty: 0). JAX keeps a seed's low 32 bits (without x64), so
  a larger one would draw another seed's sample: 2**32 is 0's."""
  seed = int(value or 0)
  if not 0 <= seed < 2**32:
    raise uploads.UploadError(f'seed {seed}: give a whole number from 0 to 2**32 - 1')
  return seed


def build(rep: reporter_lib.Reporter) -> gr.Blocks:
  d0 = rep.default_decoding()
  cfg = rep.config

  def knobs(decoding, temperature, top_p, num_beams, repetition_penalty, seed):
    return reporter_lib.Decoding(decoding, temperature, top_p, int(num_beams),
                                 repetition_penalty, _seed(seed))

  @_shown
  def report(path, *dec):
    example, picture = rep.example(path)
    turns = rep.report_turns(example)
    text = rep.answer(example, turns, knobs(*dec))
    history = [{'role': 'assistant', 'content': text}]
    shown = picture
    for partial in _words(text):
      # The picture once: each one sent is encoded again (gr.skip() leaves it as it is).
      yield shown, partial, None, [], []
      shown = gr.skip()
      time.sleep(WORD_DELAY_S)
    shown = drawing.draw_boxes(picture, reporter_lib.boxes_in(text))
    turns = turns + [{'role': 'assistant', 'text': text}]
    yield shown, text, reporter_lib.observation_rows(text), {'image': path, 'turns': turns}, \
        history

  @_shown
  def ask(question, path, turns, history, *dec):
    question = (question or '').strip()
    if not question:
      raise uploads.UploadError('type a question first')
    if len(question) > MAX_QUESTION_CHARS:
      raise uploads.UploadError(f'a question of {len(question):,} characters; at most '
                                f'{MAX_QUESTION_CHARS:,}')
    example, picture = rep.example(path)
    if (turns or {}).get('image') != path:  # the conversation was about another image
      turns, history = {'turns': []}, []
    turns = list(turns['turns']) + [{'role': 'user', 'text': question}]
    text = rep.answer(example, turns, knobs(*dec))
    turns.append({'role': 'assistant', 'text': text})
    history = list(history or []) + [{'role': 'user', 'content': question},
                                     {'role': 'assistant', 'content': text}]
    yield ('', history, {'image': path, 'turns': turns},
           drawing.draw_boxes(picture, reporter_lib.boxes_in(text)))

  def new_image(path):
    """Another upload: the report, table and conversation of the last one go."""
    del path
    return '', None, {}, []

  @_shown
  def draw(text, seed):
    yield rep.draw(text, _seed(seed))

  # Uploads (a DICOM's headers too) and previews leave Gradio's temp folder an hour after
  # they came (a later question about an older upload asks for it again), and at exit.
  with gr.Blocks(title='radjax report demo', analytics_enabled=False,
                 delete_cache=(900, 3600)) as demo:
    gr.Markdown(f'## radjax: {os.path.abspath(rep.workdir)} (step {rep.step}, '
                f'{cfg.data.chat_format} chat format)\nA research model, not a medical device.')
    turns = gr.State({})  # {'image': the upload's path, 'turns': its conversation}
    with gr.Tab('Report'):
      with gr.Row():
        with gr.Column():
          upload = gr.File(label='Radiograph (PNG, JPEG or DICOM)', type='filepath')
          picture = gr.Image(label='Image (boxes from the answers drawn on it)', type='pil',
                             interactive=False)
        with gr.Column():
          decoding = gr.Radio(list(generate_lib.DECODINGS), value=d0.decoding, label='Decoding')
          # Ranges that hold the workdir's own values: a default out of range was refused.
          temperature = gr.Slider(0.0, max(2.0, d0.temperature), value=d0.temperature,
                                  step=0.05, label='Temperature (sample)')
          top_p = gr.Slider(min(0.05, d0.top_p), 1.0, value=d0.top_p, step=0.05,
                            label='Top-p (sample)')
          num_beams = gr.Slider(1, max(8, d0.num_beams), value=d0.num_beams, step=1,
                                label='Beams (beam)')
          penalty = d0.repetition_penalty
          repetition_penalty = gr.Slider(min(0.5, penalty), max(2.0, penalty), value=penalty,
                                         step=0.05, label='Repetition penalty (1: off)')
          seed = gr.Number(value=d0.seed, precision=0, label='Seed (sample)')
          go = gr.Button('Generate report', variant='primary')
      report_box = gr.Textbox(label='Report', lines=6, interactive=False, elem_id='report')
      table = gr.Dataframe(headers=HEADERS, label='Report labeler: 14 CheXpert observations',
                           interactive=False)
      chatbot = gr.Chatbot(label='Follow-up questions', height=260)
      with gr.Row():
        question = gr.Textbox(label='Question', placeholder='Is there a pleural effusion?',
                              scale=4, max_length=MAX_QUESTION_CHARS)
        ask_button = gr.Button('Ask', scale=1)
    draws = hasattr(rep, 'draw')  # an LLM-CXR workdir: a decoder with a VQ-GAN codec
    with gr.Tab('Report → image', interactive=draws):
      if draws:
        with gr.Row():
          with gr.Column():
            draw_text = gr.Textbox(label='Report', lines=5,
                                   placeholder='Impression: Moderate left pleural effusion.')
            draw_seed = gr.Number(value=int(cfg.seed), precision=0, label='Seed')
            draw_button = gr.Button('Draw chest X-ray', variant='primary')
          drawn = gr.Image(label='Drawn CXR', type='pil', interactive=False, format='png')
      else:
        gr.Markdown('Needs an LLM-CXR workdir: a decoder whose config names a VQ-GAN codec '
                    '(`configs/llm_cxr.py`, `config.codec.workdir`).')

    dec = [decoding, temperature, top_p, num_beams, repetition_penalty, seed]
    # Every event that runs the model is one queue: one generation at a time on the
    # accelerator (a limit alone holds per event, so a report and a question ran together).
    model = dict(concurrency_id='model', concurrency_limit=1)
    go.click(report, [upload] + dec, [picture, report_box, table, turns, chatbot],
             api_name='report', **model)
    ask_args = dict(fn=ask, inputs=[question, upload, turns, chatbot] + dec,
                    outputs=[question, chatbot, turns, picture], **model)
    ask_button.click(api_name='ask', **ask_args)
    upload.change(new_image, [upload], [report_box, table, turns, chatbot], api_name=False)
    question.submit(api_name=False, **ask_args)
    if draws:
      draw_button.click(draw, [draw_text, draw_seed], [drawn], api_name='draw', **model)
  return demo


def launch(rep: reporter_lib.Reporter, host: str = '127.0.0.1', port: int = 7860,
           block: bool = True, max_upload_mb: float = 1024) -> gr.Blocks:
  """Serves the page on host:port (never a share link); block=False returns at once.
  Uploads over max_upload_mb are refused before they reach the disk's temp folder."""
  demo = build(rep)
  demo.queue(default_concurrency_limit=1)
  demo.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
              ssr_mode=False, theme=THEME, quiet=not block, show_error=False,
              max_file_size=int(max_upload_mb * 2**20))
  if block:  # the server was stopped (Ctrl-C, SIGTERM): its uploads and previews go now.
    # Gradio removes them after the server's connections close, which an open page's
    # stream holds past the 5 s it waits before the process ends: they stayed for good.
    route_utils.delete_files_created_by_app(demo, age=None)
  return demo
