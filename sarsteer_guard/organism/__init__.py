"""The model organism: a small Qwen2-Audio trained here, in which the audio bypass emerges.

- :mod:`.data`: request sentences written for this project (templates x phrases per category),
  split by prompt and by voice into train / validation / held-out.
- :mod:`.train`: the training recipe (text-only safety supervision, speech tasks that never
  teach compliance with harmful speech) and the checkpoint writer (hub weight layout).

Shipped weights live in ``sarsteer_guard/data/organism/``; ``load_model("tiny-trained")`` reads
them. See docs/organism.md for the measured results.
"""
