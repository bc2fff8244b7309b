"""Image -> findings: a vision tower with a multi-label head trained on the Examples'
`labels` (config.data.label_names). It scores generated images for faithfulness (LLM-CXR)
and is a vision pre-stage a VLM's tower can start from (`model.vision.init_from`)."""
import dataclasses

import jax

from radjax.data import labels as labels_lib
from radjax.data import pixels, processors, schema
from radjax.models import classifier, factory
from radjax.tasks import base


@dataclasses.dataclass
class LabelledImageProcessor:
  """Record bytes -> the record's first image and its label targets."""
  targets: labels_lib.LabelTargets
  image_size: int
  num_channels: int
  mean: tuple
  std: tuple
  augment: bool = False
  crop_scale: tuple = (0.8, 1.0)
  pixels: str = 'float32'  # config.data.pixels
  jitter: bool = True  # config.data.intensity_jitter, when augmenting

  def __call__(self, raw: bytes, rng) -> dict:
    example = schema.decode(raw)
    x = processors.first_image(example, 'a finding classifier', size=self.image_size,
                               num_channels=self.num_channels, mean=self.mean, std=self.std,
                               rng=rng if self.augment else None, crop_scale=self.crop_scale,
                               jitter=self.jitter, pixels=self.pixels)
    return {**x, **self.targets(example)}


def classifier_config(config) -> classifier.ClassifierConfig:
  names = tuple(config.data.get('label_names', ()))
  if not names:
    raise ValueError('config.data.label_names is empty: name the observations to classify')
  return classifier.ClassifierConfig(factory.vision_config(config.model),
                                     len(labels_lib.check_names(names)))


class FindingClassifier(base.Task):
  name = 'classify'
  model_kind = 'classifier'
  evaluators = ('loss', 'labels')
  parts = {'vision': 'vision'}
  needs_tokenizer = False
  image_slots = None  # answers no prompts

  def __init__(self, config, tokenizer):
    super().__init__(config, tokenizer)
    self.model_cfg = classifier_config(config)
    self.targets = base.label_targets(config, self.model_cfg.vision)

  def batch_spec(self) -> dict:
    v = self.model_cfg.vision
    return {**base.image_fields(self.config, (), v.image_size, v.num_channels),
            **base.label_fields(self.targets)}

  def processor(self, tasks=None, kind: str = '') -> LabelledImageProcessor:
    del tasks, kind  # images and labels only
    d, v = self.config.data, self.model_cfg.vision
    return LabelledImageProcessor(self.targets, v.image_size, v.num_channels,
                                  tuple(d.image_mean), tuple(d.image_std), d.augment,
                                  tuple(d.crop_scale), pixels.mode_of(self.config),
                                  d.get('intensity_jitter', True))

  def model(self, frozen=()) -> classifier.Classifier:
    return classifier.Classifier(self.model_cfg,
                                 factory.runtime(self.config, 'vision', 'vision' in frozen))

  def init_inputs(self) -> tuple:
    return (base.model_images(self.batch_spec()),)

  def predict(self, model, params, images):
    """(probabilities [N, L], pooled features [N, D]) of images [N, H, W, C]."""
    logits, pooled = model.apply({'params': params}, images)
    return jax.nn.sigmoid(logits), pooled

  def loss(self, model, params, batch, rng):
    del rng
    batch = pixels.as_floats(batch)  # the step's first op: 8-bit pixels -> the tower's floats
    logits, _, scores = model.apply({'params': params}, batch['images'],
                                    method=classifier.Classifier.with_scores)
    return base.label_head_losses(self.targets, self.config, logits, scores, batch)
