"""Chat formats: each format's token layout and loss mask on a hand-checked conversation,
images at their marks, too-long examples, generation prompts, and tokenizers that lack
the format's specials (a sentencepiece LLaMA tokenizer from a local directory)."""
import io
import json
import os

import jinja2
import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from data_prep import tokenizer as tokenizer_lib
from radjax.data import chat, schema, tokens
from tests import hf_models

TURNS = [{'role': 'user', 'text': 'Is there an effusion?'},
         {'role': 'assistant', 'text': 'Yes, on the left.'},
         {'role': 'user', 'text': 'Is the heart enlarged?'},
         {'role': 'assistant', 'text': 'No.'}]


@pytest.fixture(scope='module')
def bpe_json():
  return tokenizer_lib.train_tokenizer(vocab_size=600).to_str()


def _tokenizer(bpe_json, fmt):
  tok = PreTrainedTokenizerFast(tokenizer_object=__import__('tokenizers').Tokenizer.from_str(
      bpe_json), bos_token='<s>', eos_token='</s>', pad_token='<pad>', unk_token='<unk>')
  return chat.prepare_tokenizer(tok, chat.get_format(fmt), images=True)


def _render(tok, ids, weights, image_id):
  """The sequence as text, image placeholders as <image>xN, trained runs in [[...]]."""
  out, run, run_w = [], [], None

  def flush():
    if run:
      text = tok.decode(run, skip_special_tokens=False)
      out.append(f'[[{text}]]' if run_w else text)

  i = 0
  while i < len(ids):
    if ids[i] == image_id:
      flush()
      run, run_w = [], None
      n = 0
      while i < len(ids) and ids[i] == image_id:
        n, i = n + 1, i + 1
      out.append(f'<image>x{n}')
      continue
    if weights[i] != run_w:
      flush()
      run, run_w = [], weights[i]
    run.append(ids[i])
    i += 1
  flush()
  return ''.join(out)


EXPECTED = {
    'radjax': ('<s><|system|>SYS<|end|><|user|><image>x3\nIs there an effusion?<|end|>'
               '<|assistant|>[[Yes, on the left.<|end|>]]<|user|>Is the heart enlarged?<|end|>'
               '<|assistant|>[[No.<|end|></s>]]'),
    # XrayGPT's stage 2 ('###Patient: <Img><ImageHere></Img> q ###Doctor: a###'), with
    # a system prompt set: it stands before the first '###', as in XrayGPT's CONV_VISION
    # ('SYS###Patient: <Img><ImageHere></Img> q###Doctor:').
    'vicuna': ('<s>SYS###Patient: <Img><image>x3</Img> Is there an effusion? ###Doctor: '
               '[[Yes, on the left.###]]Patient: Is the heart enlarged? ###Doctor: [[No.###]]'),
    'chatml': ('<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n<image>x3\nIs there an '
               'effusion?<|im_end|>\n<|im_start|>assistant\n[[Yes, on the left.<|im_end|>]]\n'
               '<|im_start|>user\nIs the heart enlarged?<|im_end|>\n<|im_start|>assistant\n'
               '[[No.<|im_end|>]]'),
    'dolly': ('SYS\n\n### Instruction:\n<image>x3\nIs there an effusion?\n\n### Response:\n'
              '[[Yes, on the left.\n\n### End]]### Instruction:\nIs the heart enlarged?\n\n'
              '### Response:\n[[No.\n\n### End]]'),
    # LLaVA-1.5 as llava-hf's chat template renders it: answers after 'ASSISTANT:' and a
    # space (in the answer's tokens, tokenised with the text around it), the last one
    # closed by </s>.
    'llava': ('<s>SYS USER: <image>x3\nIs there an effusion? ASSISTANT:[[ Yes, on the left.]] '
              'USER: Is the heart enlarged? ASSISTANT:[[ No.</s>]]'),
    # The answer is tokenised with its question: byte-level BPE puts the space in it.
    'plain': '<s><image>x3Is there an effusion?[[ Yes, on the left.]]Is the heart enlarged?'
             '[[ No.</s>]]',
}


