"""The catalog method ids this installation can pretrain, without importing torch.

The rules engine marks each recommended method `pretrainable` from this set, which it
finds through the `taskalign.pretrainable` entry point (pyproject.toml); it must answer in
milliseconds, so it cannot import the objectives themselves;
`tests/zoo/test_pretext_ids.py` keeps this set equal to `registry.OBJECTIVES`.
"""

PRETRAINABLE = frozenset({
    "alice", "barlow_twins", "byol", "cl_mri", "clip_cross_modal", "colorization",
    "context_restoration", "contrastive_clustering", "contrastive_reconstruction",
    "cross_modal_synthesis", "dense_contrast", "dino", "dira", "ijepa", "inpainting", "jigsaw",
    "latent_token_masking", "lesion_slice_contrast", "lvm_med", "mae", "micle",
    "missing_sequence_synthesis", "mmode_temporal_contrast", "moco_v2", "models_genesis", "msn",
    "multimodal_puzzle", "nnclr", "parcl", "patient_siamese", "pgl", "residual_cuboid_masking",
    "rotation_contrastive", "rotation_prediction", "rubiks_cube", "rubiks_cube_plus",
    "self_path", "simclr", "simmim", "simsiam", "slice_ordering", "spark", "spatial_awareness",
    "spatiotemporal_transform", "ssmtl", "temporal_order", "unimiss_plus", "vox2vec"
})
