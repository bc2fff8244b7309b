"""Boxes from an answer drawn on the uploaded image."""
from PIL import Image, ImageDraw

COLOURS = ('#ff3b30', '#34c759', '#0a84ff', '#ffcc00', '#af52de', '#ff9500')


def draw_boxes(image: Image.Image, boxes: list[dict]) -> Image.Image:
  """A copy of `image` with each {'label', 'box': (x1, y1, x2, y2) fractions} outlined."""
  out = image.convert('RGB').copy()
  if not boxes:
    return out
  draw = ImageDraw.Draw(out)
  w, h = out.size
  width = max(1, round(min(w, h) / 150))
  for i, b in enumerate(boxes):
    x1, y1, x2, y2 = b['box']
    colour = COLOURS[i % len(COLOURS)]
    draw.rectangle((x1 * w, y1 * h, x2 * w, y2 * h), outline=colour, width=width)
    if b['label']:
      draw.text((x1 * w + width + 1, y1 * h + width), b['label'], fill=colour)
  return out