@pytest.mark.parametrize('fmt', sorted(EXPECTED))
def test_layout_and_loss_mask(bpe_json, fmt):
  tok = _tokenizer(bpe_json, fmt)
  enc = chat.ConversationEncoder(tok, chat.get_format(fmt), image_tokens=3, system_prompt='SYS')
  ids, weights = enc.encode(TURNS, num_images=1, record_id='r')
  assert _render(tok, ids, weights, enc.image_id) == EXPECTED[fmt]
  # The training arrays are the same sequence shifted by one, padded, mask on targets.
  arrays = enc.training_arrays(TURNS, 1, max_len=len(ids) + 4, record_id='r')
  assert list(arrays['tokens'][:len(ids) - 1]) == ids[:-1]
  assert list(arrays['targets'][:len(ids) - 1]) == ids[1:]
  assert list(arrays['loss_mask'][:len(ids) - 1]) == weights[1:]
  assert not arrays['loss_mask'][len(ids) - 1:].any() and arrays['truncated'] == 0


def test_always_trained_tokens_carry_loss_in_every_turn_as_radvlm_trains_them(bpe_json):
  tok = _tokenizer(bpe_json, 'chatml')
  marks = ('\n', '<|im_start|>', '<|im_end|>')
  plain = chat.ConversationEncoder(tok, chat.CHATML, image_tokens=3, system_prompt='SYS')
  enc = chat.ConversationEncoder(tok, chat.CHATML, image_tokens=3, system_prompt='SYS',
                                 always_trained=marks)
  ids, _ = plain.encode(TURNS, 1, 'r')
  base = plain.training_arrays(TURNS, 1, len(ids) + 4, 'r')
  arrays = enc.training_arrays(TURNS, 1, len(ids) + 4, 'r')
  np.testing.assert_array_equal(arrays['targets'], base['targets'])
  mark_ids = {tok.convert_tokens_to_ids(m) for m in marks[1:]} | {tok.encode('\n')[0]}
  is_mark = np.isin(base['targets'], list(mark_ids)) & (np.arange(len(ids) + 4) < len(ids) - 1)
  # The system and user turns' markers and newlines are trained now, answers as before,
  # placeholders never.
  assert is_mark[:12].sum() == 4 and not base['loss_mask'][:12].any()
  np.testing.assert_array_equal(arrays['loss_mask'], np.maximum(base['loss_mask'], is_mark))
  assert not arrays['loss_mask'][base['targets'] == enc.image_id].any()
  with pytest.raises(ValueError, match=r"always_trained: 'effusion\?' is \d+ tokens"):
    chat.ConversationEncoder(tok, chat.CHATML, always_trained=('effusion?',))


def test_always_trained_prompt_tokens_do_not_keep_an_example_whose_answer_was_cut(bpe_json):
  """The prompt's always_trained markers are not an answer: an example truncated (or cut
  at max_target_tokens) before its answer is still TooLong, as without them."""
  tok = _tokenizer(bpe_json, 'chatml')
  marks = ('\n', '<|im_start|>', '<|im_end|>')
  turns = [{'role': 'user', 'text': 'Is there an effusion? ' * 10},
           {'role': 'assistant', 'text': 'Yes, on the left.'}]
  for always in ((), marks):
    enc = chat.ConversationEncoder(tok, chat.CHATML, image_tokens=3, too_long='truncate',
                                   always_trained=always)
    with pytest.raises(schema.TooLong, match='prompt alone') as e:
      enc.training_arrays(turns, 1, max_len=30, record_id='r')
    assert not e.value.truncate_helps
  enc = chat.ConversationEncoder(tok, chat.CHATML, image_tokens=3, too_long='truncate',
                                 always_trained=marks, max_targets=3)
  with pytest.raises(schema.TooLong, match='always_trained tokens alone fill'):
    enc.training_arrays(turns, 1, max_len=400, record_id='r')
  # With room for the answer, the markers and the answer are trained as before.
  enc = chat.ConversationEncoder(tok, chat.CHATML, image_tokens=3, too_long='truncate',
                                 always_trained=marks, max_targets=12)
  arrays = enc.training_arrays(turns, 1, max_len=400, record_id='r')
  assert 'Yes' in tok.decode(arrays['targets'][arrays['loss_mask'] > 0])


