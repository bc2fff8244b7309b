"""Chat formats: conversation turns -> token ids with a loss mask, for training and for
generation prompts.

A format is a few pieces per kind of turn. A piece is text (tokenised as is, `{text}`
replaced by the turn's text) or `Special(token)`, one id of the tokenizer's vocabulary
(added to a tokenizer that lacks it; BOS / EOS are the tokenizer's own). Loss falls on
every assistant answer, its closing pieces and the final pieces, nothing else; image
placeholders never carry loss. `always_trained` tokens carry it wherever they stand.

Images: image k goes where the k-th `<image>` mark stands in user text; a conversation
with no marks gets them at the start of its first user turn (LLaVA's convention), or
right after the opening pieces when it has no user turn. With `image_delimiters` each
image's placeholder run is wrapped in `<image_begin>` ... `<image_end>`, two tokens whose
embeddings are learned (RadFM's `<image>` / `</image>`).

Keyword weights (RadFM's reweighted loss, radjax/data/keywords.py): answer tokens that
overlap a listed term get weight w instead of 1; the loss divides by the summed weights.
"""
import copy
import dataclasses
import functools
import re

import numpy as np

from radjax.data import keywords as keywords_lib
from radjax.data import schema

IMAGE_MARK = '<image>'
IMAGE_BEGIN, IMAGE_END = '<image_begin>', '<image_end>'


CODE_TOKEN = '<code_{}>'


def image_tokens_needed(images: bool, delimiters: bool = False,
                        codebook_size: int = 0) -> list[str]:
  """The vocabulary entries a model's prompts use besides the chat format's: `<image>`
  for a VLM; the delimiters; and, for a decoder that reads and writes images as VQ-GAN
  codes (LLM-CXR), one token per code, in code order, then the delimiters: code k is
  id len(tokenizer) + k, the row LLM-CXR's checkpoints keep it in."""
  out = [IMAGE_MARK] if images else []
  out += [CODE_TOKEN.format(k) for k in range(codebook_size)]
  return out + ([IMAGE_BEGIN, IMAGE_END] if delimiters or codebook_size else [])


def never_generated(tokenizer, vocab_size: int, images: bool) -> tuple[int, ...]:
  """Ids generation must not produce: a VLM's image tokens (the placeholder and any
  delimiters its prompts hold), and the embedding rows past the tokenizer (vocabulary
  padding; e.g. RadFM's head, 32000 wide, has none of them)."""
  vocab = tokenizer.get_vocab()
  ids = ({vocab[t] for t in image_tokens_needed(True, True) if t in vocab} if images
         else set())
  return tuple(sorted(ids | set(range(len(tokenizer), vocab_size))))


def render_codes(codes, codebook_size: int, record_id: str = '', num_codes: int = 0) -> str:
  """An image's VQ-GAN codes as text the tokenizer reads as one token each, wrapped in
  the delimiters: '<image_begin><code_12><code_7>...<image_end>'. num_codes > 0: the
  count an image must have (the codec's grid, LLM-CXR's 16 x 16 = 256); another count
  is an error naming the record, not a shorter or longer image to train on."""
  codes = [int(c) for c in codes]
  if num_codes and len(codes) != num_codes:
    raise schema.SchemaError(f'record {record_id!r}: codes: {len(codes)} codes, but an image '
                             f"has {num_codes} (the codec's grid; config.data.codes_per_image)")
  bad = [c for c in codes if not 0 <= c < codebook_size]
  if bad:
    raise schema.SchemaError(f'record {record_id!r}: codes: {bad[:3]} outside the codebook '
                             f'(config.data.codebook_size={codebook_size})')
  return IMAGE_BEGIN + ''.join(CODE_TOKEN.format(c) for c in codes) + IMAGE_END


def code_ids(tokenizer, codebook_size: int) -> tuple[int, int]:
  """[first, end) ids of the code tokens (added in order, so contiguous)."""
  first = tokenizer.convert_tokens_to_ids(CODE_TOKEN.format(0))
  last = tokenizer.convert_tokens_to_ids(CODE_TOKEN.format(codebook_size - 1))
  if last - first != codebook_size - 1:
    raise ValueError(f"the tokenizer's {codebook_size} code tokens are not contiguous ids")
  return first, first + codebook_size


