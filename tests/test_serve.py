"""The web demo (`python -m radjax.serve`) through its HTTP API with gradio_client, on a
tiny workdir: the report equals `--mode=generate`'s, a first question equals
`--mode=generate --prompt`'s, errors in the input come back as messages.

The workdir holds freshly initialised params at step 0, as `convert from-hf` writes an
imported one (training even 2 steps costs minutes of compilation on a loaded 2-core CPU;
tests/test_serve_browser.py serves a trained one)."""
import dataclasses
import io
import os
import socket

import numpy as np
import pytest
from PIL import Image

from radjax import run as run_lib
from radjax.eval.decoding import generate as generate_lib
from radjax.serve import drawing, reporter, uploads
from radjax.serve.uploads import PREVIEW_SIDE
from tests.conftest import tiny_config

gradio_client = pytest.importorskip('gradio_client')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def write_demo_image(demo_data, path):
  from radjax.data import schema, source
  example = schema.decode(source.open_split(demo_data, 'test')[0])
  with open(path, 'wb') as f:
    f.write(example['images'][0]['data'])


def step0_workdir(config, workdir: str) -> None:
  """A workdir of initialised params at step 0 (what `convert from-hf` writes)."""
  from radjax.core import workdir as workdir_lib
  from radjax.train import setup
  exp = setup.build(config, run_lib.make_task(config), pretrained=False)
  workdir_lib.save_params(workdir, config, exp.state.params)


@pytest.fixture(scope='module')
def served(demo_data, tmp_path_factory):
  """(client, config, workdir, image path, tmp dir, server) of a served step-0 workdir."""
  from radjax.serve import app
  tmp = tmp_path_factory.mktemp('serve')
  config = tiny_config(demo_data)
  workdir = str(tmp / 'wd')
  step0_workdir(config, workdir)
  image = str(tmp / 'cxr.png')
  write_demo_image(demo_data, image)
  port = _free_port()
  demo = app.launch(reporter.Reporter(workdir), port=port, block=False)
  client = gradio_client.Client(f'http://127.0.0.1:{port}/', verbose=False)
  yield client, config, workdir, image, tmp, demo
  demo.close()


def _report(client, path, decoding='greedy', temperature=1.0, top_p=1.0, beams=1, penalty=1.0,
            seed=0):
  upload = gradio_client.handle_file(path) if path else None
  return client.predict(upload, decoding, temperature, top_p, beams, penalty, seed,
                        api_name='/report')


def test_binds_localhost_without_share_link(served):
  *_, demo = served
  assert demo.server_name == '127.0.0.1' and not demo.share and demo.share_url is None
  assert os.environ['GRADIO_ANALYTICS_ENABLED'] == 'False'


def test_report_equals_generate_mode_and_is_labeled(served):
  client, config, workdir, image, *_ = served
  expected = run_lib.main(config, workdir, 'generate', [image])[0]
  picture, text, table, _ = _report(client, image)
  assert text == expected
  assert os.path.exists(picture)
  rows = [[r[0], r[1]] for r in table['data']]
  assert rows == reporter.observation_rows(expected) and len(rows) == 14


@pytest.mark.slow  # three more compilations of the generator
def test_decoding_knobs_reach_the_generator(served):
  """Beam search gives `--mode=generate`'s beam report; sampling repeats with its seed and
  differs from greedy's text; a repetition penalty changes it (0.5 rewards the prompt's
  ids)."""
  client, config, workdir, image, *_ = served
  beam_config = config.copy_and_resolve_references()
  beam_config.eval.decoding, beam_config.eval.num_beams = 'beam', 2
  beam = run_lib.main(beam_config, workdir, 'generate', [image])[0]
  assert _report(client, image, 'beam', beams=2)[1] == beam
  a = _report(client, image, 'sample', temperature=1.5, top_p=0.9, seed=3)[1]
  assert a == _report(client, image, 'sample', temperature=1.5, top_p=0.9, seed=3)[1]
  greedy = _report(client, image)[1]
  assert a != greedy  # an untrained model's sample is not its argmax
  assert _report(client, image, penalty=0.5)[1] != greedy


