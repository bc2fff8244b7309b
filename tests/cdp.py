"""A minimal Chrome DevTools Protocol client over --remote-debugging-pipe (no websocket
library needed): headless Chromium reads commands on fd 3 and answers on fd 4, each a
JSON message ended by a NUL byte. For tests/test_serve_browser.py."""
import json
import os
import shutil
import subprocess
import time

BROWSERS = ('chromium', 'chromium-browser', 'google-chrome')


def find_browser() -> str | None:
  return next((p for p in map(shutil.which, BROWSERS) if p), None)


class Browser:

  def __init__(self, binary: str, profile_dir: str, width: int = 1100, height: int = 1500):
    to_child, self._out = os.pipe()
    self._in, from_child = os.pipe()

    def pipes_at_3_and_4():
      # Via fds above 4, so placing them at 3 and 4 cannot clobber one another.
      high_in, high_out = os.dup(to_child), os.dup(from_child)
      os.dup2(high_in, 3)
      os.dup2(high_out, 4)

    self.proc = subprocess.Popen(
        [binary, '--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run',
         '--disable-extensions', '--disable-background-networking', '--disable-sync',
         '--remote-debugging-pipe', f'--user-data-dir={profile_dir}',
         f'--window-size={width},{height}', 'about:blank'],
        # close_fds=False: subprocess would close fds 3 and 4 after preexec_fn.
        preexec_fn=pipes_at_3_and_4, close_fds=False,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(to_child)
    os.close(from_child)
    self._buffer, self._next_id, self.session = b'', 0, None

  def _read_message(self) -> dict:
    while b'\0' not in self._buffer:
      chunk = os.read(self._in, 1 << 16)
      if not chunk:
        raise RuntimeError('the browser closed its debugging pipe')
      self._buffer += chunk
    raw, self._buffer = self._buffer.split(b'\0', 1)
    return json.loads(raw)

  def send(self, method: str, **params) -> dict:
    self._next_id += 1
    message = {'id': self._next_id, 'method': method, 'params': params}
    if self.session and not method.startswith('Target.'):
      message['sessionId'] = self.session
    os.write(self._out, json.dumps(message).encode() + b'\0')
    while True:
      reply = self._read_message()
      if reply.get('id') == self._next_id:
        if 'error' in reply:
          raise RuntimeError(f'{method}: {reply["error"]}')
        return reply['result']

  def open(self, url: str) -> None:
    target = self.send('Target.createTarget', url=url)['targetId']
    self.session = self.send('Target.attachToTarget', targetId=target, flatten=True)['sessionId']

  def evaluate(self, expression: str):
    out = self.send('Runtime.evaluate', expression=expression, returnByValue=True,
                    awaitPromise=True)
    if 'exceptionDetails' in out:
      raise RuntimeError(f'{expression}: {out["exceptionDetails"]}')
    return out['result'].get('value')

  def wait_for(self, expression: str, timeout_s: float, what: str):
    end = time.time() + timeout_s
    while time.time() < end:
      value = self.evaluate(expression)
      if value:
        return value
      time.sleep(0.25)
    raise TimeoutError(f'{what}: not there after {timeout_s:.0f} s')

  def upload(self, selector: str, path: str) -> None:
    root = self.send('DOM.getDocument')['root']['nodeId']
    node = self.send('DOM.querySelector', nodeId=root, selector=selector)['nodeId']
    self.send('DOM.setFileInputFiles', nodeId=node, files=[path])

  def screenshot(self) -> bytes:
    import base64
    return base64.b64decode(self.send('Page.captureScreenshot', format='png')['data'])

  def close(self) -> None:
    try:
      self.send('Browser.close')
    except (RuntimeError, OSError):
      pass
    try:
      self.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self.proc.kill()
    os.close(self._in)
    os.close(self._out)