def without_images(turns: list[dict]) -> list[dict]:
  """The turns with the `<image>` marks of their questions removed (for a text-only
  model); an answer's text is its own (an '<image>' there is characters)."""
  return [t if t['role'] == 'assistant' else
          {**t, 'text': t['text'].replace(IMAGE_MARK, '').strip()} for t in turns]


@dataclasses.dataclass(frozen=True)
class Special:
  token: str  # a vocabulary entry, or BOS / EOS for the tokenizer's own


BOS, EOS = Special('<bos>'), Special('<eos>')


@dataclasses.dataclass(frozen=True)
class ChatFormat:
  name: str
  begin: tuple = (BOS,)  # opens every sequence
  system: tuple = ()  # a system turn ('' when the format has none)
  no_system: tuple = ()  # in the system turn's place when there is none
  user: tuple = ('{text}',)
  assistant_open: tuple = ()  # before an answer (prompt side)
  assistant_close: tuple = ()  # after an answer (trained)
  separator: tuple = ()  # after assistant_close (not trained)
  finish: tuple = (EOS,)  # after the last answer (trained)
  default_system: str = ''
  stop_strings: tuple = ()  # generation stops at these (besides the stop ids)
  image_sep: str = '\n'  # between prepended images and the user's text
  # An answer joined to its question by this text and tokenised with it (RadFM:
  # tokenizer(question + ' ' + answer)), and the text after it tokenised after it (as in
  # the one string an HF chat template renders); the generation prompt is the question alone.
  answer_sep: str = ''
  image_wrap: tuple = ('', '')  # plain text around each image's placeholders (XrayGPT's <Img>)

  @property
  def specials(self) -> tuple[str, ...]:
    """Vocabulary entries this format needs, in a fixed order."""
    out = []
    for pieces in (self.begin, self.system, self.no_system, self.user, self.assistant_open,
                   self.assistant_close, self.separator, self.finish):
      out += [p.token for p in pieces if isinstance(p, Special) and p not in (BOS, EOS)]
    return tuple(dict.fromkeys(out))


# radjax's own layout (the embedded default and every radjax tokenizer).
RADJAX = ChatFormat(
    'radjax', system=(Special('<|system|>'), '{text}', Special('<|end|>')),
    user=(Special('<|user|>'), '{text}', Special('<|end|>')),
    assistant_open=(Special('<|assistant|>'),), assistant_close=(Special('<|end|>'),))
# Vicuna v1's '###' turns as XrayGPT's stage 2 trains them ('###Patient: {} ###Doctor: ',
# the image as '<Img><ImageHere></Img> ' before the instruction, the answer closed by '###',
# no system prompt): plain text markers, no added tokens. Later turns follow the answer's
# '###' ('...a1###Patient: q2 ###Doctor: '); a system prompt, when set, comes first and
# takes the first '###' ('SYS###Patient: ', as XrayGPT's CONV_VISION and FastChat's '###'
# conversations write it).
VICUNA = ChatFormat(
    'vicuna', begin=(BOS,), system=('{text}###',), no_system=('###',),
    user=('Patient: {text} ',),
    assistant_open=('###Doctor: ',), assistant_close=('###',), finish=(),
    stop_strings=('###',), image_sep=' ', image_wrap=('<Img>', '</Img>'))
# LLaVA-1.5 as its Hugging Face chat template renders it (llava-hf's LlavaProcessor, also
# llava-v1.6-vicuna): 'USER: <image>\nq ASSISTANT: a USER: q2 ASSISTANT: a2</s>', BOS first
# (the processor's tokenizer adds it), the answer after 'ASSISTANT:' and a space, tokenised
# with the text around it; no system prompt unless set ('{system} USER: ...'). Later turns
# follow an answer after a space, not the '</s>' LLaVA's own training put there; the last
# answer ends with '</s>'. Set config.data.system_prompt to LLaVA's ('A chat between a
# curious user and an artificial intelligence assistant. The assistant gives helpful,
# detailed, and polite answers to the user's questions.') for its training prompt.
LLAVA = ChatFormat(
    'llava', system=('{text} ',), user=('USER: {text} ',), assistant_open=('ASSISTANT:',),
    answer_sep=' ', separator=(' ',))
