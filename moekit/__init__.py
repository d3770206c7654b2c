"""moekit: one fast, modular, explainable Mixture-of-Experts layer."""

from moekit.activations import Activation, ActivationKind, GateUpLayout
from moekit.experts import ExpertsBackend, ExpertWeights
from moekit.explain import Explanation
from moekit.functional import fused_moe
from moekit.layer import MoE
from moekit.load import load
from moekit.oracle import BackendUnavailableError
from moekit.parallel import ExpertParallel
from moekit.routing import RoutingConfig, Scoring, route
from moekit.spec import fused_moe_spec
from moekit.host_checks import set_host_checks
from moekit.integrations.hf_registration import install_hf_registration, load_hf_state_dict, patch

__version__ = "0.1.0"

# Registers "moekit" in transformers' ExpertsInterface once transformers is imported (no import here).
install_hf_registration()

__all__ = [
    "Activation",
    "ActivationKind",
    "BackendUnavailableError",
    "ExpertParallel",
    "ExpertWeights",
    "ExpertsBackend",
    "Explanation",
    "GateUpLayout",
    "MoE",
    "RoutingConfig",
    "Scoring",
    "fused_moe",
    "fused_moe_spec",
    "load",
    "load_hf_state_dict",
    "patch",
    "route",
    "set_host_checks",
]
