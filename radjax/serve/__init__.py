"""The web demo: `python -m radjax.serve --workdir W` serves a Gradio page on a VLM workdir
(report from an uploaded image, the labeler's observations, follow-up chat, boxes), or on
an LLM-CXR one (that, and a chest X-ray drawn from a report).
The top layer of radjax, above run.py (which it imports): it may import every package below it."""
