"""An uploaded file -> the schema's image entry the model reads (radjax/data/image_files.py,
as `--mode=generate --images` reads a file), or an UploadError whose message the page
shows."""
import os

import numpy as np
from PIL import Image

from radjax.data import image_files, images, schema, volumes

# One error the page shows as a line: a file that is no model input, or a form left empty.
UploadError = image_files.ImageFileError
# The longest side of the picture the page shows (the model reads the file itself): each
# picture the page gets is encoded anew, 1.7 s for a 3000 x 2500 radiograph.
PREVIEW_SIDE = 1024
image_entry = image_files.image_entry
check_kind = image_files.check_kind


def read_upload(path: str | None) -> tuple[dict, str]:
  """(image entry, file name) of an uploaded file path (None: nothing uploaded)."""
  if not path:
    raise UploadError(f'no file: upload {image_files.ACCEPTED}')
  name = os.path.basename(path)
  return image_files.read_entry(path, name), name


def preview(entry: dict, name: str) -> Image.Image:
  """An RGB picture of the input to draw on (a volume: its middle slice), its longest side
  at most PREVIEW_SIDE pixels (boxes are fractions of the sides)."""
  try:
    if entry['kind'] == '2d':
      picture = images.decode_image(entry, 3, name, min_side=PREVIEW_SIDE)  # JPEG: a draft
    else:
      vol = volumes.decode_volume(entry, name)
      middle = np.clip(np.asarray(vol[:, :, vol.shape[2] // 2], np.float32), 0, 1)
      picture = Image.fromarray(np.round(middle * 255).astype(np.uint8)).convert('RGB')
  except schema.SchemaError as e:
    raise UploadError(str(e)) from e
  picture.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.LANCZOS)
  return picture
