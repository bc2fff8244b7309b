r"""A finding classifier: a ViT with a multi-label head on the Examples' CheXpert labels
(task 'classify'). It scores generated images for faithfulness (LLM-CXR: do they show
what their report asked for?) and its tower can start a VLM's (`model.vision.init_from`).

  python main.py --config configs/classifier.py --workdir DIR --config.data.dir=CHEXPERT_DIR
  python main.py --config configs/classifier.py:size=tiny --workdir runs/cls  # the demo's 5

full: CLIP ViT-B/16 at 224 px on the 14 observations; size=tiny: the demo's ViT on its five
rendered findings (cardiomegaly, effusion, pneumothorax, nodule, consolidation).
"""
from configs import base, common
from radjax.data import schema


def get_config(arg: str = ''):
  args = common.parse(arg)
  if args.task:
    raise ValueError(f'config argument task={args.task!r}: configs/classifier.py trains a '
                     'classifier')
  c = base.get_config()
  c.task, c.model.kind = 'classify', 'classifier'
  v = c.model.vision
  v.image_size, v.patch_size, v.embed_dim, v.num_layers, v.num_heads, v.mlp_dim = (
      224, 16, 768, 12, 12, 3072)
  v.select_layer = -1
  c.data.label_names = schema.CHEXPERT_OBSERVATIONS
  c.data.augment = True
  c.optim.lr, c.optim.warmup_steps, c.optim.weight_decay = 1e-4, 500, 0.05
  c.train.num_steps, c.train.batch_size = 20_000, 64
  c.eval.evaluators = ('loss', 'labels')
  c.eval.batch_size = 64
  c.mesh.data, c.mesh.fsdp = -1, 1  # 86M parameters: a replica per device, no gathers
  if args.size in ('tiny', 'micro'):
    common.tiny(c)
    # The demo VLM's tower exactly (its pre-stage; init_from restores it).
    c.model.vision.select_layer, c.model.vision.patch_size = -2, 8
    common.demo_findings(c)
    c.train.num_steps, c.train.batch_size, c.train.eval_every = 600, 32, 300
    # The whole val split (300 images; the 7th batch padded): 48 splits over the batch
    # shards of up to 8 devices (60 stopped the demo's stage 1 on 8).
    c.eval.batch_size, c.eval.num_loss_batches = 48, 0
  if args.size == 'micro':
    common.micro(c)
    c.train.num_steps, c.train.eval_every = 20, 10
  return c
