r"""Every knob of a radjax run, documented. Recipes import this and change a few fields.

Run (any recipe): python main.py --config configs/<recipe>.py --workdir DIR \
    [--config.train.num_steps=100 --config.mesh.fsdp=4 ...]
"""
import ml_collections

# Logical axis -> mesh axes. Model code only knows the logical names on the left. The
# order is a priority (flax): where two names of one array map to the same mesh axis, the
# earlier rule takes it and the other name falls to its next rule that is still free. Only
# the token lookup's output names a parameter axis beside activation axes: ('act_batch',
# 'act_len', 'embed'), the table's layout on embed (fsdp) and the batch over what is left
# (data), the step between the lookup and the activations' ('act_batch', 'act_len',
# 'act_embed'), see radjax/models/llm.py Decoder.embed.
DEFAULT_RULES = (
    # parameters
    ('layers', None),
    ('embed', 'fsdp'),
    # The vision width entering a projector, the Q-Former's cross-attention or a classifier
    # head: fsdp unless the kernel's other axis is 'embed', which comes first and takes it
    # (an MLP projector's fc1 and the Q-Former's K/V were whole on every device).
    ('vision_embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('kv', None),
    ('vocab', 'tensor'),
    ('norm', None),
    # activations
    ('act_batch', ('data', 'fsdp')),
    ('act_batch', 'data'),  # beside 'embed' (fsdp taken): the batch over data alone
    ('act_len', None),
    ('act_embed', None),
    ('act_heads', 'tensor'),
    ('act_kv', None),
    ('act_mlp', 'tensor'),
    ('act_vocab', 'tensor'),
)


def parse_arg(arg: str, **defaults) -> ml_collections.ConfigDict:
  """`get_config(arg)` arguments: comma-separated `key=value` pairs, e.g.
  `--config configs/demo.py:task=lm,size=tiny`. Only keys given defaults here are
  accepted; values take the default's type."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (a.strip() for a in (arg or '').split(','))):
    key, sep, value = item.partition('=')
    if not sep or key not in defaults:
      raise ValueError(f'config argument {item!r}: expected key=value with key one of '
                       f'{sorted(defaults)}')
    default = defaults[key]
    if isinstance(default, bool):
      if value.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(f'config argument {key}={value!r} is not a boolean')
      out[key] = value.lower() in ('true', '1')
    else:
      try:
        out[key] = type(default)(value)
      except ValueError:
        raise ValueError(f'config argument {key}={value!r} is not of type '
                         f'{type(default).__name__}') from None
  return out


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0  # seeds init, data order, augmentation, sampling; a run is a function of it
  # What is trained (radjax/tasks): 'vlm' (image(s) + text -> text), 'lm' (text -> text
  # with the decoder alone), 'classify' (model.kind 'classifier': findings from an image)
  # or 'vqgan' (model.kind 'vqgan': the image codec). A task names its batch, model, loss
  # and evaluators.
  c.task = 'vlm'

  # Device mesh: product must equal the device count; one entry may be -1 (the rest).
  # With several hosts (or TPU slices) and any `dcn` size > 1, data/fsdp/tensor are the
  # sizes within one host (slice) and `dcn` the sizes across hosts: mesh axis = both
  # multiplied, and dcn's product must equal the number of hosts (slices). Set
  # mesh.dcn.data = hosts to put data parallelism across hosts and keep fsdp/tensor, which
  # talk every layer, on the fast links within a host. The default (every dcn size 1)
  # makes no such split: data/fsdp/tensor are then sizes over all devices of all hosts.
  # Default (MaxText's): fsdp over every device, so a 7B model's parameters and moments are
  # split as by the seeds' DeepSpeed ZeRO-3 rather than copied whole onto each device; the
  # batch splits over data x fsdp either way. Small models (the tiny sizes, the classifier,
  # the VQ-GAN) set data=-1, fsdp=1: replicas, no per-layer gathers.
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.mesh.dcn = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
  c.sharding = ml_collections.ConfigDict()
  c.sharding.rules = DEFAULT_RULES
  # Warn (at startup) about parameters over this many MiB that end up replicated.
  c.sharding.replicated_warn_mib = 64.0

  # ---- data -------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.dir = ''  # a built dataset: manifest.json, *.array_record (the demos' tokenizer.json)
  # Images: 16-bit PNGs are rescaled by bit depth, an image with a side under 8 pixels is
  # an error, a constant one a warning (radjax/data/images.py).
  c.data.builder = ''  # e.g. 'demo': build c.data.dir with data_prep.<builder> if missing
  c.data.builder_kwargs = ml_collections.ConfigDict()
  # A tokenizer.json, or a local HF tokenizer directory (tokenizer.json, or a sentencepiece
  # tokenizer.model); '': the eval dataset's tokenizer.json (data.dir, or when that is ''
  # the first mixture component's: the demos ship one, a real dataset's build does not).
  c.data.tokenizer = ''
  c.data.train_split = 'train'
  # Instruction tasks (radjax/data/instructions.py): each record becomes the turns of one
  # of these, drawn by its per-record seed among those the record can serve: 'report',
  # 'report_text', 'classification', 'anatomical_grounding', 'abnormality_grounding',
  # 'phrase_grounding', 'detection', 'conversation', 'vqa', 'instruction',
  # 'report_from_codes', 'codes_from_report' (LLM-CXR), 'impression_from_findings' (text).
  c.data.tasks = ('report',)
  c.data.task_options = ml_collections.ConfigDict(dict(
      # report: 'findings' | 'impression' | 'both' ('Findings: ...\nImpression: ...') |
      # 'joined' (the two texts after each other, unlabelled: LLM-CXR's stage 1)
      report_section='both',
      uncertain_as=1,  # classification / vqa: what a CheXpert -1 counts as (RadVLM: 1)
      vqa_questions=1,  # vqa: yes/no questions per example, about distinct observations
      # True: a record serving several tasks always gets the same one (its id's hash
      # picks it; LLM-CXR: each image in one direction); False: drawn at every visit
      task_per_record=False,
  ))
  # How turns become tokens (radjax/data/chat.py): 'radjax' | 'vicuna' (XrayGPT's ###
  # turns) | 'llava' (LLaVA-1.5's USER: / ASSISTANT:, as its HF chat template renders them)
  # | 'chatml' (Qwen2, RadVLM) | 'dolly' (LLM-CXR) | 'plain' (RadFM's Q/A) | 'none'
  # (no prompt: images then the answer) | 'text' ('none' without the BOS) | 'caption'
  # ('none' closed by '\n', not EOS: XrayGPT's stage 1). Loss on every assistant turn and
  # its end marker.
  c.data.chat_format = 'radjax'
  c.data.system_prompt = ''  # '' = the chat format's own default
  # Texts of one token each that carry loss wherever they stand, system and user turns
  # included (RadVLM trains '\n', '<|im_start|>' and '<|im_end|>' so: configs/radvlm.py).
  c.data.always_trained = ()
  # True: the assistant's whole turn carries loss, its opening ('<|im_start|>assistant\n')
  # and the separator after it included, and the last turn ends with that separator too
  # (LLaVA-NeXT's preprocess_qwen, RadVLM). False: the answer and its closing pieces.
  c.data.train_assistant_turn = False
  # How the loss averages token losses: 'token' (every trained token of the global batch
  # weighs the same: HF's Trainer since 4.46 across micro-batches, and across devices with
  # average_tokens_across_devices, its later default) or 'example' (each example's
  # loss-mask sums to 1, so the loss is the mean of the examples' own token means: what
  # LAVIS, and an HF Trainer over a model whose forward takes no num_items_in_batch
  # (LLaVA-NeXT's), compute with one example per device, as XrayGPT's stage 2 and RadVLM
  # train). The logged 'tokens' then counts examples, and eval's val_loss / perplexity are
  # per-example means.
  c.data.loss_norm = 'token'
  # An example longer than max_len: 'drop' (skipped, counted in data/dropped_too_long and
  # logged) or 'truncate' (cut at max_len; counted in data/truncated).
  c.data.too_long = 'drop'
  # > 0: the training loss computes logits only at a row's loss-bearing positions, at most
  # this many (the answer; HF's logits_to_keep as indices). The vocabulary projection is a
  # third of a small decoder's FLOPs, and a VLM's image and prompt positions carry no loss.
  # An example with more answer tokens is too long (too_long above). 0: every position.
  c.data.max_target_tokens = 0
  # Several datasets mixed by weight (radjax/data/mixture.py), by name:
  #   c.data.mixture.mimic = dict(dir=..., tasks=('report',), weight=0.5, repeat=1)
  # Drawn in proportion to weight x repeat; weight 0 on every component: size x repeat.
  # max_records=N (> 0) reads a fixed subset of N of a component's train records (RadVLM's
  # num_samples); its size is then N.
  # Empty: config.data.dir alone with config.data.tasks. Eval reads config.data.dir, or
  # when that is '' the first component (in name order), unless config.eval.datasets gives
  # an evaluator its own.
  # A component with kind='volume' (3D scans, a 'vit3d' tower) goes to the volume stream.
  c.data.mixture = ml_collections.ConfigDict()
  c.data.max_len = 256  # static sequence length (tokens, image placeholders included)
  c.data.max_images = 1  # static image slots per example
  # Sequence packing (radjax/data/packing.py; tasks 'lm' and 'vlm' with 2D images): training
  # rows hold several examples, each with its own segment id and positions from 0, and
  # attention stays within an example, so each example's loss is the one it has unpacked
  # while rows carry far less padding. Evaluation stays unpacked. A row holds at most
  # pack_max_examples examples; a VLM row has pack_max_examples x max_images image slots
  # (the tower runs on all of them: keep it near the examples per row that fit, which
  # data/examples_per_row logs). Not with label_loss_weight > 0 or volumes.
  c.data.pack = False
  c.data.pack_max_examples = 4
  # Packed rows come from pack_shards shards of the stream, each packed on its own (0: the
  # process count of the run that starts; a resumed run keeps its checkpoint's). A packed
  # checkpoint resumes on any process count that divides it: give a run that may grow to
  # P processes a multiple of P (fewer rows per packer pack a little worse; each of a
  # process's shards reads with its own worker_threads).
  c.data.pack_shards = 0
  c.data.image_delimiters = False  # <image_begin> placeholders <image_end> (RadFM)
  # Images as VQ-GAN codes in the decoder's vocabulary (LLM-CXR): the tokenizer gains
  # <image_begin>, <image_end> and one token per code; tasks 'report_from_codes' and
  # 'codes_from_report' read the Examples' `codes`. 0: none.
  c.data.codebook_size = 0
  # Codes per image (the codec's grid: LLM-CXR's 16 x 16 = 256): a record whose `codes`
  # hold another count is a data error naming it (and its shard). 0: config.codec's grid.
  c.data.codes_per_image = 0
  # The codec whose codes the decoder reads and writes (LLM-CXR): a vqgan workdir.
  # --mode=generate encodes --images with it and decodes drawn codes to PNGs; '' = none.
  # Drawing decodes with its own knobs (LLM-CXR samples, top-p 0.92); reading uses eval's.
  c.codec = ml_collections.ConfigDict(dict(workdir='', step=-1,  # step -1: its latest
                                           decoding='sample', temperature=1.0, top_p=0.92))
  # Keyword-weighted loss (RadFM): term files (comma-separated, one term per line; '' = off);
  # answer tokens of their terms weigh keyword_weight; the loss divides by the summed weights.
  c.data.keyword_terms = ''
  c.data.keyword_weight = 3.0
  # CheXpert observations as multi-label targets from the Examples' `labels` (unmentioned
  # = 0, -1 = task_options.uncertain_as): task 'classify' trains on them; a VLM with
  # label_loss_weight > 0 adds a label head on its vision tower's pooled features and
  # that weight x the head's mean sigmoid cross-entropy to its loss (an auxiliary loss
  # that makes the tower see the findings early).
  c.data.label_names = ()
  c.data.label_loss_weight = 0.0
  # Box-supervised label head: for the labels in box_token_labels, each patch token's query
  # score is also trained (box_token_weight x sigmoid cross-entropy, relative to the label
  # loss; balanced: patches under a box weigh as much as the rest) to be 1 under the
  # Examples' boxes of that label and 0 elsewhere, so a small finding is learnt where it
  # is rather than from the image label alone.
  c.data.box_token_labels = ()
  c.data.box_token_weight = 0.0
  # Volumes and images in separate batches (RadFM): volume components of the mixture form
  # batches of volume_batch_size, images of train.batch_size; a share volume_batch_share
  # of the batches are volume batches (interleaved deterministically, Grain's mix). A
  # volume batch is padded in depth to the smallest of depth_buckets that holds its deepest
  # volume (empty: max_slices below, else model.vision.max_depth), so few shapes compile:
  # on one process by the host; on several (each sees only its share of the batch) the
  # model picks the bucket in the program, per image slot (radjax/models/vlm.py).
  c.data.volume_batch_size = 1
  # Slices a volume keeps at most (deeper ones are resized to it, nearest; below it a scan
  # goes to the multiple of the depth patch nearest its sample's deepest scan); 0: the
  # tower's max_depth. RadFM trains on at most 64 of its 512-slice tables' reach, so its
  # stretched depth rows past that were never trained: configs/radfm.py sets 64.
  c.data.max_slices = 0
  # In-plane size of a training volume batch padded deeper than one depth patch (0: the
  # tower's image_size): its slots, built at image_size, are resized by nearest voxel on
  # the host, as RadFM's training collator does at a batch of one volume (256 when the
  # target depth is > 4; its code default is one volume a device, so its 3D training ran
  # there). Decided per batch from the depth it is padded to (its bucket: one shape per
  # batch; with a bucket of one depth patch, as RadFM's recipe has, the same batches as
  # RadFM's rule). Several processes (each host sees a share of a batch) leave it to the
  # training step, which resizes from the whole batch's depth mask (VLM._volume_slots).
  # 2D batches, evaluation and generation stay at image_size (RadFM's inference path).
  c.data.volume_image_size = 0
  # Training samples of more than many_images images keep at most many_images_max_slices
  # slices (0: max_slices), RadFM's collator's [4..32] for a sample of > 6 images.
  c.data.many_images = 6
  c.data.many_images_max_slices = 0
  c.data.volume_batch_share = 0.5
  c.data.depth_buckets = ()
  c.data.image_mean = (0.48145466, 0.4578275, 0.40821073)  # CLIP; SigLIP uses 0.5
  c.data.image_std = (0.26862954, 0.26130258, 0.27577711)
  c.data.augment = True  # random resized crop + small intensity jitter (train only)
  c.data.crop_scale = (0.8, 1.0)  # random resized crop area range
  # With augment (every task): the jitter too, contrast x U(0.9, 1.1) and brightness
  # + U(-0.05, 0.05); False: the crop alone (BLIP-2's train transform, XrayGPT's).
  c.data.intensity_jitter = True
  # Task 'vqgan' only (the codec's input), without augmentation: 'square' resizes to size x
  # size (bicubic); 'crop' takes the shorter side to size (Lanczos) and the centre square
  # (LLM-CXR's). Tasks 'vlm' and 'classify' always resize 'square' (as the exported HF
  # processor does) and refuse 'crop' (radjax/core/config_checks.py).
  c.data.resize = 'square'
  # How 2D images travel to the device (radjax/data/pixels.py): 'uint8' as 8-bit pixels with
  # the tower's channels plus each image's [256, C] float32 table (the normalisation, and
  # the record's jitter), looked up on the device as the step's first op: 4x fewer bytes
  # through worker processes, prefetch buffers and the host-to-device copy than
  # 'float32', which normalises on the host. 'gray8': one channel (the gray value, looked
  # up in each of the tower's C channels: 4 x C fewer bytes), for radiographs; a colour
  # image in the data is an error naming its record (an RGB file of equal channels is read
  # as gray); generation reads a user's colour image with the tower's channels.
  # The floats are the same bits either way. A vit3d recipe's volume slots travel as the
  # scans' float16 voxels and 8-bit 2D images, repeated and normalised on the device
  # (a scan's floats within 1 ulp: radjax/data/pixels.py), or as floats with 'float32'.
  c.data.pixels = 'uint8'
  c.data.shuffle = True
  c.data.worker_threads = 0  # Grain read threads (0: read in the main thread)
  # Training batches made in this many processes, each with worker_threads threads (0:
  # in the training process). For hosts that feed several accelerators: read threads
  # share the trainer's GIL. Each process keeps its own max_skipped_records count.
  c.data.worker_processes = 0
  # Undecodable records a run may skip (each logged with its shard, index and id; the
  # next good record takes its place, so a resumed run sees the same stream); 0: stop.
  c.data.max_skipped_records = 0

  # ---- model ------------------------------------------------------------------
  # ---- how the model runs (nothing here changes what is exported) -------------
  c.runtime = ml_collections.ConfigDict()
  c.runtime.dtype = 'bfloat16'  # compute dtype; parameters stay float32
  # 'cudnn' (flash attention, NVIDIA GPUs; checked when a run starts) | 'xla' | 'auto'
  c.runtime.attention_impl = 'xla'
  c.runtime.scan_layers = True  # layers under nn.scan (conversion reads both layouts)
  # Scanned (stacked) parameters, but the layers applied one by one: faster on CPU,
  # slower to compile (BENCHMARKS.md); the parameters and checkpoints are the same. The 2D
  # ViT and the decoder only: vit3d and the perceiver scan (or not) by scan_layers alone.
  # A part with remat scans anyway: XLA:CPU drops the barriers that keep unrolled layers'
  # recomputation apart, so looped remat saved no memory.
  c.runtime.unroll_scan = False
  # Volume batches of several image slots (vit3d; RadFM's recipe has 10): the tower runs
  # one slot at a time, skipping slots no row of the batch uses (and, on several
  # processes, each at its depth bucket), rematerialised: one more tower forward per slot
  # run (bench/volume_slots.py). False: every slot in one tower call, faster when every
  # example fills every slot.
  c.runtime.volume_slot_switch = True
  # The host's malloc, set when main.py restarts itself (radjax/core/host_memory.py):
  # 'mimalloc' keeps a CPU step's temporaries mapped from step to step, 'glibc_huge_pages'
  # faults them in 2 MB pages, 'glibc' as started. Demo loop 4.5 -> 6.5 steps/s with huge
  # pages (session 15), 8.4-8.7 with mimalloc (session 18; BENCHMARKS.md).
  c.runtime.host_allocator = 'mimalloc'
  # JAX's persistent compilation cache (MaxText's jax_cache_dir), set by main.py: a resumed
  # or repeated run (eval, generate, a dry run's programs) loads what took over a second
  # to compile instead of compiling it again. Keyed by program, jaxlib and devices. '': off,
  # the default: two CPU processes of one run, one loading while the other compiles, can
  # miss gloo's 30 s collective timeout (tests/test_multiprocess.py).
  c.runtime.compilation_cache_dir = ''
  # Rematerialisation per part, radjax/models/layers.py REMAT_POLICIES (the 'linear' and
  # 'mlp' projectors have no blocks to recompute; vqgan: its residual and attention blocks).
  # On XLA:CPU only scanned stacks save memory by it: unrolled blocks (scan_layers=False,
  # the VQ-GAN's) lose the barriers that keep the recomputation late (BENCHMARKS.md).
  c.runtime.remat = ml_collections.ConfigDict(dict(vision='none', projector='none',
                                                   llm='none', vqgan='none'))

  # ---- model: parts chosen by kind (radjax/models/registry.py) ------------------
  c.model = ml_collections.ConfigDict()
  # 'vlm' (vision + projector + LLM), 'classifier' (vision + a label head, task 'classify'),
  # or one part alone: 'llm', 'vision', 'projector', 'vqgan' (task 'vqgan')
  # (e.g. imported by `python -m radjax.convert from-hf`, or trained by task 'lm').
  c.model.kind = 'vlm'
  c.model.image_token_id = -1  # -1: the tokenizer's <image>; a set id must agree with it
  # AnyRes (LLaVA-NeXT / LLaVA-OneVision; radjax/data/anyres.py): besides the base tile,
  # each image is resized into the best of these (rows, cols) grids of image_size tiles,
  # and the grid's features follow the base's, a learned newline after each row (the
  # projector's image_newline). () = one tile per image. RadVLM: every grid up to 6 x 6.
  c.model.anyres_grids = ()
  # anyres_max_N: a grid's feature map over ~N tiles' tokens is scaled down (bilinear) to
  # about N tiles' worth (RadVLM: 9). 0 = never scaled.
  c.model.anyres_max_tiles = 0

  c.model.vision = ml_collections.ConfigDict()
  # 'vit': CLIP/SigLIP/EVA-style 2D ViT | 'vit3d': RadFM's 3D ViT (volumes [H, W, D, C] and
  # 2D images [H, W, C], repeated to one depth patch; radjax/models/vit3d.py)
  c.model.vision.kind = 'vit'
  # 'clip' | 'siglip' | 'eva' (BLIP-2's EVA ViT-g, XrayGPT: no k bias, exact GELU, no
  # pre-norm, post-norm `ln_vision` on the features; norm_eps 1e-6, keep_class_token=True;
  # LAVIS's ln_vision runs at torch's 1e-5, HF's port and radjax at the blocks' 1e-6)
  c.model.vision.variant = 'clip'
  c.model.vision.image_size = 224
  c.model.vision.patch_size = 14
  c.model.vision.embed_dim = 1024
  c.model.vision.num_layers = 24
  c.model.vision.num_heads = 16
  c.model.vision.mlp_dim = 4096
  c.model.vision.num_channels = 3
  c.model.vision.norm_eps = 1e-5
  # HF hidden_states index of the features (LLaVA: -2); layers after it stay in the
  # parameters and the export but never run. 'vit' only (as are variant and
  # keep_class_token): vit3d's features are its last layer's.
  c.model.vision.select_layer = -2
  c.model.vision.keep_class_token = False
  # vit3d only (RadFM: image_size 512, patch_size 32, max_depth 512, depth_patch_size 4,
  # embed_dim 768, 12 layers, 8 heads of head_dim 64, mlp_dim 2048, position_stride True).
  # Depths up to max_depth in multiples of depth_patch_size; padded slices are masked.
  c.model.vision.max_depth = 64
  c.model.vision.depth_patch_size = 4
  c.model.vision.head_dim = 0  # 0: embed_dim // num_heads
  # False: depth slot k reads position row k. True: RadFM's stretch of the row, column and
  # depth tables over a smaller image or a shallower volume (depth counted per image).
  c.model.vision.position_stride = False
  # Start from pretrained weights: an HF model directory (CLIP/SigLIP/BLIP-2 vision, or a
  # Llava / LLaVA-OneVision whose tower is taken), a radjax workdir, or weights files
  # (.pth / .bin / .safetensors in HF BLIP-2 or LAVIS names, e.g. BLIP-2's .pth;
  # comma-separated, merged in order: radjax/train/pretrained.py). '' = random init.
  c.model.vision.init_from = ''

  c.model.projector = ml_collections.ConfigDict()
  # 'linear' | 'mlp' | 'qformer' (BLIP-2, XrayGPT) | 'perceiver' (Flamingo's resampler,
  # RadFM: num_queries 32, num_layers 6, num_heads 8, head_dim 64, mlp_dim 3072, norm_eps
  # 1e-5; works at the vision width, then a linear to the LLM width)
  c.model.projector.kind = 'mlp'
  # Widths: 0 takes them from the towers (vision embed_dim -> llm embed_dim); a
  # projector-only workdir records them.
  c.model.projector.in_dim = 0
  c.model.projector.out_dim = 0
  # 'linear' / 'mlp': the AnyRes newline vector; set from config.model.anyres_grids.
  c.model.projector.image_newline = False
  # qformer and perceiver: learned queries (the perceiver's latents), layers, heads, MLP;
  # qformer only: hidden_dim and cross-attention every k layers.
  c.model.projector.num_queries = 32
  c.model.projector.hidden_dim = 768
  c.model.projector.num_layers = 12
  c.model.projector.num_heads = 12
  c.model.projector.mlp_dim = 3072
  c.model.projector.cross_attention_every = 2
  # The LayerNorms' eps of qformer (BERT: 1e-12) and perceiver (RadFM: 1e-5, which a
  # perceiver must set: it reads this knob too).
  c.model.projector.norm_eps = 1e-12
  c.model.projector.head_dim = 0  # perceiver: 0 = in_dim // num_heads
  # A VLM workdir, an HF Llava directory (LLaVA stage 2); for 'qformer', a BLIP-2
  # directory or .pth (LAVIS names) or a projector workdir; for 'linear', a MiniGPT-4 /
  # XrayGPT checkpoint .pth (its llama_proj). Weights files may be comma-separated, merged
  # in order: 'blip2.pth,xraygpt_stage1.pth' is BLIP-2's Q-Former with XrayGPT's llama_proj.
  c.model.projector.init_from = ''
  # Projector params (regex over their 'a/b' paths, e.g. 'out/.*') that keep their fresh
  # init though init_from holds them (at any shape, or not at all): XrayGPT's stage 1 takes
  # BLIP-2's Q-Former but a new llama_proj, not BLIP-2's projection into its own (T5 / OPT)
  # language model, whose width may differ from the LLM's.
  c.model.projector.init_fresh = ''

  c.model.llm = ml_collections.ConfigDict()
  c.model.llm.kind = 'decoder'  # LLaMA/Vicuna, Qwen2 and GPT-NeoX by the fields below
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
  # The context length the model was trained for (HF's max_position_embeddings: LLaMA-2
  # and Vicuna v1.5 4096, LLaMA-1, TinyLlama and GPT-NeoX 2048, Qwen2-7B-Instruct 32768).
  # `to-hf` writes it into the exported config and `from-hf` reads it; the decoder itself
  # does not (RoPE has no position table), nor does a checkpoint depend on it, so init_from
  # a model with another value is fine (a recipe sets its source model's).
  c.model.llm.max_position_embeddings = 4096

  # The VQ-GAN image codec (config.model.kind='vqgan', task 'vqgan'; radjax/models/vqgan.py).
  # Defaults: Taming's f16 / 1024-code model, LLM-CXR's geometry (256 px -> 16 x 16 codes).
  c.model.vqgan = ml_collections.ConfigDict()
  c.model.vqgan.kind = 'vqgan'
  c.model.vqgan.num_channels = 3  # 1: grayscale in and out
  c.model.vqgan.image_size = 256
  c.model.vqgan.base_channels = 128
  c.model.vqgan.channel_mult = (1, 1, 2, 2, 4)  # levels; downsampling 2^(levels - 1)
  c.model.vqgan.num_res_blocks = 2
  c.model.vqgan.attn_levels = (4,)  # levels with attention after each residual block
  c.model.vqgan.z_channels = 256
  c.model.vqgan.codebook_size = 1024
  c.model.vqgan.codebook_dim = 256
  c.model.vqgan.norm_groups = 32
  c.model.vqgan.l2_normalize = False  # cosine code lookup (not exportable to diffusers)
  c.model.vqgan.disc_channels = 64  # PatchGAN discriminator
  c.model.vqgan.disc_layers = 3
  c.model.vqgan.init_from = ''  # a vqgan workdir (e.g. `from-hf --family vqgan`)

  # ---- optimizer --------------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2e-5  # peak learning rate
  c.optim.warmup_steps = 100
  c.optim.warmup_init_lr = 0.0  # the warmup starts here (LAVIS / XrayGPT: warmup_lr 1e-6)
  c.optim.min_lr_ratio = 0.1  # cosine ends at lr * min_lr_ratio
  # After the warmup: 'cosine' spans the remaining steps (HF's cosine with warmup); 'lavis'
  # is LAVIS's linear_warmup_cosine_lr (XrayGPT): the cosine over the whole run, read at
  # the step, so it is already below lr when the warmup ends; 'log_warmup' climbs on a log
  # curve (DeepSpeed's WarmupLR default, LLM-CXR) then decays as 'cosine'
  # (radjax/train/optimizer.py).
  c.optim.schedule = 'cosine'
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0  # decoupled, applied to weight matrices only
  c.optim.clip_norm = 1.0  # global gradient norm clip (0: off)
  # (regex over 'a/b/c' parameter paths, 'frozen' or an LR multiplier). A regex must match
  # the whole path (re.fullmatch: 'vision/.*', not 'vision'). First match wins; every
  # parameter must match one rule.
  c.optim.param_groups = (('.*', 1.0),)
  c.optim.grad_accum = 1  # micro-batches per step, accumulated with lax.scan

  # ---- training loop ----------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  # Impossible values (num_steps <= 0, batch_size 0, a mesh axis 0, ...) are errors naming
  # the knob: radjax/core/config_checks.py.
  c.train.num_steps = 1000
  c.train.batch_size = 8  # global batch (all micro-batches, all hosts)
  # >0: examples per device in each micro-batch (LLaVA's per_device_train_batch_size).
  # optim.grad_accum is then derived from batch_size and the mesh's batch shards, so one
  # global batch runs on 8 devices or 128 with the memory of this many examples each.
  c.train.micro_batch_per_device = 0
  c.train.log_every = 10
  # Checkpoints hold the state and the data-iterator position. A non-finite state is never
  # saved; a checkpoint that does not restore is set aside in <workdir>/checkpoints_damaged
  # and the run resumes from the next older one. SIGTERM saves one and exits after the step.
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 3  # the newest N are kept; 0 keeps all
  c.train.async_checkpoint = True
  # 0: only at the end. An evaluation lost to a kill is redone when the run resumes.
  c.train.eval_every = 500
  # A profiler trace of the profile_steps steps after step profile_first_step (0: none),
  # in <workdir>/plugins/profile (<workdir>/process_<i>/... with several processes) for
  # TensorBoard's profile tab or XProf (MaxText's profiler=xplane).
  c.train.profile_steps = 0
  c.train.profile_first_step = 10
  # A first stage in the same command: a recipe spec ('configs/classifier.py:size=tiny')
  # trained into <workdir>/pre_stage with this config's model.<pre_stage_part> architecture,
  # before this run starts (skipped once it has reached its num_steps); that part then
  # starts from it (its init_from). '' = none. pre_stage_set: (dotted key, value) pairs
  # set on the stage's config, as --config.key=value would (e.g. ('train.num_steps', 800)).
  c.train.pre_stage = ''
  c.train.pre_stage_part = 'vision'
  c.train.pre_stage_set = ()

  # ---- evaluation -------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.split = 'val'
  # Evaluators by name (radjax/eval/evaluators): () runs the task's own list
  # ('vlm': loss, reports; 'lm': loss; 'classify': loss, labels; 'vqgan': codec).
  c.eval.evaluators = ()
  # The dataset an evaluator reads (radjax/eval/evaluators/eval_sets.py), by evaluator name:
  # dict(component=<a config.data.mixture name> | dir=<a built dataset>, split='' (config.
  # eval.split), max_records=0 (N > 0: N records drawn by seed), seed=0). Empty, and for an
  # evaluator not listed ('loss' included): config.data.dir, or when '' the first component.
  c.eval.datasets = ml_collections.ConfigDict()
  c.eval.batch_size = 8
  c.eval.num_loss_batches = 8  # val-loss batches (0: the whole split)
  c.eval.num_generate = 32  # held-out examples to generate reports for
  c.eval.max_new_tokens = 96
  # Report decoding (radjax/eval/decoding/generate.py): 'greedy' | 'sample' | 'beam'. Greedy and
  # beam search reproduce HF transformers' generate(); 'sample' with temperature 0 is greedy.
  c.eval.decoding = 'greedy'
  c.eval.temperature = 1.0  # sample: logits / temperature, then top-k, then top-p
  c.eval.top_k = 0  # sample: keep the k most likely tokens (0: off; HF's default is 50)
  c.eval.top_p = 1.0  # sample: nucleus mass to keep (1.0: off)
  # Every decoding: HF's repetition penalty on the prompt's and the generated ids, before
  # temperature / top-k / top-p (> 1 discourages repeats; 1.0: off, the program unchanged).
  c.eval.repetition_penalty = 1.0
  c.eval.num_beams = 4  # beam: beams per prompt
  c.eval.length_penalty = 1.0  # beam: score = sum(log p) / generated_length ** length_penalty
  c.eval.early_stopping = 'false'  # beam: 'false' | 'true' | 'never' (HF's False/True/'never')
  # Besides the chat format's (vicuna: '###'): a row ends at the token that completes one
  # (radjax/eval/decoding/stop_strings.py; beam search closes that hypothesis, as HF's
  # StopStringCriteria does). The text is cut before the first of these.
  c.eval.stop_strings = ()
  # Vocabulary entries that end a generation besides EOS and the chat format's end of turn
  # (from-hf takes them from generation_config.json's eos_token_id; to-hf writes them there).
  c.eval.stop_tokens = ()
  c.eval.meteor = True  # METEOR starts a Java process (pycocoevalcap); False skips it
  # Text as the captioning metrics see it: 'radjax' (punctuation to spaces) or 'r2gen'
  # (R2Gen's cleaner, for numbers comparable with the papers that follow it).
  c.eval.text_norm = 'radjax'
  c.eval.num_logged_examples = 4  # images + generated reports sent to TensorBoard

  # ---- the VQ-GAN task's losses and second optimizer (radjax/tasks/vqgan.py) ------
  # Generator: l1 * |x - x'| + l2 * (x - x')^2 + perceptual * LPIPS + codebook + beta *
  # commitment + adaptive weight * disc_weight * hinge generator loss (from disc_start).
  c.vqgan = ml_collections.ConfigDict()
  c.vqgan.l1_weight = 1.0
  c.vqgan.l2_weight = 0.0
  c.vqgan.codebook_weight = 1.0  # ignored with ema (the codebook follows the encoder)
  c.vqgan.beta = 0.25  # commitment weight
  c.vqgan.ema = False  # codebook as an EMA of its assigned encoder outputs (no gradient)
  c.vqgan.ema_decay = 0.99
  # Dead-code restarts: every restart_every steps, codes whose running share of
  # assignments is below restart_threshold / codebook_size take a random encoder output
  # of the batch. 0: off.
  c.vqgan.restart_every = 0
  c.vqgan.restart_threshold = 0.03
  c.vqgan.usage_decay = 0.95  # running share of assignments per code (restarts, metrics)
  c.vqgan.disc_weight = 0.8  # Taming: 0.8 (LLM-CXR's unknown)
  c.vqgan.disc_start = 10000  # step the adversarial losses turn on
  c.vqgan.disc_lr = 0.0  # discriminator peak LR (0: optim.lr); same schedule and betas
  # LPIPS-style perceptual loss: VGG16 features from a torchvision `vgg16` state dict
  # (.pth read with weights_only=True, or .safetensors) and, optionally, LPIPS's linear
  # heads (`lin0..4.model.1.weight`, e.g. lpips' vgg.pth). '' = off (logged once).
  # Without heads the distance is LPIPS's baseline (lpips=False: channels summed), on a
  # scale of its own; perceptual_weight 1.0 is Taming's value, which has the heads.
  c.vqgan.perceptual_weight = 1.0
  c.vqgan.perceptual_weights = ''
  c.vqgan.lpips_heads = ''
  return c