# ChatML with a system prompt (Qwen2, RadVLM).
CHATML = ChatFormat(
    'chatml', begin=(),
    system=(Special('<|im_start|>'), 'system\n{text}', Special('<|im_end|>'), '\n'),
    user=(Special('<|im_start|>'), 'user\n{text}', Special('<|im_end|>'), '\n'),
    assistant_open=(Special('<|im_start|>'), 'assistant\n'),
    assistant_close=(Special('<|im_end|>'),), separator=('\n',), finish=(),
    default_system='You are a helpful assistant.')  # RadVLM's (LLaVA-OneVision's qwen_1_5)
# The Dolly instruction format (LLM-CXR), its markers single tokens: dolly-v2's
# '### Instruction:' and '### End', and '### Response:\n' (newline included), which LLM-CXR
# adds to dolly-v2-3b's tokenizer (id 50280) and prepare_tokenizer adds where missing.
DOLLY = ChatFormat(
    'dolly', begin=(), system=('{text}\n\n',),
    user=(Special('### Instruction:'), '\n{text}\n\n'),
    assistant_open=(Special('### Response:\n'),),
    assistant_close=('\n\n', Special('### End')), finish=(),
    default_system=('Follow the instruction below and write the answer it asks for.'))
# RadFM's plain question and answer: no markers, the answer after a space, the two
# tokenised as one text (so no lone space token between them); images prepended straight
# before the question, as RadFM inserts its image strings into the text (no separator).
PLAIN = ChatFormat('plain', user=('{text}',), answer_sep=' ', image_sep='')
# No prompt at all: images then the answer (a decoder on plain text; XrayGPT stage 1 at
# size=tiny).
NONE = ChatFormat('none')
# XrayGPT's stage 1 exactly (MiniGPT-4's first stage): BOS, the images, then the caption
# closed by end_sym '\n' (tokenised with it, as `tokenizer(caption + end_sym)`), no EOS.
CAPTION = ChatFormat('caption', finish=('\n',), stop_strings=('\n',))
# Plain text as the tokenizer encodes it, with no BOS first: an imported decoder whose
# tokenizer has a BOS but never adds it (GPT-NeoX / Pythia / dolly-v2), so a prompt's ids
# are those HF's `tokenizer(prompt)` gives.
TEXT = ChatFormat('text', begin=())

FORMATS = {f.name: f for f in (RADJAX, VICUNA, LLAVA, CHATML, DOLLY, PLAIN, NONE, TEXT,
                               CAPTION)}


def get_format(name: str) -> ChatFormat:
  if name not in FORMATS:
    raise ValueError(f'config.data.chat_format: {name!r} is not one of {sorted(FORMATS)}')
  return FORMATS[name]


def prepare_tokenizer(tokenizer, fmt: ChatFormat, images: bool, delimiters: bool = False,
                      codebook_size: int = 0):
  """Adds what `fmt` (and `<image>`, with `delimiters` also `<image_begin>` /
  `<image_end>`, for a VLM; the code tokens for `codebook_size`) needs and the tokenizer
  lacks, in a fixed order so the same base tokenizer always gets the same ids; a
  tokenizer without a pad token pads with EOS (padding is masked). Returns the tokenizer
  (changed in place)."""
  vocab = tokenizer.get_vocab()
  needed = list(fmt.specials) + image_tokens_needed(images, images and delimiters,
                                                    codebook_size)
  missing = [t for t in needed if t not in vocab]
  if missing:
    tokenizer.add_tokens(missing, special_tokens=True)
  if tokenizer.eos_token_id is None:
    raise ValueError(f'the tokenizer has no EOS token; chat format {fmt.name!r} needs one')
  if tokenizer.pad_token_id is None:
    tokenizer.pad_token = tokenizer.eos_token
  return tokenizer


def literal_copy(tokenizer):
  """A copy of `tokenizer` that reads special tokens' strings as characters. A copy: the
  call's split_special_tokens=True flips a setting of the fast tokenizer every Grain read
  thread shares (another thread's codes then came out as characters)."""
  literal = copy.deepcopy(tokenizer)
  literal.split_special_tokens = True
  if hasattr(literal, '_tokenizer'):  # a fast tokenizer's backend
    literal._tokenizer.encode_special_tokens = True  # pylint: disable=protected-access
  return literal


