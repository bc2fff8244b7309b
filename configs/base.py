r"""Every knob of a radjax run, documented. Recipes import this and change a few fields.

Run (any recipe): python main.py --config configs/<recipe>.py --workdir DIR \
    [--config.train.num_steps=100 --config.mesh.fsdp=4 ...]
"""
import ml_collections

# Logical axis -> mesh axes. Model code only knows the logical names on the left.
DEFAULT_RULES = (
    # activations
    ('act_batch', ('data', 'fsdp')),
    ('act_len', None),
    ('act_embed', None),
    ('act_heads', 'tensor'),
    ('act_kv', None),
    ('act_mlp', 'tensor'),
    ('act_vocab', 'tensor'),
    # parameters
    ('layers', None),
    ('embed', 'fsdp'),
    ('vision_embed', None),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('kv', None),
    ('vocab', 'tensor'),
    ('norm', None),
)


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0  # seeds init, data order, dropout; a run is a function of it

  # Device mesh: product must equal the device count; one entry may be -1 (the rest).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding = ml_collections.ConfigDict()
  c.sharding.rules = DEFAULT_RULES
  # Warn (at startup) about parameters over this many MiB that end up replicated.
  c.sharding.replicated_warn_mib = 64.0

  # ---- data -------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.dir = ''  # folder with manifest.json, *.array_record and tokenizer.json
  c.data.builder = ''  # e.g. 'demo': build c.data.dir with data_prep.<builder> if missing
  c.data.builder_kwargs = ml_collections.ConfigDict()
  c.data.tokenizer = ''  # tokenizer.json path; default: <data.dir>/tokenizer.json
  c.data.train_split = 'train'
  c.data.eval_split = 'val'
  c.data.task = 'report_generation'  # template in radjax/data/templates.py
  c.data.max_len = 256  # static sequence length (tokens, image placeholders included)
  c.data.max_images = 1  # static image slots per example
  c.data.image_mean = (0.48145466, 0.4578275, 0.40821073)  # CLIP; SigLIP uses 0.5
  c.data.image_std = (0.26862954, 0.26130258, 0.27577711)
  c.data.augment = True  # random resized crop + small intensity jitter (train only)
  c.data.crop_scale = (0.8, 1.0)  # random resized crop area range
  c.data.shuffle = True
  c.data.worker_threads = 0  # Grain read threads (0: read in the main thread)
  # Undecodable records a run may skip (each logged with its shard, index and id; the
  # next good record takes its place, so a resumed run sees the same stream); 0: stop.
  c.data.max_skipped_records = 0

  # ---- model ------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  # 'vlm' (vision tower + projector + LLM; what training builds), 'llm' or 'vision'
  # (a single tower, e.g. imported by `python -m radjax.convert from-hf`).
  c.model.kind = 'vlm'
  c.model.dtype = 'bfloat16'  # compute dtype; parameters stay float32
  c.model.attention_impl = 'xla'  # 'cudnn' (flash attention on GPU) | 'xla' | 'auto'
  c.model.remat_policy = 'none'  # radjax/models/layers.py REMAT_POLICIES
  c.model.scan_layers = True
  c.model.image_token_id = 4  # the tokenizer's <image> id

  c.model.vision = ml_collections.ConfigDict()
  c.model.vision.variant = 'clip'  # 'clip' | 'siglip'
  c.model.vision.image_size = 224
  c.model.vision.patch_size = 14
  c.model.vision.embed_dim = 1024
  c.model.vision.num_layers = 24
  c.model.vision.num_heads = 16
  c.model.vision.mlp_dim = 4096
  c.model.vision.num_channels = 3
  c.model.vision.norm_eps = 1e-5
  c.model.vision.select_layer = -2  # HF hidden_states index of the features (LLaVA: -2)
  c.model.vision.keep_class_token = False
  # Start from pretrained weights: an HF model directory (CLIP/SigLIP vision, or a
  # Llava whose tower is taken) or a radjax workdir. '' = random init.
  c.model.vision.init_from = ''

  c.model.projector = ml_collections.ConfigDict()
  c.model.projector.kind = 'mlp'  # 'linear' | 'mlp'
  c.model.projector.init_from = ''  # a VLM workdir or HF Llava directory (LLaVA stage 2)

  c.model.llm = ml_collections.ConfigDict()
  c.model.llm.vocab_size = 32000
  c.model.llm.embed_dim = 2048
  c.model.llm.num_layers = 22
  c.model.llm.num_heads = 32
  c.model.llm.num_kv_heads = 4
  c.model.llm.head_dim = 0  # 0: embed_dim // num_heads
  c.model.llm.mlp_dim = 5632
  c.model.llm.rope_theta = 10000.0
  c.model.llm.norm_eps = 1e-5
  c.model.llm.qkv_bias = False
  c.model.llm.tie_embeddings = False
  # An HF model directory (LLaMA/Vicuna, Qwen2, GPT-NeoX, or a Llava whose decoder is
  # taken) or a radjax workdir. A vocab_size above the source's grows the embeddings
  # (new rows start at the mean of the old ones). '' = random init.
  c.model.llm.init_from = ''
  c.model.llm.activation = 'silu'  # 'silu' | 'gelu' | 'gelu_tanh' | 'quick_gelu'
  c.model.llm.norm = 'rms'  # 'rms' (LLaMA/Qwen2) | 'layer' (LayerNorm with bias, GPT-NeoX)
  c.model.llm.mlp = 'gated'  # 'gated' (SwiGLU gate/up/down) | 'plain' (up -> act -> down)
  c.model.llm.linear_bias = False  # bias on o and the MLP linears too (GPT-NeoX)
  c.model.llm.parallel_residual = False  # x + attn(norm1(x)) + mlp(norm2(x)) (GPT-NeoX)
  c.model.llm.rotary_pct = 1.0  # fraction of each head's dims that get RoPE (dolly-v2: 0.25)

  # ---- optimizer --------------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2e-5  # peak learning rate
  c.optim.warmup_steps = 100
  c.optim.min_lr_ratio = 0.1  # cosine ends at lr * min_lr_ratio
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0  # decoupled, applied to kernels only
  c.optim.clip_norm = 1.0  # global gradient norm clip (0: off)
  # (regex over 'a/b/c' parameter paths, 'frozen' or an LR multiplier). First
  # match wins; every parameter must match one rule.
  c.optim.param_groups = (('.*', 1.0),)
  c.optim.grad_accum = 1  # micro-batches per step, accumulated with lax.scan

  # ---- training loop ----------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.batch_size = 8  # global batch (all micro-batches, all hosts)
  c.train.log_every = 10
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 3
  c.train.async_checkpoint = True
  c.train.eval_every = 500  # 0: only at the end

  # ---- evaluation -------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.split = 'val'
  c.eval.batch_size = 8
  c.eval.num_loss_batches = 8  # val-loss batches (0: the whole split)
  c.eval.num_generate = 32  # held-out examples to generate reports for
  c.eval.max_new_tokens = 96
  # Report decoding (radjax/eval/generate.py): 'greedy' | 'sample' | 'beam'. Greedy and
  # beam search reproduce HF transformers' generate(); 'sample' with temperature 0 is greedy.
  c.eval.decoding = 'greedy'
  c.eval.temperature = 1.0  # sample: logits / temperature, then top-k, then top-p
  c.eval.top_k = 0  # sample: keep the k most likely tokens (0: off; HF's default is 50)
  c.eval.top_p = 1.0  # sample: nucleus mass to keep (1.0: off)
  c.eval.num_beams = 4  # beam: beams per prompt
  c.eval.length_penalty = 1.0  # beam: score = sum(log p) / generated_length ** length_penalty
  c.eval.early_stopping = 'false'  # beam: 'false' | 'true' | 'never' (HF's False/True/'never')
  c.eval.stop_strings = ()  # reports are cut before the first of these (after decoding)
  c.eval.meteor = True  # METEOR starts a Java process (pycocoevalcap); False skips it
  c.eval.num_logged_examples = 4  # images + generated reports sent to TensorBoard
  return c
