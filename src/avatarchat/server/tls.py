"""HTTPS for `avatarchat serve`: a cached self-signed certificate, and the server's SSL context.

Browsers give the microphone only to secure origins (``https://`` or ``localhost``), so a
phone or laptop on the LAN needs HTTPS. The self-signed certificate makes the browser warn
once; it is generated on first use and reused while valid.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
from pathlib import Path
from typing import Any

#: Regenerate a cached certificate that expires sooner than this.
RENEW_BEFORE = dt.timedelta(days=7)
VALID_FOR = dt.timedelta(days=365)


class TLSError(ValueError):
    """A certificate or key problem, phrased for the user in one line."""


def default_folder() -> Path:
    """``$XDG_CACHE_HOME/avatarchat/tls`` (``~/.cache/avatarchat/tls`` by default)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "avatarchat" / "tls"


def self_signed_cert(folder: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """Return ``(certfile, keyfile)`` of a self-signed certificate for this machine.

    The files (``cert.pem``, ``key.pem``; the key mode 0600) are reused while they are valid
    for at least ``RENEW_BEFORE`` and name every current host name and address; otherwise a
    new EC P-256 pair valid for a year is written (atomically) in their place.
    """
    base = Path(folder) if folder is not None else default_folder()
    cert, key = base / "cert.pem", base / "key.pem"
    names, ips = _subject_names()
    if not _reusable(cert, key, names, ips):
        try:
            base.mkdir(parents=True, exist_ok=True, mode=0o700)
            _generate(cert, key, names, ips)
        except OSError as exc:
            raise TLSError(f"cannot write a self-signed certificate to {base}: {exc.strerror or exc}") from None
    return str(cert), str(key)


def ssl_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server-side context for aiohttp; ``TLSError`` for a missing, unreadable or mismatched pair."""
    _check_pair(certfile, keyfile)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        raise TLSError(f"cannot use {certfile} with {keyfile}: {exc.reason or exc}") from None
    except OSError as exc:
        raise TLSError(f"cannot read {certfile} or {keyfile}: {exc.strerror or exc}") from None
    return ctx


def _check_pair(certfile: str, keyfile: str) -> None:
    """Say which file is wrong, in words (OpenSSL's own errors read "PEM lib")."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = {}
    for label, path in (("certificate", certfile), ("key", keyfile)):
        try:
            data[label] = Path(path).read_bytes()
        except FileNotFoundError:
            raise TLSError(f"{label} file {path} does not exist") from None
        except OSError as exc:
            raise TLSError(f"cannot read the {label} file {path}: {exc.strerror or exc}") from None
    try:
        cert = x509.load_pem_x509_certificate(data["certificate"])
    except ValueError:
        raise TLSError(f"{certfile} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(data["key"], password=None)
    except TypeError:
        raise TLSError(f"{keyfile} is encrypted; give the key without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSError(f"{keyfile} is not a PEM private key") from None
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise TLSError(f"the key {keyfile} does not match the certificate {certfile}")


def _public_der(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _subject_names() -> tuple[list[str], list[str]]:
    """DNS names and IP addresses this machine is reached by: loopback, host name, LAN address."""
    names = ["localhost"]
    host = socket.gethostname()
    if host and host not in names:
        names.append(host)
    ips = ["127.0.0.1", "::1"]
    for ip in lan_addresses(host):
        if ip not in ips:
            ips.append(ip)
    return names, ips


def lan_addresses(host: str) -> list[str]:
    """Non-loopback addresses of this machine: its host name's and its default route's."""
    found = []
    try:
        for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP):
            found.append(str(info[4][0]))
    except OSError:
        pass
    # The address of the default route: connect() on UDP picks a route and sends nothing.
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere real
            found.append(s.getsockname()[0])
    except OSError:
        pass
    out: list[str] = []
    for ip in found:
        addr = ipaddress.ip_address(ip.split("%")[0])
        if not (addr.is_unspecified or addr.is_loopback) and ip not in out:
            out.append(ip)
    return out


def _reusable(cert: Path, key: Path, names: list[str], ips: list[str]) -> bool:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        c = x509.load_pem_x509_certificate(cert.read_bytes())
        k = serialization.load_pem_private_key(key.read_bytes(), password=None)
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return False
    if c.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) < RENEW_BEFORE:
        return False
    if _public_der(c.public_key()) != _public_der(k.public_key()):
        return False
    have_names = set(san.get_values_for_type(x509.DNSName))
    have_ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    # A new LAN address (another network) needs a certificate that names it.
    return set(names) <= have_names and {str(ipaddress.ip_address(i.split("%")[0])) for i in ips} <= have_ips


def _generate(cert: Path, key: Path, names: list[str], ips: list[str]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "avatarchat")])
    now = dt.datetime.now(dt.timezone.utc)
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt += [x509.IPAddress(ipaddress.ip_address(i.split("%")[0])) for i in ips]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate a little clock skew
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    key_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(key, key_pem, 0o600)
    _write(cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    # Created with its final mode (the key is never readable by others, even briefly),
    # then renamed over the old file so a reader never sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, mode)  # the umask may have narrowed it; a stale tmp file kept its own
        f.write(data)
    os.replace(tmp, path)
