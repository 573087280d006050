"""DICOM TLS for the node: PS3.15 B.1 (DICOM over TLS), with the BCP 195 profiles.

The contexts follow PS3.15 B.9-B.12 (the BCP 195 TLS profiles; dcmtk's default
``--profile-bcp195-nd`` is B.10, Non-Downgrading): TLS 1.2 or 1.3 only, and for
TLS 1.2 only the ECDHE AES-GCM cipher suites BCP 195 (RFC 7525, RFC 9325)
recommends. TLS 1.3's suites are OpenSSL's, all of them AEAD. DHE suites are
left out: ECDHE serves every BCP 195 peer, and DHE would need parameters of a
known length (PS3.15 B.13).

Peers are trusted by their certificate chain to ``ca``, not by host name:
PS3.15 B.1 leaves the meaning of a certificate to site policy, DICOM peers are
configured by AE title and address (often an IP address their certificate does
not name), and dcmtk does not check names either. ``check_hostname = true``
adds the name check to the associations the node opens. Because ``ca`` is the
whole trust, it should be the site's own CA, never the public web's bundle.

The contexts are built once per ``[tls]`` section (a renewed certificate takes a
restart); a missing or unreadable file is a ``ConfigError`` naming the setting
and the file. The handshake of an accepted connection runs on that connection's
own thread, never on the accept loop, where one silent socket would stop every
other peer: ``dimsebus.services.node.server`` does it within ``acse_timeout``, and the
server context's sockets never handshake when wrapped, whichever server wraps them.
"""

from __future__ import annotations

import functools
import socket
import ssl
from pathlib import Path

from dimsebus.services.errors import ConfigError
from dimsebus.services.node.config import NodeSettings, Tls

BCP195_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
    )
)
"""TLS 1.2 suites: BCP 195's recommended ECDHE AES-GCM suites, strongest first."""


def scp_context(settings: NodeSettings) -> ssl.SSLContext | None:
    """The context of the node's own port (None: plain TCP), checked with every other.

    The client context that TLS destinations need is built here too, so that a bad
    ``[tls]`` stops the node at start, not at its first C-MOVE.
    """
    tls = settings.tls
    over_tls = [ae for ae, destination in settings.destinations.items() if destination.tls]
    if tls is None:
        if over_tls:
            raise ConfigError(f"destinations.{over_tls[0]}.tls: needs a [tls] section")
        return None
    if over_tls:
        client_context(tls)
    return server_context(tls) if tls.scp else None


def association_tls(
    settings: NodeSettings, host: str, needed: bool
) -> tuple[ssl.SSLContext, str] | None:
    """``tls_args`` for an association the node opens to ``host`` (None: plain TCP).

    ``host`` is the server name for SNI, and for the name check when ``check_hostname``.
    """
    if not needed:
        return None
    if settings.tls is None:
        raise ConfigError("tls: a TLS association needs a [tls] section (certificate, key, ca)")
    return client_context(settings.tls), host


@functools.cache
def server_context(tls: Tls) -> ssl.SSLContext:
    """The SCP's context: its certificate; client certificates checked against ``ca``.

    With ``require_client_certificate`` a peer without a certificate signed by
    ``ca`` fails the handshake; otherwise a certificate it offers is verified
    when there is a ``ca``, and one it does not offer is not asked for.
    """
    context = _base(ssl.PROTOCOL_TLS_SERVER, tls, HandshakeLater)
    context.options |= ssl.OP_NO_RENEGOTIATION
    if tls.require_client_certificate and tls.ca is None:
        raise ConfigError("tls.require_client_certificate: needs tls.ca, the CA to check them")
    if tls.ca is not None:
        _load_ca(context, tls.ca)
        context.verify_mode = (
            ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
        )
    return context


@functools.cache
def client_context(tls: Tls) -> ssl.SSLContext:
    """The context of the associations the node opens: the peer verified against ``ca``.

    The node presents its own certificate, as dcmtk's storescp asks by default.
    """
    if tls.ca is None:
        raise ConfigError("tls.ca: needed to verify the peers the node connects to over TLS")
    context = _base(ssl.PROTOCOL_TLS_CLIENT, tls)
    _load_ca(context, tls.ca)
    context.check_hostname = tls.check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class HandshakeLater(ssl.SSLContext):
    """A server context whose sockets do not handshake when wrapped.

    pynetdicom's own server wraps each accepted socket on its one accept thread,
    with no timeout, and the wrap would run the handshake there. Deferred, it runs
    on the connection's thread: explicitly (``dimsebus.services.node.server``), or within its
    first read, as OpenSSL's ``SSL_read`` completes a handshake not yet done.
    """

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        """Wrap ``sock``, its handshake left for later (``do_handshake_on_connect`` ignored)."""
        return super().wrap_socket(
            sock, server_side, False, suppress_ragged_eofs, server_hostname, session
        )


def _base(
    protocol: ssl._SSLMethod, tls: Tls, kind: type[ssl.SSLContext] = ssl.SSLContext
) -> ssl.SSLContext:
    """TLS 1.2 or later, BCP 195 suites, and the node's certificate and key."""
    context = kind(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    _load_identity(context, tls)
    return context


def _load_identity(context: ssl.SSLContext, tls: Tls) -> None:
    """Load the certificate (chain) and its key, naming the file that is wrong."""
    _readable("tls.certificate", tls.certificate)
    _readable("tls.key", tls.key)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=tls.certificate)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"tls.certificate: {tls.certificate} holds no PEM certificate{_why(exc)}"
        ) from None
    password = tls.key_password.get_secret_value() if tls.key_password else ""
    try:
        # A callable, so that OpenSSL never prompts on a terminal for an encrypted key.
        context.load_cert_chain(tls.certificate, tls.key, password=lambda: password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"tls.key: {tls.key} is not the key of {tls.certificate}") from None
        raise ConfigError(
            f"tls.key: {tls.key} is not a PEM private key, or it is encrypted and "
            f"tls.key_password does not open it{_why(exc)}"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    _readable("tls.ca", ca)
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise ConfigError(f"tls.ca: {ca} holds no PEM certificate{_why(exc)}") from None


def _readable(setting: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{setting}: {path} cannot be read ({exc.strerror})") from None


def _why(exc: ssl.SSLError) -> str:
    """OpenSSL's reason, when it gives one, as a parenthesis."""
    return f" ({exc.reason})" if exc.reason else ""
