"""Catalog method id -> implementation, and which encoder family each one needs."""

from __future__ import annotations

from typing import Any

from torch import nn

from .adversarial import DiRA
from .anatomy import Alice, SpatialAwareness
from .base import Objective, ObjectiveError
from .colorization import Colorization
from .contrastive import NNCLR, ContrastiveClustering, DenseContrast, MICLe, MoCoV2, SimCLR
from .cross_modal import ClipCrossModal, CrossModalSynthesis, MissingSequenceSynthesis
from .generative import MAE, ContextRestoration, Inpainting, ModelsGenesis, SimMIM
from .graph_contrast import LVMMed, PaRCL
from .hybrid import ContrastiveRestoration
from .jepa import IJEPA
from .kspace import CLMRI
from .latent_tokens import LatentTokenMasking
from .lesion_contrast import LesionSliceContrast
from .local_distillation import PGL, UniMiSSPlus
from .msn import MSN
from .noncontrastive import BYOL, DINO, BarlowTwins, SimSiam
from .pathology import SelfPath
from .predictive import Jigsaw, RotationPrediction, RubiksCube
from .puzzles import MultimodalPuzzle, RubiksCubePlus
from .residual_masking import ResidualCuboidMasking
from .rotation_contrast import RotationContrast
from .siamese import PatientSiamese
from .slices import SSMTL, SliceOrdering
from .sparse_masking import SparK
from .temporal import SpatioTemporalTransform, TemporalOrder
from .video_contrast import MModeContrast

OBJECTIVES: dict[str, tuple[type[Objective], str]] = {
    "simclr": (SimCLR, "cnn"),
    "moco_v2": (MoCoV2, "cnn"),
    "nnclr": (NNCLR, "cnn"),
    "micle": (MICLe, "cnn"),
    "patient_siamese": (PatientSiamese, "cnn"),
    "contrastive_clustering": (ContrastiveClustering, "cnn"),
    "dense_contrast": (DenseContrast, "cnn"),
    "vox2vec": (DenseContrast, "cnn"),
    "byol": (BYOL, "cnn"),
    "simsiam": (SimSiam, "cnn"),
    "dino": (DINO, "any"),
    "barlow_twins": (BarlowTwins, "any"),
    "rotation_prediction": (RotationPrediction, "any"),
    "jigsaw": (Jigsaw, "any"),
    "rubiks_cube": (RubiksCube, "any"),
    "slice_ordering": (SliceOrdering, "cnn"),
    "ssmtl": (SSMTL, "cnn"),
    "mae": (MAE, "vit"),
    "simmim": (SimMIM, "vit"),
    "models_genesis": (ModelsGenesis, "cnn"),
    "context_restoration": (ContextRestoration, "cnn"),
    "inpainting": (Inpainting, "cnn"),
    "ijepa": (IJEPA, "vit"),
    "contrastive_reconstruction": (ContrastiveRestoration, "cnn"),
    "dira": (DiRA, "cnn"),
    "rotation_contrastive": (RotationContrast, "any"),
    "lvm_med": (LVMMed, "cnn"),
    "parcl": (PaRCL, "cnn"),
    "pgl": (PGL, "cnn"),
    "unimiss_plus": (UniMiSSPlus, "cnn"),
    "rubiks_cube_plus": (RubiksCubePlus, "any"),
    "multimodal_puzzle": (MultimodalPuzzle, "any"),
    "self_path": (SelfPath, "cnn"),
    "spark": (SparK, "cnn"),
    "cross_modal_synthesis": (CrossModalSynthesis, "cnn"),
    "missing_sequence_synthesis": (MissingSequenceSynthesis, "cnn"),
    "clip_cross_modal": (ClipCrossModal, "any"),
    "temporal_order": (TemporalOrder, "any"),
    "spatiotemporal_transform": (SpatioTemporalTransform, "any"),
    "cl_mri": (CLMRI, "cnn"),
    "colorization": (Colorization, "cnn"),
    "msn": (MSN, "vit"),
    "latent_token_masking": (LatentTokenMasking, "cnn"),
    "lesion_slice_contrast": (LesionSliceContrast, "cnn"),
    "residual_cuboid_masking": (ResidualCuboidMasking, "cnn"),
    "mmode_temporal_contrast": (MModeContrast, "cnn"),
    "alice": (Alice, "cnn"),
    "spatial_awareness": (SpatialAwareness, "any"),
}


def build_objective(method_id: str, encoder: nn.Module, **hyperparameters: Any) -> Objective:
    """Instantiate an objective; unknown hyperparameters are an error, not ignored."""
    if method_id not in OBJECTIVES:
        raise ObjectiveError(f"no implementation for '{method_id}'; implemented: "
                             f"{', '.join(sorted(OBJECTIVES))}")
    cls, _ = OBJECTIVES[method_id]
    try:
        return cls(encoder, **hyperparameters)
    except TypeError as err:
        raise ObjectiveError(f"bad hyperparameters for {method_id}: {err}") from None