def test_the_pages_knobs_set_the_generation_config():
  """Each of the page's knobs, in the order the page sends them, lands on its field of the
  GenerationConfig the model decodes with (greedy, sample, beam; a report and a question);
  the workdir's other fields stay."""
  import types

  from radjax.serve import app
  base = generate_lib.GenerationConfig(
      max_new_tokens=7, decoding='beam', temperature=0.5, top_k=5, top_p=0.8,
      repetition_penalty=1.1, num_beams=3, length_penalty=0.6, early_stopping=True,
      stop_ids=(2,), stop_strings=('END',), pad_id=0, suppress_ids=(9,))
  used = []
  rep = types.SimpleNamespace(
      workdir='wd', step=0, default_decoding=lambda: reporter.Decoding.of(base, 7),
      answerer=types.SimpleNamespace(gen_cfg=base),
      config=types.SimpleNamespace(data=types.SimpleNamespace(chat_format='radjax'), seed=7),
      example=lambda path: ({'id': path, 'images': []}, Image.new('RGB', (8, 8))),
      report_turns=lambda example: [{'role': 'user', 'text': 'Report.'}])
  rep.answer = lambda example, turns, d: used.append(
      (reporter.Reporter.generation_config(rep, d), d.seed)) or 'No finding.'
  handlers = {f.api_name: f.fn for f in app.build(rep).fns.values()}
  # (decoding, temperature, top_p, beams, penalty, seed) as the page sends them
  cases = [(('greedy', 1.0, 1.0, 1, 1.0, None), {}, 0),
           (('sample', 1.5, 0.9, 1, 1.2, 3), dict(temperature=1.5, top_p=0.9,
                                                 repetition_penalty=1.2), 3),
           (('beam', 0.7, 0.4, 4.0, 0.9, 12), dict(temperature=0.7, top_p=0.4, num_beams=4,
                                                  repetition_penalty=0.9), 12)]
  for knobs, fields, seed in cases:
    want = dataclasses.replace(base, decoding=knobs[0], **{
        'temperature': 1.0, 'top_p': 1.0, 'num_beams': 1, 'repetition_penalty': 1.0, **fields})
    used.clear()
    list(handlers['report']('x.png', *knobs))
    list(handlers['ask']('Is there an effusion?', 'x.png', {}, [], *knobs))
    assert used == [(want, seed)] * 2, (knobs, used)
    assert type(used[0][0].num_beams) is int  # a static argument of the jitted generator


def test_first_question_equals_generate_with_prompt(served):
  client, config, workdir, image, *_ = served
  question = 'Is there a pleural effusion?'
  expected = run_lib.main(config, workdir, 'generate', [image], question)[0]
  fresh = gradio_client.Client(client.src, verbose=False)  # a session with no report yet
  cleared, history, _ = fresh.predict(question, gradio_client.handle_file(image), [], 'greedy',
                                      1.0, 1.0, 1, 1.0, 0, api_name='/ask')
  assert cleared == '' and [m['role'] for m in history] == ['user', 'assistant']
  # The chat shows the answer as markdown (a tab as spaces); the words are the same.
  shown = ''.join(part['text'] for part in history[1]['content'])
  assert shown.split() == expected.split()


def test_a_new_image_starts_a_new_conversation(served):
  """A question about another image than the last report's is not asked on top of that
  report; an empty seed box decodes as seed 0."""
  client, config, workdir, image, tmp, _ = served
  other = str(tmp / 'other.png')
  Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other)
  question = 'Is there a pleural effusion?'
  expected = run_lib.main(config, workdir, 'generate', [other], question)[0]
  session = gradio_client.Client(client.src, verbose=False)
  assert _report(session, image, seed=None)[1] == _report(session, image)[1]
  _, history, _ = session.predict(question, gradio_client.handle_file(other), [], 'greedy',
                                  1.0, 1.0, 1, 1.0, 0, api_name='/ask')
  assert [m['role'] for m in history] == ['user', 'assistant']
  assert ''.join(p['text'] for p in history[1]['content']).split() == expected.split()


