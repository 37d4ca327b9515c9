"""Callers ask an aggregator for capabilities, never for its name (protocols.base.CAPABILITIES)."""

from __future__ import annotations

import pytest

from protocols import PROTOCOLS, ConfigError, aggregator_class, get_aggregator, protocols_where
from protocols.secagg import SecAggAggregator, SecAggPlusAggregator
from securefedrec.config import ExperimentConfig


def test_aggregator_class_resolves_without_building_and_lists_the_names() -> None:
    assert aggregator_class("secagg+") is SecAggPlusAggregator
    assert type(get_aggregator("secagg")) is aggregator_class("secagg")
    with pytest.raises(ConfigError, match="unknown protocol 'nope'; choose one of: paillier, plaintext"):
        aggregator_class("nope")
    assert protocols_where(lambda cls: cls.secure) == ("secagg", "secagg+", "paillier")
    assert protocols_where(lambda cls: not cls.supports_wrap) == ("paillier",)


def test_a_protocol_under_a_new_name_is_handled_by_its_capabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register SecAgg+ and plaintext under names no caller knows: config checks follow the capabilities."""
    monkeypatch.setitem(PROTOCOLS, "masked", "protocols.secagg:SecAggPlusAggregator")
    monkeypatch.setitem(PROTOCOLS, "clear", "protocols.plaintext:PlaintextAggregator")
    masked = ExperimentConfig.from_mapping(
        {"protocol": "masked", "threat_model": "semi-honest", "neighbors": 4, "compression": "mod:12"})
    assert masked.federation.neighbors == 4
    with pytest.raises(ConfigError, match="threat_model: applies to secagg, secagg\\+, paillier and masked"):
        ExperimentConfig(protocol="clear", threat_model="malicious")
    with pytest.raises(ConfigError, match="neighbors: applies only with --protocol secagg or secagg\\+"):
        ExperimentConfig.from_mapping({"protocol": "clear", "neighbors": 4})
    with pytest.raises(ConfigError, match=r"'topk:0\.1' cannot be used with protocol 'masked'"):
        ExperimentConfig(protocol="masked", compression="topk:0.1")
    assert SecAggAggregator.pairwise_masks and not SecAggAggregator.sparse_graph
