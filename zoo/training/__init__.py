"""The SSL training library: pretext objectives, augmentations, the pretraining loop,
fine-tuning, the evaluation protocol and recipe-driven builds of zoo encoders.

It imports torch at module level; the registry side of `zoo` never imports it, so the API
process pays for torch only where it trains or exports.
"""