@pytest.mark.parametrize('has_response', [True, False])
def test_dolly_tokenizer_keeps_its_markers_and_code_k_is_len_plus_k(bpe_json, has_response):
  """dolly-v2-3b's tokenizer has '### Instruction:' and '### End' but no '### Response:\\n'
  (LLM-CXR adds it: id 50280, len 50281): the dolly format adds only a missing marker, and
  LLM-CXR's code k sits at id len(tokenizer) + k after it (50281 + k)."""
  tok = PreTrainedTokenizerFast(tokenizer_object=__import__('tokenizers').Tokenizer.from_str(
      bpe_json), bos_token='<s>', eos_token='</s>', pad_token='<pad>', unk_token='<unk>')
  tok.add_special_tokens({'additional_special_tokens': [
      '### End', '### Instruction:'] + ['### Response:\n'] * has_response})
  n = len(tok) + (not has_response)
  chat.prepare_tokenizer(tok, chat.DOLLY, images=False, codebook_size=16)
  assert tok.convert_tokens_to_ids('### Response:\n') == n - 1 or has_response
  assert [tok.convert_tokens_to_ids(f'<code_{k}>') for k in (0, 15)] == [n, n + 15]
  assert len(tok) == n + 16 + 2  # the codes, then <image_begin> / <image_end>
  enc = chat.ConversationEncoder(tok, chat.DOLLY)
  ids = enc.prompt([{'role': 'user', 'text': 'Q'}], 0)
  assert ids[-1] == tok.convert_tokens_to_ids('### Response:\n')


def test_radjax_format_keeps_the_layout_the_demo_was_trained_on(bpe_json):
  """Same ids as the one-turn layout radjax always used (demo numbers stay comparable)."""
  tok = _tokenizer(bpe_json, 'radjax')
  enc = chat.ConversationEncoder(tok, chat.RADJAX, image_tokens=4)
  sp = tokens.special_ids(tok)
  turns = [{'role': 'user', 'text': 'Write the report.'},
           {'role': 'assistant', 'text': 'Findings: Clear lungs.'}]
  ids, weights = enc.encode(turns, 2, 'r')
  text = tok.encode
  old_prompt = ([sp['bos'], sp['user']] + [sp['image']] * 8
                + text('\nWrite the report.', add_special_tokens=False) + [sp['end'],
                                                                           sp['assistant']])
  old_answer = text('Findings: Clear lungs.', add_special_tokens=False) + [sp['end'], sp['eos']]
  assert ids == old_prompt + old_answer
  assert weights == [0] * len(old_prompt) + [1] * len(old_answer)
  assert enc.prompt(turns[:1], 2) == old_prompt


def test_images_at_their_marks(bpe_json):
  tok = _tokenizer(bpe_json, 'chatml')
  enc = chat.ConversationEncoder(tok, chat.CHATML, image_tokens=2, system_prompt='S')
  turns = [{'role': 'user', 'text': 'Old film: <image> new film: <image> Changed?'},
           {'role': 'assistant', 'text': 'No.'}]
  ids, w = enc.encode(turns, 2, 'r')
  assert _render(tok, ids, w, enc.image_id) == (
      '<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nOld film: <image>x2 new film: '
      '<image>x2 Changed?<|im_end|>\n<|im_start|>assistant\n[[No.<|im_end|>]]')
  with pytest.raises(schema.SchemaError, match="record 'r'.*2 <image> marks.*3 images"):
    enc.encode(turns, 3, 'r')


def test_each_image_gets_its_own_count_of_placeholders(bpe_json):
  """AnyRes: image_tokens gives each image's run, in order; a count per image or an error
  naming the record."""
  tok = _tokenizer(bpe_json, 'chatml')
  enc = chat.ConversationEncoder(tok, chat.CHATML, image_tokens=2, system_prompt='S')
  turns = [{'role': 'user', 'text': 'Old film: <image> new film: <image> Changed?'},
           {'role': 'assistant', 'text': 'No.'}]
  ids, w = enc.encode(turns, 2, 'r', image_tokens=(5, 3))
  assert 'Old film: <image>x5 new film: <image>x3 Changed?' in _render(tok, ids, w,
                                                                        enc.image_id)
  assert enc.training_arrays(turns, 2, 64, 'r', (5, 3))['tokens'].tolist()[:len(ids) - 1] == (
      ids[:-1])
  with pytest.raises(ValueError, match="record 'r': 1 image token counts for 2 images"):
    enc.encode(turns, 2, 'r', image_tokens=(5,))
  with pytest.raises(ValueError, match='config.data.system_prompt: <image>'):
    chat.ConversationEncoder(tok, chat.CHATML, image_tokens=2, system_prompt='S <image>')


