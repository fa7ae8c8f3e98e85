"""Backbones (a registry of plain ``nn.Module`` embedders), margin heads, and the
importer of face-api.js's pretrained dlib ResNet-29.

Importing this package registers the built-in backbones: ``iresnet18/34/50/100``,
``mobilefacenet`` and ``resnet29_dlib``.
"""
from .registry import BackboneSpec, create_backbone, get_spec, list_backbones, register_backbone
from .iresnet import IResNet
from .mobilefacenet import MobileFaceNet
from .resnet29 import ResNet29Dlib
from .faceapi import load_faceapi_weights, read_tfjs_weights
from .heads import ArcFaceHead, CosFaceHead, MarginHead, create_head, list_heads

__all__ = [
    "BackboneSpec", "create_backbone", "get_spec", "list_backbones", "register_backbone",
    "IResNet", "MobileFaceNet", "ResNet29Dlib", "load_faceapi_weights", "read_tfjs_weights",
    "ArcFaceHead", "CosFaceHead", "MarginHead", "create_head", "list_heads",
]