def test_a_full_size_radiograph_is_shown_once_and_scaled_down(served, monkeypatch):
  """A radiograph of 2500 x 3000 pixels: the page gets a picture of at most
  uploads.PREVIEW_SIDE pixels, sent once while the report streams and once with its boxes
  (each picture sent is encoded anew: at full size 1.7 s, a word at a time on a 2-core CPU)."""
  import gradio as gr
  client, config, workdir, image, tmp, _ = served
  big = str(tmp / 'big.png')
  Image.open(image).convert('L').resize((2500, 3000)).save(big)
  expected = run_lib.main(config, workdir, 'generate', [big])[0]
  sent, postprocess = [], gr.Image.postprocess

  def counted(self, value):  # the server runs in this process; None: an update without one
    if value is not None:
      sent.append(value)
    return postprocess(self, value)

  monkeypatch.setattr(gr.Image, 'postprocess', counted)
  job = client.submit(gradio_client.handle_file(big), 'greedy', 1.0, 1.0, 1, 1.0, 0,
                      api_name='/report')
  picture, text, *_ = job.result()
  assert text == expected  # the model still reads the file itself
  assert Image.open(picture).size == (PREVIEW_SIDE * 5 // 6, PREVIEW_SIDE)
  assert len(job.outputs()) >= 3  # the report came word by word
  assert [v.size for v in sent] == [(PREVIEW_SIDE * 5 // 6, PREVIEW_SIDE)] * 2


def test_one_generation_at_a_time_across_buttons(served, monkeypatch):
  """A report and a question from two sessions at once: the model answers one, then the
  other (two at once would hold two KV caches on the accelerator)."""
  import threading
  client, _, _, image, *_ = served
  answer, lock, running, most = reporter.Reporter.answer, threading.Lock(), [0], [0]
  entered = [0]

  def counted(self, *args):
    with lock:
      running[0] += 1
      entered[0] += 1
      most[0] = max(most[0], running[0])
    try:
      threading.Event().wait(1.5)  # both requests are in by then
      return answer(self, *args)
    finally:
      with lock:
        running[0] -= 1

  monkeypatch.setattr(reporter.Reporter, 'answer', counted)  # the server runs in this process
  sessions = [gradio_client.Client(client.src, verbose=False) for _ in range(2)]
  jobs = [sessions[0].submit(gradio_client.handle_file(image), 'greedy', 1.0, 1.0, 1, 1.0, 0,
                             api_name='/report'),
          sessions[1].submit('Is there a pleural effusion?', gradio_client.handle_file(image),
                             [], 'greedy', 1.0, 1.0, 1, 1.0, 0, api_name='/ask')]
  for job in jobs:
    job.result()
  assert entered[0] == 2 and most[0] == 1  # both answered, never two at once


def _error(client, path) -> str:
  with pytest.raises(Exception) as info:
    _report(client, path)
  message = str(info.value)
  assert 'Traceback' not in message
  return message


def test_bad_uploads_are_messages(served):
  client, _, _, _, tmp, _ = served
  assert 'no file' in _error(client, None)
  text = tmp / 'notes.txt'
  text.write_text('not a radiograph')
  assert 'notes.txt: not an image' in _error(client, str(text))
  volume = tmp / 'ct.npy'
  np.save(volume, np.zeros((16, 16, 4), np.float16))
  assert "ct.npy: a 3D volume, but this workdir's vision tower reads 2D images" in \
      _error(client, str(volume))
  small = tmp / 'small.png'
  Image.new('L', (4, 4)).save(small)
  assert 'sides of at least 8' in _error(client, str(small))
  broken = tmp / 'broken.png'
  broken.write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 20)
  message = _error(client, str(broken))
  assert 'broken.png' in message and 'undecodable' in message


def test_an_upload_over_the_limit_is_refused(served):
  """--max_upload_mb: a file over it never reaches the model (the server goes on)."""
  from radjax.serve import app
  client, _, workdir, image, tmp, _ = served
  port = _free_port()
  small = app.launch(reporter.Reporter(workdir), port=port, block=False,
                     max_upload_mb=os.path.getsize(image) / 2**20 / 2)
  try:
    limited = gradio_client.Client(f'http://127.0.0.1:{port}/', verbose=False)
    with pytest.raises(Exception) as info:
      _report(limited, image)
    assert 'cxr.png exceeds the maximum file size' in str(info.value), str(info.value)
    tiny = tmp / 'tiny.png'
    Image.new('L', (4, 4)).save(tiny)
    with pytest.raises(Exception) as info:  # under the limit: reaches radjax's own checks
      _report(limited, str(tiny))
    assert 'sides of at least 8' in str(info.value)
  finally:
    small.close()


def test_one_upload_is_one_batch_and_a_long_question_is_a_message(served, tmp_path):
  """The page decoded config.eval.batch_size copies of its one upload (RadVLM: 64); a
  question of any length ran (3,000 words: 15 GB for the micro model)."""
  client, config, _, image, *_ = served
  config = config.copy_and_resolve_references()
  config.eval.batch_size = 16
  workdir = str(tmp_path / 'wd')
  step0_workdir(config, workdir)
  rep = reporter.Reporter(workdir)
  assert rep.answerer.batch_size == 8  # the 8 devices' batch shards
  example, _ = rep.example(image)
  words = 'word ' * 5000
  with pytest.raises(uploads.UploadError, match=r"cxr.png: a prompt of \d+ tokens and 8 new ones "
                     r"\(config.eval.max_new_tokens\) exceed the model's context of 2048"):
    rep.answer(example, [{'role': 'user', 'text': words}], rep.default_decoding())
  with pytest.raises(Exception) as info:
    gradio_client.Client(client.src, verbose=False).predict(
        words, gradio_client.handle_file(image), [], 'greedy', 1.0, 1.0, 1, 1.0, 0,
        api_name='/ask')
  assert 'a question of 24,999 characters; at most 2,000' in str(info.value)


def test_a_refused_question_in_chat_mode_is_a_message_and_the_chat_goes_on(served):
  """`--mode=chat` ended, its conversation lost, at a question past the context or with a
  stray <image> (the page says so and goes on)."""
  _, config, workdir, image, *_ = served
  said, script = [], iter(['word ' * 3000, 'Compare <image> and <image>.',
                           'Is the heart enlarged?', ''])
  turns = run_lib.chat_loop(config, workdir, [image], read=lambda _: next(script),
                            write=said.append)
  assert [t['role'] for t in turns] == ['user', 'assistant']
  assert turns[0]['text'] == 'Is the heart enlarged?'
  assert "exceed the model's context of 2048" in said[1]
  assert 'conversation has 2 <image> marks' in said[2] and said[3].startswith('model> ')


def test_generate_and_chat_decode_a_prompt_in_the_smallest_batch(served, tmp_path, monkeypatch):
  """`--mode=generate` of one image and each `--mode=chat` question decoded
  config.eval.batch_size copies of their one prompt (RadVLM: 64), as the page once did."""
  _, config, _, image, *_ = served
  config = config.copy_and_resolve_references()
  config.eval.batch_size = 16
  workdir = str(tmp_path / 'wd')
  step0_workdir(config, workdir)
  rows, real = [], generate_lib.generate

  def counted(model, params, tokens, *args, **kwargs):  # the real generator, rows counted
    rows.append(tokens.shape[0])
    return real(model, params, tokens, *args, **kwargs)

  monkeypatch.setattr(generate_lib, 'generate', counted)
  assert len(run_lib.main(config, workdir, 'generate', [image])) == 1
  assert len(run_lib.main(config, workdir, 'generate', [image] * 9)) == 9
  script = iter(['Is the heart enlarged?', ''])
  run_lib.chat_loop(config, workdir, [image], read=lambda _: next(script), write=print)
  assert rows == [8, 16, 8]  # the 8 devices' batch shards; 9 images: one batch of 16


@pytest.mark.parametrize('seed', [2**32, -1, 2**70])  # 2**32 drew seed 0's sample
def test_a_seed_out_of_range_is_a_message(served, seed):
  client, _, _, image, *_ = served
  with pytest.raises(Exception) as info:
    _report(client, image, 'sample', seed=seed)
  assert f'seed {seed}: give a whole number from 0 to 2**32 - 1' in str(info.value)


def _dicom(pixels: np.ndarray, frames: int = 1) -> bytes:
  import pydicom
  from pydicom.dataset import FileDataset, FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = FileDataset('x.dcm', {}, file_meta=meta, preamble=b'\0' * 128)
  ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
  ds.Modality, ds.PhotometricInterpretation = 'CR', 'MONOCHROME2'
  ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
  ds.PixelRepresentation = 0
  ds.Rows, ds.Columns = pixels.shape
  if frames > 1:
    ds.NumberOfFrames = frames
  ds.PixelData = np.tile(pixels.astype(np.uint16), (frames, 1)).tobytes()
  buf = io.BytesIO()
  pydicom.dcmwrite(buf, ds, enforce_file_format=True)
  return buf.getvalue()


def test_dicom_upload_reports_like_its_png(served):
  client, config, workdir, image, tmp, _ = served
  grey = np.asarray(Image.open(image).convert('L'), np.uint16)
  grey[0, 0], grey[0, 1] = 0, 255  # the reader stretches min..max to 0..255
  png = tmp / 'grey.png'
  Image.fromarray(grey.astype(np.uint8)).save(png)
  dcm = tmp / 'grey.dcm'
  dcm.write_bytes(_dicom(grey * 16))  # 12-bit data: v * 16 -> v after the stretch
  entry = uploads.image_entry(dcm.read_bytes(), 'grey.dcm')
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(entry['data']))), grey)
  from_png = run_lib.main(config, workdir, 'generate', [str(png)])[0]
  assert _report(client, str(dcm))[1] == from_png
  # --mode=generate reads the DICOM the way the page does (radjax/data/image_files.py).
  assert run_lib.main(config, workdir, 'generate', [str(dcm)])[0] == from_png
  stack = tmp / 'stack.dcm'
  stack.write_bytes(_dicom(grey * 16, frames=3))
  assert 'multi-frame DICOM (3 frames)' in _error(client, str(stack))


