"""A local certificate authority and a ``localhost`` server certificate for serving HTTPS/h2
directly (``roomchat serve --certfile --keyfile``) on a development machine.

Layout under ``DATA_DIR/tls/``::

    ca.pem       the CA certificate: the one file a browser, curl or Python must trust
    ca-key.pem   its private key (0600); kept so later runs reuse the CA you already trusted
    cert.pem     the server certificate (localhost, 127.0.0.1, ::1), signed by the CA
    key.pem      its private key (0600)

The CA is name-constrained to ``localhost``, ``127.0.0.0/8`` and ``::1``: even if
``ca-key.pem`` leaks, it cannot sign a certificate that your machine would accept for any
other site. Production deployments use a real certificate (Caddy in ``infra/`` gets one).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=365)
# A CA this close to expiry is replaced rather than reused: a leaf must not outlive its CA.
CA_RENEW_BEFORE = datetime.timedelta(days=30)
# Backdate notBefore a little so a machine whose clock is slightly behind accepts the cert.
CLOCK_SKEW = datetime.timedelta(hours=1)
SERVER_NAMES: tuple[str, ...] = ("localhost",)
SERVER_IPS: tuple[str, ...] = ("127.0.0.1", "::1")
TRUST_NAME = "roomchat-dev"


@dataclass(frozen=True, slots=True)
class DevCert:
    """Where ``make_dev_cert`` put the files, and whether it created a new CA."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    ca_created: bool

    def instructions(self) -> str:
        """Human text: how to trust the CA (OS, Chromium/NSS, curl, Python) and how to serve.

        Reads no file; paths are shown absolute. Says whether the CA is new (trust it once) or
        reused (clients that already trust it keep working)."""
        ca, ca_key, cert, key = (p.absolute() for p in
                                 (self.ca_cert, self.ca_key, self.cert, self.key))
        state = ("A new local CA was created: trust it once (below)." if self.ca_created else
                 "The existing local CA was reused: clients that already trust it need nothing.")
        return f"""\
roomchat development certificate
  CA certificate:     {ca}
  CA key (0600):      {ca_key}
  server certificate: {cert}  (localhost, 127.0.0.1, ::1; valid 1 year)
  server key (0600):  {key}
{state}
The CA can only vouch for localhost, 127.0.0.0/8 and ::1 (name constraints).

Serve HTTPS and HTTP/2 with it:
  roomchat serve --certfile {cert} --keyfile {key}
  then open https://localhost:8000/rooms/lobby (or https://127.0.0.1:8000/...)

Trust the CA:
  Debian/Ubuntu (system store: curl, wget, most tools):
    sudo cp {ca} /usr/local/share/ca-certificates/{TRUST_NAME}.crt
    sudo update-ca-certificates
  Chromium/Chrome on Linux (NSS; package libnss3-tools gives certutil):
    certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n {TRUST_NAME} -i {ca}
  Firefox: Settings > Privacy & Security > Certificates > View Certificates > Authorities >
    Import {ca} and tick "Trust this CA to identify websites".
  curl without installing it:
    curl --cacert {ca} https://localhost:8000/healthz
  Python:
    ssl.create_default_context(cafile="{ca}")
    (or SSL_CERT_FILE={ca} for tools that read it)

Remove the trust later:
  sudo rm /usr/local/share/ca-certificates/{TRUST_NAME}.crt && sudo update-ca-certificates --fresh
  certutil -d sql:$HOME/.pki/nssdb -D -n {TRUST_NAME}
"""


def make_dev_cert(data_dir: Path, *, now: datetime.datetime | None = None) -> DevCert:
    """Create (or renew) the development TLS files under ``data_dir/tls`` and return their paths.

    The CA in ``ca.pem``/``ca-key.pem`` is reused when both files exist, hold a CA certificate
    whose public key matches the key, and the CA is valid for at least 30 more days; otherwise
    a new CA (10 years) replaces it. The server certificate and key are always written anew
    (1 year, never past the CA's expiry), so running this again renews them.

    ``now`` (UTC) is for tests; default: the current time. Keys are written with mode 0600
    (atomically: a reader never sees a half-written file). Raises ``OSError`` if the directory
    cannot be created or written."""
    now = now or datetime.datetime.now(datetime.UTC)
    tls_dir = data_dir / "tls"
    tls_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: tls_dir / f"{name}.pem" for name in ("ca", "ca-key", "cert", "key")}

    loaded = _load_ca(paths["ca"], paths["ca-key"], now)
    ca_created = loaded is None
    if loaded is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key, now)
        _write(paths["ca-key"], _key_pem(ca_key), 0o600)
        _write(paths["ca"], ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    else:
        ca_cert, ca_key = loaded

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _server_certificate(key, ca_cert, ca_key, now)
    _write(paths["key"], _key_pem(key), 0o600)
    _write(paths["cert"], cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return DevCert(ca_cert=paths["ca"], ca_key=paths["ca-key"], cert=paths["cert"],
                   key=paths["key"], ca_created=ca_created)


def _load_ca(cert_path: Path, key_path: Path, now: datetime.datetime,
             ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The existing CA if it is usable (see ``make_dev_cert``), else ``None``."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if cert.public_key() != key.public_key():
        return None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
    if not constraints.ca or cert.not_valid_after_utc - now < CA_RENEW_BEFORE:
        return None
    return cert, key


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: datetime.datetime) -> x509.Certificate:
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "roomchat development"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{TRUST_NAME} local CA"),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.NameConstraints(
            permitted_subtrees=[
                *(x509.DNSName(n) for n in SERVER_NAMES),
                x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
                x509.IPAddress(ipaddress.ip_network("::1/128")),
            ],
            excluded_subtrees=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                        ca_key: ec.EllipticCurvePrivateKey,
                        now: datetime.datetime) -> x509.Certificate:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    not_after = min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "roomchat development"),
            x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAMES[0]),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([
            *(x509.DNSName(n) for n in SERVER_NAMES),
            *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IPS),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically with ``mode`` (set before any byte is written)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    replaced = False
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        replaced = True
    finally:
        if not replaced:
            Path(tmp).unlink(missing_ok=True)
