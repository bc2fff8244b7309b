"""RadFM's single checkpoint (`pytorch_model.bin` of `MultiLLaMAForCausalLM`) <-> radjax VLM
params: vision 'vit3d', projector 'perceiver' (with its fc), llm 'decoder'. `to-radfm`
writes RadFM's tensors back (safetensors, no pickle) for RadFM's own PyTorch code.

Names read (RadFM's module paths):
  embedding_layer.vision_encoder.*  the 3D ViT (table VISION_RULES; fused to_qkv split)
  embedding_layer.perceiver.*, embedding_layer.fc.*  the resampler (fused to_kv split)
  lang_model.model.*, lang_model.lm_head.weight  LLaMA, read by the LLaMA table
  embedding_layer.weight  the same tensor as lang_model's embed_tokens (tied in RadFM)
  embedding_layer.figure_token_weight  learned <image> / </image> embeddings [2, D]

Vocabulary: our tokenizer is LLaMA's plus `<image>` (placeholders, overwritten by the
splice, so its row is never read), `<image_begin>` and `<image_end>` (RadFM's `<image>`
and `</image>`: their rows are figure_token_weight), padded to a multiple of 64.
RadFM's head is 32000 wide: ours gets zero columns for every new id, and generation
suppresses image tokens and ids past the tokenizer (radjax/eval/evaluators/answers.py),
so over ids < 32000 the logits are RadFM's and a new id is never generated.

RadFM's dead branches (Med-KEBERT, its projection, the keyword TransformerDecoder and its
MLP and cls_head, the segmentation upscaler) are skipped with one log line; any other
tensor the tables do not use, or one they need and do not find, is an error naming it.
"""
import dataclasses
import json
import math
import os
import re

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from absl import logging

from radjax.convert import common, llm_families
from radjax.convert import vocab as vocab_lib
from radjax.convert.common import ConversionError, Rule
from radjax.models import llm, perceiver, vit3d

VISION = 'embedding_layer.vision_encoder.'
PERCEIVER = 'embedding_layer.perceiver.'
LLM = 'lang_model.'
TIED_EMBEDDING = 'embedding_layer.weight'
FIGURE_TOKENS = 'embedding_layer.figure_token_weight'
DEAD = re.compile(r'embedding_layer\.(bert_model|bert_projection_fc|transformer_decoder|'
                  r'transformer_decoder_mlp|cls_head|output_upscaling)\.')
VOCAB_MULTIPLE = 64

_V = VISION + 'transformer.layers.{i}.'
VISION_RULES = (
    Rule('patch_norm/scale', VISION + 'to_patch_embedding.1.weight', 'identity'),
    Rule('patch_norm/bias', VISION + 'to_patch_embedding.1.bias', 'identity'),
    Rule('patch_embed/kernel', VISION + 'to_patch_embedding.2.weight', 'linear'),
    Rule('patch_embed/bias', VISION + 'to_patch_embedding.2.bias', 'identity'),
    Rule('embed_norm/scale', VISION + 'to_patch_embedding.3.weight', 'identity'),
    Rule('embed_norm/bias', VISION + 'to_patch_embedding.3.bias', 'identity'),
    Rule('pos_row', VISION + 'pos_embedding.row_embed.weight', 'identity'),
    Rule('pos_col', VISION + 'pos_embedding.col_embed.weight', 'identity'),
    Rule('pos_depth', VISION + 'pos_embedding.dep_embed.weight', 'identity'),
    Rule('layers_{i}/norm1/scale', _V + '0.norm.weight', 'identity'),
    Rule('layers_{i}/norm1/bias', _V + '0.norm.bias', 'identity'),
    Rule('layers_{i}/q/kernel', _V + '0.fn.to_q.weight', 'heads_out'),  # split from to_qkv
    Rule('layers_{i}/k/kernel', _V + '0.fn.to_k.weight', 'heads_out'),
    Rule('layers_{i}/v/kernel', _V + '0.fn.to_v.weight', 'heads_out'),
    Rule('layers_{i}/o/kernel', _V + '0.fn.to_out.0.weight', 'heads_in'),
    Rule('layers_{i}/o/bias', _V + '0.fn.to_out.0.bias', 'identity'),
    Rule('layers_{i}/norm2/scale', _V + '1.norm.weight', 'identity'),
    Rule('layers_{i}/norm2/bias', _V + '1.norm.bias', 'identity'),
    Rule('layers_{i}/fc1/kernel', _V + '1.fn.net.0.weight', 'linear'),
    Rule('layers_{i}/fc1/bias', _V + '1.fn.net.0.bias', 'identity'),
    Rule('layers_{i}/fc2/kernel', _V + '1.fn.net.3.weight', 'linear'),
    Rule('layers_{i}/fc2/bias', _V + '1.fn.net.3.bias', 'identity'),
)
_P = PERCEIVER + 'layers.{i}.'
PERCEIVER_RULES = (
    Rule('latents', PERCEIVER + 'latents', 'identity'),
    Rule('layers_{i}/norm_media/scale', _P + '0.norm_media.weight', 'identity'),
    Rule('layers_{i}/norm_media/bias', _P + '0.norm_media.bias', 'identity'),
    Rule('layers_{i}/norm_latents/scale', _P + '0.norm_latents.weight', 'identity'),
    Rule('layers_{i}/norm_latents/bias', _P + '0.norm_latents.bias', 'identity'),
    Rule('layers_{i}/q/kernel', _P + '0.to_q.weight', 'heads_out'),
    Rule('layers_{i}/k/kernel', _P + '0.to_k.weight', 'heads_out'),  # split from to_kv
    Rule('layers_{i}/v/kernel', _P + '0.to_v.weight', 'heads_out'),
    Rule('layers_{i}/o/kernel', _P + '0.to_out.weight', 'heads_in'),
    Rule('layers_{i}/mlp_norm/scale', _P + '1.0.weight', 'identity'),
    Rule('layers_{i}/mlp_norm/bias', _P + '1.0.bias', 'identity'),
    Rule('layers_{i}/fc1/kernel', _P + '1.1.weight', 'linear'),
    Rule('layers_{i}/fc2/kernel', _P + '1.3.weight', 'linear'),
    Rule('norm/scale', PERCEIVER + 'norm.weight', 'identity'),
    Rule('norm/bias', PERCEIVER + 'norm.bias', 'identity'),
    Rule('fc/kernel', 'embedding_layer.fc.weight', 'linear'),
    Rule('fc/bias', 'embedding_layer.fc.bias', 'identity'),
)