def test_boxes_in_an_answer_are_drawn():
  answer = 'A nodule located at the coordinates [0.25, 0.25, 0.50, 0.75].'
  boxes = reporter.boxes_in(answer)
  assert boxes == [{'label': 'Lung Lesion', 'box': (0.25, 0.25, 0.5, 0.75)}]
  out = np.asarray(drawing.draw_boxes(Image.new('L', (100, 100)), boxes))
  assert tuple(out[50, 25]) == (255, 59, 48) and tuple(out[50, 40]) == (0, 0, 0)
  assert tuple(out[25, 40]) == (255, 59, 48) and tuple(out[80, 40]) == (0, 0, 0)


def test_a_workdir_that_cannot_be_served_is_one_line(served, tmp_path, capsys):
  from radjax.serve import __main__ as serve_main
  _, _, workdir, *_ = served
  assert serve_main.main(['--workdir', str(tmp_path / 'nowhere')]) == 2
  assert 'is not a radjax workdir' in capsys.readouterr().err
  assert serve_main.main(['--workdir', workdir, '--step', '7']) == 2
  assert 'no checkpoint of step 7' in capsys.readouterr().err


def test_an_address_it_cannot_listen_on_is_named_before_the_model_loads(tmp_path, capsys):
  """A port in use, or a host not of this machine, is one line naming --host/--port
  before the workdir is read (it was gradio's traceback after the model's load)."""
  import socket

  from radjax.serve import __main__ as serve_main
  nowhere = str(tmp_path / 'nowhere')
  with socket.socket() as taken:
    taken.bind(('127.0.0.1', 0))
    taken.listen()
    port = taken.getsockname()[1]
    assert serve_main.main(['--workdir', nowhere, '--port', str(port)]) == 2
    err = capsys.readouterr().err
    assert f'--port={port}: cannot listen there' in err and 'workdir' not in err
  assert serve_main.main(['--workdir', nowhere, '--host', '999.1.1.1']) == 2
  assert '--host=999.1.1.1 --port=7860: cannot listen there' in capsys.readouterr().err
  for flags, message in [(['--port', '99999'], '--port=99999: not a TCP port'),
                         (['--port', '0'], '--port=0: not a TCP port'),
                         (['--max_upload_mb', 'inf'], '--max_upload_mb=inf: give a finite'),
                         (['--max_upload_mb', '1e-7'], '--max_upload_mb=1e-07: give a finite')]:
    with pytest.raises(SystemExit):
      serve_main.main(['--workdir', nowhere] + flags)
    assert message in capsys.readouterr().err


