"""Answers to conversations, generated as config.eval says: the one generation path of
the evaluators, `--mode=generate` and `--mode=chat`, for a VLM and for a bare decoder.

An item is (example, prompt turns): the example's images (none for a decoder) go where
the turns' `<image>` marks are, or before the first user turn's text."""
import dataclasses

import jax
import numpy as np

from radjax.core import sharding
from radjax.data import chat, pipeline, processors, schema
from radjax.eval.decoding import generate as generate_lib
from radjax.eval.decoding import sampling, stop_strings


class Answerer:

  def __init__(self, exp):
    self.exp = exp
    cfg = exp.config
    self.encoder = exp.task.encoder
    self.image_slots = getattr(exp.task, 'image_slots', None)
    enc = self.encoder
    self.gen_cfg = generate_lib.config_from_eval(
        cfg.eval, enc.stop_ids, enc.pad,
        chat.never_generated(enc.tokenizer, cfg.model.llm.vocab_size, self.image_slots is not None))
    # The batch axis splits over the mesh: whole batches of config.eval.batch_size.
    self.batch_size = cfg.eval.batch_size
    self.context = cfg.model.llm.max_position_embeddings
    # A user's prompt (generate, chat, the web demo) past the model's context is refused;
    # a dataset's generates as it always did (an evaluation must not end a training run).
    self.limit_context = False
    self._stop_tables = {}

  def fit_batch(self, n: int) -> None:
    """Batches of at most what `n` items fill, in whole batch shards of the mesh: a user's
    one prompt (generate, chat, the web demo) was decoded config.eval.batch_size times
    (RadVLM: 64 copies, each with its own KV cache)."""
    shards = sharding.batch_axes(self.exp.mesh, self.exp.rules)[1]
    self.batch_size = min(self.exp.config.eval.batch_size, -(-n // shards) * shards)

  def prompts(self, items) -> tuple[list[list[int]], dict | None]:
    """Prompt ids per item, and the model's image inputs (images, and depth_mask for
    volumes) stacked, or None for a decoder."""
    prompts, pixels = [], []
    slots = self.image_slots
    if slots is not None and hasattr(self.exp.task, 'slots_for'):
      slots = self.exp.task.slots_for([example for example, _ in items])
    if getattr(slots, 'pixels', '') == 'gray8':  # a user's colour image is read all the same
      slots = dataclasses.replace(slots, pixels='uint8')  # (the same floats for gray ones)
    for example, turns in items:
      n, counts = 0, None
      if slots is not None:
        arrays = slots(example, None)
        pixels.append(arrays)
        n, counts = int(arrays['image_mask'].sum()), processors.image_token_counts(arrays)
      else:
        turns = chat.without_images(turns)
      prompts.append(self.encoder.prompt(turns, n, example.get('id', '<prompt>'), counts))
    if not pixels:
      return prompts, None
    arrays = {k: np.stack([p[k] for p in pixels]) for k in pixels[0]}
    # A vit3d tower's 2D images get a depth mask from their image mask, as in training
    # (tasks/vlm.py), so that prefill skips the slots no prompt uses.
    if 'depth_mask' not in arrays and 'depth_mask' in self.exp.batch_shardings:
      depth_mask = getattr(self.exp.task, 'depth_mask', lambda _: None)(arrays)
      if depth_mask is not None:
        arrays['depth_mask'] = np.asarray(depth_mask)
    arrays.pop('image_mask', None)
    return prompts, arrays

  def _check_context(self, prompts, items, gen_cfg) -> None:
    """A prompt whose answer would run past the model's context is refused, naming its
    item: a long one costs memory quadratic in its length (the web demo's question box)."""
    for p, (example, _) in zip(prompts, items):
      if len(p) + gen_cfg.max_new_tokens > self.context:
        raise schema.SchemaError(
            f"{example.get('id', '<prompt>')}: a prompt of {len(p)} tokens and "
            f'{gen_cfg.max_new_tokens} new ones (config.eval.max_new_tokens) exceed the '
            f"model's context of {self.context} (config.model.llm.max_position_embeddings)")

  def answer(self, params, items: list[tuple[dict, list[dict]]],
             gen_cfg: generate_lib.GenerationConfig | None = None,
             seed: int | None = None) -> list[str]:
    """Generated answer texts, one per item (padded to whole batches by repetition).
    gen_cfg / seed: decoding knobs and sampling seed for this call (the web demo's);
    default config.eval's and config.seed."""
    gen_cfg = gen_cfg or self.gen_cfg
    return [generate_lib.cut_at_stop_strings(self.encoder.decode_answer(row),
                                             gen_cfg.stop_strings).strip()
            for row in self.answer_ids(params, items, gen_cfg, seed)]

  def _stop_table(self, gen_cfg):
    """The table that ends a row (in beam search, a hypothesis) at the chat format's or
    config.eval's stop strings inside the decoding loop (both are cut from the text
    after), built once per set of strings."""
    strings = tuple(dict.fromkeys((*self.encoder.fmt.stop_strings, *gen_cfg.stop_strings)))
    if not strings:
      return None
    if strings not in self._stop_tables:
      table = stop_strings.table(self.encoder.tokenizer, strings,
                                 self.exp.config.model.llm.vocab_size)
      self._stop_tables[strings] = pipeline.to_global_from_whole(
          {'table': table}, {'table': sharding.replicated(self.exp.mesh)})['table']
    return self._stop_tables[strings]

  def answer_ids(self, params, items: list[tuple[dict, list[dict]]],
                 gen_cfg: generate_lib.GenerationConfig | None = None,
                 seed: int | None = None, answer_prefix: tuple[int, ...] = ()) -> list:
    """The generated ids (np rows of gen_cfg.max_new_tokens) per item; `answer_prefix`:
    ids every prompt ends with after the assistant's opening (the answer's start, e.g.
    <image_begin> before a constrained image span)."""
    exp, bs = self.exp, self.batch_size
    gen_cfg = gen_cfg or self.gen_cfg
    seed = exp.config.seed if seed is None else seed
    rng = jax.random.key(seed) if gen_cfg.strategy == 'sample' else None
    outs = []
    for start in range(0, len(items), bs):
      chunk = items[start:start + bs]
      chunk = chunk + [chunk[-1]] * (bs - len(chunk))
      prompts, pixels = self.prompts(chunk)
      prompts = [p + list(answer_prefix) for p in prompts]
      if self.limit_context:
        self._check_context(prompts, chunk, gen_cfg)
      length = -(-max(len(p) for p in prompts) // 16) * 16  # few distinct compiled shapes
      toks, mask = generate_lib.left_pad(prompts, length, self.encoder.pad)
      shardings = {'tokens': exp.batch_shardings['tokens'],
                   'prompt_mask': exp.batch_shardings['tokens']}
      batch = {'tokens': toks, 'prompt_mask': mask}
      if pixels is not None:
        shardings.update({k: exp.batch_shardings[k] for k in pixels})
        batch.update(pixels)
      g = pipeline.to_global_from_whole(batch, shardings)  # every process has all items
      image_inputs = None if pixels is None else {k: g[k] for k in pixels}
      # One key per item (its index in `items`): its sample does not depend on the batch.
      key = None if rng is None else sampling.row_keys(rng, bs, first=start)
      with exp.context():
        ids, _ = generate_lib.generate(exp.model, params, g['tokens'], g['prompt_mask'],
                                       image_inputs, gen_cfg, key, self._stop_table(gen_cfg))
      outs.extend(pipeline.to_host(ids)[:len(items) - start])
    return outs
