"""Who a request proves to be: every way a credential can fail leaves it anonymous.

Keys are generated per test run (cryptography); nothing secret is committed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from itsdangerous import Signer, TimestampSigner
from multidict import CIMultiDict, CIMultiDictProxy

from shield.config import parse_config
from shield.config.auth import Auth
from shield.decide.credentials import Authenticator, TtlCache, cookie_value
from shield.decide.identity import Identity
from shield.errors import ConfigError

SECRET = "test-only-hmac-secret-" + "0123456789abcdef" * 3  # 70 bytes: enough for HS512


def pem(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def keys(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("JWT_SECRET", SECRET)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "rsa.pem").write_bytes(pem(rsa_key.public_key()))
    (tmp_path / "ec.pem").write_bytes(pem(ec_key.public_key()))
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(ed_key.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "ed-1", "use": "sig"}]}))
    return {"rsa": rsa_key, "ec": ec_key, "ed": ed_key, "dir": tmp_path}


def auth_config(keys: dict[str, Any], **jwt_options: Any) -> Auth:
    folder = keys["dir"]
    return Auth.model_validate(
        {
            "jwt": {
                "cookie": "token",
                "keys": [
                    {"algorithms": ["HS256", "HS512"], "secret_env": "JWT_SECRET"},
                    {"algorithms": ["RS256"], "public_key_file": str(folder / "rsa.pem")},
                    {"algorithms": ["ES256"], "public_key_file": str(folder / "ec.pem")},
                    {"algorithms": ["EdDSA"], "jwks_file": str(folder / "jwks.json")},
                ],
                **jwt_options,
            }
        }
    )


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 600, **extra}


def bearer(token: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {token}"}))


def identify(auth: Auth, headers: CIMultiDictProxy[str]) -> Identity:
    return Authenticator(auth, time.time).identify(headers, "192.0.2.1")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_valid_tokens_of_each_kind_of_key(keys: dict[str, Any]) -> None:
    auth = auth_config(keys)
    tokens = {
        "HS256": jwt.encode(claims(), SECRET, algorithm="HS256"),
        "HS512": jwt.encode(claims(), SECRET, algorithm="HS512"),
        "RS256": jwt.encode(claims(), keys["rsa"], algorithm="RS256"),
        "ES256": jwt.encode(claims(), keys["ec"], algorithm="ES256"),
        "EdDSA": jwt.encode(claims(), keys["ed"], algorithm="EdDSA", headers={"kid": "ed-1"}),
    }
    for alg, token in tokens.items():
        identity = identify(auth, bearer(token))
        assert (identity.authenticated, identity.user) == (True, "alice"), alg
        assert f"verified ({alg}" in identity.how


def forged_with_public_key_as_hmac_secret(public_pem: bytes) -> str:
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def unsigned(payload: dict[str, Any]) -> str:
    return f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64(json.dumps(payload).encode())}."


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda k: unsigned(claims()), "algorithm 'none'"),
        (lambda k: jwt.encode(claims(), "another-test-secret-" * 4, algorithm="HS256"), "not signed"),
        (
            lambda k: jwt.encode(claims(), rsa.generate_private_key(65537, 2048), algorithm="RS256"),
            "not signed",
        ),
        (lambda k: jwt.encode(claims(exp=int(time.time()) - 120), SECRET, algorithm="HS256"), "expired"),
        (
            lambda k: jwt.encode(claims(nbf=int(time.time()) + 600), SECRET, algorithm="HS256"),
            "not yet valid",
        ),
        (lambda k: jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"), '"exp"'),
        (lambda k: jwt.encode(claims(sub=""), SECRET, algorithm="HS256"), "no usable 'sub'"),
        (lambda k: forged_with_public_key_as_hmac_secret(pem(k["rsa"].public_key())), "not signed"),
        (lambda k: jwt.encode(claims(), SECRET, algorithm="HS384"), "algorithm 'HS384'"),
        (lambda k: "not.a.token", "malformed"),
    ],
    ids=[
        "none",
        "wrong-secret",
        "wrong-rsa-key",
        "expired",
        "nbf",
        "no-exp",
        "no-sub",
        "alg-confusion",
        "unpinned-alg",
        "junk",
    ],
)
def test_every_failure_is_anonymous(keys: dict[str, Any], make: Any, why: str) -> None:
    identity = identify(auth_config(keys), bearer(make(keys)))
    assert not identity.authenticated
    assert identity.user is None
    assert why in identity.how


def test_public_key_as_hmac_secret_is_refused_even_if_it_is_the_configured_secret(
    keys: dict[str, Any], tmp_path: Path
) -> None:
    # An operator who points an HS256 key at the RSA public key file: PyJWT refuses to use a
    # PEM key as an HMAC secret, so the forged token still fails.
    auth = Auth.model_validate(
        {"jwt": {"keys": [{"algorithms": ["HS256"], "secret_file": str(keys["dir"] / "rsa.pem")}]}}
    )
    forged = forged_with_public_key_as_hmac_secret(pem(keys["rsa"].public_key()))
    assert not identify(auth, bearer(forged)).authenticated


def test_issuer_and_audience(keys: dict[str, Any]) -> None:
    auth = auth_config(keys, issuer="https://id.example", audience="shop")
    good = jwt.encode(claims(iss="https://id.example", aud=["shop", "blog"]), SECRET, algorithm="HS256")
    assert identify(auth, bearer(good)).authenticated
    for wrong in (claims(iss="https://evil.example", aud="shop"), claims(iss="https://id.example", aud="x")):
        refused = identify(auth, bearer(jwt.encode(wrong, SECRET, algorithm="HS256")))
        assert not refused.authenticated
        assert "refused" in refused.how


def test_leeway_and_user_claim(keys: dict[str, Any]) -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 5, uid=42), SECRET, algorithm="HS256")
    assert identify(auth_config(keys, leeway="30s", user_claim="uid"), bearer(token)).user == "42"
    assert not identify(auth_config(keys, leeway=0), bearer(token)).authenticated


def test_token_from_a_cookie(keys: dict[str, Any]) -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    headers = CIMultiDictProxy(CIMultiDict({"Cookie": f"theme=dark; token={token}; x=1"}))
    assert identify(auth_config(keys), headers).user == "alice"
    assert not identify(auth_config(keys, bearer=False), bearer(token)).authenticated


def test_a_verified_token_is_a_dictionary_lookup_until_its_exp(
    keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [time.time()]
    authenticator = Authenticator(auth_config(keys, leeway=0), lambda: now[0])
    exp = int(now[0]) + 60
    token = jwt.encode(claims(exp=exp), SECRET, algorithm="HS256")
    first = authenticator.identify(bearer(token), "192.0.2.1")
    calls = []
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(a) or {})
    assert authenticator.identify(bearer(token), "192.0.2.1") is first
    assert calls == []
    now[0] = exp + 1  # the cache never outlives the token
    assert not authenticator.identify(bearer(token), "192.0.2.1").authenticated
    assert len(calls) == 1


def test_refused_tokens_are_remembered_briefly(keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    authenticator = Authenticator(auth_config(keys), lambda: now[0])
    bad = jwt.encode(claims(), "another-test-secret-" * 4, algorithm="HS256")
    authenticator.identify(bearer(bad), "192.0.2.1")
    calls = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    authenticator.identify(bearer(bad), "192.0.2.1")
    assert calls == []
    now[0] += 11
    authenticator.identify(bearer(bad), "192.0.2.1")
    assert calls


def test_the_cache_is_bounded() -> None:
    cache = TtlCache(3)
    for n in range(5):
        cache.put(str(n), Identity(True, str(n)), 100.0)
    assert len(cache) == 3
    assert cache.get("0", 1.0) is None
    assert cache.get("4", 1.0) == Identity(True, "4")
    assert cache.get("4", 100.0) is None


def test_cookie_value() -> None:
    assert cookie_value("a=1; session=abc.def; b=2", "session") == "abc.def"
    assert cookie_value("xsession=evil; session=good", "session") == "good"
    assert cookie_value('session="quoted"', "session") == "quoted"
    assert cookie_value("other=1", "session") is None


def cookie_auth(monkeypatch: pytest.MonkeyPatch, **options: Any) -> Auth:
    monkeypatch.setenv("SESSION_KEY", "cookie-signing-key")
    return Auth.model_validate({"signed_cookie": {"name": "session", "secret_env": "SESSION_KEY", **options}})


def with_cookie(value: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({"Cookie": f"session={value}"}))


def test_itsdangerous_signed_cookie(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = cookie_auth(monkeypatch)
    good = Signer("cookie-signing-key").sign("bob").decode()
    assert identify(auth, with_cookie(good)).user == "bob"
    for bad in ("bob", good.replace("bob", "eve"), good[:-2], Signer("other-key").sign("bob").decode()):
        identity = identify(auth, with_cookie(bad))
        assert not identity.authenticated
        assert "bad signature" in identity.how


def test_django_signed_cookie(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = cookie_auth(monkeypatch, style="django")
    # django.core.signing.Signer: salted_hmac(salt + "signer", value, key, sha256), unpadded base64.
    key = hashlib.sha256(b"django.core.signing.Signersigner" + b"cookie-signing-key").digest()
    signature = b64(hmac.new(key, b"carol", hashlib.sha256).digest())
    assert identify(auth, with_cookie(f"carol:{signature}")).user == "carol"
    assert not identify(auth, with_cookie(f"mallory:{signature}")).authenticated


def test_timestamped_cookie_max_age(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = cookie_auth(monkeypatch, max_age="1h")

    class Yesterday(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 86400

    assert (
        identify(auth, with_cookie(TimestampSigner("cookie-signing-key").sign("dan").decode())).user == "dan"
    )
    old = identify(auth, with_cookie(Yesterday("cookie-signing-key").sign("dan").decode()))
    assert not old.authenticated
    assert "expired" in old.how


def test_no_credentials(keys: dict[str, Any]) -> None:
    identity = identify(auth_config(keys), CIMultiDictProxy(CIMultiDict()))
    assert identity.how == "no credentials (looked for: Authorization: Bearer, cookie token)"


BASE = "upstream: http://127.0.0.1:8000\nauth:\n"


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (
            "  jwt:\n    keys:\n      - algorithms: [HS256]\n        secret_env: SHIELD_TEST_UNSET\n",
            "<config>:6:21: auth.jwt.keys[1].secret_env: environment variable SHIELD_TEST_UNSET is not set",
        ),
        (
            "  jwt:\n    keys:\n      - algorithms: [RS256]\n        public_key_file: /nonexistent/key.pem\n",
            "<config>:6:26: auth.jwt.keys[1].public_key_file: cannot read /nonexistent/key.pem: "
            "No such file or directory",
        ),
        (
            "  jwt:\n    keys:\n      - algorithms: [HS256, none]\n        secret_env: HOME\n",
            "<config>:5:21: auth.jwt.keys[1].algorithms: unknown algorithm 'none': use one of",
        ),
        (
            "  jwt:\n    keys:\n      - algorithms: [RS256]\n        secret_env: HOME\n",
            "<config>:5:9: auth.jwt.keys[1]: RS256 needs public_key_file or jwks_file, not secret_env",
        ),
        (
            "  signed_cookie:\n    name: s\n    secret_file: /nonexistent/secret\n",
            "<config>:5:18: auth.signed_cookie.secret_file: cannot read /nonexistent/secret",
        ),
        (
            "  introspection:\n    path: /api/me\n",
            "<config>:4:5: auth.introspection: say which credential to send: cookie, header, or both",
        ),
    ],
)
def test_bad_auth_config_points_at_the_line(auth: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + auth)
    assert str(caught.value.issues[0]).startswith(expected)


def test_a_public_key_file_must_hold_the_kind_of_key_its_algorithms_need(keys: dict[str, Any]) -> None:
    text = (
        BASE
        + f"  jwt:\n    keys:\n      - algorithms: [ES256]\n        public_key_file: {keys['dir']}/rsa.pem\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert "not an EC public key" in str(caught.value)
