"""Tiny random Hugging Face models built from configs (no hub access), their radjax
conversion, the forwards that compare the two, and the decoder round-trip checks; shared
by the tests against HF.

Builders (seeded; the same call gives the same weights):
  tiny_llama, tiny_qwen2, tiny_gpt_neox(variant)  -- decoders (`*ForCausalLM`)
  tiny_clip_vision, tiny_siglip_vision             -- vision towers (`*VisionModel`)
  tiny_llava                                       -- CLIP + LLaMA Llava
  tiny_llava_onevision                             -- SigLIP + Qwen2 LLaVA-OneVision
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from radjax import convert
from radjax.models import llm
from radjax.models.runtime import Runtime

# The decoders' shared shape; each family adds its own heads, norms and embeddings.
_DECODER = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, intermediate_size=112,
                max_position_embeddings=1024, bos_token_id=None, eos_token_id=None,
                pad_token_id=None)
_LLAMA_ROPE = {'rope_type': 'default', 'rope_theta': 500000.0}
# Vision towers: 32px images, 8px patches (16 patches), 3 heads of 16.
_VISION = dict(hidden_size=48, num_attention_heads=3, image_size=32, patch_size=8,
               num_hidden_layers=3, intermediate_size=80)
VISION_IMAGE_SIZE = _VISION['image_size']
# gpt_neox variants. parallel: dolly-v2 layout (parallel residual, rotary_pct 0.25, untied
# embed_out); sequential: the other residual form, half rotary, 2 heads of 32.
GPT_NEOX_VARIANTS = {
    'parallel': dict(num_attention_heads=4, rotary_pct=0.25, rotary_emb_base=20000,
                     use_parallel_residual=True, tie_word_embeddings=False),
    'sequential': dict(num_attention_heads=2, rotary_pct=0.5, rotary_emb_base=5000,
                       use_parallel_residual=False, tie_word_embeddings=False),
}
# The chat template llava-hf ships with LLaVA-1.5 (and llava-v1.6-vicuna) in its
# processor's chat_template.json: 'USER: <image>\nq ASSISTANT: a USER: q2 ASSISTANT:', no BOS
# (the processor's tokenizer adds it), text only from content lists.
LLAVA_15_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")

# What the chat template of a converted LLaVA-OneVision renders (transformers'
# convert_llava_onevision_weights_to_hf.py; RadVLM's HF export): ChatML with each image as
# '<image>\n' before the text, and no system turn unless one is given.
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>\n' }}"
    "{% endfor %}{% for item in message['content'] if item['type'] == 'text' %}"
    "{{ item['text'] }}{% endfor %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


# --- builders ----------------------------------------------------------------------------


def tiny_llama(vocab_size: int = 300, seed: int = 0, **kw) -> 'transformers.LlamaForCausalLM':
  """GQA, untied head, LLaMA-3 style rope_theta, random norms; no special token ids."""
  torch.manual_seed(seed)
  cfg = dict(_DECODER, vocab_size=vocab_size, num_attention_heads=4, num_key_value_heads=2,
             rope_parameters=_LLAMA_ROPE, rms_norm_eps=1e-5, tie_word_embeddings=False)
  cfg.update(kw)
  return _randomise_norms_and_biases(transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)))


def tiny_qwen2(seed: int = 0) -> 'transformers.Qwen2ForCausalLM':
  """Random q/k/v biases and norms, tied embeddings, an odd head count (hidden 64 / 6 heads
  is not integral), 2 KV heads (a KV bias laid out per head)."""
  torch.manual_seed(seed)
  cfg = transformers.Qwen2Config(num_attention_heads=6, num_key_value_heads=2, head_dim=16,
                                 rms_norm_eps=1e-6, tie_word_embeddings=True, **_DECODER)
  return _randomise_norms_and_biases(transformers.Qwen2ForCausalLM(cfg))


def tiny_gpt_neox(variant: str, seed: int = 0,
                  **overrides) -> 'transformers.GPTNeoXForCausalLM':
  """3 layers, gelu, random biases and LayerNorms; `variant` is a GPT_NEOX_VARIANTS key."""
  torch.manual_seed(seed)
  cfg = transformers.GPTNeoXConfig(
      **{**_DECODER, 'num_hidden_layers': 3, 'intermediate_size': 176},
      layer_norm_eps=1e-5, hidden_act='gelu', initializer_range=0.1,
      **{**GPT_NEOX_VARIANTS[variant], **overrides})
  model = transformers.GPTNeoXForCausalLM(cfg)
  # HF inits biases to 0 and LayerNorms to identity: randomise them so they matter. Wide
  # embeddings keep greedy decoding from collapsing onto one token.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('bias'):
        p.normal_(0, 0.05)
      elif 'layernorm' in name or 'layer_norm' in name:
        p.normal_(1, 0.2)
      elif 'embed' in name:
        p.normal_(0, 1.0)
  return model.eval()


def _randomise_norms_and_biases(model, seed: int | None = None):
  """HF inits biases to 0 and norms to 1; random values make every tensor matter."""
  if seed is not None:
    torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'norm' in name and name.endswith('weight'):
        p.copy_(1 + 0.2 * torch.randn_like(p))
      elif name.endswith('bias'):
        p.normal_(0, 0.1)
  return model.eval()


def tiny_clip_vision(seed: int = 0) -> 'transformers.CLIPVisionModel':
  torch.manual_seed(seed)
  model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**_VISION))
  return _randomise_norms_and_biases(model, seed + 1)


def tiny_siglip_vision(seed: int = 0) -> 'transformers.SiglipVisionModel':
  """With SigLIP's pooling head, which the import drops."""
  torch.manual_seed(seed)
  model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**_VISION))
  return _randomise_norms_and_biases(model, seed + 1)


