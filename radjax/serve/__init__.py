"""The web demo: `python -m radjax.serve --workdir W` serves a Gradio page on a VLM workdir
(report from an uploaded image, the labeler's observations, follow-up chat, boxes).
The top layer of radjax beside run.py: it may import every package below it."""
