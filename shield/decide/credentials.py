"""Who a request proves to be: JWTs and signed session cookies, verified locally. Pure, sync.

A verified credential is remembered by the header that carried it (bounded LRU, never past the
token's ``exp``), so a known user costs a dictionary lookup rather than a signature check; a
refused one is remembered briefly, so replaying a bad token is cheap too.

Every failure (algorithm ``none``, a wrong signature, an expired or not-yet-valid token, a
wrong issuer or audience, an HMAC token signed with the public key) makes the request
anonymous, never an error: Shield only decides how much to trust a request, the application
still authenticates it.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import jwt
from itsdangerous import BadSignature, SignatureExpired, Signer, TimestampSigner

from shield.config.auth import Auth, JwtAuth, SignedCookie
from shield.decide.identity import Identity

# A refused credential is remembered this long: long enough to make replaying one cheap, short
# enough that a token whose nbf was just ahead soon passes.
REFUSED_TTL = 10.0

_STYLES = {
    # itsdangerous.Signer defaults; Django's signing.Signer derives its key the same way.
    "itsdangerous": (".", "itsdangerous.Signer", hashlib.sha1),
    "django": (":", "django.core.signing.Signer", hashlib.sha256),
}


class TtlCache:
    """A bounded LRU of values that each expire at their own time."""

    __slots__ = ("_entries", "_size")

    def __init__(self, size: int) -> None:
        self._entries: OrderedDict[str, tuple[float, Identity]] = OrderedDict()
        self._size = size

    def get(self, key: str, now: float) -> Identity | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: str, value: Identity, expires: float) -> None:
        entries = self._entries
        entries[key] = (expires, value)
        entries.move_to_end(key)
        if len(entries) > self._size:
            entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def cookie_value(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a Cookie header, without parsing the rest of it."""
    prefix = name + "="
    start = header.find(prefix)
    while start >= 0:
        if start == 0 or header[start - 1] in " ;":
            begin = start + len(prefix)
            end = header.find(";", begin)
            value = (header[begin:] if end < 0 else header[begin:end]).strip()
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
        start = header.find(prefix, start + 1)
    return None


def _bearer(header: str) -> str | None:
    if header[:7].lower() != "bearer ":
        return None
    return header[7:].strip() or None


class _JwtKey:
    __slots__ = ("algorithms", "key", "kid", "label")

    def __init__(self, algorithms: list[str], kid: str | None, key: Any, label: str) -> None:
        self.algorithms = algorithms
        self.kid = kid
        self.key = key
        self.label = label


class JwtVerifier:
    """Verifies a token against the configured keys; a key serves only its pinned algorithms."""

    def __init__(self, config: JwtAuth) -> None:
        self.config = config
        self.keys = [
            _JwtKey(spec.algorithms, kid, material, f"key {index}" + (f" kid {kid!r}" if kid else ""))
            for index, spec in enumerate(config.keys)
            for kid, material in spec.keys
        ]
        self.allowed = frozenset(a for key in self.keys for a in key.algorithms)
        self.options: Any = {
            "require": ["exp"] if config.require_exp else [],
            "verify_aud": config.audience is not None,
            "verify_iss": config.issuer is not None,
        }

    def verify(self, token: str, source: str) -> tuple[Identity, float | None]:
        """The identity a token proves, and its exp (None when refused or without exp)."""
        config = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            return _refused(f"JWT from {source} is malformed: {error}"), None
        alg = header.get("alg")
        if alg not in self.allowed:
            return _refused(
                f"JWT from {source} uses algorithm {alg!r}, not one of {sorted(self.allowed)}"
            ), None
        kid = header.get("kid")
        keys = [
            k for k in self.keys if alg in k.algorithms and (k.kid is None or kid is None or k.kid == kid)
        ]
        reason = f"JWT from {source}: no configured key has kid {kid!r}"
        for key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=key.algorithms,
                    audience=config.audience,
                    issuer=config.issuer,
                    leeway=config.leeway,
                    options=self.options,
                )
            except jwt.InvalidSignatureError:
                reason = f"JWT from {source} is not signed by any configured {alg} key"
                continue  # another key of the same algorithm may have signed it (rotation)
            except (jwt.PyJWTError, ValueError, TypeError) as error:
                return _refused(f"JWT from {source} refused: {error}"), None
            user = claims.get(config.user_claim)
            if isinstance(user, bool) or not isinstance(user, str | int) or user == "":
                return _refused(f"JWT from {source} has no usable {config.user_claim!r} claim"), None
            exp = claims.get("exp")
            how = f"JWT from {source}, verified ({alg}, {key.label}), user from claim {config.user_claim!r}"
            return Identity(True, str(user), how), float(exp) if isinstance(exp, int | float) else None
        return _refused(reason), None