def _marker_patterns(tokenizer, vocab: dict):
  """(a pattern of the special tokens' strings text must not become, a pattern of those
  radjax writes as text: the code tokens and their delimiters of a tokenizer that has
  codes (render_codes), else None). Added tokens that are not special (GPT-NeoX's runs of
  spaces) are ordinary text."""
  specials = set(tokenizer.all_special_tokens) | {
      t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
  written = set()
  if CODE_TOKEN.format(0) in vocab:
    written = {t for t in specials if re.fullmatch(r'<code_\d+>', t)} | {IMAGE_BEGIN, IMAGE_END}
  guarded = sorted((t for t in specials - written if t), key=len, reverse=True)

  def pattern(tokens, group=False):
    body = '|'.join(map(re.escape, tokens))
    return re.compile(f'({body})' if group else body) if tokens else None
  return pattern(guarded), pattern(sorted(written, key=len, reverse=True), group=True)


class _JoinedAnswer(str):
  """An answer to tokenise in the context of its question (ChatFormat.answer_sep)."""


@dataclasses.dataclass
class ConversationEncoder:
  """Turns ({'role', 'text'} dicts) -> static-length arrays, in one chat format."""
  tokenizer: object
  fmt: ChatFormat
  image_tokens: int = 0  # placeholders per image (0: a text-only model)
  system_prompt: str = ''  # '' = the format's default
  too_long: str = 'drop'  # 'drop' (TooLong) | 'truncate'
  image_delimiters: bool = False  # <image_begin> placeholders <image_end> per image
  keywords: keywords_lib.KeywordWeights | None = None  # reweights answer tokens
  max_targets: int = 0  # > 0: at most this many loss-bearing tokens (config.data.max_target_tokens)
  # Texts of one token each whose token carries loss wherever it stands, prompt included
  # (config.data.always_trained; RadVLM's unmask_tokens_idx).
  always_trained: tuple = ()
  # Vocabulary entries at which generation stops too (config.eval.stop_tokens; Llama-3's
  # <|eot_id|> beside its EOS).
  stop_tokens: tuple = ()
  # The assistant's opening and the separator after its turn carry loss too, and the last
  # turn gets its separator (config.data.train_assistant_turn; LLaVA-NeXT's preprocess_qwen
  # trains '<|im_start|>assistant\n...<|im_end|>\n' whole).
  train_assistant_turn: bool = False
  # 'token' | 'example': each example's loss mask scaled to sum to 1 (config.data.loss_norm).
  loss_norm: str = 'token'

  def __post_init__(self):
    if self.too_long not in ('drop', 'truncate'):
      raise ValueError(f"config.data.too_long: {self.too_long!r} is not 'drop' or 'truncate'")
    if self.loss_norm not in ('token', 'example'):
      raise ValueError(f"config.data.loss_norm: {self.loss_norm!r} is not 'token' or 'example'")
    vocab = self.tokenizer.get_vocab()
    needed = list(self.fmt.specials) + image_tokens_needed(
        bool(self.image_tokens), bool(self.image_tokens) and self.image_delimiters)
    missing = [t for t in needed if t not in vocab]
    if missing:
      raise ValueError(f'chat format {self.fmt.name!r}: the tokenizer lacks {missing} '
                       '(radjax.data.chat.prepare_tokenizer adds them)')
    self.special_ids = {t: vocab[t] for t in needed}
    self.image_id = self.special_ids.get(IMAGE_MARK)
    self.image_run = [self.image_id] * self.image_tokens
    if self.image_tokens and self.image_delimiters:
      self.image_run = ([self.special_ids[IMAGE_BEGIN]] + self.image_run
                        + [self.special_ids[IMAGE_END]])
    self.image_ids = frozenset(self.image_run)  # never carry loss
    t = self.tokenizer
    self.bos, self.eos, self.pad = t.bos_token_id, t.eos_token_id, t.pad_token_id
    self.system = self.system_prompt or self.fmt.default_system
    if IMAGE_MARK in self.system:
      raise ValueError(f'config.data.system_prompt: {IMAGE_MARK} in it; images go in a user '
                       'turn')
    self.always_ids = set()
    for text in self.always_trained:
      ids = self.tokenizer.encode(text, add_special_tokens=False)
      if len(ids) != 1:
        raise ValueError(f'config.data.always_trained: {text!r} is {len(ids)} tokens, not one')
      if ids[0] in self.image_ids:
        raise ValueError(f'config.data.always_trained: {text!r} is an image placeholder, '
                         'which never carries loss')
      self.always_ids.add(ids[0])
    # Generation stops at the end of an answer: the closing special, else EOS.
    closing = [p for p in self.fmt.assistant_close if isinstance(p, Special)]
    missing = [t for t in self.stop_tokens if t not in vocab]
    if missing:
      raise ValueError(f'config.eval.stop_tokens: {missing} not in the tokenizer')
    self.stop_ids = tuple(dict.fromkeys(
        [self.special_ids[p.token] for p in closing] + [self.eos]
        + [vocab[t] for t in self.stop_tokens]))
    self._markers, self._written = _marker_patterns(self.tokenizer, vocab)
    self._literal = None if self._markers is None else literal_copy(self.tokenizer)

  # ---- pieces -> segments -> ids ---------------------------------------------------
  # A segment is text (str) or ids (list). Adjacent text of one weight is tokenised as one
  # string, so a prompt's ids are those of its rendered text (what HF's chat template gives).
  def _pieces(self, pieces, text: str = '', runs=None) -> list:
    out = []
    for p in pieces:
      if p == BOS:
        out += [] if self.bos is None else [[self.bos]]
      elif p == EOS:
        out.append([self.eos])
      elif isinstance(p, Special):
        out.append([self.special_ids[p.token]])
      else:
        out += self._with_images(p.replace('{text}', text), runs)
    return out

  def _with_images(self, s: str, runs=None) -> list:
    """Text with `<image>` marks: each mark becomes image_tokens placeholders (wrapped in
    the delimiters when the encoder has them), or the next of `runs` (an iterator of the
    images' own runs, in order)."""
    parts = s.split(IMAGE_MARK)
    before, after = self.fmt.image_wrap
    out = [parts[0] + (before if len(parts) > 1 else '')]
    for i, part in enumerate(parts[1:], 1):
      run = self.image_run if runs is None else next(runs, None)
      if run is None:
        raise ValueError(f'more {IMAGE_MARK} marks than images (one in '
                         'config.data.system_prompt?)')
      out += [list(run), after + part + (before if i < len(parts) - 1 else '')]
    return out

  def _image_runs(self, num_images: int, image_tokens, record_id: str):
    """An iterator of each image's placeholder run when the images' counts differ (AnyRes:
    `image_tokens`, one count per image), else None (every image's run is image_run)."""
    if image_tokens is None:
      return None
    if len(image_tokens) != num_images:
      raise ValueError(f'record {record_id!r}: {len(image_tokens)} image token counts for '
                       f'{num_images} images')
    runs = []
    for n in image_tokens:
      run = [self.image_id] * int(n)
      if self.image_delimiters:
        run = [self.special_ids[IMAGE_BEGIN]] + run + [self.special_ids[IMAGE_END]]
      runs.append(run)
    return iter(runs)

  def _tokenize(self, segments: list[tuple]) -> tuple[list[int], list[int]]:
    ids, weights, text, text_w = [], [], '', 0
    # A joined format's (answer_sep) answer text that the pending text directly follows:
    # that text is tokenised after it, as in the one string HF's chat template renders.
    after = ''

    def flush():
      if not text:
        return
      if text_w and self.keywords is not None:
        new, token_w = self.keywords.token_weights(
            self._literal if self._has_markers(text) else self.tokenizer, text)
        weights.extend(float(text_w * w) for w in token_w)
      else:
        new = (self._in_context(after, text) if after and not text_w else
               self._text_ids(text))
        weights.extend([text_w] * len(new))
      ids.extend(new)

    for seg, w in segments:
      if isinstance(seg, _JoinedAnswer):
        seg = self._answer_in_context(text if text_w == 0 else '', seg)
      if isinstance(seg, str):
        if text and w != text_w:
          flush()
          after = text if text_w and self.fmt.answer_sep else ''
          text = ''
        text, text_w = text + seg, w
      else:
        flush()
        text, after = '', ''
        ids.extend(seg)
        weights.extend([0 if t in self.image_ids else w for t in seg])
    flush()
    return ids, weights

  def _in_context(self, before: str, text: str) -> list[int]:
    """Ids of `text` as they stand after `before` in one tokenised string (a sentencepiece
    tokenizer's space before the next 'USER:' is then no extra piece), where that string
    splits into `before`'s own ids and the rest; else `text`'s own ids."""
    enc = self._text_ids
    head, full = enc(before), enc(before + text)
    return full[len(head):] if full[:len(head)] == head else enc(text)

  def _has_markers(self, text: str) -> bool:
    return bool(self._markers and self._markers.search(text))

  def _text_ids(self, text: str) -> list[int]:
    """Ids of text from a record or a user: a special token's string in it ('</s>',
    '<|im_end|>', '<image>' in an answer) is its characters, never the token (an EOS or
    turn marker learnt mid-answer, an extra image placeholder). Only the code tokens and
    their delimiters radjax writes as text (render_codes) stay tokens."""
    enc = functools.partial(self.tokenizer.encode, add_special_tokens=False)
    if not self._has_markers(text):  # the usual text: exactly the tokenizer's ids
      return enc(text)
    literal = functools.partial(self._literal.encode, add_special_tokens=False)
    if self._written is None:
      return literal(text)
    ids = []
    for i, piece in enumerate(self._written.split(text)):  # odd pieces: written tokens
      if piece:
        ids += enc(piece) if i % 2 else literal(piece)
    return ids

  def _place_images(self, turns: list[dict], num_images: int, record_id: str) -> list[dict]:
    marks = sum(t['text'].count(IMAGE_MARK) for t in turns if t['role'] == 'user')
    if marks == 0 and num_images:
      turns = list(turns)
      lead = IMAGE_MARK * num_images
      first = next((i for i, t in enumerate(turns) if t['role'] == 'user'), None)
      if first is None:
        return [{'role': '_images', 'text': lead}] + turns
      turns[first] = {**turns[first], 'text': lead + self.fmt.image_sep + turns[first]['text']}
      return turns
    if marks != num_images:
      raise schema.SchemaError(f'record {record_id!r}: conversation has {marks} {IMAGE_MARK} '
                               f'marks but the record has {num_images} images')
    return turns

  def encode(self, turns: list[dict], num_images: int, record_id: str,
             add_generation_prompt: bool = False, image_tokens=None
             ) -> tuple[list[int], list[int]]:
    """(ids, weights): the whole conversation; with add_generation_prompt the turns end
    on a user turn and the ids end where the answer would start. image_tokens: each
    image's placeholder count, where they differ (AnyRes)."""
    for i, turn in enumerate(turns):
      try:
        turn['text'].encode('utf-8')
      except UnicodeEncodeError as e:  # a lone surrogate: argv's undecodable bytes, JSON's \ud800
        raise schema.SchemaError(f'record {record_id!r}: turn {i}: not UTF-8 text '
                                 f'({e.reason} at character {e.start})') from None
    turns = self._place_images(turns, num_images, record_id)
    if any(IMAGE_MARK in t['text'] for t in turns if t['role'] == 'system'):
      raise schema.SchemaError(f'record {record_id!r}: {IMAGE_MARK} in a system turn; images '
                               'go in a user turn')
    runs = self._image_runs(num_images, image_tokens, record_id)
    pieces = functools.partial(self._pieces, runs=runs)
    if not self.image_tokens and any(IMAGE_MARK in t['text'] for t in turns
                                     if t['role'] != 'assistant'):
      raise schema.SchemaError(f"record {record_id!r}: {IMAGE_MARK} in a text-only model's "
                               'conversation')
    segments = []

    def add(new, w):
      segments.extend((seg, w) for seg in new)

    add(pieces(self.fmt.begin), 0)
    has_system = any(t['role'] == 'system' for t in turns)
    if self.fmt.system and self.system and not has_system:
      add(pieces(self.fmt.system, self.system), 0)
    elif not has_system:
      add(pieces(self.fmt.no_system), 0)
    last = max((i for i, t in enumerate(turns) if t['role'] == 'assistant'), default=-1)
    for i, turn in enumerate(turns):
      role, text = turn['role'], turn['text']
      if role == '_images':
        add(self._with_images(text, runs), 0)
      elif role == 'system':
        if self.fmt.system:
          add(pieces(self.fmt.system, text), 0)
      elif role == 'user':
        add(pieces(self.fmt.user, text), 0)
      elif role == 'assistant':
        whole = self.train_assistant_turn
        add(pieces(self.fmt.assistant_open), int(whole))
        answer = _JoinedAnswer(text) if self.fmt.answer_sep else text
        add([answer] + pieces(self.fmt.assistant_close), 1)
        if i == last and not add_generation_prompt:
          add(pieces(self.fmt.separator if whole else ()) + pieces(self.fmt.finish), 1)
        else:
          add(pieces(self.fmt.separator), int(whole))
      else:
        raise schema.SchemaError(f'record {record_id!r}: turn {i}: unknown role {role!r}')
    if add_generation_prompt:
      add(pieces(self.fmt.assistant_open), 0)
    return self._tokenize(segments)

  def _answer_in_context(self, before: str, answer: str) -> str:
    """The answer's text whose own ids are those it gets tokenised after `before` and the
    format's answer_sep as one string: with a sentencepiece tokenizer the answer alone
    ('Yes' -> '▁Yes'), with a byte-level BPE the separator and the answer (' Yes')."""
    sep, enc = self.fmt.answer_sep, self._text_ids
    before = before or '.'  # after an image run: some text to tokenise against
    head, full = enc(before), enc(before + sep + answer)
    for text in (answer, sep + answer):
      if head + enc(text) == full:
        return text
    return sep + answer

  def prompt(self, turns: list[dict], num_images: int, record_id: str = '<prompt>',
             image_tokens=None) -> list[int]:
    """Ids of a generation prompt: the turns (ending on a user turn), then the opening of
    the assistant's answer."""
    return self.encode(turns, num_images, record_id, add_generation_prompt=True,
                       image_tokens=image_tokens)[0]

  def training_arrays(self, turns: list[dict], num_images: int, max_len: int,
                      record_id: str, image_tokens=None) -> dict:
    """tokens / targets (the next tokens) / loss_mask of length max_len, and `truncated`."""
    seq, weights = self.encode(turns, num_images, record_id, image_tokens=image_tokens)
    if not any(weights):
      raise schema.SchemaError(f'record {record_id!r}: no assistant answer to learn')
    # The answers' own weights: what is left of them decides whether a cut example still
    # has something to learn (always_trained tokens of the prompt alone are not enough).
    answers = weights
    if self.always_ids:
      weights = [max(w, 1) if t in self.always_ids else w for t, w in zip(seq, weights)]
    truncated = len(seq) > max_len + 1
    if truncated and self.too_long == 'drop':
      raise schema.TooLong(f'record {record_id!r}: {len(seq)} tokens do not fit '
                           f'config.data.max_len={max_len} (config.data.too_long=drop)')
    seq, weights = seq[:max_len + 1], weights[:max_len + 1]
    if truncated and not any(answers[1:max_len + 1]):
      raise schema.TooLong(f'record {record_id!r}: the prompt alone does not fit '
                           f'config.data.max_len={max_len}', truncate_helps=False)
    answer = np.flatnonzero(weights[1:])
    if self.max_targets and len(answer) > self.max_targets:
      if self.too_long == 'drop':
        raise schema.TooLong(f'record {record_id!r}: {len(answer)} loss-bearing tokens exceed '
                             f'config.data.max_target_tokens={self.max_targets} '
                             '(config.data.too_long=drop)')
      weights = weights[:int(answer[self.max_targets]) + 1]  # the loss stops there
      seq, truncated = seq[:len(weights)], True
      if not any(answers[1:len(weights)]):
        raise schema.TooLong(f"record {record_id!r}: the prompt's config.data.always_trained "
                             'tokens alone fill config.data.max_target_tokens='
                             f'{self.max_targets}', truncate_helps=False)
    if truncated and num_images:
      seq, weights = self._before_split_image(seq, weights, image_tokens or
                                              [self.image_tokens] * num_images)
    pad = max_len + 1 - len(seq)
    seq = np.asarray(seq + [self.pad] * pad, np.int32)
    weights = np.asarray(weights + [0] * pad, np.float32)
    loss_mask = weights[1:]
    if self.loss_norm == 'example':  # the example's token mean, whatever its length
      loss_mask = loss_mask / loss_mask.sum()
    return {'tokens': seq[:-1], 'targets': seq[1:], 'loss_mask': loss_mask,
            'truncated': np.int32(truncated)}

  def _before_split_image(self, seq: list, weights: list, counts) -> tuple[list, list]:
    """A cut sequence without the image run the cut went through (its placeholders carry
    no loss): a packed row holds whole images only, so a partial run would hand the next
    example's placeholders this one's features (radjax/data/packing.py)."""
    at = [i for i, t in enumerate(seq[:-1]) if t == self.image_id]
    ends = np.cumsum(counts)
    if not at or len(at) in ends:
      return seq, weights
    whole = int(np.sum(ends < len(at)))  # the images before the split one
    start = at[int(ends[whole - 1]) if whole else 0] - int(self.image_delimiters)
    return seq[:start], weights[:start]

  def decode_answer(self, ids) -> str:
    """Generated ids -> the answer's text: up to the first stop id, then cut at the
    format's stop strings."""
    out = []
    for t in ids:
      if int(t) in self.stop_ids:
        break
      out.append(int(t))
    text = self.tokenizer.decode(out, skip_special_tokens=True)
    for s in self.fmt.stop_strings:
      text = text.split(s, 1)[0]
    return text.strip()


def chat_template(fmt: ChatFormat, system_prompt: str = '', bos: bool = True,
                  image_tokens: int = 1) -> str:
  """The format as a Jinja chat template for an exported HF tokenizer/processor, so
  `apply_chat_template` renders the text radjax trains on (images first in a user turn
  whose content is a list, as HF processors pass them); the ids where radjax encodes a turn
  in one piece (vicuna/caption encode segments apart: README, chat formats). bos=False
  leaves the format's BOS to a tokenizer that adds it on encode (LLaVA-1.5's processor:
  `processor(text=prompt)` would otherwise start with two). image_tokens > 1 writes each
  image as that many `<image>` tokens (a model without a processor that expands them:
  BLIP-2's prepends them instead)."""
  def lit(s):
    return '{{ ' + repr(s) + ' }}' if s else ''

  def render(pieces, var='text'):
    out = ''
    for p in pieces:
      if p == BOS:
        out += "{{ bos_token or '' }}" if bos else ''
      elif p == EOS:
        out += '{{ eos_token }}'
      elif isinstance(p, Special):
        out += lit(p.token)
      else:
        before, _, after = p.partition('{text}')
        out += lit(before) + ('{{ ' + var + ' }}' if '{text}' in p else '') + lit(after)
    return out

  system = system_prompt or fmt.default_system
  content = ("{% if m['content'] is string %}{% set text = m['content'] %}{% else %}"
             "{% set ns = namespace(img='', txt='') %}"
             "{% for c in m['content'] %}{% if c['type'] == 'image' %}"
             "{% set ns.img = ns.img ~ " + repr(IMAGE_MARK) + " %}"
             "{% elif c['type'] == 'text' %}{% set ns.txt = ns.txt ~ c['text'] %}{% endif %}"
             "{% endfor %}{% set text = ns.img ~ (" + repr(fmt.image_sep) + " if ns.img and ns.txt "
             "else '')"
             " ~ ns.txt %}{% endif %}")
  if any(fmt.image_wrap) or image_tokens > 1:
    content += ('{% set text = text | replace(' + repr(IMAGE_MARK) + ', '
                + repr(fmt.image_wrap[0] + IMAGE_MARK * image_tokens + fmt.image_wrap[1])
                + ') %}')
  t = render(fmt.begin)
  if fmt.system and system:
    t += ("{% if messages[0]['role'] != 'system' %}" + render(fmt.system, repr(system))
          + '{% endif %}')
  elif fmt.no_system:
    t += ("{% if messages[0]['role'] != 'system' %}" + render(fmt.no_system) + '{% endif %}')
  t += '{% for m in messages %}' + content
  t += "{% if m['role'] == 'system' %}" + render(fmt.system)
  t += "{% elif m['role'] == 'user' %}" + render(fmt.user)
  t += ('{% else %}' + render(fmt.assistant_open) + render((fmt.answer_sep,)) + '{{ text }}'
        + render(fmt.assistant_close)
        + '{% if loop.last %}' + render(fmt.finish) + '{% else %}' + render(fmt.separator)
        + '{% endif %}{% endif %}{% endfor %}')
  t += '{% if add_generation_prompt %}' + render(fmt.assistant_open) + '{% endif %}'
  return t

