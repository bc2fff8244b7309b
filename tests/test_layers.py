"""The package layering of radjax/ (README "Layout"), checked from the imports of every
module, function-level imports included: a package imports only packages below it."""
import ast
import os

ROOT = os.path.join(os.path.dirname(__file__), '..', 'radjax')
# Bottom to top; packages on one line are independent of each other.
LAYERS = (('core',), ('models', 'data'), ('eval', 'convert'), ('train',), ('tasks',), ('run',),
          ('serve',))
RANK = {p: i for i, layer in enumerate(LAYERS) for p in layer}


def _imports():
  """(package of the importing module, imported radjax package or top-level name, where)."""
  for dirpath, _, files in os.walk(ROOT):
    for name in files:
      if not name.endswith('.py'):
        continue
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, ROOT)
      package = rel.split(os.sep)[0].removesuffix('.py')
      if package == '__init__':
        continue
      tree = ast.parse(open(path).read(), path)
      for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
          mods = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
        elif isinstance(node, ast.Import):
          mods = [a.name for a in node.names]
        else:
          continue
        for mod in mods:
          parts = mod.split('.')
          if parts[0] in ('configs', 'data_prep', 'tools', 'tests', 'bench'):
            yield package, parts[0], f'{rel}:{node.lineno}'
          elif parts[0] == 'radjax' and len(parts) > 1 and parts[1] in RANK:
            yield package, parts[1], f'{rel}:{node.lineno}'


def test_every_package_is_in_a_layer():
  packages = {e.removesuffix('.py') for e in os.listdir(ROOT)
              if e.endswith('.py') or os.path.isdir(os.path.join(ROOT, e))}
  assert packages - {'__init__', '__pycache__'} == set(RANK)


def test_packages_import_only_packages_below():
  bad = []
  for package, imported, where in _imports():
    if imported not in RANK:
      bad.append(f'{where}: radjax.{package} imports {imported} (outside the library)')
    elif imported != package and RANK[imported] >= RANK[package]:
      bad.append(f'{where}: radjax.{package} imports radjax.{imported}')
  assert not bad, '\n'.join(bad)


def test_models_import_no_other_radjax_package():
  assert not [w for p, i, w in _imports() if p == 'models' and i != 'models']


def test_readme_layout_table_gives_each_package_its_layer():
  """README "Layout" is the table a newcomer reads the layering from: every package at its
  rank here (radjax/serve/ was missing from it)."""
  import re
  readme = open(os.path.join(ROOT, '..', 'README.md')).read()
  rows = re.findall(r'^\| (\d+) \| `radjax/(\w+)(?:/|\.py)` \|', readme, re.M)
  assert {p: int(n) for n, p in rows} == RANK


def test_readme_layout_names_every_evaluator():
  import re

  from radjax.eval import evaluators
  readme = open(os.path.join(ROOT, '..', 'README.md')).read()
  row = re.search(r'^\| 2 \| `radjax/eval/` \|.*$', readme, re.M).group(0)
  listed = set(re.findall(r'`(\w+)`', row.split('chosen by name:')[1].split(';')[0]))
  assert listed == set(evaluators.EVALUATORS)
