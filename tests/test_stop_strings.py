"""Stop strings inside the token loop (radjax/eval/decoding/stop_strings.py): the table
stops a row at the first token whose decoded prefix holds a stop string, never earlier,
with sentencepiece (byte fallback) and byte-level BPE tokenizers."""
import numpy as np
import pytest

from radjax.data import tokens
from radjax.eval.decoding import stop_strings
from tests.conftest import bpe_tokenizer
from tests.test_chat import _sentencepiece_dir

LINES = ['The heart is normal in size.###Patient: And the lungs? ###Doctor: Clear.',
         'There is a small left pleural effusion.', '## Findings ### Impression #',
         'No pneumothorax.', 'Is there an effusion? Yes, on the left.'] * 20
STOPS = [('###',), ('\n',), (' left', '###'), ('#',), (' ', 'ion.')]


@pytest.fixture(scope='module', params=['sentencepiece', 'bpe'])
def tokenizer(request, tmp_path_factory):
  if request.param == 'bpe':
    return bpe_tokenizer('vicuna', images=True)
  return tokens.load_tokenizer(_sentencepiece_dir(tmp_path_factory.mktemp('sp'), LINES))


def _decode(tok, ids):
  return tok.decode(ids, skip_special_tokens=True)


def _first_holding(tok, ids, stops):
  """HF's rule (and apply_stop_strings'): the shortest prefix whose text holds a stop."""
  return next((t for t in range(1, len(ids) + 1)
               if any(s in _decode(tok, ids[:t]) for s in stops)), None)


def _table_stop(table, ids):
  state = stop_strings.START
  for i, t in enumerate(ids):
    state = table[state, t]
    if state == stop_strings.MATCHED:
      return i + 1
  return None


def _unsure(tok, ids) -> bool:
  """A token that does not decode to whole characters alone (a byte of a longer one)."""
  return any('\ufffd' in _decode(tok, [t]) for t in ids)


@pytest.mark.parametrize('stops', STOPS)
def test_a_row_stops_where_its_decoded_prefix_first_holds_a_stop_string(tokenizer, stops):
  """Random rows rich in the stops' characters, byte tokens and specials: the table never
  stops a row whose text holds no stop string yet, and stops it at the first token that
  completes one unless a byte of a longer character came before (then it may go on: the
  text is still cut after)."""
  tok, n = tokenizer, len(tokenizer)
  table = stop_strings.table(tok, stops, n + 8)  # the model's vocabulary padded past it
  assert table.shape[1] == n + 8
  rng = np.random.default_rng(len(stops))
  rich = [t for t in range(n) if any(c in _decode(tok, [t]) for c in ''.join(stops))]
  odd = [t for t in range(n) if '<0x' in tok.convert_ids_to_tokens(t)] + tok.all_special_ids
  stopped = exact = 0
  for _ in range(300):
    ids = [int(rng.choice(rich)) if u < 0.5 else int(rng.choice(odd)) if u < 0.6
           else int(rng.integers(n)) for u in rng.random(10)]
    want, got = _first_holding(tok, ids, stops), _table_stop(table, ids)
    if got is not None:
      assert want is not None and got >= want, (ids, want, got)
      assert any(s in _decode(tok, ids[:got]) for s in stops)
    if want is not None and not _unsure(tok, ids[:want]):
      assert got == want, ([tok.convert_ids_to_tokens(t) for t in ids], want, got)
      exact += 1
    stopped += got is not None
  assert stopped >= 5 and exact >= 5, (stopped, exact)  # the rows did exercise it


def test_the_first_token_reads_as_decoding_writes_it(tmp_path):
  """Sentencepiece drops the answer's first word-start space: ' left' as the first
  token's text is 'left', so a stop string ' left' is not there yet; after another token
  it is."""
  tok = tokens.load_tokenizer(_sentencepiece_dir(tmp_path, LINES))
  left = tok.convert_tokens_to_ids('▁left')
  table = stop_strings.table(tok, (' left',), len(tok))
  assert _decode(tok, [left]) == 'left' and _table_stop(table, [left]) is None
  the = tok.encode('The', add_special_tokens=False)[-1]
  assert _table_stop(table, [the, left]) == 2
  assert _table_stop(table, [tok.bos_token_id, left]) is None  # a dropped special first


def test_ascii_bytes_in_a_broken_byte_run_are_no_text(tmp_path):
  """A run of byte tokens that is not valid UTF-8 decodes to U+FFFD per token, its
  newline too: no stop there; once a word ends the run, bytes read again."""
  tok = tokens.load_tokenizer(_sentencepiece_dir(tmp_path, LINES))
  byte = {b: tok.convert_tokens_to_ids(f'<0x{b:02X}>') for b in (0x0A, 0xC4)}
  table = stop_strings.table(tok, ('\n',), len(tok))
  broken = [byte[0xC4], byte[0x0A]]
  assert '\n' not in _decode(tok, broken) and _table_stop(table, broken) is None
  word = tok.encode('heart', add_special_tokens=False)
  assert _table_stop(table, broken + word + [byte[0x0A]]) == len(broken + word) + 1


def test_no_stop_strings_no_table(tokenizer):
  assert stop_strings.table(tokenizer, (), 10) is None
  assert stop_strings.table(tokenizer, ('',), 10) is None
