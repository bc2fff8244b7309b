"""Every knob the code and the recipes name is one radjax/core/defaults.py documents.

The config is a plain ConfigDict until main.py locks it, and code reads many knobs with
`.get(key, default)`: a misspelt key there (or in a recipe, which adds it silently) is a
knob that does nothing. These tests read the sources and the recipes' configs."""
import importlib
import itertools
import pathlib
import re

import ml_collections
import pytest

from radjax.core import config_checks, defaults

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Sections whose keys are the user's (mixture components by name, a builder's kwargs, eval
# datasets by evaluator).
OPEN = ('data.mixture', 'data.builder_kwargs', 'eval.datasets')
# ConfigDict methods, not keys.
METHODS = {'get', 'items', 'values', 'keys', 'to_dict', 'unlocked', 'lock', 'unlock',
           'copy_and_resolve_references', 'update', 'ignore_type', 'to_json',
           'to_json_best_effort', 'to_yaml', 'get_ref'}
# A config (or one of its sections) as the code names it, then .key.key... and an optional
# .get('key'; an alias such as `vc = self.config.vqgan` is followed within its file.
CHAIN = re.compile(r"\b((?:self\.|exp\.)?config(?:\.(?!get\()[A-Za-z_]\w*)*)"
                   r"(?:\.get\(\s*'(\w+)')?")
ALIAS = re.compile(r'^\s*((?:\w+, )*\w+) = ((?:self\.|exp\.)?config\.[\w.]+(?:, [\w.]+)*)\s*$',
                   re.M)
# An alias holds until the next def or class.
SCOPE_END = re.compile(r'^\s*(?:def|class) ', re.M)
# Parameters that hold one section wherever they appear.
PARAMS = {'data_cfg': 'data', 'data_config': 'data', 'eval_cfg': 'eval', 'optim_cfg': 'optim',
          'mesh_cfg': 'mesh', 'vc': 'vqgan', 'tc': 'train'}


def _sources():
  files = [ROOT / 'main.py', *sorted((ROOT / 'radjax').rglob('*.py')),
           *sorted((ROOT / 'configs').glob('*.py')), *sorted((ROOT / 'bench').glob('*.py'))]
  return [(f, f.read_text()) for f in files if f.name != 'defaults.py']


def _lookup(config, path: list[str]) -> str | None:
  """None when `path` (after the root) names keys of `config`, else the first bad one."""
  node, where = config, ''
  for key in path:
    if key in METHODS or not isinstance(node, ml_collections.ConfigDict) or where in OPEN:
      return None
    if key not in node:
      return f'{where}.{key}'.lstrip('.')
    node, where = node[key], f'{where}.{key}'.lstrip('.')
  return None


def _reads(src: str):
  """(line, dotted path) of each config read in `src`: attribute chains and .get keys."""
  top = defaults.get_config()
  # (name, section path, start, end) of each alias's reach in src.
  aliases = [(name, [section], 0, len(src)) for name, section in PARAMS.items()]
  for m in ALIAS.finditer(src):
    names, values = m.group(1).split(', '), m.group(2).split(', ')
    end = SCOPE_END.search(src, m.end())
    for name, value in zip(names, values):
      if value.startswith(('config.', 'self.config.', 'exp.config.')):
        path = value.split('config.', 1)[1].split('.')
        if path[0] in top:
          aliases.append((name, path, m.end(), end.start() if end else len(src)))
  for m in CHAIN.finditer(src):
    path = m.group(1).split('config', 1)[1].split('.')[1:]
    if path and path[0] not in top:  # a model part's own `config` (a dataclass)
      continue
    if m.group(2):
      path = path + [m.group(2)]
    if path:
      yield src[:m.start()].count('\n') + 1, path
  for name, base, start, end in aliases:
    for m in re.compile(rf"(?<![\w.]){name}\.(?:get\(\s*'(\w+)'|([A-Za-z_]\w*))").finditer(
        src, start, end):
      key = m.group(1) or m.group(2)
      yield src[:m.start()].count('\n') + 1, base + [key]


def test_every_config_read_names_a_documented_knob():
  config = defaults.get_config()
  bad = []
  for path, src in _sources():
    for line, keys in _reads(src):
      missing = _lookup(config, keys)
      if missing:
        bad.append(f'{path.relative_to(ROOT)}:{line}: config.{missing}')
  assert not bad, 'knobs read but not in radjax/core/defaults.py:\n' + '\n'.join(bad)


def test_the_scan_sees_a_misspelt_get():
  src = "x = config.data.get('box_token_wieght', 0.0)\nd = config.eval\ny = d.num_beam\n"
  config = defaults.get_config()
  found = {_lookup(config, keys) for _, keys in _reads(src)} - {None}
  assert found == {'data.box_token_wieght', 'eval.num_beam'}


def _keys(node, prefix=''):
  for key, value in node.items():
    if isinstance(value, ml_collections.ConfigDict) and f'{prefix}{key}' not in OPEN:
      yield from _keys(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}'


RECIPES = ('classifier', 'demo', 'llava_tinyllama', 'llm_cxr', 'radfm', 'radvlm', 'vqgan',
           'xraygpt')


