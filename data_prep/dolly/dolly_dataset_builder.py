"""databricks-dolly-15k: text-only instruction data (LLM-CXR mixes it into training).

manual_dir: the folder with `databricks-dolly-15k.jsonl` (rows: instruction, context,
response, category). Each row is an Example with a two-turn conversation: the user
turn is the instruction, followed by the context after a blank line where there is
one; the assistant turn is the response. The category has no place in the schema.
Id: `dolly-<line>`. The publisher has one split: train.
"""

from __future__ import annotations

from data_prep import builder as builder_lib
from data_prep import checks
from radjax.data import schema

FILE = 'databricks-dolly-15k.jsonl'
FIELDS = ('instruction', 'context', 'response', 'category')
CATEGORIES = ('open_qa', 'general_qa', 'classification', 'closed_qa', 'brainstorming',
              'information_extraction', 'summarization', 'creative_writing')


class Builder(builder_lib.RadjaxBuilder, skip_registration=True):
  """databricks-dolly-15k instruction / response pairs (text only)."""

  name = 'dolly'
  SOURCE = 'dolly'
  HOMEPAGE = 'https://huggingface.co/datasets/databricks/databricks-dolly-15k'
  REQUIRED_FILES = (FILE,)
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'Download {FILE} and pass the folder that holds it.'

  def split_items(self, root):
    items = []
    for line, row in checks.read_jsonl(root / FILE):
      item = {'id': f'dolly-{line:05d}', 'file': FILE, 'row': line}
      if isinstance(row, str):
        item['reject'] = row
      elif not isinstance(row, dict) or [f for f in FIELDS if not isinstance(row.get(f), str)]:
        item['reject'] = f'expected string fields {FIELDS}, got {str(row)[:200]}'
      elif row['category'] not in CATEGORIES:
        item['reject'] = f"category: unknown value {row['category']!r}"
      else:
        item['row_data'] = row
      items.append(item)
    return {'train': items}

  def make_example(self, item, split):
    row = item['row_data']
    instruction, context, response = (row[k].strip() for k in FIELDS[:3])
    if not instruction or not response:
      raise builder_lib.Reject('instruction or response is empty')
    user = f'{instruction}\n\n{context}' if context else instruction
    return schema.make_example(
      id=item['id'], source=self.SOURCE, split=split,
      conversation=[{'role': 'user', 'text': user}, {'role': 'assistant', 'text': response}])