def test_vicuna_without_a_system_prompt_is_xraygpts_stage_2_text(bpe_json):
  tok = _tokenizer(bpe_json, 'vicuna')
  enc = chat.ConversationEncoder(tok, chat.VICUNA, image_tokens=2)
  ids, w = enc.encode([{'role': 'user', 'text': 'Describe the image.'},
                       {'role': 'assistant', 'text': 'Clear lungs.'}], 1, 'r')
  assert _render(tok, ids, w, enc.image_id) == (
      '<s>###Patient: <Img><image>x2</Img> Describe the image. ###Doctor: [[Clear lungs.###]]')


def test_vicuna_system_prompt_stands_before_the_first_separator(bpe_json):
  """XrayGPT's CONV_VISION (and FastChat's '###' conversations) write 'SYS###Patient: ...';
  the system prompt went after a leading '###' ('###SYS###Patient: ...'), in training, in
  generation prompts and in the exported chat template. Without one, '###Patient: ...'."""
  tok = _tokenizer(bpe_json, 'vicuna')
  turns = [{'role': 'user', 'text': 'Describe the image.'}]
  template = jinja2.Environment().from_string(chat.chat_template(chat.VICUNA, 'SYS'))
  bare = jinja2.Environment().from_string(chat.chat_template(chat.VICUNA))
  user = {'role': 'user', 'content': [{'type': 'image'},
                                      {'type': 'text', 'text': 'Describe the image.'}]}
  for system, messages, want in (
      ('SYS', [user], '<s>SYS###Patient: '), ('', [user], '<s>###Patient: '),
      ('', [{'role': 'system', 'content': 'S2'}, user], '<s>S2###Patient: ')):
    enc = chat.ConversationEncoder(tok, chat.VICUNA, image_tokens=1, system_prompt=system)
    own = ([{'role': 'system', 'text': messages[0]['content']}] if len(messages) > 1 else []
           ) + turns
    rendered = _render(tok, enc.prompt(own, 1), [0] * 99, enc.image_id)
    assert rendered == want + '<Img><image>x1</Img> Describe the image. ###Doctor: '
    text = (template if system else bare).render(messages=messages, add_generation_prompt=True,
                                                 bos_token='<s>', eos_token='</s>')
    assert text == want + '<Img><image></Img> Describe the image. ###Doctor: '


def test_no_user_turn_puts_images_first(bpe_json):
  """XrayGPT stage 1: the image straight before the caption, no prompt."""
  tok = _tokenizer(bpe_json, 'none')
  enc = chat.ConversationEncoder(tok, chat.NONE, image_tokens=3)
  ids, w = enc.encode([{'role': 'assistant', 'text': 'Clear lungs.'}], 1, 'r')
  assert _render(tok, ids, w, enc.image_id) == '<s><image>x3[[Clear lungs.</s>]]'


def test_too_long_is_dropped_or_truncated(bpe_json):
  tok = _tokenizer(bpe_json, 'radjax')
  enc = chat.ConversationEncoder(tok, chat.RADJAX, image_tokens=3)
  n = len(enc.encode(TURNS, 1, 'r')[0])
  enc.training_arrays(TURNS, 1, n - 1, 'r')  # exactly fits: n tokens give n - 1 targets
  with pytest.raises(schema.TooLong, match="record 'long'.*config.data.max_len=12"):
    enc.training_arrays(TURNS, 1, 12, 'long')
  cut = chat.ConversationEncoder(tok, chat.RADJAX, image_tokens=3, too_long='truncate')
  arrays = cut.training_arrays(TURNS, 1, n - 3, 'r')
  assert arrays['truncated'] == 1 and arrays['loss_mask'].sum() > 0
  with pytest.raises(schema.TooLong, match='prompt alone'):
    cut.training_arrays(TURNS, 1, 6, 'r')


def test_generation_prompt_and_answer_decoding(bpe_json):
  tok = _tokenizer(bpe_json, 'vicuna')
  enc = chat.ConversationEncoder(tok, chat.VICUNA, image_tokens=3, system_prompt='SYS')
  prompt = enc.prompt(TURNS[:3], 1)
  full, _ = enc.encode(TURNS, 1, 'r')
  assert full[:len(prompt)] == prompt  # the prompt is the training prefix
  answer = tok.encode('No effusion.### Patient: more', add_special_tokens=False)
  assert enc.decode_answer(answer + [tok.eos_token_id]) == 'No effusion.'
  radjax = chat.ConversationEncoder(_tokenizer(bpe_json, 'radjax'), chat.RADJAX, 3)
  end = radjax.special_ids['<|end|>']
  assert radjax.stop_ids == (end, radjax.eos)
  assert radjax.decode_answer(radjax.tokenizer.encode('Clear.', add_special_tokens=False)
                              + [end, 5, 6]) == 'Clear.'