@dataclasses.dataclass(frozen=True)
class RadFMShape:
  """What RadFM's tensors do not say (its published values); the rest is read from the
  tensors' shapes."""
  depth_patch_size: int = 4
  num_channels: int = 3
  vision_heads: int = 8
  perceiver_heads: int = 8
  llm_heads: int = 0  # 0: embed_dim / 128 (LLaMA's head width; 13B: 40)
  llm_norm_eps: float = 1e-6
  llm_max_positions: int = 2048  # LLaMA-1's context (RadFM's 13B); what `to-hf` writes
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5  # torch LayerNorm's default, in the ViT and the Perceiver


def _transforms(heads: int, head_dim: int) -> dict:
  return {'identity': common.IDENTITY, 'linear': common.LINEAR,
          'heads_out': common.linear_out_heads(heads, head_dim),
          'heads_in': common.linear_in_heads(heads, head_dim)}


def _need(sd: dict, name: str) -> np.ndarray:
  if name not in sd:
    raise ConversionError(f'RadFM tensor {name!r} is missing from the checkpoint')
  return np.asarray(sd[name])


def _count_layers(sd: dict, pattern: str) -> int:
  found = {int(m.group(1)) for k in sd for m in [re.fullmatch(pattern, k)] if m}
  if not found or found != set(range(len(found))):
    raise ConversionError(f'RadFM layers matching {pattern!r}: found {sorted(found)}, '
                          'expected 0..n-1')
  return len(found)


def _split_fused(sd: dict) -> dict:
  """RadFM's fused to_qkv (ViT) and to_kv (Perceiver) as separate q/k/v tensors."""
  out = {}
  for name, value in sd.items():
    if name.startswith(VISION) and name.endswith('.fn.to_qkv.weight'):
      for part, chunk in zip('qkv', np.split(np.asarray(value), 3, axis=0)):
        out[name.replace('to_qkv', f'to_{part}')] = chunk
    elif name.startswith(PERCEIVER) and name.endswith('.to_kv.weight'):
      for part, chunk in zip('kv', np.split(np.asarray(value), 2, axis=0)):
        out[name.replace('to_kv', f'to_{part}')] = chunk
    else:
      out[name] = value
  return out


