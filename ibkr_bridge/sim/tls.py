"""A throwaway self-signed certificate for the Client Portal simulator.

The real Client Portal gateway serves HTTPS with a self-signed certificate; the simulator
does the same so that clients exercise real TLS verification: by default they must refuse
it, and with the generated PEM as their CA file they must accept it.

The certificate is made with the ``openssl`` command line tool (the ``cryptography``
package is not a dependency). It names ``localhost``, ``127.0.0.1`` and ``::1`` in its
subjectAltName and is its own CA, so the same PEM file is both the server certificate and
the trust anchor a client passes as ``cafile``.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from attrs import frozen

DEFAULT_HOSTS: Final = ("localhost", "127.0.0.1", "::1")


from ibkr_bridge.core.errors import CertificateError  # noqa: E402  (in core.errors)


@frozen
class CertPair:
    """A PEM certificate and its unencrypted PEM private key."""

    cert_path: Path
    key_path: Path


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def generate_self_signed(
    directory: str | Path | None = None,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 30,
    openssl: str | None = None,
) -> CertPair:
    """Write ``cert.pem`` and ``key.pem`` (P-256) into ``directory`` (a new temp dir if None).

    ``hosts`` go into the subjectAltName (IP addresses as ``IP:``, names as ``DNS:``); the
    first is the subject CN. Raises :class:`CertificateError` when ``openssl`` is missing
    or fails.
    """
    if not hosts:
        raise ValueError("at least one host name is needed")
    exe = openssl or shutil.which("openssl")
    if exe is None:
        raise CertificateError("the 'openssl' command is needed to make the simulator's cert")
    target = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="cpsim-"))
    target.mkdir(parents=True, exist_ok=True)
    cert = target / "cert.pem"
    key = target / "key.pem"
    san = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    command = [
        exe,
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-days",
        str(days),
        "-subj",
        f"/CN={hosts[0]}/O=ibkr-bridge Client Portal simulator",
        "-addext",
        f"subjectAltName={san}",
        # Its own CA: a client trusts exactly this certificate via cafile=.
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,digitalSignature,keyCertSign",
        "-addext",
        "extendedKeyUsage=serverAuth",
    ]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        stderr = getattr(exc, "stderr", b"") or b""
        raise CertificateError(
            f"openssl could not make a certificate: {exc} {stderr.decode(errors='replace')}"
        ) from exc
    key.chmod(0o600)
    return CertPair(cert, key)