def tiny_vision(variant: str, seed: int = 0):
  """tiny_clip_vision or tiny_siglip_vision, by radjax's ViT variant name."""
  return {'clip': tiny_clip_vision, 'siglip': tiny_siglip_vision}[variant](seed)


def tiny_llava(vocab_size: int = 320, image_token_id: int = 4, eos_token_id: int = 2,
               seed: int = 0, vision: str = 'clip',
               text: str = 'llama') -> 'transformers.LlavaForConditionalGeneration':
  """A tiny Llava, 16 image tokens per image, bos/eos/pad 1/eos_token_id/0.

  vision 'clip': tiny_clip_vision's tower, penultimate layer, CLS dropped ('default');
  'siglip': last layer, all patches ('full'). text 'llama' (tiny_llama's shape),
  'qwen2' (3 heads of 16, one kv head) or 'gpt_neox' (parallel residual, rotary 0.25).
  """
  torch.manual_seed(seed)
  tokens = {'vocab_size': vocab_size, 'bos_token_id': 1, 'eos_token_id': eos_token_id,
            'pad_token_id': 0}
  if text == 'llama':
    text_cfg = transformers.LlamaConfig(**{**_DECODER, **tokens}, num_attention_heads=4,
                                        num_key_value_heads=2, rope_parameters=_LLAMA_ROPE,
                                        rms_norm_eps=1e-5)
  elif text == 'qwen2':
    text_cfg = transformers.Qwen2Config(**{**_DECODER, **tokens}, num_attention_heads=3,
                                        num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6)
  else:
    text_cfg = transformers.GPTNeoXConfig(**{**_DECODER, **tokens},
                                          **GPT_NEOX_VARIANTS['parallel'])
  vision_cfg = {'clip': transformers.CLIPVisionConfig,
                'siglip': transformers.SiglipVisionConfig}[vision](**_VISION)
  cfg = transformers.LlavaConfig(vision_config=vision_cfg, text_config=text_cfg,
                                 image_token_index=image_token_id,
                                 image_seq_length=llava_image_tokens(),
                                 vision_feature_layer=-2 if vision == 'clip' else -1,
                                 vision_feature_select_strategy=(
                                     'default' if vision == 'clip' else 'full'))
  return _randomise_norms_and_biases(transformers.LlavaForConditionalGeneration(cfg))