def vision_config(sd: dict, shape: RadFMShape) -> vit3d.ViT3DConfig:
  """From the tower tensors split_checkpoint returns (to_qkv already split)."""
  embed = _need(sd, VISION + 'to_patch_embedding.2.weight')
  embed_dim, patch_dim = embed.shape
  side2 = patch_dim // (shape.num_channels * shape.depth_patch_size)
  patch = math.isqrt(side2)
  if patch * patch * shape.num_channels * shape.depth_patch_size != patch_dim:
    raise ConversionError(f'{VISION}to_patch_embedding.2.weight: patch width {patch_dim} is '
                          f'not channels {shape.num_channels} x p x p x depth patch '
                          f'{shape.depth_patch_size}')
  rows = _need(sd, VISION + 'pos_embedding.row_embed.weight').shape[0]
  depth = _need(sd, VISION + 'pos_embedding.dep_embed.weight').shape[0]
  n = _count_layers(sd, re.escape(VISION) + r'transformer\.layers\.(\d+)\.0\.norm\.weight')
  inner = _need(sd, VISION + 'transformer.layers.0.0.fn.to_q.weight').shape[0]  # split
  return vit3d.ViT3DConfig(
      image_size=rows * patch, patch_size=patch, embed_dim=embed_dim, num_layers=n,
      num_heads=shape.vision_heads, head_dim=inner // shape.vision_heads,
      mlp_dim=_need(sd, VISION + 'transformer.layers.0.1.fn.net.0.weight').shape[0],
      max_depth=depth * shape.depth_patch_size, depth_patch_size=shape.depth_patch_size,
      num_channels=shape.num_channels, norm_eps=shape.norm_eps, position_stride=True)


def projector_config(sd: dict, shape: RadFMShape) -> perceiver.PerceiverConfig:
  queries, in_dim = _need(sd, PERCEIVER + 'latents').shape
  n = _count_layers(sd, re.escape(PERCEIVER) + r'layers\.(\d+)\.0\.to_q\.weight')
  inner = _need(sd, PERCEIVER + 'layers.0.0.to_q.weight').shape[0]
  return perceiver.PerceiverConfig(
      in_dim=in_dim, out_dim=_need(sd, 'embedding_layer.fc.weight').shape[0],
      num_queries=queries, num_layers=n, num_heads=shape.perceiver_heads,
      head_dim=inner // shape.perceiver_heads,
      mlp_dim=_need(sd, PERCEIVER + 'layers.0.1.1.weight').shape[0], norm_eps=shape.norm_eps)


def llm_config(sd: dict, shape: RadFMShape, hf_config=None) -> llm.LLMConfig:
  """LLaMA's config: from its HF config.json where RadFM ships one (Language_files), else
  from the shapes (LLaMA's 128-wide heads unless shape.llm_heads)."""
  if hf_config is not None:
    from radjax.convert import hf_config as hf_config_lib
    return hf_config_lib.llm_config_from_hf(hf_config)
  vocab, embed_dim = _need(sd, 'model.embed_tokens.weight').shape
  heads = shape.llm_heads or embed_dim // 128
  head_dim = embed_dim // heads
  kv = _need(sd, 'model.layers.0.self_attn.k_proj.weight').shape[0] // head_dim
  return llm.LLMConfig(
      vocab_size=vocab, embed_dim=embed_dim,
      num_layers=_count_layers(sd, r'model\.layers\.(\d+)\.input_layernorm\.weight'),
      num_heads=heads, num_kv_heads=kv,
      mlp_dim=_need(sd, 'model.layers.0.mlp.gate_proj.weight').shape[0],
      rope_theta=shape.rope_theta, norm_eps=shape.llm_norm_eps,
      max_position_embeddings=shape.llm_max_positions)


def _part(sd: dict, rules, transforms: dict, module, inputs: tuple, num_layers: int,
          scan: bool, prefix_names: tuple) -> dict:
  tensors = {k: v for k, v in sd.items() if k.startswith(prefix_names)}
  shapes = common.shapes_of(module, *inputs)
  return common.unflatten(common.to_ours(tensors, rules, transforms, shapes, num_layers, scan))


def _vision(cfg: vit3d.ViT3DConfig, scan: bool) -> tuple:
  """(module, example inputs) of the tower: its param shapes."""
  from radjax.models.runtime import Runtime
  return vit3d.ViT3D(cfg, Runtime(scan_layers=scan)), (jnp.zeros(
      (1, cfg.patch_size, cfg.patch_size, cfg.depth_patch_size, cfg.num_channels)),)


def _projector(cfg: perceiver.PerceiverConfig, scan: bool) -> tuple:
  from radjax.models.runtime import Runtime
  return (perceiver.PerceiverProjector(cfg, Runtime(scan_layers=scan)),
          (jnp.zeros((1, 1, cfg.in_dim)),))


