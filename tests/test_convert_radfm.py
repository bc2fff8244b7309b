"""`python -m radjax.convert from-radfm`: RadFM's single state dict -> a radjax VLM workdir.

The reference is RadFM's forward written here in torch from its description (3D ViT with
the Rearrange patching and strided 3D positions, OpenFlamingo's Perceiver, fc, the
per-sample embedding table of section 4.1, HF LlamaForCausalLM), at tiny random sizes
with RadFM's tensor names. Its state dict goes through a `.bin`, the CLI and the workdir,
and the radjax VLM must give the same logits on a 512-token prompt with a volume and a
2D image.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
einops = pytest.importorskip('einops')
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from radjax.convert import __main__ as convert_cli  # noqa: E402
from radjax.convert import radfm  # noqa: E402
from radjax.convert.common import ConversionError  # noqa: E402
from radjax.core import workdir  # noqa: E402
from radjax.data import chat  # noqa: E402
from radjax.data import pixels as pixels_lib  # noqa: E402
from radjax.data import tokens as tokens_lib  # noqa: E402
from radjax.eval.decoding import generate as generate_lib  # noqa: E402
from radjax.models import factory, llm, vlm  # noqa: E402

TEXT_VOCAB, QUERIES, PROMPT_LEN, TOL = 256, 8, 512, 1e-4
# ViT: 32 px images of 8 px patches, depth patch 4, tables for 64 px x 16 slices (so both
# the in-plane and the depth positions are stretched); 2 heads of 16 on 48 (RadFM too has
# heads x head_dim != dim: 8 x 64 on 768).
VIT = dict(image=64, patch=8, frames=16, depth_patch=4, dim=48, depth=2, heads=2, dim_head=16,
           mlp=64)
SIDE, DEPTH = 32, 8  # the test images: 32 x 32, the volume 8 slices deep
LLAMA = dict(vocab_size=TEXT_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, intermediate_size=112, rms_norm_eps=1e-6,
             max_position_embeddings=1024, tie_word_embeddings=False, bos_token_id=1,
             eos_token_id=2, pad_token_id=0)


# --- RadFM's forward, written from its description ----------------------------------------


class PreNorm(nn.Module):
  def __init__(self, dim, fn):
    super().__init__()
    self.norm, self.fn = nn.LayerNorm(dim), fn

  def forward(self, x):
    return self.fn(self.norm(x))


class Attention(nn.Module):
  def __init__(self, dim, heads, dim_head):
    super().__init__()
    self.heads, self.scale = heads, dim_head ** -0.5
    self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
    self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim))

  def forward(self, x):
    q, k, v = (einops.rearrange(t, 'b n (h d) -> b h n d', h=self.heads)
               for t in self.to_qkv(x).chunk(3, dim=-1))
    attn = (q @ k.transpose(-1, -2) * self.scale).softmax(-1)
    return self.to_out(einops.rearrange(attn @ v, 'b h n d -> b n (h d)'))


class FeedForward(nn.Module):
  def __init__(self, dim, mlp):
    super().__init__()
    self.net = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Dropout(0.0),
                             nn.Linear(mlp, dim), nn.Dropout(0.0))

  def forward(self, x):
    return self.net(x)


class Positions3d(nn.Module):
  """Row / column / depth tables, position i of n reading row (i+1)*(G//n)-1."""

  def __init__(self, feats, rows, cols, depth):
    super().__init__()
    self.row_embed, self.col_embed = nn.Embedding(rows, feats), nn.Embedding(cols, feats)
    self.dep_embed = nn.Embedding(depth, feats)

  def forward(self, h, w, d):
    def rows(table, n):
      return table((torch.arange(n) + 1) * (table.num_embeddings // n) - 1)
    r = rows(self.row_embed, h)[:, None, None].expand(h, w, d, -1)
    c = rows(self.col_embed, w)[None, :, None].expand(h, w, d, -1)
    z = rows(self.dep_embed, d)[None, None].expand(h, w, d, -1)
    return torch.cat([r, c, z], -1).reshape(1, h * w * d, -1)


class ViT3D(nn.Module):
  def __init__(self, image, patch, frames, depth_patch, dim, depth, heads, dim_head, mlp):
    super().__init__()
    self.patch, self.depth_patch = patch, depth_patch
    patch_dim = 3 * patch * patch * depth_patch
    # index 0 is RadFM's Rearrange (no weights), done in forward
    self.to_patch_embedding = nn.Sequential(nn.Identity(), nn.LayerNorm(patch_dim),
                                            nn.Linear(patch_dim, dim), nn.LayerNorm(dim))
    self.pos_embedding = Positions3d(dim // 3, image // patch, image // patch,
                                     frames // depth_patch)
    self.transformer = nn.Module()
    self.transformer.layers = nn.ModuleList([nn.ModuleList([
        PreNorm(dim, Attention(dim, heads, dim_head)),
        PreNorm(dim, FeedForward(dim, mlp))])
        for _ in range(depth)])

  def forward(self, video):  # [b, c, H, W, D]
    _, _, h, w, d = video.shape
    x = einops.rearrange(video, 'b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)',
                         p1=self.patch, p2=self.patch, pf=self.depth_patch)
    x = self.to_patch_embedding(x)
    x = x + self.pos_embedding(h // self.patch, w // self.patch, d // self.depth_patch)
    for attn, ff in self.transformer.layers:
      x = attn(x) + x
      x = ff(x) + x
    return x


class PerceiverAttention(nn.Module):
  def __init__(self, dim, heads, dim_head):
    super().__init__()
    self.heads, self.scale = heads, dim_head ** -0.5
    self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
    self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
    self.to_kv = nn.Linear(dim, 2 * heads * dim_head, bias=False)
    self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

  def forward(self, x, latents):
    x, latents = self.norm_media(x), self.norm_latents(latents)
    q = self.to_q(latents)
    k, v = self.to_kv(torch.cat([x, latents], 1)).chunk(2, dim=-1)
    q, k, v = (einops.rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in (q, k, v))
    attn = (q * self.scale @ k.transpose(-1, -2)).softmax(-1)
    return self.to_out(einops.rearrange(attn @ v, 'b h n d -> b n (h d)'))


class Perceiver(nn.Module):
  def __init__(self, dim, latents, depth, heads, dim_head, ff_mult):
    super().__init__()
    self.latents = nn.Parameter(torch.randn(latents, dim))
    self.layers = nn.ModuleList([nn.ModuleList([
        PerceiverAttention(dim, heads, dim_head),
        nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult, bias=False), nn.GELU(),
                      nn.Linear(dim * ff_mult, dim, bias=False))]) for _ in range(depth)])
    self.norm = nn.LayerNorm(dim)

  def forward(self, x):  # [b, v, d] -> [b, latents, d]
    lat = self.latents[None].expand(x.shape[0], -1, -1)
    for attn, ff in self.layers:
      lat = attn(x, lat) + lat
      lat = ff(lat) + lat
    return self.norm(lat)


class RadFM(nn.Module):
  """MultiLLaMAForCausalLM's tensors and its text path, with dead branches that the
  import must skip."""

  def __init__(self):
    super().__init__()
    self.lang_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    dim = LLAMA['hidden_size']
    e = self.embedding_layer = nn.Module()
    e.weight = self.lang_model.get_input_embeddings().weight  # tied, as RadFM does
    e.figure_token_weight = nn.Parameter(torch.randn(2, dim))
    e.vision_encoder = ViT3D(**VIT)
    e.perceiver = Perceiver(VIT['dim'], QUERIES, depth=2, heads=2, dim_head=16, ff_mult=2)
    e.fc = nn.Linear(VIT['dim'], dim)
    e.bert_projection_fc = nn.Linear(8, VIT['dim'])
    e.output_upscaling = nn.Sequential(nn.ConvTranspose3d(VIT['dim'], 4, 2, 2),
                                       nn.BatchNorm3d(4))
    e.cls_head = nn.Linear(6, 1)

  def forward(self, ids, images):
    """ids [1, T] in RadFM's numbering (LLaMA, <image>, </image>, <image{k}>); images: the
    sample's [c, H, W, D] scans, each encoded alone as RadFM does at batch size 1."""
    e = self.embedding_layer
    feats = [e.fc(e.perceiver(e.vision_encoder(img[None])))[0] for img in images]
    table = torch.cat([e.weight, e.figure_token_weight, *feats])
    embeds = F.one_hot(ids, table.shape[0]).float() @ table
    return self.lang_model(inputs_embeds=embeds).logits


def _randomise_norms(model):
  """LayerNorms start at ones/zeros, which would hide a swapped scale and bias."""
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.LayerNorm):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
    for layer in model.lang_model.model.layers:
      layer.input_layernorm.weight.uniform_(0.5, 1.5)


# --- fixtures -----------------------------------------------------------------------------


def _tokenizer_dir(path, hf_config) -> None:
  """A word-level LLaMA-sized stand-in for RadFM's Language_files: tokenizer + config.json."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {'<unk>': 0, '<s>': 1, '</s>': 2, **{f'w{i}': i for i in range(3, TEXT_VOCAB)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<s>',
                                              eos_token='</s>', unk_token='<unk>')
  fast.save_pretrained(path)
  hf_config.save_pretrained(path)


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  torch.manual_seed(0)
  ref = RadFM().eval()
  _randomise_norms(ref)
  root = tmp_path_factory.mktemp('radfm')
  torch.save(ref.state_dict(), root / 'pytorch_model.bin')
  _tokenizer_dir(root / 'tok', ref.lang_model.config)
  argv = ['from-radfm', '--ckpt', root / 'pytorch_model.bin', '--tokenizer', root / 'tok',
          '--out', root / 'wd', '--vision_heads', 2, '--perceiver_heads', 2]
  assert convert_cli.main([str(a) for a in argv]) == 0
  config = workdir.load_config(str(root / 'wd'))
  return dict(ref=ref, wd=root / 'wd', config=config, params=workdir.load_params(str(root / 'wd')),
              tokenizer=tokens_lib.load_tokenizer(config.data.tokenizer))


def _prompt(rng, image_starts, ids):
  """[1, T] ids in RadFM's numbering and in ours: random text with, at each start, RadFM's
  `<image>` + QUERIES placeholders + `</image>`."""
  radfm_ids = rng.integers(3, TEXT_VOCAB, (1, PROMPT_LEN)).astype(np.int64)
  ours = radfm_ids.copy()
  for i, s in enumerate(image_starts):
    run = slice(s + 1, s + 1 + QUERIES)
    radfm_ids[0, s], radfm_ids[0, s + QUERIES + 1] = TEXT_VOCAB, TEXT_VOCAB + 1
    radfm_ids[0, run] = TEXT_VOCAB + 2 + QUERIES * i + np.arange(QUERIES)
    ours[0, s], ours[0, s + QUERIES + 1] = ids['<image_begin>'], ids['<image_end>']
    ours[0, run] = ids['<image>']
  return radfm_ids, ours.astype(np.int32)


# --- tests --------------------------------------------------------------------------------


def test_imported_config_and_vocab(imported):
  c, tok = imported['config'], imported['tokenizer']
  vocab = tok.get_vocab()
  # LLaMA's rows first, then <image>, <image_begin>, <image_end>; padded to 64.
  assert [vocab[t] for t in ('<image>', '<image_begin>', '<image_end>')] == [256, 257, 258]
  assert c.model.llm.vocab_size == 320 and c.model.image_token_id == 256
  assert (c.model.vision.kind, c.model.projector.kind) == ('vit3d', 'perceiver')
  assert (c.model.vision.image_size, c.model.vision.patch_size, c.model.vision.max_depth,
          c.model.vision.head_dim, c.model.vision.position_stride) == (64, 8, 16, 16, True)
  assert c.data.chat_format == 'plain' and c.data.image_delimiters
  emb = imported['params']['llm']['embedder']['embedding']
  head = imported['params']['llm']['lm_head']['kernel']
  figure = imported['ref'].embedding_layer.figure_token_weight.detach().numpy()
  np.testing.assert_array_equal(emb[257:259], figure)
  assert not np.any(head[:, TEXT_VOCAB:])  # RadFM's head has no column for them


def test_logits_match_radfm_reference(imported):
  """A volume (8 slices: 2 depth patches) and a 2D image (repeated to the depth patch and
  padded to the volume's depth, masked) in one 512-token prompt."""
  ref, c = imported['ref'], imported['config']
  rng = np.random.default_rng(1)
  volume = rng.normal(size=(SIDE, SIDE, DEPTH, 3)).astype(np.float32)
  image2d = rng.normal(size=(SIDE, SIDE, 3)).astype(np.float32)
  vocab = imported['tokenizer'].get_vocab()
  radfm_ids, ours = _prompt(rng, [40, 300], vocab)

  # RadFM: channels first; the 2D image goes to depth 4 by nearest interpolation.
  vol_t = torch.from_numpy(volume).permute(3, 0, 1, 2)
  img_t = F.interpolate(torch.from_numpy(image2d).permute(2, 0, 1)[None, :, :, :, None],
                        size=(SIDE, SIDE, VIT['depth_patch']))[0]
  with torch.no_grad():
    want = ref(torch.from_numpy(radfm_ids), [vol_t, img_t]).numpy()

  repeated = np.repeat(image2d[:, :, None], VIT['depth_patch'], axis=2)
  padded = np.zeros_like(volume)
  padded[:, :, :VIT['depth_patch']] = repeated
  images = np.stack([volume, padded])[None]  # [1, 2, H, W, D, C]
  depth_mask = np.zeros((1, 2, DEPTH), bool)
  depth_mask[0, 0], depth_mask[0, 1, :VIT['depth_patch']] = True, True
  model = vlm.VLM(factory.vlm_config(c.model), factory.vlm_runtime(c))
  apply = jax.jit(lambda p, i: model.apply({'params': p}, jnp.asarray(ours), i,
                                          depth_mask=jnp.asarray(depth_mask))[0])
  forward = lambda i: apply(imported['params'], jnp.asarray(i))  # noqa: E731
  got = np.asarray(forward(images))[..., :TEXT_VOCAB]
  diff = float(np.abs(got - want).max())
  print(f'RadFM import: max|dlogits| = {diff:.2e} over {PROMPT_LEN} tokens, 2 images')
  assert diff <= TOL, diff
  # The images matter: the same prompt with the volume zeroed moves the logits.
  other = forward(images * np.array([0, 1]).reshape(1, 2, 1, 1, 1, 1))
  assert np.abs(np.asarray(other)[..., :TEXT_VOCAB] - got).max() > 100 * TOL


def test_llm_shape_inference_matches_config_json(imported):
  """Without a config.json, LLaMA's sizes come from the tensors (heads given)."""
  sd = {k[len(radfm.LLM):]: v.numpy() for k, v in imported['ref'].state_dict().items()
        if k.startswith(radfm.LLM)}
  from_shapes = radfm.llm_config(sd, radfm.RadFMShape(llm_heads=4))
  hf = imported['ref'].lang_model.config
  from_json = radfm.llm_config(sd, radfm.RadFMShape(), hf)
  assert from_shapes.max_position_embeddings == 2048  # LLaMA-1's, RadFM's 13B
  assert from_json.max_position_embeddings == hf.max_position_embeddings == 1024
  assert dataclasses.replace(from_shapes, max_position_embeddings=1024) == from_json


def _state_dict(imported) -> dict:
  return {k: v.numpy() for k, v in imported['ref'].state_dict().items()}


def test_dead_branches_skipped_unknown_and_missing_named(imported, caplog):
  sd = _state_dict(imported)
  assert any(k.startswith('embedding_layer.output_upscaling.') for k in sd)
  with caplog.at_level('INFO'):
    radfm.split_checkpoint(sd, 'ckpt.bin')
  assert any('bert_projection_fc' in r.getMessage() and 'output_upscaling' in r.getMessage()
             for r in caplog.records)
  with pytest.raises(ConversionError, match='embedding_layer.extra_head.weight'):
    radfm.split_checkpoint({**sd, 'embedding_layer.extra_head.weight': np.zeros(2)}, 'x')
  towers, _, _ = radfm.split_checkpoint(sd, 'x')
  cfg = radfm.vision_config(towers, radfm.RadFMShape(vision_heads=2))
  name = radfm.VISION + 'transformer.layers.1.1.fn.net.3.bias'
  del towers[name]
  with pytest.raises(ConversionError, match=name.replace('.', r'\.')):
    radfm.vision_params(towers, cfg, scan=True)
  untied = {**sd, radfm.TIED_EMBEDDING: sd[radfm.TIED_EMBEDDING] + 1}
  with pytest.raises(ConversionError, match='differs'):
    radfm.split_checkpoint(untied, 'x')


def test_new_ids_are_never_generated(imported):
  """The head's columns for ids RadFM's head lacks are zero; generation suppresses image
  tokens and vocabulary padding even where they would win the argmax."""
  c, tok = imported['config'], imported['tokenizer']
  params = jax.tree.map(np.array, imported['params']['llm'])
  decoder = llm.Decoder(factory.llm_config(c.model), factory.runtime(c, 'llm'))
  prompt = np.asarray([[1, 10, 11, 12]], np.int32)
  mask = np.ones_like(prompt, bool)
  # The final hidden state h at the prompt's end (an identity head reads it out), then
  # head columns along h: <image_begin> first, padding id 300 second, past every text id.
  probe = jax.tree.map(np.copy, params)
  probe['lm_head']['kernel'] = np.eye(*params['lm_head']['kernel'].shape, dtype=np.float32)
  logits, _ = decoder.apply({'params': probe}, jnp.asarray(prompt),
                            method=lambda m, t: m(m.embed(t), jnp.arange(4)[None]))
  h = np.asarray(logits)[0, -1, :64]
  begin = tok.get_vocab()['<image_begin>']
  params['lm_head']['kernel'][:, begin] = 100.0 * h / np.linalg.norm(h)
  params['lm_head']['kernel'][:, 300] = 80.0 * h / np.linalg.norm(h)
  suppress = chat.never_generated(tok, c.model.llm.vocab_size, images=True)
  assert set(suppress) == {256, 257, 258} | set(range(259, 320))
  free = generate_lib.GenerationConfig(max_new_tokens=4)
  banned = dataclasses.replace(free, suppress_ids=suppress)
  ids_free = np.asarray(generate_lib.generate(decoder, params, prompt, mask, None, free)[0])
  assert ids_free[0, 0] == begin  # the doctored column wins when nothing suppresses it
  ids = np.asarray(generate_lib.generate(decoder, params, prompt, mask, None, banned)[0])
  assert not set(ids.ravel().tolist()) & set(suppress), ids


def test_a_missing_tokenizer_names_the_flag(tmp_path, capsys):
  argv = ['from-radfm', '--ckpt', str(tmp_path / 'x.bin'), '--tokenizer', str(tmp_path / 'no'),
          '--out', str(tmp_path / 'wd')]
  assert convert_cli.main(argv) == 2
  err = capsys.readouterr().err
  assert f"tokenizer '{tmp_path / 'no'}' does not exist (--tokenizer)" in err
  assert not (tmp_path / 'wd').exists()



@pytest.mark.parametrize('flags, said', [
    # ZeroDivisionError tracebacks, or a config error raised past the CLI
    (['--vision_heads', '0'], 'argument --vision_heads: 0: must be at least 1'),
    (['--perceiver_heads', '-2'], 'argument --perceiver_heads: -2: must be at least 1'),
    (['--depth_patch_size', '0'], 'argument --depth_patch_size: 0: must be at least 1'),
    # the tokenizer dir's config.json decided, and the flag was dropped without a word
    (['--llm_heads', '3'], '--llm_heads=3, but '),
])
def test_a_shape_flag_that_cannot_hold_is_refused_by_name(imported, tmp_path, capsys, flags,
                                                          said):
  root = imported['wd'].parent
  argv = ['from-radfm', '--ckpt', root / 'pytorch_model.bin', '--tokenizer', root / 'tok',
          '--out', tmp_path / 'wd', '--vision_heads', 2, '--perceiver_heads', 2, *flags]
  try:
    assert convert_cli.main([str(a) for a in argv]) == 2
  except SystemExit as e:  # argparse's own refusal
    assert e.code == 2
  assert said in capsys.readouterr().err
  assert not (tmp_path / 'wd').exists()


def _greedy_reference(ref, radfm_ids, images, steps: int) -> list[int]:
  """RadFM's reference forward, decoded greedily by re-running the whole prompt each step."""
  ids = torch.from_numpy(radfm_ids)
  with torch.no_grad():
    for _ in range(steps):
      logits = ref(ids, images)[0, -1]
      top2 = torch.topk(logits, 2).values
      assert top2[0] - top2[1] > 10 * TOL  # the import's float error cannot flip the argmax
      ids = torch.cat([ids, logits.argmax()[None, None]], dim=1)
  return ids[0, radfm_ids.shape[1]:].tolist()


def test_imported_workdir_generates_from_a_volume_and_an_image(imported, tmp_path, monkeypatch):
  """The README's RadFM path: from-radfm, then --mode=generate on a .npy volume (an imported
  workdir has no dataset to say its inputs are volumes) and on a PNG. Each answer is the
  greedy decoding of RadFM's reference forward on the prompt and pixels generation was fed
  (the 2D image taken from its first slice and brought to the depth patch as RadFM does)."""
  from PIL import Image

  from radjax import run as run_lib
  from radjax.eval.evaluators import answers
  fed, prompts = [], answers.Answerer.prompts
  monkeypatch.setattr(answers.Answerer, 'prompts',
                      lambda self, items: fed.append(prompts(self, items)) or fed[-1])
  rng = np.random.default_rng(7)  # every step of both answers wins its argmax by > 10 * TOL
  npy, png = str(tmp_path / 'scan.npy'), str(tmp_path / 'x.png')
  np.save(npy, rng.uniform(0, 1, (SIDE, SIDE, DEPTH)).astype(np.float32))
  Image.fromarray(rng.integers(0, 255, (SIDE, SIDE), dtype=np.uint8)).save(png)
  config, wd = imported['config'].copy_and_resolve_references(), str(imported['wd'])
  config.eval.max_new_tokens = 4
  texts = run_lib.main(config, wd, 'generate', [npy, png], '<image>w5 w6 w7')
  (ids, pixels), = fed
  # RadFM's plain prompt: <s>, <image> + its queries + </image>, the words.
  assert ids[0] == ids[1] == [1, 257] + [256] * QUERIES + [258, 5, 6, 7]
  radfm_ids = np.asarray(ids[:1], np.int64)
  radfm_ids[0, 1], radfm_ids[0, QUERIES + 2] = TEXT_VOCAB, TEXT_VOCAB + 1
  radfm_ids[0, 2:QUERIES + 2] = TEXT_VOCAB + 2 + np.arange(QUERIES)
  floats = pixels_lib.as_floats(pixels)['images']  # what prefill's first op makes of them
  assert pixels['volumes'].dtype == np.float16  # the scan crossed as its voxels
  image, depth = torch.from_numpy(floats[:2, 0]), pixels['depth_mask'][:2, 0]
  assert depth.sum(1).tolist() == [DEPTH, VIT['depth_patch']]
  volume = image[0, :, :, :DEPTH].permute(3, 0, 1, 2)
  flat = F.interpolate(image[1, :, :, 0].permute(2, 0, 1)[None, :, :, :, None],
                       size=(*image.shape[1:3], VIT['depth_patch']))[0]
  for text, scan in zip(texts, [volume, flat], strict=True):
    want = _greedy_reference(imported['ref'], radfm_ids, [scan], 4)
    assert min(want) >= 3, want  # no end of text: all 4 words are in the answer
    assert text == ' '.join(f'w{t}' for t in want), (text, want)
  assert texts[0] != texts[1]  # the image, not the prompt alone, decides the answer
  # The PNG alone, in 3 image slots: a 2D batch, whose depth mask (from its image mask, one
  # depth patch deep) lets prefill skip the empty slots; the same answer.
  config.data.max_images = 3
  assert run_lib.main(config, wd, 'generate', [png], '<image>w5 w6 w7') == texts[1:]
  depth = fed[1][1]['depth_mask']
  assert fed[1][1]['images'].ndim == 5 and depth.shape[1:] == (3, VIT['depth_patch'])
  assert depth[:, 0].all() and not depth[:, 1:].any()


def test_imported_preprocessing_depth_and_vocab_padding(imported):
  """What the logits test feeds past: RadFM reads pixels as ToTensor() gives them (no
  mean/std), at most 64 slices (here the 16 its depth table covers), and the vocabulary is
  padded to the next multiple of 64 only when it is not one already."""
  c = imported['config']
  assert tuple(c.data.image_mean) == (0.0,) * 3 and tuple(c.data.image_std) == (1.0,) * 3
  assert c.data.max_slices == 16  # min(64, the vision tower's max_depth)
  assert c.runtime.dtype == 'float32'  # a float32 checkpoint
  assert [radfm.padded_vocab(n) for n in (1, 64, 256, 257, 320)] == [64, 64, 256, 320, 320]


def test_a_bf16_checkpoint_runs_in_bf16(imported, tmp_path):
  """model.to(torch.bfloat16) leaves integer buffers (the dead upscaler's BatchNorm
  num_batches_tracked) int64: the checkpoint's float tensors decide the run's dtype. The
  params stay float32 holding the checkpoint's bf16 values exactly; the forward computes
  in bf16 (within bf16's error of RadFM's float32 logits, and past float32's)."""
  import copy

  import ml_dtypes
  ref = copy.deepcopy(imported['ref']).to(torch.bfloat16)
  assert {v.dtype for v in ref.state_dict().values()} == {torch.bfloat16, torch.int64}
  torch.save(ref.state_dict(), tmp_path / 'bf16.bin')
  argv = ['from-radfm', '--ckpt', tmp_path / 'bf16.bin', '--tokenizer',
          imported['wd'].parent / 'tok', '--out', tmp_path / 'wd', '--vision_heads', 2,
          '--perceiver_heads', 2]
  assert convert_cli.main([str(a) for a in argv]) == 0
  c = workdir.load_config(str(tmp_path / 'wd'))
  assert c.runtime.dtype == 'bfloat16'
  params = workdir.load_params(str(tmp_path / 'wd'))
  # Leaf for leaf, the float32 import rounded to bf16 (as torch rounded the checkpoint);
  # the embedding rows the import adds are the mean of LLaMA's rows, taken in float32.
  pairs = list(zip(jax.tree.leaves_with_path(params), jax.tree.leaves(imported['params']),
                   strict=True))
  assert jax.tree.structure(params) == jax.tree.structure(imported['params']) and pairs
  for (path, got), f32 in pairs:
    assert got.dtype == np.float32, path
    want = np.asarray(f32).astype(ml_dtypes.bfloat16).astype(np.float32)
    if jax.tree_util.keystr(path) == "['llm']['embedder']['embedding']":
      want[[TEXT_VOCAB, *range(TEXT_VOCAB + 3, len(want))]] = got[:TEXT_VOCAB].mean(0)
    np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(path))

  rng = np.random.default_rng(1)
  volume = rng.normal(size=(SIDE, SIDE, DEPTH, 3)).astype(np.float32)
  radfm_ids, ours = (x[:, :64] for x in _prompt(rng, [40], imported['tokenizer'].get_vocab()))
  with torch.no_grad():  # RadFM in float32: its own weights, and the bf16 ones
    args = torch.from_numpy(radfm_ids), [torch.from_numpy(volume).permute(3, 0, 1, 2)]
    f32_logits, rounded_logits = imported['ref'](*args).numpy(), ref.float()(*args).numpy()
  model = vlm.VLM(factory.vlm_config(c.model), factory.vlm_runtime(c))
  got = jax.jit(model.apply)({'params': params}, jnp.asarray(ours),
                             jnp.asarray(volume[None, None]),
                             depth_mask=jnp.ones((1, 1, DEPTH), bool))[0]
  got = np.asarray(got, np.float32)[..., :TEXT_VOCAB]
  assert np.abs(got - f32_logits).max() < 2e-2  # logits of about 0.8: bf16's 8 bits
  # The same weights in float32 give the rounded ones' logits to TOL: this is bf16's error.
  assert np.abs(got - rounded_logits).max() > 10 * TOL


def test_to_radfm_writes_radfms_own_tensors_back(imported, tmp_path):
  """A RadFM workdir had no export at all. `to-radfm` writes RadFM's state dict (fused
  to_qkv / to_kv, LLaMA's rows, the tied embedding, the figure tokens) as safetensors:
  equal, tensor for tensor, to the checkpoint imported (but its dead branches), so RadFM's
  own code loads it and gives the logits it gave."""
  import json

  from safetensors.torch import load_file
  out = tmp_path / 'radfm_out'
  assert convert_cli.main(['to-radfm', '--workdir', str(imported['wd']), '--out',
                           str(out)]) == 0
  got = load_file(str(out / radfm.WEIGHTS))
  want = {k: v for k, v in imported['ref'].state_dict().items() if not radfm.DEAD.match(k)}
  assert sorted(got) == sorted(want)
  for name, value in want.items():
    torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)
  shape = json.loads((out / radfm.SHAPE_FILE).read_text())
  assert (shape['vision_heads'], shape['perceiver_heads'], shape['text_rows']) == (
      2, 2, TEXT_VOCAB)
  ref = RadFM().eval()
  ref.load_state_dict(got, strict=False)  # the dead branches stay as initialised
  ids = torch.from_numpy(np.random.default_rng(2).integers(3, TEXT_VOCAB, (1, 64)))
  with torch.no_grad():
    torch.testing.assert_close(ref(ids, []), imported['ref'](ids, []))


def test_to_radfm_refuses_another_layout(imported, tmp_path, capsys):
  import json
  import shutil
  other = tmp_path / 'wd'
  shutil.copytree(imported['wd'], other)
  values = json.loads((other / 'config.json').read_text())
  values['data']['image_delimiters'] = False
  (other / 'config.json').write_text(json.dumps(values))
  assert convert_cli.main(['to-radfm', '--workdir', str(other), '--out',
                           str(tmp_path / 'out')]) == 2
  assert "is not RadFM's layout" in capsys.readouterr().err
  assert not (tmp_path / 'out').exists()


def test_to_radfm_writes_a_tied_head_and_refuses_a_decoder_radfm_cannot_load(imported,
                                                                              tmp_path):
  """A tied LLaMA's export failed with KeyError 'lm_head.weight' (RadFM's LLaMA has a head
  of its own: the embedding is written as it); a Qwen2 decoder's q/k/v biases were written
  for RadFM's LlamaForCausalLM, whose strict=False load drops them without a word."""
  composed = factory.vlm_config(imported['config'].model)
  ids = [imported['tokenizer'].get_vocab()[t] for t in ('<image_begin>', '<image_end>')]
  params = {**imported['params'], 'llm': {k: v for k, v in imported['params']['llm'].items()
                                          if k != 'lm_head'}}
  tied = dataclasses.replace(composed.llm, tie_embeddings=True)
  state = radfm.export_checkpoint(composed.vision, composed.projector, tied, params,
                                  TEXT_VOCAB, tuple(ids))
  np.testing.assert_array_equal(state['lang_model.lm_head.weight'],
                                imported['params']['llm']['embedder']['embedding'][:TEXT_VOCAB])
  from radjax.convert import common, llama
  config = imported['config'].copy_and_resolve_references()
  config.model.llm.qkv_bias = True
  qwen2 = dataclasses.replace(composed.llm, qkv_bias=True)
  flat = common.flatten(imported['params']['llm'])
  shapes = llama.param_shapes(qwen2, config.runtime.scan_layers)
  flat.update({k: np.zeros(v, np.float32) for k, v in shapes.items() if k not in flat})
  params = {**imported['params'], 'llm': common.unflatten(flat)}
  with pytest.raises(ConversionError, match='exports as qwen2.*LLaMA decoders only'):
    radfm.export_dir(config, params, str(tmp_path))
  assert not list(tmp_path.iterdir())


def test_from_radfm_reads_the_shape_file_of_a_to_radfm_export(imported, tmp_path, capsys):
  """The heads are not in the tensors: an export of 2-head towers came back with RadFM's
  8 (head width 4 instead of 16) unless the flags were typed again, the radfm_shape.json
  written for them beside it unread."""
  out = tmp_path / 'radfm_out'
  assert convert_cli.main(['to-radfm', '--workdir', str(imported['wd']), '--out',
                           str(out)]) == 0
  tok = str(imported['wd'].parent / 'tok')
  argv = ['from-radfm', '--ckpt', str(out / radfm.WEIGHTS), '--tokenizer', tok]
  assert convert_cli.main(argv + ['--out', str(tmp_path / 'wd')]) == 0
  config = workdir.load_config(str(tmp_path / 'wd'))
  assert (config.model.vision.num_heads, config.model.projector.num_heads) == (2, 2)
  assert (config.model.vision.head_dim, config.model.projector.head_dim) == (
      imported['config'].model.vision.head_dim, imported['config'].model.projector.head_dim)
  assert convert_cli.main(argv + ['--out', str(tmp_path / 'wd2'), '--vision_heads', '8']) == 2
  assert '--vision_heads 8 contradicts' in capsys.readouterr().err
