"""Self-supervised pretext objectives, one family per module.

Each objective wraps an encoder (zoo.architectures) and exposes `loss(x, policy, gen)`
on float images in [0, 1], plus `after_step()` for momentum updates. `OBJECTIVES` maps
the rules catalog's method ids to the classes that implement them.
"""
