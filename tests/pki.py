"""Certificates for the DICOM TLS tests, made with the ``openssl`` command line.

The same tool a site would use, and no extra Python dependency: a test CA, leaf
certificates it signs (for the node and for the dcmtk peers, each usable as TLS
server and client), and a stranger signed by a CA nobody trusts. RSA 2048, as
every BCP 195 peer accepts it (dcmtk's default profile has only RSA suites for
TLS 1.2).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

LEAF_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
"""


@dataclass(frozen=True)
class Identity:
    """A PEM certificate and its unencrypted PEM key."""

    certificate: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """A test CA (``ca``) with the node's and the peers' identities; ``stranger`` is not its own."""

    ca: Path
    node: Identity
    peer: Identity
    stranger: Identity


def make_pki(folder: Path) -> Pki:
    """Make a CA, the node's and a peer's certificates, and a stranger's from another CA."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    other_ca = _ca(folder, "other-ca")
    return Pki(
        ca=ca.certificate,
        node=_leaf(folder, "node", ca),
        peer=_leaf(folder, "peer", ca),
        stranger=_leaf(folder, "stranger", other_ca),
    )


def encrypted_key(key: Path, password: str) -> Path:
    """A copy of ``key`` encrypted with ``password`` (AES-256, PKCS#8 PEM)."""
    out = key.with_name(f"{key.stem}-encrypted.key")
    _openssl("pkey", "-in", key, "-out", out, "-aes256", "-passout", f"pass:{password}")
    return out


def _ca(folder: Path, name: str) -> Identity:
    identity = Identity(folder / f"{name}.pem", folder / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN=dimsebus test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", identity.key, "-out", identity.certificate,
    )  # fmt: skip
    return identity


def _leaf(folder: Path, name: str, ca: Identity) -> Identity:
    identity = Identity(folder / f"{name}.pem", folder / f"{name}.key")
    request, extensions = folder / f"{name}.csr", folder / f"{name}.ext"
    extensions.write_text(LEAF_EXTENSIONS)
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", identity.key, "-out", request,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", request, "-CA", ca.certificate, "-CAkey", ca.key,
        "-CAcreateserial", "-days", "2", "-extfile", extensions, "-out", identity.certificate,
    )  # fmt: skip
    return identity


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)
