"""CheXbert labeler plug-in (Smit et al. 2020): off unless given a local checkpoint.

The model is BERT-base with 14 linear heads on the [CLS] state: 13 observations with 4
classes (0 blank, 1 positive, 2 negative, 3 uncertain) and No Finding with 2 (0 blank,
1 positive), in CheXbert's order (CONDITIONS). Labels map to ours: blank -> None,
positive -> 1, negative -> 0, uncertain -> -1, so clinical.py scores them exactly as the
rule-based labeler's, uncertain counting as positive (f1chexbert's "rrg" mode).

Nothing is downloaded. The checkpoint directory holds
  vocab.txt (or tokenizer.json)  bert-base-uncased's tokenizer
  config.json                    optional BERT config; absent = bert-base-uncased
  model.safetensors, or one *.pth / *.pt   e.g. the published chexbert.pth, read with
                                 torch.load(weights_only=True): tensors only, no code
Keys may carry DataParallel's "module." prefix and sit under "model_state_dict".
"""

from __future__ import annotations

import glob
import os
import re

CONDITIONS = (
  'Enlarged Cardiomediastinum', 'Cardiomegaly', 'Lung Opacity', 'Lung Lesion', 'Edema',
  'Consolidation', 'Pneumonia', 'Atelectasis', 'Pneumothorax', 'Pleural Effusion',
  'Pleural Other', 'Fracture', 'Support Devices', 'No Finding',
)
CLASS_TO_LABEL = {0: None, 1: 1, 2: 0, 3: -1}
# Buffers some transformers versions save and others rebuild.
_OPTIONAL_KEYS = re.compile(r'^bert\.embeddings\.position_ids$')


def _torch():
  try:
    import torch
    import transformers
  except ImportError as e:
    raise ImportError('the CheXbert plug-in needs torch and transformers '
                      '(pip install torch transformers)') from e
  return torch, transformers


def build_model(config):
  """The CheXbert module (BertModel + 14 heads) for a transformers BertConfig."""
  torch, transformers = _torch()

  class CheXbert(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.bert = transformers.BertModel(config)
      h = config.hidden_size
      self.linear_heads = torch.nn.ModuleList(
          [torch.nn.Linear(h, 4) for _ in range(13)] + [torch.nn.Linear(h, 2)])

    def forward(self, input_ids, attention_mask):
      cls = self.bert(input_ids, attention_mask=attention_mask)[0][:, 0]
      return [head(cls) for head in self.linear_heads]

  return CheXbert()


def checkpoint_file(path: str) -> str:
  """The weights file read in directory `path`: model.safetensors, else its one *.pth/*.pt."""
  st = os.path.join(path, 'model.safetensors')
  if os.path.exists(st):
    return st
  found = sorted(glob.glob(os.path.join(path, '*.pth')) + glob.glob(os.path.join(path, '*.pt')))
  if len(found) != 1:
    raise FileNotFoundError(f'{path}: expected model.safetensors or exactly one *.pth/*.pt '
                            f'checkpoint, found {[os.path.basename(f) for f in found]}')
  return found[0]


def read_state_dict(path: str) -> dict:
  """Tensors of the checkpoint in directory `path`, "module." prefixes stripped."""
  torch, _ = _torch()
  file = checkpoint_file(path)
  if file.endswith('.safetensors'):
    from safetensors.torch import load_file as load
  else:
    def load(f):
      state = torch.load(f, map_location='cpu', weights_only=True)
      return state.get('model_state_dict', state) if isinstance(state, dict) else state
  try:
    state = load(file)
  except Exception as e:  # torch and safetensors raise many types for a damaged file
    raise ValueError(f'{file}: not a readable checkpoint ({type(e).__name__}); a .pth is read '
                     'with torch.load(weights_only=True) only: convert one you trust to '
                     'model.safetensors') from None
  if not isinstance(state, dict):
    raise ValueError(f'{file}: holds a {type(state).__name__}, not a state dict')
  return {k.removeprefix('module.'): v for k, v in state.items()}


class CheXbertLabeler:
  """label(texts) -> [{observation: 1 | 0 | -1 | None}] like labeler.label_report."""

  def __init__(self, path: str, batch_size: int = 16):
    torch, transformers = _torch()
    if not os.path.isdir(path):
      raise FileNotFoundError(f'--chexbert {path}: not a directory '
                              '(see radjax/eval/metrics/chexbert.py)')
    if not any(os.path.exists(os.path.join(path, f)) for f in ('vocab.txt', 'tokenizer.json')):
      raise FileNotFoundError(f"{path}: no vocab.txt or tokenizer.json; copy bert-base-uncased's")
    cfg_file = os.path.join(path, 'config.json')
    config = (transformers.BertConfig.from_json_file(cfg_file) if os.path.exists(cfg_file)
              else transformers.BertConfig())
    self.tokenizer = transformers.BertTokenizer.from_pretrained(path, local_files_only=True)
    self.model = build_model(config)
    missing, unexpected = self.model.load_state_dict(read_state_dict(path), strict=False)
    missing = [k for k in missing if not _OPTIONAL_KEYS.match(k)]
    unexpected = [k for k in unexpected if not _OPTIONAL_KEYS.match(k)]
    if missing or unexpected:
      file = checkpoint_file(path)
      others = [os.path.basename(f) for f in glob.glob(os.path.join(path, '*.pt*'))
                if f != file]
      skipped = (f' ({", ".join(others)} not read: model.safetensors comes first; keep the '
                 'CheXbert weights alone there)' if others else '')
      raise ValueError(f'{file}: not a CheXbert checkpoint: missing {missing[:5]}, '
                       f'unexpected {unexpected[:5]}{skipped}')
    self.model.eval()
    self.batch_size = batch_size
    self.max_length = min(512, config.max_position_embeddings)

  def label(self, texts: list[str]) -> list[dict]:
    torch, _ = _torch()
    out = []
    for start in range(0, len(texts), self.batch_size):
      chunk = [re.sub(r'\s+', ' ', t or '').strip() for t in texts[start:start + self.batch_size]]
      enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                           return_tensors='pt')
      with torch.inference_mode():
        logits = self.model(enc['input_ids'], enc['attention_mask'])
      classes = torch.stack([x.argmax(-1) for x in logits], 1).tolist()
      out.extend({obs: CLASS_TO_LABEL[c] for obs, c in zip(CONDITIONS, row)} for row in classes)
    return out


def chexbert_scores(generated: list[str], references: list[str], path: str) -> dict:
  """clinical.py's scores on CheXbert labels, keys "chexbert_{precision,recall,f1}_..."."""
  from radjax.eval.metrics.clinical import clinical_scores
  model = CheXbertLabeler(path)
  labels = model.label(list(generated) + list(references))
  scores = clinical_scores(labels[:len(generated)], labels[len(generated):])
  return {k.replace('clinical_', 'chexbert_', 1): v for k, v in scores.items()}
