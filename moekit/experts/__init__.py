"""Experts backends: each file one backend, each declaring its capabilities as class data."""

from moekit.experts.base import ExpertsBackend, ExpertWeights
from moekit.experts.reference import ReferenceExperts
from moekit.experts.torch_grouped_mm import TorchGroupedMMExperts
from moekit.experts.triton_fused import TritonExperts

ALL_BACKENDS: tuple[type[ExpertsBackend], ...] = (TritonExperts, TorchGroupedMMExperts, ReferenceExperts)

__all__ = ["ALL_BACKENDS", "ExpertWeights", "ExpertsBackend", "ReferenceExperts", "TorchGroupedMMExperts",
           "TritonExperts"]