@pytest.mark.parametrize('fmt', sorted(EXPECTED))
def test_exported_chat_template_renders_the_training_text(bpe_json, fmt):
  """HF's apply_chat_template with the exported template gives the prompt ids radjax
  generates from (images as content items, as HF processors pass them)."""
  tok = _tokenizer(bpe_json, fmt)
  f = chat.get_format(fmt)
  enc = chat.ConversationEncoder(tok, f, image_tokens=1, system_prompt='SYS')
  template = jinja2.Environment().from_string(chat.chat_template(f, 'SYS'))
  messages = [{'role': 'user', 'content': [{'type': 'image'},
                                           {'type': 'text', 'text': TURNS[0]['text']}]},
              *({'role': t['role'], 'content': t['text']} for t in TURNS[1:3])]
  text = template.render(messages=messages, add_generation_prompt=True, bos_token='<s>',
                         eos_token='</s>')
  assert tok.encode(text, add_special_tokens=False) == enc.prompt(TURNS[:3], 1)
  full = template.render(messages=messages + [{'role': 'assistant', 'content': 'No.'}],
                         add_generation_prompt=False, bos_token='<s>', eos_token='</s>')
  ids = enc.encode(TURNS, 1, 'r')[0]
  if fmt == 'vicuna':
    # Text runs straight into the answer ("Doctor: " + "Yes"): radjax tokenises the answer
    # on its own, as the model then generates it; the rendered text reads the same.
    assert tok.decode(tok.encode(full, add_special_tokens=False)) == tok.decode(ids)
  else:
    assert tok.encode(full, add_special_tokens=False) == ids


def _sentencepiece_dir(tmp_path, lines=None):
  """A LLaMA-style sentencepiece tokenizer.model (BPE, byte fallback), trained on `lines`."""
  import sentencepiece as spm
  lines = lines or ['The heart is normal in size.', 'There is a small left pleural effusion.',
                    'No pneumothorax.', 'Is there an effusion? Yes, on the left.'] * 20
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                 vocab_size=400, model_type='bpe', bos_id=1, eos_id=2, unk_id=0,
                                 pad_id=-1, byte_fallback=True, minloglevel=2)
  (tmp_path / 'tokenizer.model').write_bytes(model.getvalue())
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps(
      {'tokenizer_class': 'LlamaTokenizer', 'bos_token': '<s>', 'eos_token': '</s>',
       'unk_token': '<unk>'}))
  return str(tmp_path)


@pytest.mark.parametrize('config', ['none', 'blank_specials'])
def test_a_llama_sentencepiece_dir_encodes_as_sentencepiece(tmp_path, config):
  """A bare tokenizer.model (AutoTokenizer's generic reading dropped the first word's '▁'),
  and an early LLaMA export's tokenizer_config.json with '' for bos/eos/unk, as RadFM's
  Language_files has (transformers recursed on it): both read as LLaMA's tokenizer."""
  import sentencepiece as spm
  path = _sentencepiece_dir(tmp_path)
  if config == 'none':
    os.remove(os.path.join(path, 'tokenizer_config.json'))
  else:
    (tmp_path / 'tokenizer_config.json').write_text(json.dumps(
        {'tokenizer_class': 'LlamaTokenizer', 'bos_token': '', 'eos_token': '',
         'unk_token': ''}))
  tok = tokens.load_tokenizer(path)
  sp = spm.SentencePieceProcessor(model_file=os.path.join(path, 'tokenizer.model'))
  text = 'Is there an effusion? The heart is normal in size.'
  assert tok(text, add_special_tokens=False)['input_ids'] == sp.encode(text)
  assert (tok.bos_token, tok.eos_token, tok.unk_token) == ('<s>', '</s>', '<unk>')
  assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)


