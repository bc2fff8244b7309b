"""Tasks by name (`config.task`)."""
from radjax.tasks import classify, lm, vlm, vqgan
from radjax.tasks.base import BatchField, Task  # noqa: F401

TASKS = {t.name: t for t in (vlm.ImageTextToText, lm.TextToText, vqgan.ImageCodec,
                                 classify.FindingClassifier)}


def make(config, tokenizer) -> Task:
  if config.task not in TASKS:
    raise ValueError(f'config.task: {config.task!r} is not one of {sorted(TASKS)}')
  return TASKS[config.task](config, tokenizer)
