"""Language-model policy stages (torch, transformers, accelerate)."""

from .stages import DPO, PPO, SFT, BestOfN, NashMDPG, PolicyWithValueHead, evaluate_policy

__all__ = ["SFT", "DPO", "PPO", "NashMDPG", "BestOfN", "PolicyWithValueHead", "evaluate_policy"]