def test_plain_format_gives_radfms_ids_with_a_sentencepiece_tokenizer(tmp_path):
  """RadFM trains on tokenizer(question + ' ' + answer) + EOS with the question's own
  tokens masked, and prompts with tokenizer(question): no lone space token between."""
  tok = chat.prepare_tokenizer(tokens.load_tokenizer(_sentencepiece_dir(tmp_path)), chat.PLAIN,
                               images=False)
  enc = chat.ConversationEncoder(tok, chat.PLAIN)
  q, a = 'Is there an effusion?', 'Yes, on the left.'
  ids, weights = enc.encode([{'role': 'user', 'text': q}, {'role': 'assistant', 'text': a}],
                            0, 'r')
  def bos_and(text):  # RadFM's LlamaTokenizer puts BOS first
    return [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
  question = bos_and(q)
  assert ids == bos_and(q + ' ' + a) + [tok.eos_token_id]
  assert weights == [0] * len(question) + [1] * (len(ids) - len(question))
  assert enc.prompt([{'role': 'user', 'text': q}], 0) == question


def test_plain_format_puts_images_straight_before_the_question_as_radfm(tmp_path):
  """RadFM inserts '<image>' + placeholders + '</image>' into the question's text with
  nothing between: the question's tokens follow the image's directly."""
  tok = chat.prepare_tokenizer(tokens.load_tokenizer(_sentencepiece_dir(tmp_path)), chat.PLAIN,
                               images=True, delimiters=True)
  enc = chat.ConversationEncoder(tok, chat.PLAIN, image_tokens=2, image_delimiters=True)
  q, a = 'Is there an effusion?', 'Yes, on the left.'
  ids, _ = enc.encode([{'role': 'user', 'text': q}, {'role': 'assistant', 'text': a}], 1, 'r')
  image = [tok.convert_tokens_to_ids(t) for t in
           (chat.IMAGE_BEGIN, chat.IMAGE_MARK, chat.IMAGE_MARK, chat.IMAGE_END)]
  text = tok.encode(q + ' ' + a, add_special_tokens=False)
  assert ids == [tok.bos_token_id] + image + text + [tok.eos_token_id]


@pytest.mark.parametrize('fmt', ['vicuna', 'llava', 'chatml', 'dolly'])
def test_sentencepiece_tokenizer_gets_the_missing_specials(tmp_path, fmt):
  """A LLaMA/Vicuna tokenizer.model directory: the format's markers and <image> are added
  after the base vocabulary, always with the same ids; pad falls back to EOS."""
  path = _sentencepiece_dir(tmp_path)
  f = chat.get_format(fmt)
  tok = chat.prepare_tokenizer(tokens.load_tokenizer(path), f, images=True)
  again = chat.prepare_tokenizer(tokens.load_tokenizer(path), f, images=True)
  added = list(f.specials) + ['<image>']
  assert [tok.convert_tokens_to_ids(t) for t in added] == list(range(400, 400 + len(added)))
  assert again.get_vocab() == tok.get_vocab() and len(tok) == 400 + len(added)
  assert tok.pad_token_id == tok.eos_token_id == 2
  enc = chat.ConversationEncoder(tok, f, image_tokens=2)
  arrays = enc.training_arrays(TURNS[:2], 1, 192, 'r')
  trained = arrays['targets'][arrays['loss_mask'] > 0]
  assert 'Yes, on the left.' in tok.decode(trained, skip_special_tokens=True)
  assert (arrays['tokens'] == enc.image_id).sum() == 2
  assert not np.isin(arrays['targets'][arrays['loss_mask'] > 0], [enc.image_id]).any()


def _llava_15_tokenizer(kind: str, bpe_json: str, tmp_path):
  """A tokenizer that adds BOS when it encodes, as LLaVA-1.5's does, with its HF chat
  template: the byte-level BPE, or a sentencepiece LLaMA tokenizer in the layout LLaMA's
  tokenizer.json has (every piece of text after '▁' and with spaces as '▁')."""
  from tokenizers import normalizers, processors
  if kind == 'bpe':
    tok = _tokenizer(bpe_json, 'llava')
  else:
    tok = chat.prepare_tokenizer(tokens.load_tokenizer(_sentencepiece_dir(tmp_path)),
                                 chat.LLAVA, images=True)
    tok.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend('▁'), normalizers.Replace(' ', '▁')])
    tok.backend_tokenizer.pre_tokenizer = None
  tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
      single='<s> $A', special_tokens=[('<s>', tok.bos_token_id)])
  tok.chat_template = hf_models.LLAVA_15_CHAT_TEMPLATE
  return tok


