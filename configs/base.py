"""Every knob of a radjax run lives (documented) in radjax/core/defaults.py; recipes
start from this and change a few fields."""
from radjax.core.defaults import get_config  # noqa: F401