@pytest.mark.parametrize('name', RECIPES)
def test_recipes_set_only_documented_knobs(name):
  documented = set(_keys(defaults.get_config()))
  module = importlib.import_module(f'configs.{name}')
  built = 0
  for size, task, stage in itertools.product(('full', 'tiny', 'micro'), ('', 'vlm', 'lm'),
                                             ('', 'stage=2,stage1=/nowhere')):
    arg = ','.join(filter(None, (f'size={size}', task and f'task={task}', stage)))
    try:
      config = module.get_config(arg)
    except (ValueError, FileNotFoundError):  # an argument the recipe refuses or needs
      continue
    built += 1
    extra = sorted(set(_keys(config)) - documented)
    assert not extra, f'configs/{name}.py:{arg} sets knobs defaults.py lacks: {extra}'
  assert built


def test_config_checks_name_documented_knobs():
  config = defaults.get_config()
  knobs = [*config_checks.MINIMUMS, *config_checks.CHOICES, *config_checks.PAIRS,
           *config_checks.RANGES,
           *(f'mesh.{a}' for a in config_checks.MESH_AXES)]
  assert [k for k in knobs if config_checks._get(config, k) is None] == []


@pytest.mark.parametrize('task', ['vlm', 'classify'])
def test_resize_crop_is_refused_where_it_would_be_ignored(task):
  """Only the codec's input honours data.resize; a VLM or a classifier squeezes square."""
  config = defaults.get_config()
  config.task, config.data.resize = task, 'crop'
  assert any('config.data.resize=' in e for e in config_checks.errors(config))
  config.task = 'vqgan'
  assert not config_checks.errors(config)


@pytest.mark.parametrize('knob, value, said', [
    ('data.image_std', (0.0,), 'config.data.image_std=(0.0,): finite numbers > 0'),
    ('data.image_std', (0.5, float('nan'), 0.5), 'config.data.image_std=(0.5, nan, 0.5)'),
    ('data.image_mean', ('abc',), "config.data.image_mean=('abc',): finite numbers"),
    ('eval.decoding', 'greedyy', "config.eval.decoding='greedyy' is not one of"),
    ('eval.top_p', 0.0, 'config.eval.top_p=0.0 must be in (0, 1]'),
    ('eval.temperature', float('inf'), 'config.eval.temperature=inf must be finite'),
    ('eval.top_k', -1, 'config.eval.top_k=-1 must be >= 0'),
    ('optim.lr', 1e39, 'config.optim.lr=1e+39 is not a finite float32'),
    ('eval.stop_strings', ('###', ''), "config.eval.stop_strings: '' cuts every answer"),
    # --config.eval.stop_strings=5 parses to (5,): the first evaluation failed unnamed
    ('eval.stop_strings', (5,), 'config.eval.stop_strings=(5,): a tuple of strings'),
    ('eval.stop_strings', ('###', None), "config.eval.stop_strings=('###', None): a tuple"),
    # a negative loss weight trains that loss upwards, silently
    ('data.label_loss_weight', -1.0, 'config.data.label_loss_weight=-1.0 must be >= 0'),
    ('data.keyword_weight', -3.0, 'config.data.keyword_weight=-3.0 must be >= 0'),
    ('vqgan.disc_weight', -0.8, 'config.vqgan.disc_weight=-0.8 must be >= 0'),
    ('vqgan.ema_decay', 1.5, 'config.vqgan.ema_decay=1.5 must be in [0, 1]'),
    # the cosine rose after the warmup, to twice optim.lr, silently
    ('optim.min_lr_ratio', 2.0, 'config.optim.min_lr_ratio=2.0 must be in [0, 1]'),
])
def test_values_that_would_fail_later_are_named_first(knob, value, said):
  """A zero std trained one step into a NaN loss that blamed the learning rate; the
  decoding knobs failed at the first evaluation without their names."""
  config = defaults.get_config()
  section, key = knob.split('.')
  config[section][key] = value
  assert any(said in e for e in config_checks.errors(config)), config_checks.errors(config)


@pytest.mark.parametrize('value', [-1, 2, 'ignore'])
def test_a_classifiers_uncertain_policy_is_zero_or_one(value):
  """task=classify took -1 as the uncertain labels' target: the label loss had no lower
  bound (logit -50: loss -50); the VLM path refused it already."""
  from radjax.data import labels
  config = defaults.get_config()
  config.data.label_names = ('Cardiomegaly', 'Edema')
  config.data.task_options = {'uncertain_as': value}
  with pytest.raises(ValueError, match=r'config.data.task_options.uncertain_as=.*: 0 .* or 1'):
    labels.from_config(config.data)
  config.data.task_options = {'uncertain_as': 0}
  assert labels.from_config(config.data).uncertain_as == 0


@pytest.mark.parametrize('recipe, arg, said', [
    # stage 1 trained again from scratch, the stage 1 workdir unread
    ('xraygpt', 'size=micro,stage1=/runs/xg1', "stage1='/runs/xg1': where stage 2 starts"),
    ('llm_cxr', 'stage1=/runs/lc1', "stage1='/runs/lc1': where stage 2 starts"),
    # stage 2 took its decoder from stage1= whatever llm= said
    ('xraygpt', 'stage=2,stage1=/runs/xg1,llm=/runs/xg0', "llm='/runs/xg0': stage 2 starts"),
    # a full-size LLaVA with the demo's box targets, refused by a knob the user never set
    ('demo', 'size=full', "size='full': configs/demo.py is the tiny recipe"),
])
def test_a_recipe_argument_that_would_be_ignored_is_refused(recipe, arg, said):
  module = importlib.import_module(f'configs.{recipe}')
  with pytest.raises(ValueError, match=re.escape(said)):
    module.get_config(arg)
