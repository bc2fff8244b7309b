"""An EVA + Q-Former + decoder VLM (XrayGPT's, MiniGPT-4's) <-> HF
`Blip2ForConditionalGeneration` (with a causal language model: LLaMA/Vicuna, Qwen2,
GPT-NeoX).

The three parts keep their own tables (vit.py's EVA as `Blip2VisionModel`, qformer.py, the
decoder families); this module only names them inside one BLIP-2 model. transformers'
BLIP-2 writes the projected query outputs over the prompt's image tokens
(`image_token_id`), as radjax's splice does, so the exported model gives radjax's logits
for the same ids. Its processor puts the image tokens at the front of the text instead; the
export therefore ships the tokenizer with a chat template that writes them where radjax
does (`num_query_tokens` per `<image>`), and a BLIP image processor.
"""
from radjax.convert import hf_config, llm_families, parts, qformer
from radjax.convert import vit as vit_convert
from radjax.convert.common import ConversionError
from radjax.convert.hf_config import UnsupportedConfig
from radjax.models import vlm

VISION_PREFIX = 'vision_model.'
QFORMER_PREFIX = 'qformer.'
TEXT_PREFIX = 'language_model.'


def check(cfg: vlm.VLMConfig) -> None:
  """What BLIP-2 hard-codes: an EVA tower whose every token of the last layer, normed,
  reaches the Q-Former."""
  if cfg.vision.variant != 'eva':
    raise UnsupportedConfig(f'config.model.vision.variant={cfg.vision.variant!r}: a Q-Former '
                            "VLM exports as BLIP-2, whose tower is EVA ('eva')")
  if cfg.vision.select_layer != -1 or not cfg.vision.keep_class_token:
    raise UnsupportedConfig('config.model.vision: BLIP-2 hands every token of the last layer '
                            '(select_layer=-1, keep_class_token=True) to its Q-Former')
  if cfg.anyres_grids:
    raise UnsupportedConfig('config.model.anyres_grids: BLIP-2 has no AnyRes tiling')


def hf_config_from_vlm(cfg: vlm.VLMConfig, text_family: str, **extra):
  """`Blip2Config` for `cfg`; bos/eos/pad ids in `extra` go to the text config as well."""
  import transformers
  check(cfg)
  tokens = {k: extra[k] for k in ('bos_token_id', 'eos_token_id', 'pad_token_id')
            if k in extra}
  text = hf_config.hf_config_from_llm(cfg.llm, text_family, **tokens)
  q = qformer.hf_config(cfg.projector).to_dict()
  for key in ('num_query_tokens', 'projection_dim', 'architectures'):
    q.pop(key, None)
  return transformers.Blip2Config(
      architectures=['Blip2ForConditionalGeneration'],
      vision_config=vit_convert.hf_config_from_vit(cfg.vision).to_dict(), qformer_config=q,
      text_config=text.to_dict(), num_query_tokens=cfg.projector.num_queries,
      image_token_id=cfg.image_token_id, tie_word_embeddings=cfg.llm.tie_embeddings,
      **extra)


def hf_from_params(params: dict, cfg: vlm.VLMConfig) -> dict:
  """radjax VLM params (scanned or not; 'params' wrapper optional) -> the
  `Blip2ForConditionalGeneration` state dict."""
  if set(params) == {'params'}:
    params = params['params']
  missing = sorted({'vision', 'projector', 'llm'} - set(params))
  if missing:
    raise ConversionError(f'model params {missing} are missing')
  check(cfg)
  out = vit_convert.hf_from_params(params['vision'], cfg.vision, prefix=VISION_PREFIX)
  for name, value in qformer.hf_from_params(params['projector'], cfg.projector).items():
    own = name == 'query_tokens' or name.startswith('language_projection.')
    out[name if own else QFORMER_PREFIX + name] = value
  for name, value in llm_families.hf_from_params(params['llm'], cfg.llm).items():
    out[TEXT_PREFIX + name] = value
  return out


def import_vlm(hf, state_dict: dict, scan: bool) -> tuple[vlm.VLMConfig, dict]:
  """(VLMConfig, params) of a `Blip2ForConditionalGeneration`: each part through its own
  table (parts.py takes it out of the whole model)."""
  image_id = getattr(hf, 'image_token_id', None)
  if image_id is None:
    raise UnsupportedConfig('HF config field image_token_id is unset: this BLIP-2 prepends '
                            "its queries to the text; radjax's splice needs the tokens they "
                            'fill (re-save it with a current transformers, which writes '
                            'image_token_id)')
  cfgs, params = {}, {}
  for part, kind in (('vision', 'vit'), ('projector', 'qformer'), ('llm', 'decoder')):
    cfgs[part], params[part] = parts.import_part(part, kind, hf, state_dict, scan)
  cfg = vlm.VLMConfig(image_token_id=image_id, **cfgs)
  check(cfg)
  return cfg, params
