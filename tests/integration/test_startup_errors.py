"""Start-up mistakes: ``roomchat serve`` prints exactly one line on stderr and exits 2, no
traceback (each case is a real process, with real sockets and directories)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.startup import assert_one_line, serve
from tests.support import free_port


def test_redis_store_without_the_redis_package(tmp_path: Path) -> None:
    # A module that fails to import exactly as a missing package does, ahead of site-packages.
    shadow = tmp_path / "no-redis"
    shadow.mkdir()
    (shadow / "redis.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'redis'\", name='redis')\n")
    path = os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))
    code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}",
                      "--store-url", "redis://127.0.0.1:6379/0", env={"PYTHONPATH": path})
    assert_one_line(code, err, "pip install 'roomchat[redis]'")


def test_redis_unreachable_names_where_but_never_the_password(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}",
                      "--store-url", f"redis://:hunter2-sekret@127.0.0.1:{port}/0")
    line = assert_one_line(code, err, "cannot reach Redis", f"127.0.0.1:{port}")
    assert "hunter2" not in line


def test_unknown_store_url_scheme(tmp_path: Path) -> None:
    code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}",
                      "--store-url", "mysql://admin:pw-sekret@db/chat")
    line = assert_one_line(code, err, "unknown store URL", "sqlite:///", "redis://",
                           "postgresql://")
    assert "pw-sekret" not in line


def test_unreachable_postgres_store(tmp_path: Path) -> None:
    code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}",
                      "--store-url", "postgres://admin:pw-sekret@db.invalid/chat")
    line = assert_one_line(code, err, "cannot reach PostgreSQL", "ROOMCHAT_STORE_URL")
    assert "pw-sekret" not in line


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = serve(tmp_path, "--bind", f"127.0.0.1:{port}")
    assert_one_line(code, err, f"127.0.0.1:{port}", "already in use")


@pytest.mark.parametrize(("bind", "expected"), [
    ("nohost:99999", "out of range"),
    ("abc", "HOST:PORT"),
    ("no-such-host.invalid:8000", "cannot resolve"),
    ("::1:8000", "brackets"),
])
def test_bad_bind(tmp_path: Path, bind: str, expected: str) -> None:
    code, err = serve(tmp_path, "--bind", bind)
    assert_one_line(code, err, repr(bind), expected)


def test_data_dir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}", "--data-dir", "data")
    assert_one_line(code, err, "data", "is not a directory")


def test_data_dir_cannot_be_created(tmp_path: Path) -> None:
    # Below a regular file: no user, root included, can create it.
    (tmp_path / "file").write_text("")
    code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}",
                      "--data-dir", "file/data")
    assert_one_line(code, err, "cannot create data directory", "file/data")


def test_data_dir_not_writable(tmp_path: Path) -> None:
    # /proc is a directory nobody can create files in, root included (chmod would not stop
    # root, and these tests run as root in containers).
    code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}", "--data-dir", "/proc")
    assert_one_line(code, err, "/proc", "is not writable")


def test_unusable_public_key_file(tmp_path: Path) -> None:
    # Refused at startup, not by refusing every token afterwards.
    (tmp_path / "pub.pem").write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n"
                                      "-----END PUBLIC KEY-----\n")
    code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}",
                      env={"ROOMCHAT_JWT_ALGORITHM": "RS256",
                           "ROOMCHAT_JWT_PUBLIC_KEY_FILE": str(tmp_path / "pub.pem")})
    assert_one_line(code, err, "ROOMCHAT_JWT_PUBLIC_KEY_FILE", "not a usable RS256 public key")


def _tls_files(tmp: Path) -> dict[str, Path]:
    """A good pair (``roomchat dev-cert``'s), and every way the files can be wrong."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    from gateway.tls import make_dev_cert

    pair = make_dev_cert(tmp / "data")
    files = {"cert": pair.cert, "key": pair.key, "other-key": pair.ca_key}
    (tmp / "garbage.pem").write_text("not a PEM file\n")
    files["garbage"] = tmp / "garbage.pem"
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    files["encrypted"] = tmp / "encrypted.pem"
    files["encrypted"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    # A pair that parses and matches but OpenSSL refuses at its default security level.
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(weak.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(weak, hashes.SHA256()))
    files["weak-cert"] = tmp / "weak-cert.pem"
    files["weak-cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["weak-key"] = tmp / "weak-key.pem"
    files["weak-key"].write_bytes(weak.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return files


@pytest.mark.parametrize(("certfile", "keyfile", "expected"), [
    ("/nope.pem", "key", ["cannot read --certfile /nope.pem (ROOMCHAT_CERTFILE): No such file "
                          "or directory", "roomchat dev-cert"]),
    ("cert", "/nope-key.pem", ["cannot read --keyfile /nope-key.pem", "No such file"]),
    ("garbage", "key", ["--certfile {garbage}", "holds no PEM certificate"]),
    ("key", "key", ["--certfile {key}", "holds no PEM certificate"]),
    ("cert", "garbage", ["--keyfile {garbage}", "holds no PEM private key"]),
    ("cert", "encrypted", ["--keyfile {encrypted}", "is encrypted", "openssl pkey"]),
    ("cert", "other-key", ["--keyfile {other-key} (ROOMCHAT_KEYFILE) is not the key of "
                           "--certfile {cert}"]),
    ("cert", None, ["--certfile without --keyfile"]),
    (None, "key", ["--keyfile without --certfile"]),
    ("weak-cert", "weak-key", ["OpenSSL refuses --certfile {weak-cert}", "{weak-key}"]),
], ids=["no-cert", "no-key", "garbage-cert", "key-as-cert", "garbage-key", "encrypted-key",
        "mismatch", "cert-alone", "key-alone", "refused-by-openssl"])
def test_tls_files_are_checked_before_start(
        tmp_path: Path, certfile: str | None, keyfile: str | None, expected: list[str]) -> None:
    files = {name: str(path) for name, path in _tls_files(tmp_path).items()}
    args = ["--bind", f"127.0.0.1:{free_port()}"]
    if certfile is not None:
        args += ["--certfile", files.get(certfile, certfile)]
    if keyfile is not None:
        args += ["--keyfile", files.get(keyfile, keyfile)]
    code, err = serve(tmp_path, *args)
    assert_one_line(code, err, *(text.format_map(files) for text in expected))


@pytest.mark.parametrize(("env", "expected"), [
    # `serve --check` said "ready to serve", then the store refused the value as the server
    # started (a traceback from Hypercorn's lifespan).
    ({"ROOMCHAT_STORE_SYNCHRONOUS": "OFF"}, ["ROOMCHAT_STORE_SYNCHRONOUS must be FULL or NORMAL"]),
    # Accepted: the revocation watcher then polled the store without pause.
    ({"ROOMCHAT_REVOCATION_POLL": "0"}, ["ROOMCHAT_REVOCATION_POLL must be more than 0"]),
    # A traceback (FileNotFoundError), not one line.
    ({"ROOMCHAT_JWT_ALGORITHM": "RS256", "ROOMCHAT_JWT_PUBLIC_KEY_FILE": "/nope.pem"},
     ["ROOMCHAT_JWT_PUBLIC_KEY_FILE: cannot read /nope.pem: No such file or directory"]),
    ({"ROOMCHAT_JWT_ALGORITHM": "EdDSA", "ROOMCHAT_JWT_PUBLIC_KEY_FILE": "{pub}",
      "ROOMCHAT_JWT_KEYS": "old=/nope-old.pem"},
     ["ROOMCHAT_JWT_KEYS (old): cannot read /nope-old.pem"]),
], ids=["synchronous", "revocation-poll", "public-key-file", "jwt-keys-file"])
def test_serve_check_refuses_a_bad_setting_in_one_line(
        tmp_path: Path, env: dict[str, str], expected: list[str]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pub = tmp_path / "pub.pem"
    pub.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    code, err = serve(tmp_path, "--check", "--bind", f"127.0.0.1:{free_port()}",
                      env={k: v.format(pub=pub) for k, v in env.items()})
    assert_one_line(code, err, *expected)
