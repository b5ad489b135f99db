"""The augmentations segmentation fine-tuning applies, by the rules catalog's names.

Kept apart from seg_augment.py (which needs torch) so that the API's job planner can
refuse a name before a job is queued. Spatial ones move image and mask together;
intensity ones change the image only (the mask stays right). `random_erasing` is refused:
it hides a structure that the mask still marks, teaching the model to draw what it cannot
see.
"""

from __future__ import annotations

SPATIAL = frozenset({"horizontal_flip", "vertical_flip", "rotation_90", "small_rotation",
                     "rotation_free", "random_resized_crop"})
INTENSITY = frozenset({"color_jitter", "random_grayscale", "stain_jitter", "gaussian_blur",
                       "gaussian_noise", "rician_noise", "speckle_noise", "poisson_noise",
                       "intensity_shift", "gamma", "solarize"})
SEGMENTATION = SPATIAL | INTENSITY
REFUSED = {"random_erasing": "hides a structure that the mask still marks"}