def vision_params(sd: dict, cfg: vit3d.ViT3DConfig, scan: bool) -> dict:
  return _part(sd, VISION_RULES, _transforms(cfg.num_heads, cfg.dim_per_head),
               *_vision(cfg, scan), cfg.num_layers, scan, (VISION,))


def projector_params(sd: dict, cfg: perceiver.PerceiverConfig, scan: bool) -> dict:
  return _part(sd, PERCEIVER_RULES, _transforms(cfg.num_heads, cfg.dim_per_head),
               *_projector(cfg, scan), cfg.num_layers, scan, (PERCEIVER, 'embedding_layer.fc.'))


def padded_vocab(n: int) -> int:
  return -(-n // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def llm_params(sd: dict, cfg: llm.LLMConfig, scan: bool, figure_tokens: np.ndarray,
               delimiter_ids: tuple[int, int], vocab_size: int) -> dict:
  """LLaMA's params grown to `vocab_size`: rows `delimiter_ids` are RadFM's figure tokens,
  the head's new columns zero (their ids are suppressed at generation)."""
  params = llm_families.params_from_hf(sd, cfg, scan)
  old = cfg.vocab_size
  params = vocab_lib.grow_vocab(params, vocab_size)
  table = np.array(params[vocab_lib.EMBEDDING]['embedding'])
  for row, token_id in enumerate(delimiter_ids):
    if token_id < old:
      raise ConversionError(f'tokenizer id {token_id} for RadFM figure token {row} is inside '
                            f"LLaMA's {old} rows")
    table[token_id] = figure_tokens[row]
  params[vocab_lib.EMBEDDING] = {'embedding': table}
  kernel = np.array(params[vocab_lib.HEAD]['kernel'])
  kernel[:, old:] = 0.0
  params[vocab_lib.HEAD] = {**params[vocab_lib.HEAD], 'kernel': kernel}
  return params


def split_checkpoint(state_dict: dict, source: str = 'checkpoint') -> tuple[dict, dict, dict]:
  """(RadFM tensors for the towers, LLaMA tensors in LlamaForCausalLM names, figure tokens).
  Dead branches are dropped with one log line; an unknown tensor is an error."""
  dead = sorted(k for k in state_dict if DEAD.match(k))
  if dead:
    branches = sorted({DEAD.match(k).group(1) for k in dead})
    logging.info('%s: skipped %d tensors of RadFM branches that do not reach the logits: %s',
                 source, len(dead), ', '.join(f'embedding_layer.{b}.*' for b in branches))
  towers, text, unknown = {}, {}, []
  for name, value in state_dict.items():
    if DEAD.match(name):
      continue
    if name.startswith(LLM):
      text[name[len(LLM):]] = value
    elif name.startswith((VISION, PERCEIVER, 'embedding_layer.fc.')) or name in (
        TIED_EMBEDDING, FIGURE_TOKENS):
      towers[name] = value
    else:
      unknown.append(name)
  if unknown:
    raise ConversionError(f'{source}: tensors that are not part of RadFM: {sorted(unknown)}')
  figure = _need(towers, FIGURE_TOKENS)
  tied = towers.pop(TIED_EMBEDDING, None)
  towers.pop(FIGURE_TOKENS)
  emb = _need(text, 'model.embed_tokens.weight')
  if tied is not None and (np.shape(tied) != np.shape(emb) or
                           not np.array_equal(np.asarray(tied), np.asarray(emb))):
    raise ConversionError(f"{source}: {TIED_EMBEDDING!r} differs from "
                          f"'{LLM}model.embed_tokens.weight' (RadFM ties them)")
  if figure.ndim != 2 or figure.shape != (2, emb.shape[1]):
    raise ConversionError(f'{source}: {FIGURE_TOKENS!r} has shape {figure.shape}, expected '
                          f'(2, {emb.shape[1]})')
  return _split_fused(towers), text, np.asarray(figure, np.float32)


def prepare_tokenizer(tokenizer, text_rows: int, source: str = 'tokenizer') -> dict:
  """Adds `<image>`, `<image_begin>`, `<image_end>` to LLaMA's tokenizer (in the order
  radjax/data/chat.py adds them, so a run finds them in place) -> {token: id}."""
  from radjax.data import chat
  if len(tokenizer) != text_rows:
    raise ConversionError(f"{source}: {len(tokenizer)} tokens, but the checkpoint's LLaMA "
                          f"embedding has {text_rows} rows; pass RadFM's LLaMA tokenizer")
  chat.prepare_tokenizer(tokenizer, chat.get_format('plain'), images=True, delimiters=True)
  vocab = tokenizer.get_vocab()
  return {t: vocab[t] for t in chat.image_tokens_needed(True, True)}