def test_the_workdirs_decoding_knobs_fit_the_page():
  """The knobs start at the workdir's config.eval values, so the sliders reach them: with
  num_beams=12 the page refused every request, greedy ones too ('Value 12 is greater
  than maximum value 8')."""
  import types

  from radjax.serve import app
  d0 = reporter.Decoding('beam', temperature=3.0, top_p=0.01, num_beams=12,
                         repetition_penalty=3.5, seed=7)
  rep = types.SimpleNamespace(
      workdir='wd', step=0, default_decoding=lambda: d0,
      config=types.SimpleNamespace(data=types.SimpleNamespace(chat_format='radjax'), seed=7))
  labels = ('Temperature (sample)', 'Top-p (sample)', 'Beams (beam)',
            'Repetition penalty (1: off)')
  knobs = {c.label: c for c in app.build(rep).blocks.values()
           if getattr(c, 'label', None) in labels}
  assert len(knobs) == 4
  for component in knobs.values():
    component.preprocess(component.value)  # within its bounds
  assert [knobs[k].value for k in labels] == [3.0, 0.01, 12, 3.5]
  assert d0.applied_to(generate_lib.GenerationConfig()).repetition_penalty == 3.5
  with pytest.raises(uploads.UploadError, match='decoding knobs: repetition_penalty'):
    dataclasses.replace(d0, repetition_penalty=0.0).applied_to(generate_lib.GenerationConfig())


