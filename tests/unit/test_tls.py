"""The node's TLS contexts (PS3.15 B.1, BCP 195) and the one-line errors of bad files.

One test accepts a loopback connection (no data flows), to show the wrap does not block.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from dimsebus.services.errors import ConfigError
from dimsebus.services.node import tls
from dimsebus.services.node.config import Destination, NodeSettings, Tls
from tests.pki import Pki, encrypted_key, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA with the node's and a peer's certificates."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls(pki: Pki, **changes: Any) -> Tls:
    return Tls(certificate=pki.node.certificate, key=pki.node.key, ca=pki.ca).model_copy(
        update=changes
    )


def _tls12_suites(context: ssl.SSLContext) -> set[str]:
    return {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}


def test_both_contexts_speak_tls_12_or_later_with_bcp_195_suites_only(pki: Pki) -> None:
    # given a [tls] section
    settings = _tls(pki)
    # when the node builds its contexts
    server, client = tls.server_context(settings), tls.client_context(settings)
    # then neither negotiates below TLS 1.2, and TLS 1.2 offers ECDHE AES-GCM only
    for context in (server, client):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert _tls12_suites(context) == {
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-RSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-RSA-AES128-GCM-SHA256",
        }
    # and the node's associations verify the peer's chain, not its host name, by default
    assert (client.verify_mode, client.check_hostname) == (ssl.CERT_REQUIRED, False)
    assert tls.client_context(_tls(pki, check_hostname=True)).check_hostname


def test_the_scp_context_leaves_the_handshake_to_the_connection_thread(pki: Pki) -> None:
    # given the SCP's context and an accepted connection that has sent nothing yet
    context = tls.server_context(_tls(pki))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()):
            accepted, _ = listener.accept()
            accepted.settimeout(5)  # were the handshake done now, it would time out
            # when pynetdicom's accept loop wraps it (asking for the handshake at once)
            wrapped = context.wrap_socket(accepted, server_side=True)
            # then it returns without waiting for the peer: no handshake was done yet
            with wrapped:
                assert wrapped.version() is None


@pytest.mark.parametrize(
    ("changes", "mode"),
    [
        ({"require_client_certificate": True}, ssl.CERT_REQUIRED),
        ({}, ssl.CERT_OPTIONAL),
        ({"ca": None}, ssl.CERT_NONE),
    ],
)
def test_the_scp_asks_for_client_certificates_as_configured(
    pki: Pki, changes: dict[str, Any], mode: ssl.VerifyMode
) -> None:
    assert tls.server_context(_tls(pki, **changes)).verify_mode == mode


def test_an_encrypted_key_opens_with_its_password_and_is_never_prompted_for(pki: Pki) -> None:
    # given the node's key encrypted
    key = encrypted_key(pki.node.key, "s3cret")
    # when the password is configured, the key loads
    tls.client_context(_tls(pki, key=key, key_password=SecretStr("s3cret")))
    # and without it, a one-line error names the key (no prompt on the terminal)
    with pytest.raises(ConfigError, match=rf"^tls\.key: {key} is not a PEM private key"):
        tls.client_context(_tls(pki, key=key))


def test_bad_files_are_one_line_naming_the_setting_and_the_file(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"certificate": missing}, f"tls.certificate: {missing} cannot be read"),
        ({"certificate": pki.node.key}, f"tls.certificate: {pki.node.key} holds no PEM"),
        ({"key": missing}, f"tls.key: {missing} cannot be read"),
        ({"key": pki.node.certificate}, f"tls.key: {pki.node.certificate} is not a PEM private"),
        ({"key": pki.peer.key}, f"tls.key: {pki.peer.key} is not the key of"),
        ({"ca": pki.node.key}, f"tls.ca: {pki.node.key} holds no PEM certificate"),
        ({"ca": tmp_path}, f"tls.ca: {tmp_path} cannot be read"),
    ]
    for changes, message in cases:
        with pytest.raises(ConfigError) as caught:
            tls.client_context(_tls(pki, **changes))
        assert str(caught.value).startswith(message)
        assert "\n" not in str(caught.value)


def test_settings_that_cannot_work_are_refused_at_start(pki: Pki) -> None:
    # a destination over TLS without a [tls] section
    destination = Destination(host="127.0.0.1", port=11113, tls=True)
    no_tls = NodeSettings(destinations={"PACS": destination})
    with pytest.raises(ConfigError, match=r"^destinations\.PACS\.tls: needs a \[tls\] section"):
        tls.scp_context(no_tls)
    # required client certificates with no CA to check them
    with pytest.raises(ConfigError, match=r"^tls\.require_client_certificate: needs tls\.ca"):
        tls.scp_context(NodeSettings(tls=_tls(pki, ca=None, require_client_certificate=True)))
    # associations to verify with no CA (checked at start when a destination needs them)
    both = NodeSettings(tls=_tls(pki, ca=None), destinations={"PACS": destination})
    with pytest.raises(ConfigError, match=r"^tls\.ca: needed to verify the peers"):
        tls.scp_context(both)


def test_plain_tcp_unless_configured(pki: Pki) -> None:
    assert tls.scp_context(NodeSettings()) is None
    assert tls.scp_context(NodeSettings(tls=_tls(pki, scp=False))) is None
    assert tls.association_tls(NodeSettings(), "pacs", needed=False) is None
    over_tls = tls.association_tls(NodeSettings(tls=_tls(pki)), "pacs", needed=True)
    assert over_tls is not None
    assert over_tls == (tls.client_context(_tls(pki)), "pacs")
