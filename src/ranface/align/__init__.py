"""Face detection (MTCNN) and 5-point alignment; the library behind ``ranface prepare``."""
from .mtcnn import MTCNN, Detections, ONet, PNet, RNet, default_weights_dir, load_mtcnn_nets
from .nms import batched_nms, box_overlap, nms
from .pipeline import AlignedFace, AlignResult, FaceAligner
from .select import (LR_BAND, band_to_widths, choose_face, eye_mouth_distance, eye_mouth_fraction,
                     fraction_outside, lr_select, widths_to_band)
from .templates import ARCFACE_112, DLIB_150, template_for
from .transform import apply_affine, estimate_similarity, invert_affine, warp_face

__all__ = [
    "MTCNN", "Detections", "PNet", "RNet", "ONet", "default_weights_dir", "load_mtcnn_nets",
    "nms", "batched_nms", "box_overlap",
    "FaceAligner", "AlignResult", "AlignedFace",
    "eye_mouth_distance", "lr_select", "LR_BAND", "band_to_widths", "eye_mouth_fraction", "widths_to_band", "choose_face", "fraction_outside",
    "ARCFACE_112", "DLIB_150", "template_for",
    "estimate_similarity", "warp_face", "apply_affine", "invert_affine",
]
