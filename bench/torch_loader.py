"""The baseline bench/data_pipeline.py measures radjax's Grain pipeline against: what the
seed repositories do, a torch `Dataset` over a folder of image files plus a JSON of their
reports, read by a `DataLoader`.

Per example, as the seeds' PIL + torchvision path does (torchvision is not installed
here; its PIL-backed Resize / RandomResizedCrop / RandomHorizontalFlip / ToTensor /
Normalize are written out with the same calls): open, convert RGB, resize bicubic (random
resized crop + horizontal flip when augmenting), to a float tensor in [0, 1], normalise;
the prompt and report rendered with the tokenizer's chat template (the one `to-hf`
exports, radjax.data.chat.chat_template), `<image>` expanded to the model's placeholders
as HF's LLaVA processor does, tokenised, padded to max_len + 1; the loss falls after the
prompt, found by tokenising the prompt alone (LLaVA's way). Images come out in radjax's
layout ([max_images, H, W, C]) so both sides' batches have the same shapes.

`AnyResFolder` is the same with LLaVA-OneVision's AnyRes (RadVLM's `anyres_max_9`): each
image through transformers' `LlavaOnevisionImageProcessorPil`, the placeholders counted
for the image's size as `LlavaOnevisionProcessor` counts them.
"""
import json
import math
import os

import numpy as np
import torch
from PIL import Image

IMAGE_MARK = '<image>'


def write_folder(examples: list[dict], out_dir: str) -> str:
  """Each Example's first image as a file (its bytes as they are: the same decode work
  as radjax's) and records.json with the report and labels; returns out_dir."""
  os.makedirs(os.path.join(out_dir, 'images'), exist_ok=True)
  rows = []
  for ex in examples:
    image = ex['images'][0]
    name = f"images/{ex['id']}.{'jpg' if image['format'] == 'jpeg' else 'png'}"
    with open(os.path.join(out_dir, name), 'wb') as f:
      f.write(image['data'])
    report = ex.get('report') or {}
    rows.append({'id': ex['id'], 'image': name, 'findings': report.get('findings') or '',
                 'impression': report.get('impression') or '',
                 'labels': ex.get('labels') or {}})
  with open(os.path.join(out_dir, 'records.json'), 'w') as f:
    json.dump(rows, f)
  return out_dir


def report_text(findings: str, impression: str, section: str = 'both') -> str:
  """The report template: 'Findings: ...\\nImpression: ...' (either line alone); section
  'findings' or 'impression': that section's text alone (radjax's report_section)."""
  if section != 'both':
    return {'findings': findings, 'impression': impression}[section].strip()
  parts = ([f'Findings: {findings.strip()}'] if findings.strip() else []) + (
    [f'Impression: {impression.strip()}'] if impression.strip() else [])
  return '\n'.join(parts)


def random_resized_crop_box(width: int, height: int, scale, ratio=(3 / 4, 4 / 3)):
  """torchvision's RandomResizedCrop.get_params: (left, top, right, bottom) of a crop of
  a random area fraction and aspect ratio (10 tries, then the centre crop)."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
    aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
    w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(torch.randint(0, height - h + 1, size=(1,)).item())
      left = int(torch.randint(0, width - w + 1, size=(1,)).item())
      return left, top, left + w, top + h
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  return left, top, left + side, top + side


class ReportFolder(torch.utils.data.Dataset):
  """records.json + image files -> radjax-shaped examples (see the module docstring).
  `length` > the folder's records repeats them (a benchmark wants more batches)."""

  def __init__(self, folder: str, tokenizer, chat_template: str, *, image_size: int,
               mean, std, max_len: int, image_tokens: int, prompts: tuple[str, ...],
               max_images: int = 1, augment: bool = False, crop_scale=(0.8, 1.0), label_names=(),
               uncertain_as: int = 1, length: int = 0, section: str = 'both'):
    with open(os.path.join(folder, 'records.json')) as f:
      self.rows = json.load(f)
    self.folder, self.tokenizer, self.template = folder, tokenizer, chat_template
    self.size, self.max_len, self.image_tokens = image_size, max_len, image_tokens
    self.max_images = max_images
    self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
    self.prompts, self.augment, self.crop_scale = tuple(prompts), augment, tuple(crop_scale)
    self.label_names, self.uncertain_as = tuple(label_names), uncertain_as
    self.length = length or len(self.rows)
    self.section = section

  def __len__(self) -> int:
    return self.length

  def image(self, path: str) -> torch.Tensor:
    """[H, W, C] float32, normalised."""
    img = Image.open(path).convert('RGB')
    if self.augment:
      box = random_resized_crop_box(*img.size, self.crop_scale)
      img = img.resize((self.size, self.size), Image.BICUBIC, box=box)
      if torch.rand(1).item() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    else:
      img = img.resize((self.size, self.size), Image.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)  # ToTensor (a copy)
    x = (x - self.mean) / self.std  # Normalize
    return x.permute(1, 2, 0)

  def render(self, messages: list[dict], image_tokens: int = 0, **kwargs) -> str:
    """The chat template's text, each `<image>` expanded to image_tokens of them (default
    self.image_tokens)."""
    text = self.tokenizer.apply_chat_template(messages, chat_template=self.template,
                                              tokenize=False, **kwargs)
    return text.replace(IMAGE_MARK, IMAGE_MARK * (image_tokens or self.image_tokens))

  def text(self, prompt: str, report: str, image_tokens: int = 0) -> dict:
    """tokens / targets / loss_mask of length max_len."""
    user = {'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': prompt}]}
    full = self.render([user, {'role': 'assistant', 'content': report}], image_tokens)
    prompt_len = len(self.tokenizer(self.render([user], image_tokens, add_generation_prompt=True),
                                    add_special_tokens=False)['input_ids'])
    enc = self.tokenizer(full, add_special_tokens=False, max_length=self.max_len + 1,
                         truncation=True, padding='max_length')
    ids = torch.tensor(enc['input_ids'], dtype=torch.int32)
    real = int(sum(enc['attention_mask']))
    weight = torch.zeros(self.max_len + 1, dtype=torch.float32)
    weight[prompt_len:real] = 1.0
    return {'tokens': ids[:-1], 'targets': ids[1:], 'loss_mask': weight[1:]}

  def prompt_and_report(self, row: dict) -> tuple[str, str]:
    pick = int(torch.randint(len(self.prompts), (1,)).item()) if len(self.prompts) > 1 else 0
    return self.prompts[pick], report_text(row['findings'], row['impression'], self.section)

  def __getitem__(self, index: int) -> dict:
    row = self.rows[index % len(self.rows)]
    out = self.text(*self.prompt_and_report(row))
    image = self.image(os.path.join(self.folder, row['image']))
    out['images'] = torch.zeros((self.max_images, *image.shape), dtype=torch.float32)
    out['images'][0] = image
    out['image_mask'] = torch.arange(self.max_images) < 1
    if self.label_names:
      values = [row['labels'].get(n, 0) for n in self.label_names]
      out['labels'] = torch.tensor([self.uncertain_as if v == -1 else v for v in values],
                                   dtype=torch.float32)
      out['label_mask'] = torch.tensor(float(bool(row['labels'])))
    return out


