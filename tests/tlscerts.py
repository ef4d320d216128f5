"""A throwaway certificate authority and a server certificate it signs, for the HTTPS tests: the server is reached
by a name that is not localhost (browsers treat localhost as secure even over http, so only a real name tests the
secure-context rule) and by 127.0.0.1."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TEST_HOST = "ketang.test"  # .test is reserved (RFC 2606): it never resolves to a real server
VALID_DAYS = 2


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA certificate (PEM) a client trusts
    cert: Path  # the server certificate (PEM), for TEST_HOST and 127.0.0.1
    key: Path  # its unencrypted private key (PEM)
    spki_sha256: str  # base64 SHA-256 of the server certificate's public key (Chromium's SPKI pin)

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only the test CA (and checks the host name)."""
        return ssl.create_default_context(cafile=str(self.ca))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_certs(directory: Path, host: str = TEST_HOST) -> TlsFiles:
    """Write ca.pem, server.pem and server.key into `directory`."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(_name("ketang test CA")).issuer_name(_name("ketang test CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    paths = TlsFiles(ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key",
                      spki_sha256=base64.b64encode(hashlib.sha256(key.public_key().public_bytes(
                          serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest())
                      .decode())
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(_pem_key(key))
    paths.key.chmod(0o600)
    return paths


def other_key(path: Path) -> Path:
    """A private key that belongs to no certificate here (for the mismatch test)."""
    path.write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
    return path