@pytest.mark.parametrize('kind', ['bpe', 'sentencepiece'])
def test_llava_format_gives_the_ids_of_llava_15s_hf_chat_template(bpe_json, tmp_path, kind):
  """A multi-turn prompt is the ids LlavaProcessor feeds LLaVA-1.5: its chat template's
  text, encoded with the BOS its tokenizer adds. Training ends the last answer with </s>
  where that template leaves a space, and trains only the answers and that </s>."""
  tok = _llava_15_tokenizer(kind, bpe_json, tmp_path)
  enc = chat.ConversationEncoder(tok, chat.LLAVA, image_tokens=1)
  messages = [{'role': t['role'], 'content': [{'type': 'text', 'text': t['text']}]}
              for t in TURNS]
  messages[0]['content'].insert(0, {'type': 'image'})
  prompt = tok.apply_chat_template(messages[:3], tokenize=False, add_generation_prompt=True)
  assert prompt == ('USER: <image>\nIs there an effusion? ASSISTANT: Yes, on the left. '
                    'USER: Is the heart enlarged? ASSISTANT:')
  assert enc.prompt(TURNS[:3], 1) == tok(prompt)['input_ids']
  full = tok.apply_chat_template(messages, tokenize=False)
  assert full.endswith('ASSISTANT: No. ')
  ids, weights = enc.encode(TURNS, 1, 'r')
  assert ids == tok(full.removesuffix(' '))['input_ids'] + [tok.eos_token_id]
  trained = [i for i, w in zip(ids, weights) if w]
  assert tok.decode(trained).strip() == 'Yes, on the left. No.</s>'


@pytest.mark.parametrize('fmt', ['chatml', 'dolly'])
def test_an_exported_vlm_prompt_of_a_format_without_bos_gets_none(tmp_path, fmt):
  """A Llava processor encodes the rendered prompt with the tokenizer's specials: a LLaMA
  tokenizer then prefixed chatml's and dolly's prompt with <s>, which radjax's ids lack.
  The export's tokenizer adds none for such a format, also once saved and loaded."""
  import transformers

  from radjax.convert import export
  folder = _sentencepiece_dir(tmp_path)
  settings = json.loads((tmp_path / 'tokenizer_config.json').read_text())
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps({**settings,
                                                              'add_bos_token': True}))
  tok = chat.prepare_tokenizer(tokens.load_tokenizer(folder), chat.get_format(fmt), True)
  assert tok('Hi')['input_ids'][0] == tok.bos_token_id  # LLaMA's tokenizer adds it
  ours = chat.ConversationEncoder(tok, chat.get_format(fmt), image_tokens=1).prompt(
      [{'role': 'user', 'text': '<image> Hi'}], 1)
  export._no_bos_on_encode(tok)
  tok.chat_template = chat.chat_template(chat.get_format(fmt), '', bos=False)
  tok.save_pretrained(tmp_path / 'out')
  back = transformers.AutoTokenizer.from_pretrained(tmp_path / 'out')
  text = back.apply_chat_template([{'role': 'user', 'content': [
      {'type': 'image'}, {'type': 'text', 'text': ' Hi'}]}], add_generation_prompt=True,
      tokenize=False)
  theirs = back(text)['input_ids']
  assert theirs[0] == ours[0] != tok.bos_token_id


def test_special_token_strings_in_text_stay_text(bpe_json):
  """A report or question holding a special token's string ('</s>', '<|end|>', '<image>')
  was encoded as that token: EOS and the turn marker trained mid-answer, a fourth image
  placeholder for one image of three. Now they are characters, decoding back exactly."""
  tok = _tokenizer(bpe_json, 'radjax')
  enc = chat.ConversationEncoder(tok, chat.RADJAX, image_tokens=3)
  sp = tokens.special_ids(tok)
  answer = 'Heart normal.</s> See <image> and <|end|><|assistant|>Pneumothorax.'
  ids, weights = enc.encode([{'role': 'user', 'text': 'Describe <pad>.'},
                             {'role': 'assistant', 'text': answer}], 1, 'r')
  assert ids.count(sp['image']) == 3 and ids.count(sp['eos']) == 1 and ids[-1] == sp['eos']
  assert ids.count(sp['end']) == 2 and ids.count(sp['assistant']) == 1
  assert sp['pad'] not in ids
  start = ids.index(sp['assistant']) + 1
  assert enc.decode_answer(ids[start:]) == answer
  prompt = enc.prompt([{'role': 'user', 'text': 'Is it </s><|assistant|>?'}], 1)
  assert prompt.count(sp['assistant']) == 1 and prompt[-1] == sp['assistant']
  assert sp['eos'] not in prompt
  # A lone surrogate (undecodable bytes in --prompt) was the tokenizer's TypeError.
  with pytest.raises(schema.SchemaError, match="record 'q': turn 0: not UTF-8 text"):
    enc.prompt([{'role': 'user', 'text': 'lone \udcff byte'}], 1, 'q')
  # Text without such strings: the tokenizer's own ids, as before.
  assert chat.without_images([{'role': 'user', 'text': '<image> Q'},
                              {'role': 'assistant', 'text': 'A <image>'}]) == [
      {'role': 'user', 'text': 'Q'}, {'role': 'assistant', 'text': 'A <image>'}]
  plain = 'Heart normal. See image and end.'
  assert enc._text_ids(plain) == tok.encode(plain, add_special_tokens=False)


