"""TLS to the broker: one ``ssl.SSLContext`` for both kinds of connection.

Managed RabbitMQ offers only ``amqps://``. The publisher (our confirm
connection) and the consumers (aio-pika) must trust the same CA and present
the same client certificate, so both take the context built here from the
service's settings rather than each reading files its own way.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def client_context(
    *,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    verify_hostname: bool = True,
) -> ssl.SSLContext:
    """A client context that always verifies the broker's certificate.

    ``ca_file``: the CA bundle that signed the broker's certificate (the
    system's trust store when None). ``cert_file``/``key_file``: a client
    certificate for brokers that require one (the key may sit in the
    certificate file). ``verify_hostname=False`` accepts a certificate issued
    to another name, still signed by the CA: for brokers reached by an address
    their certificate does not list; the chain is checked regardless.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = verify_hostname
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context