def tiny_llava_onevision(vocab_size: int = 320, image_token_id: int = 303,
                         seed: int = 0) -> 'transformers.LlavaOnevisionForConditionalGeneration':
  """A tiny LLaVA-OneVision as llava-onevision-qwen2-7b-si is built: a SigLIP tower without
  its head read at its last layer, all patches ('full'); Qwen2 with an untied head; 32px
  tiles in AnyRes grids up to 3x3 whose maps over 2 tiles' tokens are scaled down
  ('anyres_max_2', so both of AnyRes's paths run); `image_newline` random. Qwen2's
  specials sit below `image_token_id` (<|endoftext|>, <|im_start|>, <|im_end|> = id - 3,
  - 2, - 1), <video> after it, as in Qwen2's vocabulary."""
  torch.manual_seed(seed)
  text_cfg = transformers.Qwen2Config(**{**_DECODER, 'vocab_size': vocab_size},
                                      num_attention_heads=4, num_key_value_heads=2,
                                      rms_norm_eps=1e-6, tie_word_embeddings=False)
  text_cfg.eos_token_id, text_cfg.pad_token_id = image_token_id - 1, image_token_id - 3
  vision_cfg = transformers.SiglipVisionConfig(**_VISION, vision_use_head=False)
  tile = _VISION['image_size']
  cfg = transformers.LlavaOnevisionConfig(
      vision_config=vision_cfg, text_config=text_cfg, image_token_index=image_token_id,
      video_token_index=image_token_id + 1, vision_feature_layer=-1,
      vision_feature_select_strategy='full', vision_aspect_ratio='anyres_max_2',
      image_grid_pinpoints=[[tile * i, tile * j] for i in (1, 2, 3) for j in (1, 2, 3)])
  model = transformers.LlavaOnevisionForConditionalGeneration(cfg)
  return _randomise_norms_and_biases(model)


def llava_image_tokens() -> int:
  """Image tokens per image of tiny_llava (patches; the CLS token is dropped)."""
  return (_VISION['image_size'] // _VISION['patch_size']) ** 2


# --- inputs --------------------------------------------------------------------------------


def random_tokens(vocab_size: int, length: int, seed: int = 0):
  return np.random.default_rng(seed).integers(0, vocab_size, (1, length), np.int32)


def llava_prompt(rng, length: int, image_starts: list[int], vocab_size: int,
                 image_token_id: int) -> np.ndarray:
  """[1, length] random text ids (>= 9, clear of specials) with a run of
  llava_image_tokens() placeholders at each of `image_starts`."""
  tokens = rng.integers(9, vocab_size, (1, length)).astype(np.int32)
  for s in image_starts:
    tokens[0, s:s + llava_image_tokens()] = image_token_id
  return tokens


# --- radjax side ---------------------------------------------------------------------------


def to_radjax(hf_model, scan: bool = True) -> tuple[llm.Decoder, dict]:
  """(float32 radjax Decoder, its params) converted in memory from an HF model."""
  state_dict = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
  cfg = convert.llm_config_from_hf(hf_model.config)
  return (llm.Decoder(cfg, Runtime(scan_layers=scan)),
          convert.params_from_hf(state_dict, cfg, scan=scan))


@functools.partial(jax.jit, static_argnums=0)
def logits(model, params, tokens):
  """Causal forward of a radjax Decoder without a cache: f32 logits [B, T, V]."""
  emb = model.apply({'params': params}, tokens, method=model.embed)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return model.apply({'params': params}, emb, positions)[0]


@functools.partial(jax.jit, static_argnums=0)
def vlm_logits(model, params, tokens, images):
  """A radjax VLM's logits for tokens [B, T] and images [B, M, H, W, C]."""
  return model.apply({'params': params}, tokens, images)[0]


@functools.partial(jax.jit, static_argnums=(0, 3))
def greedy(model, params, prompt, new_tokens: int):
  """KV-cache greedy decoding: prefill, then one token per step."""
  b, p = prompt.shape
  variables = {'params': params}
  key_mask = jnp.ones((b, p + new_tokens), bool)  # causality hides the unwritten slots

  def run(tokens, positions, cache, index):
    return model.apply(variables, tokens, positions, cache, index, key_mask,
                       method=model.decode_step)

  cache = llm.init_cache(model.cfg, b, p + new_tokens, model.rt.dtype)
  out, aux = run(prompt, jnp.broadcast_to(jnp.arange(p), prompt.shape), cache, 0)
  first = jnp.argmax(out[:, -1], -1).astype(jnp.int32)

  def step(carry, i):
    cache, tok = carry
    out, aux = run(tok[:, None], jnp.full((b, 1), p + i), cache, p + i)
    return (aux['cache'], jnp.argmax(out[:, -1], -1).astype(jnp.int32)), tok

  _, toks = jax.lax.scan(step, (aux['cache'], first), jnp.arange(new_tokens))
  return toks.T


# --- HF side -------------------------------------------------------------------------------


def hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.from_numpy(tokens).long()).logits.float().numpy()


