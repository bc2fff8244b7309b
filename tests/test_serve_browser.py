"""The web demo in a real browser: headless Chromium (the Debian `chromium` package) loads
the page served on a tiny trained workdir, uploads a radiograph, presses the button, and
the report appears, equal to `--mode=generate`'s, with the labeler's table under it.
RADJAX_SCREENSHOT=path keeps a (palette-compressed) screenshot of the page;
RADJAX_SERVE_WORKDIR=a trained workdir serves that instead of a 2-step one (the README's
screenshot: `RADJAX_SERVE_WORKDIR=runs/demo RADJAX_SCREENSHOT=docs/serve.png pytest -m slow
tests/test_serve_browser.py`)."""
import io
import json
import os

import pytest
from PIL import Image

from radjax import run as run_lib
from tests import cdp
from tests.conftest import tiny_config
from tests.test_serve import _free_port, write_demo_image

pytest.importorskip('gradio')
BROWSER = cdp.find_browser()
REPORT = "document.querySelector('#report textarea')"


@pytest.mark.slow  # training and a browser: minutes on a 2-core CPU
@pytest.mark.skipif(BROWSER is None, reason='no chromium on PATH (apt-get install chromium)')
def test_page_uploads_an_image_and_shows_the_report(demo_data, tmp_path):
  from radjax.serve import app, reporter
  workdir = os.environ.get('RADJAX_SERVE_WORKDIR', '')
  if workdir:
    from radjax.core import workdir as workdir_lib
    config = workdir_lib.load_config(workdir)
  else:
    config = tiny_config(demo_data)
    config.train.num_steps = 2
    workdir = str(tmp_path / 'wd')
    run_lib.main(config, workdir, 'train')
  image = str(tmp_path / 'cxr.png')
  write_demo_image(demo_data, image)
  expected = run_lib.main(config, workdir, 'generate', [image])[0]
  port = _free_port()
  demo = app.launch(reporter.Reporter(workdir), port=port, block=False)
  browser = cdp.Browser(BROWSER, str(tmp_path / 'profile'))
  try:
    browser.open(f'http://127.0.0.1:{port}/')
    browser.wait_for("document.querySelector('input[type=file]') !== null", 60, 'the page')
    browser.upload('input[type=file]', image)
    browser.wait_for("document.body.innerText.includes('cxr.png')", 30, 'the uploaded file')
    browser.evaluate("[...document.querySelectorAll('button')]"
                     ".find(b => b.innerText.trim() === 'Generate report').click()")
    browser.wait_for("document.body.innerText.includes('Pleural Effusion') && "
                     f"{REPORT}.value.length > 0", 120, 'the report and its table')
    shown = browser.wait_for(f'{REPORT}.value === {json.dumps(expected)} && {REPORT}.value', 30,
                             'the whole report')
    assert shown == expected
    png = browser.screenshot()
  finally:
    browser.close()
    demo.close()
  picture = Image.open(io.BytesIO(png))
  assert picture.size[0] >= 800
  if os.environ.get('RADJAX_SCREENSHOT'):
    small = picture.convert('RGB').quantize(64)
    small.save(os.environ['RADJAX_SCREENSHOT'], optimize=True)
