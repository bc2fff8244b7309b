"""LAVIS / MiniGPT-4 / XrayGPT checkpoint names -> HF BLIP-2 names.

BLIP-2 `.pth` files from LAVIS (and MiniGPT-4 / XrayGPT, which reuse its modules) name
the EVA tower `visual_encoder.*` (+ `ln_vision`), the Q-Former `Qformer.bert.*`, and the
language projection `opt_proj` / `t5_proj` / `llama_proj`. `hf_names` renames them to
what HF's `Blip2ForConditionalGeneration` holds (`vision_model.*`, `qformer.*`,
`query_tokens`, `language_projection.*`), so the HF codecs read them unchanged. The
mapping is the one transformers' BLIP-2 conversion script applies.
"""
import re

import numpy as np

from radjax.convert.common import ConversionError

_B = r'visual_encoder\.blocks\.(\d+)\.'
_V = r'vision_model.encoder.layers.\1.'
# (LAVIS name pattern, HF name template); a name matches at most one row.
RENAMES = (
    (r'visual_encoder\.cls_token', 'vision_model.embeddings.class_embedding'),
    (r'visual_encoder\.pos_embed', 'vision_model.embeddings.position_embedding'),
    (r'visual_encoder\.patch_embed\.proj\.(weight|bias)',
     r'vision_model.embeddings.patch_embedding.\1'),
    (_B + r'norm([12])\.(weight|bias)', _V + r'layer_norm\2.\3'),
    (_B + r'attn\.qkv\.weight', _V + 'self_attn.qkv.weight'),
    (_B + r'attn\.proj\.(weight|bias)', _V + r'self_attn.projection.\2'),
    (_B + r'mlp\.(fc[12])\.(weight|bias)', _V + r'mlp.\2.\3'),
    (r'ln_vision\.(weight|bias)', r'vision_model.post_layernorm.\1'),
    (r'Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)', r'qformer.layernorm.\1'),
    (r'Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(.+)',
     r'qformer.encoder.layer.\1.\2.attention.\3'),
    (r'Qformer\.bert\.encoder\.layer\.(\d+)\.((attention|crossattention)\.output|'
     r'(intermediate|output)_query)\.(.+)', r'qformer.encoder.layer.\1.\2.\5'),
    (r'query_tokens', 'query_tokens'),
    (r'(opt|t5|llama)_proj\.(weight|bias)', r'language_projection.\2'),
)
# EVA keeps separate q and v biases; HF fuses them into qkv.bias with a zero k third.
_QV_BIAS = re.compile(_B + r'attn\.([qv])_bias')
# What a VLM never runs, dropped: the Q-Former's text side (word/position embeddings,
# the text FFN, the MLM head), the stage-1 contrastive/matching heads, and the language
# model itself (the LLM part is initialised from its own HF directory).
DROPPED = re.compile(
    r'Qformer\.(cls\..+|bert\.embeddings\.(word_embeddings|position_embeddings)\..+|'
    r'bert\.embeddings\.position_ids|bert\.encoder\.layer\.\d+\.(intermediate|output)\..+)|'
    r'(vision_proj|text_proj|itm_head)\..+|temp|(opt|t5|llama)_model\..+')
_MARKERS = ('visual_encoder.', 'ln_vision.', 'Qformer.', 'opt_proj.', 't5_proj.',
            'llama_proj.')


def is_lavis(state_dict: dict) -> bool:
  return any(k.startswith(_MARKERS) for k in state_dict)


def hf_names(state_dict: dict, source: str = 'checkpoint') -> dict:
  """The tensors of a LAVIS-layout state dict under HF BLIP-2 names (any other dict is
  returned as it is). A name the table does not know is an error naming it and `source`."""
  if not is_lavis(state_dict):
    return state_dict
  out, qv, unknown = {}, {}, []
  for name, value in state_dict.items():
    m = _QV_BIAS.fullmatch(name)
    if m:
      qv.setdefault(int(m.group(1)), {})[m.group(2)] = value
      continue
    if DROPPED.fullmatch(name):
      continue
    for pattern, template in RENAMES:
      if re.fullmatch(pattern, name):
        out[re.sub(f'^{pattern}$', template, name)] = value
        break
    else:
      unknown.append(name)
  if unknown:
    raise ConversionError(f'{source}: LAVIS tensors with no BLIP-2 equivalent: '
                          f'{sorted(unknown)}')
  for i, b in sorted(qv.items()):
    if set(b) != {'q', 'v'}:
      raise ConversionError(f'{source}: visual_encoder.blocks.{i}.attn has a '
                            f'{"".join(b)}_bias but not both q_bias and v_bias')
    q, v = np.asarray(b['q']), np.asarray(b['v'])
    out[f'vision_model.encoder.layers.{i}.self_attn.qkv.bias'] = np.concatenate(
        [q, np.zeros_like(q), v])
  return out
