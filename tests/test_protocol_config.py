"""The shipped protocols: variants state only what differs from the protocol they build on
(a Hydra defaults list), compose the same way in ``protocol_config`` as in ``ddbench evaluate``,
and keep the hashes that published results carry."""

from __future__ import annotations

import importlib.resources
from dataclasses import asdict

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from ddbench.errors import DDBenchError
from ddbench.protocol import Protocol, pinned_protocol_hash, protocol_config

PROTOCOLS = importlib.resources.files("ddbench.conf") / "protocol"
NAMES = sorted(f.name[:-5] for f in PROTOCOLS.iterdir() if f.name.endswith(".yaml"))
# The hashes that results, leaderboard entries and papers' comparisons refer to: a change to a
# shipped protocol that changes its numbers must be a new protocol, never an edit of these.
PINNED = {
    "standard": "a16e35a7a01420d4",
    "quick": "48633c2e86a500fb",
    "nodsa": "4f8666bc04587278",
    "learned_lr": "aeeda4027aa416ee",
    "kd": "d9e350a566970d67",
    "kd_hard": "0e3424918f5abc68",
    "kd_set": "bc2aa7c5f872eba5",
    "dc": "244a6cdc33514c20",
    "kd_pruning": "1f602bfd886555e7",
    "datadam": "985c04bdf0812a6e",
    "sre2l": "89f695873dbb1582",
    "sre2l_fkd": "842d106f7a1fc616",
    "datm": "63816930dd425b94",
    "infer": "7b8d57ed589da34c",
    "hello": "f25063f247eabdae",
    "nrr_dbr": "7fe65ebcee302b1d",
    "hard_rrc": "85bd1ac8dfde95d5",
    "pca_hard": "76a904fbcd023b8b",
    "noaug": "3222cc66059a3369",
}


def _own(name: str) -> dict:
    """The protocol file as written: its defaults list and the keys it declares itself."""
    return OmegaConf.to_container(OmegaConf.load(str(PROTOCOLS / f"{name}.yaml")))


def test_every_shipped_protocol_keeps_its_pinned_hash():
    assert set(NAMES) == set(PINNED)
    for name in NAMES:
        assert pinned_protocol_hash(name) == PINNED[name], name
        assert Protocol.from_config(protocol_config(name)).hash == PINNED[name], name


def test_two_recipes_and_their_variants():
    bases = {n for n in NAMES if "defaults" not in _own(n)}
    assert bases == {"standard", "kd"}  # every other protocol states what it changes in one


@pytest.mark.parametrize("name", NAMES)
def test_a_variant_differs_from_its_parent_only_in_the_keys_it_declares(name):
    own = _own(name)
    parents = [d for d in own.pop("defaults", []) if d != "_self_"]
    if not parents:
        assert "name" in own and "epochs" in own  # a base protocol states its whole recipe
        return
    assert len(parents) == 1, "a protocol builds on one other"
    parent, composed = protocol_config(parents[0]), protocol_config(name)
    assert composed == {**parent, **own}
    assert set(composed) - set(own) <= set(parent)
    # everything it declares is a real difference (no key restated with the parent's value)
    assert {k: v for k, v in own.items() if parent.get(k) == v} == {}


def test_protocol_config_composes_as_hydra_does():
    with initialize_config_module("ddbench.conf", version_base="1.3"):
        for name in NAMES:
            cfg = compose("evaluate", overrides=[f"protocol={name}", "synset=x.safetensors"])
            hydra = OmegaConf.to_container(cfg.protocol)
            assert hydra == protocol_config(name), name
            assert asdict(Protocol.from_config(hydra)) == asdict(
                Protocol.from_config(protocol_config(name))
            )


def test_unknown_names_and_cycles(monkeypatch):
    assert protocol_config("no_such_protocol") is None
    assert pinned_protocol_hash("../run") is None and pinned_protocol_hash("") is None
    load = OmegaConf.load

    def standard_on_quick(path):  # standard.yaml made to build on quick, which builds on it
        node = load(path)
        if str(path).endswith("standard.yaml"):
            node.defaults = ["quick", "_self_"]
        return node

    monkeypatch.setattr(OmegaConf, "load", standard_on_quick)
    with pytest.raises(DDBenchError, match="quick -> standard -> quick is a cycle"):
        protocol_config("quick")
