"""Halting policies, one file each, and their registry: name -> policy class.

A new policy is one file here (a `Policy` subclass, see base.py) plus its line in `POLICIES`
(and its name in the config's allowed values).
"""

from __future__ import annotations

from adaptive.nn.policies.act import ACT
from adaptive.nn.policies.base import Policy
from adaptive.nn.policies.early_exit import EarlyExit
from adaptive.nn.policies.pondernet import PonderNet
from adaptive.nn.policies.static import Static

POLICIES: dict[str, type[Policy]] = {p.name: p for p in (Static, ACT, PonderNet, EarlyExit)}

__all__ = ["POLICIES", "Policy", "get_policy", "policy_of"]


def get_policy(name: str) -> type[Policy]:
    """The policy class registered as `name`; an unknown name is a one-line error."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"halting policy {name!r} is not one of {tuple(POLICIES)}") from None


def policy_of(halting_cfg) -> Policy:
    """The policy a HaltingConfig names, holding that config."""
    return get_policy(halting_cfg.policy)(halting_cfg)
