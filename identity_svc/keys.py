"""Apps' signing keys: made, sealed at rest, certified, rotated; and what is signed with them. No I/O here.

- **One RSA-2048 key per app and rotation period.** Periods are fixed windows of ``rotation_seconds`` counted from
  the Unix epoch, so every replica agrees which period is current without talking to the others; the key of a
  period is the one the store kept first for ``(app, period start)`` (an insert-if-absent: a lightweight
  transaction on Cassandra), so two replicas that made a key at once both sign with the winner.
- **Names.** A key's name is the SHA-1 of its public key (DER SubjectPublicKeyInfo) in hex, 40 digits, like the
  key ids App Engine published.
- **Published certificates.** Self-signed X.509 (SHA-256), one per key: the current period's, the next one's (made
  ahead, so a client that caches the list already holds the key that becomes current next) and the previous
  one's (so a signature, or an access token, made just before a rotation stays verifiable for a whole period;
  App Engine likewise published its current and previous keys). A certificate is valid from its period's start
  until the end of the period after it, plus the access-token lifetime.
- **Signatures.** RSASSA-PKCS1-v1_5 over SHA-256, as App Engine's ``sign_blob``.
- **Access tokens.** A JWT (RS256, PyJWT) with ``kid`` naming the key: ``iss``/``sub`` the app's service account,
  ``app_id``, ``scope`` (space-separated, as OAuth writes scopes), ``iat``, ``exp``. Anyone can check one with the
  app's published certificates; Google's APIs do not accept it.
- **At rest.** A private key is stored only sealed: PKCS#8 DER under AES-256-GCM, with a key derived (HKDF-SHA256)
  from the deployment's ``key_secret`` and the app and key name as associated data, so a sealed key copied to
  another app's row does not open.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import re

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

KEY_BITS = 2048
PUBLIC_EXPONENT = 65537
# sign_blob's limit: signing hashes the bytes, so the limit only bounds the request.
MAX_BLOB_BYTES = 1024 * 1024
MAX_SCOPES = 32
# A scope is a URL or a short name: printable ASCII without spaces (OAuth's separator) or commas (the metadata
# server's separator in ``?scopes=a,b``).
SCOPE_RE = re.compile(r"[\x21-\x2b\x2d-\x7e]{1,512}", re.ASCII)
# Clients may cache the certificate list this long at most (a quarter of a period when periods are short).
MAX_CACHE_SECONDS = 3600
_SEAL_INFO = b"kiln identity_svc: sealing apps' private keys"
_NONCE_BYTES = 12


class SealError(Exception):
    """A sealed key does not open with this key secret (another secret made it, or it was altered)."""


@dataclasses.dataclass(frozen=True)
class StoredKey:
    """One app's key for one period, as the store keeps it (the private key only sealed)."""

    app: str
    period_start: int
    key_name: str
    sealed: bytes
    certificate_pem: str


@dataclasses.dataclass(frozen=True)
class Rotation:
    """The period arithmetic: which period a moment falls in, and which periods' keys are published."""

    seconds: int

    def start(self, now: float) -> int:
        """The start (Unix seconds) of the period ``now`` falls in."""
        return int(now // self.seconds) * self.seconds

    def cache_seconds(self) -> int:
        """How long a client may cache the published certificates."""
        return max(1, min(MAX_CACHE_SECONDS, self.seconds // 4))


class Sealer:
    """Seals and opens private keys with a key derived from the deployment's ``key_secret``."""

    def __init__(self, key_secret: str) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_INFO).derive(
            key_secret.encode("utf-8"))
        self._aead = AESGCM(derived)

    @staticmethod
    def _bound_to(app: str, key_name: str) -> bytes:
        return f"{app}\n{key_name}".encode()

    def seal(self, app: str, key_name: str, private_key: rsa.RSAPrivateKey) -> bytes:
        der = private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, der, self._bound_to(app, key_name))

    def open(self, stored: StoredKey) -> rsa.RSAPrivateKey:
        """The private key of ``stored``.

        Raises:
            SealError: it was sealed under another key secret, for another app or key, or altered.
        """
        nonce, sealed = stored.sealed[:_NONCE_BYTES], stored.sealed[_NONCE_BYTES:]
        try:
            der = self._aead.decrypt(nonce, sealed, self._bound_to(stored.app, stored.key_name))
        except InvalidTag:
            raise SealError(f"the key {stored.key_name} of app {stored.app!r} does not open with this key_secret "
                            "(it was stored under another one, or altered)") from None
        key = serialization.load_der_private_key(der, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SealError(f"the key {stored.key_name} of app {stored.app!r} is not an RSA key")
        return key


def key_name(public_key: rsa.RSAPublicKey) -> str:
    """40 hex digits: the SHA-1 of the public key's DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha1(der).hexdigest()  # noqa: S324 - a name, as App Engine's key ids; not a security property


def certificate(app: str, private_key: rsa.RSAPrivateKey, *, valid_from: int, valid_until: int) -> str:
    """A self-signed X.509 certificate (PEM) of ``private_key``'s public key, naming the app."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, app),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kiln app identity")])
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime.fromtimestamp(valid_from, datetime.UTC))
            .not_valid_after(datetime.datetime.fromtimestamp(valid_until, datetime.UTC))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(private_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def new_key(app: str, period_start: int, rotation: Rotation, token_seconds: int,
            sealer: Sealer) -> tuple[StoredKey, rsa.RSAPrivateKey]:
    """A fresh key for ``app``'s period starting at ``period_start``: what to store, and the key itself.

    Slow (RSA key generation, tens of milliseconds): run it off the event loop.
    """
    private_key = rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=KEY_BITS)
    name = key_name(private_key.public_key())
    # Valid while published: from its period until the end of the next one, plus what a token it signed may live.
    pem = certificate(app, private_key, valid_from=period_start,
                      valid_until=period_start + 2 * rotation.seconds + token_seconds)
    return StoredKey(app, period_start, name, sealer.seal(app, name, private_key), pem), private_key


def sign(private_key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    """RSASSA-PKCS1-v1_5 with SHA-256 (App Engine's ``sign_blob``)."""
    return private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def scope_problem(scopes: list[str]) -> str | None:
    """Why ``scopes`` cannot be in a token, or ``None``."""
    if not scopes:
        return "no scope given: an access token needs at least one scope"
    if len(scopes) > MAX_SCOPES:
        return f"{len(scopes)} scopes; at most {MAX_SCOPES} in one token"
    for scope in scopes:
        if not SCOPE_RE.fullmatch(scope):
            return (f"scope {scope[:80]!r} is not a scope: 1 to 512 printable ASCII characters without spaces or "
                    "commas")
    return None


def access_token(*, app: str, account: str, scopes: list[str], key: StoredKey, private_key: rsa.RSAPrivateKey,
                 now: int, lifetime: int) -> tuple[str, int]:
    """A signed access token for ``app`` and ``scopes`` (module docstring), and its expiry (Unix seconds)."""
    expires = now + lifetime
    claims = {"iss": account, "sub": account, "app_id": app, "scope": " ".join(scopes), "iat": now, "exp": expires}
    return jwt.encode(claims, private_key, algorithm="RS256", headers={"kid": key.key_name}), expires
