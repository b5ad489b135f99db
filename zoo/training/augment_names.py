"""The augmentations the tensor library implements, by the rules catalog's names.

Kept apart from augment.py (which needs torch) so that the API's job planner can refuse
an augmentation a job could not apply before the job is queued."""

from __future__ import annotations

KNOWN = frozenset({
    "random_resized_crop", "horizontal_flip", "vertical_flip", "rotation_90", "rotation_free",
    "small_rotation", "color_jitter", "random_grayscale", "stain_jitter", "gaussian_blur",
    "gaussian_noise", "rician_noise", "speckle_noise", "poisson_noise", "intensity_shift",
    "gamma", "solarize", "random_erasing",
})
COLOUR_ONLY = frozenset({"color_jitter", "random_grayscale", "stain_jitter"})