class CookieVerifier:
    """Verifies an HMAC-signed session cookie ``<user id><sep><signature>``."""

    def __init__(self, config: SignedCookie) -> None:
        sep, salt, digest = _STYLES[config.style]
        signer_class = TimestampSigner if config.max_age is not None else Signer
        self.signer = signer_class(
            config.secret,
            salt=config.salt if config.salt is not None else salt,
            sep=sep,
            key_derivation="django-concat",
            digest_method=digest,
        )
        self.max_age = config.max_age
        self.name = config.name

    def verify(self, value: str) -> tuple[Identity, float | None]:
        source = f"cookie {self.name}"
        try:
            if isinstance(self.signer, TimestampSigner):
                assert self.max_age is not None
                max_age = math.ceil(self.max_age)
                raw, signed_at = self.signer.unsign(value, max_age=max_age, return_timestamp=True)
                expires: float | None = signed_at.timestamp() + max_age
            else:
                raw, expires = self.signer.unsign(value), None
        except SignatureExpired:
            return _refused(f"signed {source} has expired"), None
        except BadSignature:
            return _refused(f"signed {source} has a bad signature"), None
        try:
            user = raw.decode("utf-8")
        except UnicodeDecodeError:
            return _refused(f"signed {source} does not hold a text user id"), None
        if not user:
            return _refused(f"signed {source} holds no user id"), None
        return Identity(True, user, f"signed {source}, verified"), expires


def _refused(why: str) -> Identity:
    return Identity(False, None, why)


class Authenticator:
    """The ``IdentityResolver`` for an ``auth:`` section: JWT first, then the signed cookie.

    ``now`` is wall-clock time (token expiry is an absolute time), injected for tests.
    """

    def __init__(self, config: Auth, now: Callable[[], float]) -> None:
        self.now = now
        self.ttl = config.cache_ttl
        self.jwt = JwtVerifier(config.jwt) if config.jwt is not None else None
        self.bearer = config.jwt is not None and config.jwt.bearer
        self.jwt_cookie = config.jwt.cookie if config.jwt is not None else None
        self.cookie = CookieVerifier(config.signed_cookie) if config.signed_cookie is not None else None
        self.verified = TtlCache(config.cache_size)
        self.refused = TtlCache(max(1, config.cache_size // 4))
        self.reads_cookies = self.jwt_cookie is not None or self.cookie is not None
        looked = ["Authorization: Bearer"] if self.bearer else []
        looked += [f"cookie {name}" for name in (self.jwt_cookie, self.cookie and self.cookie.name) if name]
        self.nothing = Identity(False, None, f"no credentials (looked for: {', '.join(looked) or 'none'})")

    def identify(self, headers: Mapping[str, str], client_ip: str) -> Identity:
        # Results are remembered by the whole header value, so a known client costs two dict
        # lookups and no parsing: no slicing of the token, no splitting of the Cookie header.
        now = self.now()
        refused: Identity | None = None
        if self.bearer and (authorization := headers.get("Authorization")) is not None:
            identity = self._known(authorization, now) or self._check_bearer(authorization, now)
            if identity.authenticated:
                return identity
            refused = identity
        if self.reads_cookies and (cookies := headers.get("Cookie")) is not None:
            identity = self._known(cookies, now) or self._check_cookies(cookies, now)
            if identity.authenticated:
                return identity
            if identity is not self.nothing:
                refused = _worse(refused, identity)
        return refused or self.nothing

    def _known(self, header: str, now: float) -> Identity | None:
        known = self.verified.get(header, now)
        return known if known is not None else self.refused.get(header, now)

    def _check_bearer(self, authorization: str, now: float) -> Identity:
        token = _bearer(authorization)
        if token is None:  # another scheme (Basic...): no credential of ours
            self.refused.put(authorization, self.nothing, now + REFUSED_TTL)
            return self.nothing
        assert self.jwt is not None
        identity, exp = self.jwt.verify(token, "Authorization: Bearer")
        self._remember(authorization, identity, exp, now)
        return identity

    def _check_cookies(self, cookies: str, now: float) -> Identity:
        refused: Identity | None = None
        if self.jwt is not None and self.jwt_cookie is not None:
            token = cookie_value(cookies, self.jwt_cookie)
            if token:
                identity, exp = self.jwt.verify(token, f"cookie {self.jwt_cookie}")
                if identity.authenticated:
                    self._remember(cookies, identity, exp, now)
                    return identity
                refused = identity
        if self.cookie is not None:
            value = cookie_value(cookies, self.cookie.name)
            if value:
                identity, expires = self.cookie.verify(value)
                if identity.authenticated:
                    self._remember(cookies, identity, expires, now)
                    return identity
                refused = _worse(refused, identity)
        result = refused or self.nothing
        self._remember(cookies, result, None, now)
        return result

    def _remember(self, header: str, identity: Identity, expires: float | None, now: float) -> None:
        if not identity.authenticated:
            self.refused.put(header, identity, now + REFUSED_TTL)
            return
        until = now + self.ttl if expires is None else min(expires, now + self.ttl)
        if until > now:
            self.verified.put(header, identity, until)


def _worse(first: Identity | None, second: Identity) -> Identity:
    """Both refusals, for ``shield explain``: the first credential's reason, then the next."""
    if first is None:
        return second
    return Identity(False, None, f"{first.how}; {second.how}")