def test_llm_cxr_codes_written_as_text_stay_tokens_beside_literal_markers(bpe_json):
  tok = PreTrainedTokenizerFast(tokenizer_object=__import__('tokenizers').Tokenizer.from_str(
      bpe_json), bos_token='<s>', eos_token='</s>', pad_token='<pad>', unk_token='<unk>')
  chat.prepare_tokenizer(tok, chat.DOLLY, images=False, codebook_size=16)
  enc = chat.ConversationEncoder(tok, chat.DOLLY)
  codes = chat.render_codes([3, 15, 0], 16)
  first, _ = chat.code_ids(tok, 16)
  begin, end = (tok.convert_tokens_to_ids(t) for t in (chat.IMAGE_BEGIN, chat.IMAGE_END))
  ids = enc._text_ids(f'Drawn ### End {codes} </s>')
  assert [i for i in ids if i >= first] == [begin, first + 3, first + 15, first, end]
  assert tok.convert_tokens_to_ids('### End') not in ids and tok.eos_token_id not in ids
  assert enc._text_ids(codes) == tok.encode(codes, add_special_tokens=False)


def test_image_marks_in_a_system_prompt_or_turn_are_refused(bpe_json):
  """A system prompt's <image> took a second run of placeholders for one image."""
  tok = _tokenizer(bpe_json, 'chatml')
  with pytest.raises(ValueError, match='config.data.system_prompt: <image>'):
    chat.ConversationEncoder(tok, chat.CHATML, image_tokens=3, system_prompt='See <image>.')
  enc = chat.ConversationEncoder(tok, chat.CHATML, image_tokens=3)
  with pytest.raises(schema.SchemaError, match="record 'r': <image> in a system turn"):
    enc.encode([{'role': 'system', 'text': 'See <image>.'},
                {'role': 'user', 'text': 'Q'}, {'role': 'assistant', 'text': 'A'}], 1, 'r')


def test_literal_marker_text_is_thread_safe_and_plain_added_tokens_stay_text(bpe_json):
  """split_special_tokens=True on the shared tokenizer flipped a setting every Grain read
  thread reads: another thread's LLM-CXR codes came out as characters, its '</s>' as EOS
  (57 of 4,000 encodings). GPT-NeoX's added runs of spaces are not special: ordinary text."""
  import threading
  tok = PreTrainedTokenizerFast(tokenizer_object=__import__('tokenizers').Tokenizer.from_str(
      bpe_json), bos_token='<s>', eos_token='</s>', pad_token='<pad>', unk_token='<unk>')
  tok.add_tokens(['    '])  # not special, as GPT-NeoX's whitespace runs
  chat.prepare_tokenizer(tok, chat.DOLLY, images=False, codebook_size=16)
  enc = chat.ConversationEncoder(tok, chat.DOLLY)
  assert not enc._has_markers('a    b') and enc._has_markers('a </s> b')
  texts = [f'{chat.render_codes([k % 16, 3], 16)} done' for k in range(8)] + [
      f'report {k} </s> ends' for k in range(8)]
  want = [enc._text_ids(t) for t in texts]
  bad = []

  def work():
    for _ in range(40):
      for t, w in zip(texts, want):
        if enc._text_ids(t) != w:
          bad.append(t)
  threads = [threading.Thread(target=work) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not bad and tok.eos_token_id not in want[-1]


def test_decoding_stops_at_the_first_stop_id_whatever_follows(bpe_json):
  enc = chat.ConversationEncoder(_tokenizer(bpe_json, 'radjax'), chat.RADJAX, 3)
  ids = enc.tokenizer.encode('Clear.', add_special_tokens=False)
  more = enc.tokenizer.encode(' Large effusion.', add_special_tokens=False)
  for stop in enc.stop_ids:
    assert enc.decode_answer(ids + [stop] + more) == 'Clear.'