def hf_greedy(model, prompt, new_tokens: int):
  out = model.generate(torch.from_numpy(prompt).long(), attention_mask=torch.ones(prompt.shape),
                       do_sample=False, max_new_tokens=new_tokens, pad_token_id=0)
  return out[:, prompt.shape[1]:].numpy()


def hf_generate(hf_model, tokens: np.ndarray, mask: np.ndarray, **kw):
  """HF generate on a left-padded batch; the full output (return_dict_in_generate)."""
  with torch.no_grad():
    return hf_model.generate(torch.from_numpy(tokens).long(),
                             attention_mask=torch.from_numpy(mask).long(),
                             return_dict_in_generate=True, **kw)


def _nchw(images_nhwc: np.ndarray):
  return torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2))


def hf_vision_outputs(model, images_nhwc):
  """(hidden_states, last_hidden_state, pooler_output or None) of an HF vision tower."""
  with torch.no_grad():
    out = model(_nchw(images_nhwc), output_hidden_states=True)
  pooled = None if out.pooler_output is None else out.pooler_output.numpy()  # SigLIP, no head
  return [h.numpy() for h in out.hidden_states], out.last_hidden_state.numpy(), pooled


def hf_vision_features(hidden, variant: str, select_layer: int, keep_class_token=False):
  """What radjax's ViT returns as features: hidden_states[select_layer], CLIP's CLS token
  dropped unless keep_class_token."""
  h = hidden[select_layer]
  return h[:, 1:] if variant == 'clip' and not keep_class_token else h


def hf_llava_logits(model, tokens, pixels_nhwc):
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(tokens).long(), pixel_values=_nchw(pixels_nhwc))
  return out.logits.float().numpy()


# --- checks shared by the decoder families' conversion tests -------------------------------


def check_decoder_round_trip(path: str, family: str, scan: bool, out_dir: str, label: str,
                             prompt_len: int = 512, gen_prompt_len: int = 48,
                             new_tokens: int = 32) -> llm.LLMConfig:
  """The HF decoder saved at `path`, converted in memory, gives HF's logits; exported to
  `out_dir` as `family`, HF gives the same logits and greedy decoding. Returns its config."""
  hf_config, state_dict = convert.load_hf_dir(path)
  cfg = convert.llm_config_from_hf(hf_config)
  assert convert.export_family(cfg) == family
  params = convert.params_from_hf(state_dict, cfg, scan=scan)
  model = llm.Decoder(cfg, Runtime(scan_layers=scan))
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
  tokens = random_tokens(cfg.vocab_size, prompt_len)
  got = np.asarray(logits(model, params, tokens))
  diff = np.abs(got - hf_logits(hf_model, tokens)).max()
  print(f'{label} import max|dlogits|={diff:.2e}')
  assert diff <= 1e-4

  # Export back to an HF directory; HF must reproduce the same function.
  convert.save_hf_dir(out_dir, convert.hf_config_from_llm(cfg, family),
                      convert.hf_from_params(params, cfg))
  exported = transformers.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
  assert type(exported) is type(hf_model)
  diff = np.abs(hf_logits(exported, tokens) - got).max()
  print(f'{label} export max|dlogits|={diff:.2e}')
  assert diff <= 1e-4

  prompt = tokens[:, :gen_prompt_len]
  ours = np.asarray(greedy(model, params, prompt, new_tokens))
  np.testing.assert_array_equal(ours, hf_greedy(exported, prompt, new_tokens))
  return cfg


def check_bf16_export(path: str, family: str, out_dir: str) -> None:
  """The HF decoder at `path`, exported as `family` with dtype='bfloat16', is stored and
  loads in bf16, its embeddings the originals rounded."""
  hf_config, state_dict = convert.load_hf_dir(path)
  cfg = convert.llm_config_from_hf(hf_config)
  params = convert.params_from_hf(state_dict, cfg, scan=True)
  convert.save_hf_dir(out_dir, convert.hf_config_from_llm(cfg, family),
                      convert.hf_from_params(params, cfg), dtype='bfloat16')
  _, saved = convert.load_hf_dir(out_dir)
  assert {str(v.dtype) for v in saved.values()} == {'bfloat16'}
  model = transformers.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16)
  assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
  original = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
  emb = model.get_input_embeddings().weight.detach().float().numpy()
  want = original.get_input_embeddings().weight.detach().numpy()
  np.testing.assert_allclose(emb, want, rtol=1e-2, atol=1e-3)
