r"""radjax entry point.

  python main.py --config configs/demo.py --workdir runs/demo [--mode=train|eval|generate]
      [--config.train.num_steps=100] [--images a.png,b.png]
  python main.py --config configs/workdir.py:WORKDIR --workdir WORKDIR --mode=generate \
      [--images a.png | --prompt "text"]   # a trained or imported (from-hf) workdir
"""
from absl import app, flags
from ml_collections import config_flags

from radjax import run

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Recipe config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and TensorBoard events go here.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'generate'], 'What to do.')
flags.DEFINE_list('images', [], 'Image files for --mode=generate.')
flags.DEFINE_string('prompt', '', 'Text prompt for --mode=generate on an LLM-only workdir.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  run.main(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.images, FLAGS.prompt)


if __name__ == '__main__':
  app.run(main)