def test_sigterm_closes_the_server_and_removes_the_uploads(served, tmp_path):
  """`kill`, `docker stop` or systemd end `python -m radjax.serve` as Ctrl-C does, with a
  page still connected: exit 0, the uploads (a patient's film) gone from Gradio's temp
  folder. They stayed there for good: Python died on SIGTERM, and after Ctrl-C Gradio's
  own removal waited for the open page's connection past the process's end."""
  import signal
  import subprocess
  import sys
  import time
  _, _, workdir, _, _, _ = served
  temp, log = tmp_path / 'gradio', tmp_path / 'server.log'
  port = _free_port()
  with open(log, 'w') as err:
    server = subprocess.Popen(
        [sys.executable, '-m', 'radjax.serve', '--workdir', workdir, '--port', str(port)],
        env=dict(os.environ, GRADIO_TEMP_DIR=str(temp)), stdout=err, stderr=err)
  try:
    deadline = time.monotonic() + 180
    while True:
      assert server.poll() is None, log.read_text()[-2000:]
      try:
        client = gradio_client.Client(f'http://127.0.0.1:{port}/', verbose=False)
        break
      except Exception:  # not up yet
        assert time.monotonic() < deadline, 'the server did not come up'
        time.sleep(1)
    upload = tmp_path / 'patient.txt'
    upload.write_text('a film')
    assert 'patient.txt: not an image' in _error(client, str(upload))
    assert list(temp.rglob('patient.txt'))  # where it waited while the server ran
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0, log.read_text()[-2000:]
    assert not list(temp.rglob('patient.txt'))
  finally:
    if server.poll() is None:
      server.kill()
      server.wait()
