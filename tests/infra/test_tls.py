"""gateway/tls.py: the development CA and server certificate, checked as X.509 and by serving
HTTPS/h2 and wss:// with them from a real ``roomchat serve``."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from gateway.tls import DevCert, make_dev_cert
from tests.infra.harness import client_context, get, join, negotiated_alpn, stop, wait_for_status
from tests.support import make_token, start_process

UTC = datetime.UTC


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verify(ca: x509.Certificate, leaf: x509.Certificate,
            name: x509.DNSName | x509.IPAddress) -> None:
    """Path validation as a web client does it (raises ``VerificationError``)."""
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(name)
    verifier.verify(leaf, [])


def test_files_modes_and_extensions(tmp_path: Path) -> None:
    dev = make_dev_cert(tmp_path)
    assert dev.ca_created
    assert (dev.ca_cert, dev.ca_key, dev.cert, dev.key) == tuple(
        tmp_path / "tls" / f"{n}.pem" for n in ("ca", "ca-key", "cert", "key"))
    for key in (dev.ca_key, dev.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert not list((tmp_path / "tls").glob(".*")), "no temporary file left behind"

    ca, leaf = _load(dev.ca_cert), _load(dev.cert)
    ca_ext, leaf_ext = ca.extensions, leaf.extensions
    assert ca_ext.get_extension_for_class(x509.BasicConstraints).critical
    assert ca_ext.get_extension_for_class(x509.BasicConstraints).value.ca
    ca_usage = ca_ext.get_extension_for_class(x509.KeyUsage).value
    assert ca_usage.key_cert_sign and ca_usage.crl_sign and not ca_usage.digital_signature
    assert not leaf_ext.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf_usage = leaf_ext.get_extension_for_class(x509.KeyUsage).value
    assert leaf_usage.digital_signature and not leaf_usage.key_cert_sign
    assert list(leaf_ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    san = leaf_ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("::1")]
    assert leaf.issuer == ca.subject

    def days(cert: x509.Certificate) -> float:
        return (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / 86400

    assert 365 <= days(leaf) <= 366 and 3650 <= days(ca) <= 3651
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                 x509.IPAddress(ipaddress.ip_address("::1"))):
        _verify(ca, leaf, name)
    with pytest.raises(VerificationError):
        _verify(ca, leaf, x509.DNSName("example.com"))


def test_ca_is_name_constrained_to_loopback(tmp_path: Path) -> None:
    """Even with the CA's key, a certificate for another site does not validate."""
    dev = make_dev_cert(tmp_path)
    ca = _load(dev.ca_cert)
    ca_key = serialization.load_pem_private_key(dev.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value

    def leaf_for(host: str) -> x509.Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           False)
            .sign(ca_key, hashes.SHA256())
        )

    _verify(ca, leaf_for("localhost"), x509.DNSName("localhost"))  # the same recipe works...
    with pytest.raises(VerificationError, match="name constraint"):
        _verify(ca, leaf_for("bank.example"), x509.DNSName("bank.example"))  # ...but not here


def test_second_run_reuses_the_ca_and_renews_the_leaf(tmp_path: Path) -> None:
    first = make_dev_cert(tmp_path)
    ca_pem, leaf_pem = first.ca_cert.read_bytes(), first.cert.read_bytes()
    second = make_dev_cert(tmp_path)
    assert not second.ca_created
    assert second.ca_cert.read_bytes() == ca_pem
    assert second.cert.read_bytes() != leaf_pem
    _verify(_load(second.ca_cert), _load(second.cert), x509.DNSName("localhost"))


@pytest.mark.parametrize("damage", ["missing_key", "garbage", "other_key", "expiring"])
def test_unusable_ca_is_replaced(tmp_path: Path, damage: str) -> None:
    first = make_dev_cert(tmp_path)
    now = None
    if damage == "missing_key":
        first.ca_key.unlink()
    elif damage == "garbage":
        first.ca_cert.write_text("not a certificate")
    elif damage == "other_key":
        first.ca_key.write_bytes(first.key.read_bytes())  # the leaf's key: no match
    else:
        now = datetime.datetime.now(UTC) + datetime.timedelta(days=3650 - 10)
    second = make_dev_cert(tmp_path, now=now)
    assert second.ca_created
    ca, leaf = _load(second.ca_cert), _load(second.cert)
    assert leaf.issuer == ca.subject
    assert leaf.not_valid_after_utc <= ca.not_valid_after_utc


def test_instructions_say_how_to_trust_and_serve(tmp_path: Path) -> None:
    dev = make_dev_cert(tmp_path)
    text = dev.instructions()
    ca = str(dev.ca_cert.absolute())
    for expected in (
        f"sudo cp {ca} /usr/local/share/ca-certificates/roomchat-dev.crt",
        "sudo update-ca-certificates",
        f"certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n roomchat-dev -i {ca}",
        f"curl --cacert {ca}",
        f'ssl.create_default_context(cafile="{ca}")',
        f"roomchat serve --certfile {dev.cert.absolute()} --keyfile {dev.key.absolute()}",
        "A new local CA was created",
    ):
        assert expected in text, expected
    reused = DevCert(dev.ca_cert, dev.ca_key, dev.cert, dev.key, ca_created=False)
    assert "existing local CA was reused" in reused.instructions()


async def test_roomchat_serves_https_h2_and_wss_with_the_dev_cert(tmp_path: Path) -> None:
    dev = make_dev_cert(tmp_path / "data")
    process = start_process(tmp_path / "data",
                            args=["--certfile", str(dev.cert), "--keyfile", str(dev.key)])
    try:
        context = client_context(dev.ca_cert)
        wait_for_status(f"https://localhost:{process.port}/healthz", 200, context)
        status, _, body = get(f"https://127.0.0.1:{process.port}/healthz", context)
        # By IP the certificate verifies too (its IP SAN); one process answers, with its pid.
        assert (status, body) == (200, f'{{"status":"ok","pid":{process.proc.pid}}}'.encode())

        assert negotiated_alpn(process.port, client_context(dev.ca_cert)) == "h2"
        # Any other CA is refused: the client really verifies against ours.
        with pytest.raises(ssl.SSLCertVerificationError):
            negotiated_alpn(process.port, ssl.create_default_context())

        url = f"wss://localhost:{process.port}/rooms/lobby/ws?token={make_token('tess')}"
        ws, welcome = await join(url, client_context(dev.ca_cert))
        await ws.close()
        assert welcome["room"] == "lobby" and welcome["user"] == "tess"
    finally:
        stop(process.proc)