def import_checkpoint(state_dict: dict, tokenizer, shape: RadFMShape = RadFMShape(),
                      scan: bool = True, hf_llm_config=None, source: str = 'checkpoint'):
  """(radjax config, params {'vision', 'projector', 'llm'}) of a RadFM state dict;
  `tokenizer` (LLaMA's) gains the image tokens."""
  from radjax.core import defaults
  from radjax.data import chat
  from radjax.models import factory
  towers, text, figure = split_checkpoint(state_dict, source)
  vision, projector = vision_config(towers, shape), projector_config(towers, shape)
  lm = llm_config(text, shape, hf_llm_config)
  if projector.in_dim != vision.embed_dim or projector.out_dim != lm.embed_dim:
    raise ConversionError(f'{source}: the perceiver maps {projector.in_dim} -> '
                          f'{projector.out_dim}, the towers are {vision.embed_dim} and '
                          f'{lm.embed_dim} wide')
  ids = prepare_tokenizer(tokenizer, lm.vocab_size)
  vocab_size = padded_vocab(len(tokenizer))
  params = {
      'vision': vision_params(towers, vision, scan),
      'projector': projector_params(towers, projector, scan),
      'llm': llm_params(text, lm, scan, figure, (ids[chat.IMAGE_BEGIN], ids[chat.IMAGE_END]),
                        vocab_size),
  }
  lm = dataclasses.replace(lm, vocab_size=vocab_size)
  config = defaults.get_config()
  config.model.kind = config.task = 'vlm'
  for part, cfg in (('vision', vision), ('projector', projector), ('llm', lm)):
    with config.model[part].unlocked():
      config.model[part].update(factory.part_fields(cfg))
  config.model.projector.in_dim = config.model.projector.out_dim = 0  # from the towers
  config.model.image_token_id = ids[chat.IMAGE_MARK]
  config.runtime.scan_layers = scan
  config.runtime.attention_impl = 'xla'
  # Floating tensors decide: `model.to(bfloat16)` leaves integer buffers (a BatchNorm's
  # num_batches_tracked) int64, and a bf16 13B checkpoint ran in float32.
  dtypes = {np.asarray(v).dtype.name for v in state_dict.values()
            if np.asarray(v).dtype.kind not in 'iub'}
  config.runtime.dtype = 'bfloat16' if dtypes == {'bfloat16'} else 'float32'
  config.data.chat_format = 'plain'
  config.data.image_delimiters = True
  config.data.image_mean, config.data.image_std = (0.0,) * 3, (1.0,) * 3  # ToTensor()
  # RadFM's collator keeps at most 64 slices: deeper volumes would read depth rows of its
  # stretched table that no RadFM batch trained.
  config.data.max_slices = min(64, vision.max_depth)
  config.eval.max_new_tokens = 200
  return config, params


def _fuse(sd: dict) -> dict:
  """_split_fused's inverse: q/k/v back into RadFM's to_qkv (ViT) and to_kv (Perceiver)."""
  out, used = {}, set()
  for prefix, fused in ((VISION, 'qkv'), (PERCEIVER, 'kv')):
    first = f'.to_{fused[0]}.'
    for name in sd:
      if name.startswith(prefix) and name.endswith(f'{first}weight'):
        names = [name.replace(first, f'.to_{p}.') for p in fused]
        out[name.replace(first, f'.to_{fused}.')] = np.concatenate(
            [np.asarray(sd[n]) for n in names], axis=0)
        used.update(names)
  out.update({k: v for k, v in sd.items() if k not in used})
  return out