def hf_anyres(tile: int, side: int, grids, max_tiles: int, mean, std):
  """(transformers' LlavaOnevisionImageProcessorPil, a LlavaOnevisionProcessor that
  counts an image's placeholders) for tiles of `tile` pixels and side x side tokens, the
  (rows, cols) `grids` and anyres_max_<max_tiles>; the processor is made without a
  tokenizer (only its counting is used)."""
  from transformers.models.llava_onevision import processing_llava_onevision as hf_proc
  from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
  )
  ip = LlavaOnevisionImageProcessorPil(
      size={'height': tile, 'width': tile},
      image_grid_pinpoints=[[r * tile, c * tile] for r, c in grids],
      image_mean=list(mean), image_std=list(std))
  counter = hf_proc.LlavaOnevisionProcessor.__new__(hf_proc.LlavaOnevisionProcessor)
  counter.image_processor, counter.num_image_tokens = ip, side * side
  counter.vision_aspect_ratio = f'anyres_max_{max_tiles}'
  return ip, counter


class AnyResFolder(ReportFolder):
  """ReportFolder with AnyRes images, as RadVLM's data path and HF eval path read them
  (LLaVA-NeXT's train.py opens each image and converts it to RGB; process_anyres_image /
  LlavaOnevisionImageProcessorPil resize it into the best grid, pad, cut tiles, add the
  base image, rescale and normalise). Per example: 'images' [1 + rows * cols, C, tile,
  tile] float32 as the processor gives them (the tile count varies with the image's size),
  'image_sizes' [2] (height, width), and as many placeholders as the HF processor counts
  (`LlavaOnevisionProcessor._get_number_of_features`). One image per example."""

  def __init__(self, folder: str, tokenizer, chat_template: str, *, tile: int, side: int,
               grids, max_tiles: int, mean, std, **kwargs):
    super().__init__(folder, tokenizer, chat_template, image_size=tile, mean=mean, std=std,
                     image_tokens=side * side, **kwargs)
    if self.max_images != 1 or self.augment or self.label_names:
      raise ValueError('AnyResFolder reads one image per example, unaugmented (LLaVA-NeXT '
                       'neither crops nor jitters), without labels (radjax has no label '
                       'head with AnyRes)')
    self.processor, self.counter = hf_anyres(tile, side, grids, max_tiles, mean, std)

  def image(self, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """([tiles, C, tile, tile] normalised, [2] (height, width))."""
    out = self.processor(Image.open(path).convert('RGB'), return_tensors='pt')
    return out['pixel_values'][0], out['image_sizes'][0]

  def placeholders(self, height: int, width: int) -> int:
    return self.counter._get_number_of_features(height, width, self.size, self.size)

  def __getitem__(self, index: int) -> dict:
    row = self.rows[index % len(self.rows)]
    image, size = self.image(os.path.join(self.folder, row['image']))
    out = self.text(*self.prompt_and_report(row),
                    image_tokens=self.placeholders(*(int(x) for x in size)))
    out['images'], out['image_sizes'] = image, size
    return out


def collate_anyres(examples: list[dict]) -> dict:
  """Stacks every field but 'images', which stays a list of each example's tiles
  (LLaVA-NeXT's DataCollatorForSupervisedDataset; their counts differ)."""
  out = torch.utils.data.default_collate([{k: v for k, v in ex.items() if k != 'images'}
                                          for ex in examples])
  out['images'] = [ex['images'] for ex in examples]
  return out


def loader(dataset: ReportFolder, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
  """Shuffled, dropping the last partial batch, `workers` processes (0: in this one)."""
  collate = collate_anyres if isinstance(dataset, AnyResFolder) else None
  return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                     num_workers=workers, drop_last=True, collate_fn=collate)
