"""The ``clients:`` and ``auth:`` sections: whose address a request has, and what proves a user.

Secrets and keys are read here, at load, from the environment variable or file named: a
missing variable, an unreadable file, a key that is not what its algorithms need, all point at
their line in ``shield check``, not at the first request. The material is kept in private
attributes, so it never shows in a dump of the config.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import Field, PrivateAttr, field_validator, model_validator

from shield.config.base import Section
from shield.config.units import Duration

# Algorithm -> the kind of key it verifies with. "none" is absent on purpose.
ALGORITHMS = {
    **{f"HS{n}": "secret" for n in (256, 384, 512)},
    **{f"{p}{n}": "RSA" for p in ("RS", "PS") for n in (256, 384, 512)},
    **{f"ES{n}": "EC" for n in (256, 384, 512)},
    "EdDSA": "OKP",
}
_KEY_TYPES: dict[str, tuple[type, ...]] = {
    "RSA": (rsa.RSAPublicKey,),
    "EC": (ec.EllipticCurvePublicKey,),
    "OKP": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey),
}


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ValueError(f"environment variable {name} is not set (or empty)")
    return value


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc


def secret_from(env: str | None, file: str | None) -> bytes:
    """The secret in environment variable ``env`` or in ``file`` (stripped); b"" for neither."""
    if env:
        return _env(env).encode()
    if file:
        return _read(file).strip()
    return b""


def _check_env(value: str | None) -> str | None:
    if value is not None:
        _env(value)
    return value


def _check_file(value: str | None) -> str | None:
    if value is not None:
        _read(value)
    return value


class Clients(Section):
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="CIDRs of proxies in front of Shield whose forwarding header is believed. "
        "Empty: the TCP peer is the client, whatever the headers say.",
    )
    header: Literal["X-Forwarded-For", "Forwarded"] = Field(
        "X-Forwarded-For", description="Which header the trusted proxies set (RFC 7239 Forwarded, or XFF)."
    )
    ipv6_prefix: int = Field(
        64, ge=1, le=128, description="IPv6 clients share a throttle bucket per prefix (128: per address)."
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"invalid CIDR {cidr!r}") from exc
        return value


class JwtKey(Section):
    """One verification key and the algorithms it may verify (pinned: a token's own ``alg``
    header chooses nothing else)."""

    algorithms: list[str] = Field(min_length=1, description="e.g. [HS256] or [RS256, PS256].")
    secret_env: str | None = Field(None, description="HS*: environment variable holding the secret.")
    secret_file: str | None = Field(None, description="HS*: file holding the secret.")
    public_key_file: str | None = Field(None, description="RS/PS/ES/EdDSA: PEM public key file.")
    jwks_file: str | None = Field(None, description="RS/PS/ES/EdDSA: JWKS file (reloaded with the config).")
    _keys: list[tuple[str | None, Any]] = PrivateAttr(default_factory=list)

    _env = field_validator("secret_env")(_check_env)
    _files = field_validator("secret_file", "public_key_file", "jwks_file")(_check_file)

    @field_validator("algorithms")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in ALGORITHMS:
                raise ValueError(f"unknown algorithm {name!r}: use one of {', '.join(ALGORITHMS)}")
        if len({ALGORITHMS[name] for name in value}) > 1:
            raise ValueError("one key cannot serve algorithms of different kinds (secret, RSA, EC, OKP)")
        return value

    @model_validator(mode="after")
    def _load(self) -> JwtKey:
        sources = [
            s for s in ("secret_env", "secret_file", "public_key_file", "jwks_file") if getattr(self, s)
        ]
        if len(sources) != 1:
            raise ValueError("give exactly one of: secret_env, secret_file, public_key_file, jwks_file")
        kind = ALGORITHMS[self.algorithms[0]]
        source = sources[0]
        if (kind == "secret") != source.startswith("secret"):
            needs = "secret_env or secret_file" if kind == "secret" else "public_key_file or jwks_file"
            raise ValueError(f"{self.algorithms[0]} needs {needs}, not {source}")
        if self.secret_env or self.secret_file:
            secret = secret_from(self.secret_env, self.secret_file)
            # RFC 7518 §3.2: an HMAC key at least as long as the hash; PyJWT warns per token otherwise.
            needed = max(int(name[2:]) // 8 for name in self.algorithms)
            if len(secret) < needed:
                raise ValueError(
                    f"the secret is {len(secret)} bytes; {self.algorithms} need at least {needed}"
                )
            self._keys = [(None, secret)]
        elif self.public_key_file:
            self._keys = [(None, _public_key(_read(self.public_key_file), kind, self.public_key_file))]
        elif self.jwks_file:
            self._keys = _jwks(_read(self.jwks_file), kind, self.jwks_file)
        return self

    @property
    def keys(self) -> list[tuple[str | None, Any]]:
        """(key id or None, key material) pairs, loaded at validation."""
        return self._keys


def _public_key(pem: bytes, kind: str, path: str) -> Any:
    try:
        key = load_pem_public_key(pem)
    except ValueError as exc:
        raise ValueError(f"{path} is not a PEM public key ({exc})") from exc
    if not isinstance(key, _KEY_TYPES[kind]):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an {kind} public key")
    return key


def _jwks(data: bytes, kind: str, path: str) -> list[tuple[str | None, Any]]:
    try:
        keys = json.loads(data)["keys"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a JWKS file (a JSON object with 'keys')") from exc
    found: list[tuple[str | None, Any]] = []
    for index, entry in enumerate(keys):
        if not isinstance(entry, dict) or entry.get("kty") != kind:
            continue  # keys of another kind serve other algorithms
        if "d" in entry:
            raise ValueError(f"{path}: key {index} is a private key; give Shield public keys only")
        try:
            key = jwt.PyJWK(entry).key
        except jwt.PyJWTError as exc:
            raise ValueError(f"{path}: key {index} is not usable: {exc}") from exc
        found.append((entry.get("kid"), key))
    if not found:
        raise ValueError(f"{path} has no {kind} key")
    return found


class JwtAuth(Section):
    bearer: bool = Field(True, description="Read a token from 'Authorization: Bearer ...'.")
    cookie: str | None = Field(None, description="Read a token from this cookie.")
    user_claim: str = Field("sub", description="The claim holding the user id.")
    issuer: str | None = Field(None, description="Required 'iss'.")
    audience: str | None = Field(None, description="Required 'aud' (one of the token's).")
    require_exp: bool = Field(True, description="Refuse tokens without 'exp'.")
    leeway: Duration = Field(30.0, description="Clock skew allowed on exp and nbf.")
    keys: list[JwtKey] = Field(min_length=1, description="Verification keys, each with its algorithms.")


class SignedCookie(Section):
    """A cookie ``<user id><sep><signature>`` signed by the application (itsdangerous Signer or
    TimestampSigner, or Django's signing.Signer)."""

    name: str = Field(description="The cookie's name.")
    style: Literal["itsdangerous", "django"] = Field(
        "itsdangerous", description="itsdangerous: 'value.sig' (sha1); django: 'value:sig' (sha256)."
    )
    secret_env: str | None = Field(None, description="Environment variable holding the signing key.")
    secret_file: str | None = Field(None, description="File holding the signing key.")
    salt: str | None = Field(None, description="Default: the framework's ('itsdangerous.Signer' / Django's).")
    max_age: Duration | None = Field(
        None, description="itsdangerous TimestampSigner cookies ('value.ts.sig'): refuse older ones."
    )
    _secret: bytes = PrivateAttr(b"")

    _env = field_validator("secret_env")(_check_env)
    _file = field_validator("secret_file")(_check_file)

    @model_validator(mode="after")
    def _load(self) -> SignedCookie:
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError("give exactly one of: secret_env, secret_file")
        if self.max_age is not None and self.style != "itsdangerous":
            raise ValueError("max_age applies to style: itsdangerous (TimestampSigner) only")
        self._secret = secret_from(self.secret_env, self.secret_file)
        return self

    @property
    def secret(self) -> bytes:
        return self._secret


class Introspection(Section):
    """Ask the upstream whose an opaque credential is; answers are cached by credential hash."""

    path: str = Field(description="Upstream endpoint, e.g. /api/me; 200 + JSON means authenticated.")
    cookie: str | None = Field(None, description="The session cookie to send it.")
    header: str | None = Field(None, description="Or a header to send it, e.g. Authorization.")
    user_field: str = Field("id", description="The JSON field of the answer holding the user id.")
    ttl: Duration = Field(60.0, description="How long a 'this is user X' answer is reused.")
    negative_ttl: Duration = Field(10.0, description="How long a 401/403 answer is reused.")
    max_entries: int = Field(10000, ge=1, description="Cached answers at most.")
    timeout: Duration = Field(2.0, description="Waiting for the endpoint; past it, anonymous.")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in " \r\n#"):
            raise ValueError(f"invalid introspection path {value!r}: an absolute path like /api/me")
        return value

    @model_validator(mode="after")
    def _credential(self) -> Introspection:
        if self.cookie is None and self.header is None:
            raise ValueError("say which credential to send: cookie, header, or both")
        if self.negative_ttl > self.ttl:
            raise ValueError("negative_ttl must not exceed ttl")
        return self


class Auth(Section):
    jwt: JwtAuth | None = Field(None, description="JSON Web Tokens, verified locally.")
    signed_cookie: SignedCookie | None = Field(None, description="An HMAC-signed session cookie.")
    introspection: Introspection | None = Field(
        None, description="Opaque session ids, checked by the upstream (restart to change)."
    )
    cache_size: int = Field(10000, ge=1, description="Verified tokens and cookies remembered.")
    cache_ttl: Duration = Field(
        300.0, description="Remember a verified token this long at most (never past its exp)."
    )