def export_checkpoint(vision_cfg: vit3d.ViT3DConfig, projector_cfg: perceiver.PerceiverConfig,
                      llm_cfg: llm.LLMConfig, params: dict, text_rows: int,
                      delimiter_ids: tuple[int, int]) -> dict:
  """RadFM's state dict of radjax VLM params: the inverse of import_checkpoint (dead
  branches aside). The decoder's first `text_rows` embedding rows and head columns are
  LLaMA's; rows `delimiter_ids` become figure_token_weight; the other added rows (the
  placeholder `<image>`, the padding) are never read or generated, and are left out."""
  towers = {}
  for part, rules, cfg, build in (('vision', VISION_RULES, vision_cfg, _vision),
                                  ('projector', PERCEIVER_RULES, projector_cfg, _projector)):
    flat = common.flatten(nn.meta.unbox(params[part]))
    scan = any(p.startswith(common.SCANNED_PREFIX) for p in flat)
    module, inputs = build(cfg, scan)
    towers.update(common.to_hf(flat, rules, _transforms(cfg.num_heads, cfg.dim_per_head),
                               common.shapes_of(module, *inputs), cfg.num_layers))
  text = llm_families.hf_from_params(params['llm'], llm_cfg)
  table = np.asarray(text['model.embed_tokens.weight'])
  if max(delimiter_ids) >= table.shape[0] or min(delimiter_ids) < text_rows:
    raise ConversionError(f"the figure token ids {delimiter_ids} are not rows past LLaMA's "
                          f'{text_rows} of the {table.shape[0]}-row embedding')
  text['model.embed_tokens.weight'] = table[:text_rows]
  if llm_cfg.tie_embeddings:  # RadFM's LLaMA keeps a head of its own: the tied one's table
    text['lm_head.weight'] = table
  text['lm_head.weight'] = np.asarray(text['lm_head.weight'])[:text_rows]
  out = {**_fuse(towers), **{LLM + k: v for k, v in text.items()}}
  out[TIED_EMBEDDING] = text['model.embed_tokens.weight']
  out[FIGURE_TOKENS] = table[list(delimiter_ids)]
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


WEIGHTS = 'model.safetensors'
SHAPE_FILE = 'radfm_shape.json'


def export_dir(config, params, out: str, dtype: str = 'float32') -> None:
  """Writes `out`/model.safetensors, RadFM's MultiLLaMAForCausalLM tensors of a workdir of
  its layout (vit3d + perceiver + decoder, image delimiters), loadable with
  `model.load_state_dict(safetensors.torch.load_file(...))`, and radfm_shape.json: what the
  tensors do not say (heads, depth patch, LLaMA's rows; from-radfm's flags)."""
  from safetensors import numpy as st_numpy

  from radjax.convert import hf_io
  from radjax.data import chat, tokens
  from radjax.models import factory
  m = config.model
  if (m.kind, m.vision.kind, m.projector.kind) != ('vlm', 'vit3d', 'perceiver') or not (
      config.data.get('image_delimiters', False)):
    raise ConversionError(f'config.model: a {m.kind} of {m.vision.kind} + {m.projector.kind} '
                          f"(image_delimiters={config.data.get('image_delimiters', False)}) "
                          "is not RadFM's layout (vlm of vit3d + perceiver, delimiters)")
  vocab = tokens.load_tokenizer(tokens.tokenizer_path(config)).get_vocab()
  ids = [vocab.get(t) for t in (chat.IMAGE_MARK, chat.IMAGE_BEGIN, chat.IMAGE_END)]
  if None in ids or ids != list(range(ids[0], ids[0] + 3)):
    raise ConversionError(f"the tokenizer does not end LLaMA's rows with {chat.IMAGE_MARK}, "
                          f"{chat.IMAGE_BEGIN}, {chat.IMAGE_END} (ids {ids}), as RadFM's "
                          "layout needs: to-radfm exports a model on RadFM's vocabulary (a "
                          '`from-radfm` import, or a run trained from one); its '
                          "image-delimiter rows sit just past LLaMA's text rows")
  composed = factory.vlm_config(m)
  vision, projector, lm = composed.vision, composed.projector, composed.llm
  family = llm_families.export_family(lm)
  if family != 'llama':  # RadFM's strict=False load would drop the tensors LLaMA lacks
    raise ConversionError(f"config.model.llm exports as {family}, but RadFM's lang_model is "
                          'a LlamaForCausalLM: to-radfm writes LLaMA decoders only')
  state = export_checkpoint(vision, projector, lm, params.get('params', params), ids[0],
                            (ids[1], ids[2]))
  st_numpy.save_file({k: np.ascontiguousarray(v.astype(hf_io.DTYPES[dtype]))
                      for k, v in state.items()}, os.path.join(out, WEIGHTS))
  shape = {'vision_heads': vision.num_heads, 'perceiver_heads': projector.num_heads,
           'depth_patch_size': vision.depth_patch_size, 'llm_heads': lm.num_heads,
           'text_rows': ids[0], 'figure_token_ids': ids[1:]}
  with open(os.path.join(out, SHAPE_FILE), 'w') as f:
    json.dump(shape, f, indent=1)
