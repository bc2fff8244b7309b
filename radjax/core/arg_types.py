"""argparse types shared by radjax's command lines (argparse prints their errors as one
line naming the flag)."""
import argparse


def int_at_least(low: int):
  """argparse type: an int >= low."""
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f'{text!r}: not an integer') from None
    if value < low:
      raise argparse.ArgumentTypeError(f'{value}: must be at least {low}')
    return value
  return parse
