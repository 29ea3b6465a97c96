"""Certificates for TLS tests, made per test session with the openssl CLI.

A test CA signs a server certificate for ``localhost``/``127.0.0.1``, one for
a name the tests never connect to, and a client certificate; a second,
unrelated CA is the "wrong CA" a client must refuse. Nothing here is trusted
outside the tests: keys live in pytest's temporary directory.
"""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

_DAYS = "2"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    # Signed by the CA, but for a host name the tests do not connect to.
    misnamed_cert: Path
    misnamed_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path

    def server_context(
        self, *, require_client_cert: bool = False, misnamed: bool = False
    ) -> ssl.SSLContext:
        """What a TLS-terminating proxy in front of the broker presents."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if misnamed:
            context.load_cert_chain(self.misnamed_cert, self.misnamed_key)
        else:
            context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)  # noqa: S603, S607


def _key(path: Path) -> Path:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    return path


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key = _key(directory / f"{name}.key")
    cert = directory / f"{name}.pem"
    _openssl(
        "req", "-x509", "-new", "-key", key, "-out", cert, "-days", _DAYS,
        "-subj", f"/CN=billing tests {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    return cert, key


def _leaf(
    directory: Path, name: str, ca: tuple[Path, Path], *, san: str, usage: str
) -> tuple[Path, Path]:
    key = _key(directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    cert = directory / f"{name}.pem"
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n" + (f"subjectAltName={san}\n" if san else "")
    )
    _openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={name}")
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", _DAYS, "-extfile", extensions,
    )  # fmt: skip
    return cert, key


def make_pki(directory: Path) -> Pki:
    ca = _ca(directory, "ca")
    other_ca = _ca(directory, "other-ca")
    server = _leaf(directory, "localhost", ca, san="DNS:localhost,IP:127.0.0.1", usage="serverAuth")
    misnamed = _leaf(
        directory, "rabbitmq.example.internal", ca, san="DNS:rabbitmq.example.internal",
        usage="serverAuth",
    )  # fmt: skip
    client = _leaf(directory, "billing-service", ca, san="", usage="clientAuth")
    return Pki(
        ca=ca[0],
        server_cert=server[0],
        server_key=server[1],
        misnamed_cert=misnamed[0],
        misnamed_key=misnamed[1],
        client_cert=client[0],
        client_key=client[1],
        other_ca=other_ca[0],
    )
