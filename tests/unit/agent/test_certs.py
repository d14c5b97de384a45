"""The agent's certificate renewal: when it is due, what answer it accepts, and how the new
key and certificate replace the old pair so that a crash at any step leaves one pair."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent import certs
from agent.config import AgentConfig
from controller.pki import RegionCA


@pytest.fixture
def ca(tmp_path: Path) -> RegionCA:
    ca = RegionCA(tmp_path / "pki")
    ca.ensure(["localhost"])
    return ca


def _issue(ca: RegionCA, node_id: str, lifetime: timedelta = timedelta(days=90)
           ) -> tuple[bytes, str]:
    key_pem, csr_pem = certs.new_request(node_id)
    return key_pem, ca.sign_node_csr(csr_pem, node_id, lifetime, require_cn=True).pem.decode()


def _config(tmp_path: Path, ca: RegionCA) -> AgentConfig:
    config = AgentConfig(data_dir=tmp_path / "agent")
    config.data_dir.mkdir()
    config.ca_path.write_bytes(ca.cert_pem())
    return config


def test_renewal_is_due_when_a_third_of_the_lifetime_is_left(ca: RegionCA) -> None:
    _key, pem = _issue(ca, "node-1", timedelta(seconds=60))
    cert = x509.load_pem_x509_certificate(pem.encode())
    due = certs.renewal_due(cert, 1 / 3)
    assert due == cert.not_valid_after_utc - timedelta(seconds=22)  # 66 s in all, 6 s early
    assert certs.renewal_due(cert, 0.5) == cert.not_valid_after_utc - timedelta(seconds=33)


def test_the_new_request_names_the_node_id_with_a_new_key() -> None:
    key1, csr1 = certs.new_request("node-1")
    key2, _ = certs.new_request("node-1")
    csr = x509.load_pem_x509_csr(csr1.encode())
    assert csr.subject.rfc4514_string() == "CN=node-1" and csr.is_signature_valid
    assert key1 != key2
    key = serialization.load_pem_private_key(key1, password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert csr.public_key().public_bytes(serialization.Encoding.DER, spki) == \
        key.public_key().public_bytes(serialization.Encoding.DER, spki)


def test_an_answer_that_is_not_this_nodes_new_certificate_is_refused(
        ca: RegionCA, tmp_path: Path) -> None:
    key, pem = _issue(ca, "node-1")
    assert certs.check_issued(pem, key, "node-1", ca.cert_pem()).subject.rfc4514_string() == \
        "CN=node-1"
    other_key, _ = certs.new_request("node-1")
    with pytest.raises(certs.RenewalError, match="not for the key this node sent"):
        certs.check_issued(pem, other_key, "node-1", ca.cert_pem())
    with pytest.raises(certs.RenewalError, match=r"is for \['node-1'\], not node node-2"):
        certs.check_issued(pem, key, "node-2", ca.cert_pem())
    stranger = RegionCA(tmp_path / "stranger")
    stranger.ensure(["localhost"])
    with pytest.raises(certs.RenewalError, match="not issued by the region CA"):
        certs.check_issued(pem, key, "node-1", stranger.cert_pem())
    with pytest.raises(certs.RenewalError, match="no certificate"):
        certs.check_issued("garbage", key, "node-1", ca.cert_pem())


def _pair(config: AgentConfig) -> tuple[bytes, bytes]:
    return config.key_path.read_bytes(), config.cert_path.read_bytes()


def _leftovers(config: AgentConfig) -> list[str]:
    return sorted(p.name for p in config.data_dir.iterdir() if ".new" in p.name)


def test_saving_replaces_the_pair_with_the_key_private(ca: RegionCA, tmp_path: Path) -> None:
    config = _config(tmp_path, ca)
    old_key, old_pem = _issue(ca, "node-1")
    certs.save_pair(config, old_key, old_pem)
    new_key, new_pem = _issue(ca, "node-1")
    certs.save_pair(config, new_key, new_pem)
    assert _pair(config) == (new_key, new_pem.encode())
    assert config.key_path.stat().st_mode & 0o077 == 0
    assert _leftovers(config) == []
    assert certs.recover(config) is None


@pytest.mark.parametrize("crash_after", ["key_new", "staged", "commit", "key_replaced"])
def test_a_crash_while_saving_leaves_one_pair_after_recovery(ca: RegionCA, tmp_path: Path,
                                                             crash_after: str) -> None:
    """Each step of save_pair, stopped after it: recover leaves the old pair before the
    commit point (the controller still accepts it) and the new pair after it."""
    config = _config(tmp_path, ca)
    old_key, old_pem = _issue(ca, "node-1")
    certs.save_pair(config, old_key, old_pem)
    new_key, new_pem = _issue(ca, "node-1")
    key_new = config.data_dir / "node.key.new"
    cert_new = config.data_dir / "node.pem.new"
    staged = config.data_dir / "node.pem.new.tmp"
    key_new.write_bytes(new_key)
    if crash_after in ("staged", "commit", "key_replaced"):
        staged.write_text(new_pem)
    if crash_after in ("commit", "key_replaced"):
        os.replace(staged, cert_new)
    if crash_after == "key_replaced":
        os.replace(key_new, config.key_path)
    said = certs.recover(config)
    committed = crash_after in ("commit", "key_replaced")
    assert _pair(config) == ((new_key, new_pem.encode()) if committed
                             else (old_key, old_pem.encode()))
    assert said is not None and ("finished" if committed else "dropped") in said
    assert _leftovers(config) == []
    key = serialization.load_pem_private_key(config.key_path.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(config.cert_path.read_bytes())
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(serialization.Encoding.DER, spki) == \
        key.public_key().public_bytes(serialization.Encoding.DER, spki)
    assert cert.not_valid_after_utc > datetime.now(UTC)
