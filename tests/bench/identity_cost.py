"""Per-request cost of finding out who is asking: client IP and identity, as the gatekeeper does.

Runs, in-process and without sockets, what the gatekeeper runs per request before matching a
rule (``ClientResolver.resolve`` then the identity resolver's ``identify``), timeit-style, for:

- anonymous, no ``auth:`` configured (the resolver is ``NoIdentity``): the baseline;
- anonymous with ``auth:`` configured but no credential sent;
- a verified JWT (HS256 and RS256) once cached, from ``Authorization: Bearer``;
- a verified signed session cookie once cached, in a Cookie header with three other cookies;
- behind a trusted proxy, a three-hop X-Forwarded-For walk.

It prints nanoseconds per request (best and median of the repeats) and the extra cost over the
baseline. Usage:

    .venv/bin/python tests/bench/identity_cost.py [--number 200000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import timeit
from collections.abc import Callable

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from itsdangerous import Signer
from multidict import CIMultiDict, CIMultiDictProxy

from shield.config.auth import Auth
from shield.decide.client_address import ClientResolver
from shield.decide.credentials import Authenticator
from shield.decide.identity import IdentityResolver, NoIdentity

SECRET = "bench-secret-" + "x" * 64


def headers(**extra: str) -> CIMultiDictProxy[str]:
    base = {"Host": "shop.example", "User-Agent": "wrk/4", "Accept": "*/*"}
    return CIMultiDictProxy(CIMultiDict({**base, **{k.replace("_", "-"): v for k, v in extra.items()}}))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--number", type=int, default=200_000, help="requests per measurement")
    parser.add_argument("--repeat", type=int, default=7, help="measurements per case")
    args = parser.parse_args()

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem_path = f"/tmp/shield-bench-{os.getpid()}.pem"
    with open(pem_path, "wb") as file:
        file.write(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    os.environ["SHIELD_BENCH_JWT"] = SECRET
    os.environ["SHIELD_BENCH_COOKIE"] = SECRET
    auth = Auth.model_validate(
        {
            "jwt": {
                "cookie": "token",
                "keys": [
                    {"algorithms": ["HS256"], "secret_env": "SHIELD_BENCH_JWT"},
                    {"algorithms": ["RS256"], "public_key_file": pem_path},
                ],
            },
            "signed_cookie": {"name": "session", "secret_env": "SHIELD_BENCH_COOKIE"},
        }
    )
    os.unlink(pem_path)
    claims = {"sub": "alice", "exp": int(time.time()) + 3600}
    hs256 = jwt.encode(claims, SECRET, algorithm="HS256")
    rs256 = jwt.encode(claims, key, algorithm="RS256")
    cookie = Signer(SECRET).sign("alice").decode()

    no_auth: IdentityResolver = NoIdentity()
    with_auth = Authenticator(auth, time.time)
    direct = ClientResolver()
    behind = ClientResolver(["10.0.0.0/8"])

    def case(
        resolver: IdentityResolver, clients: ClientResolver, peer: str, request: CIMultiDictProxy[str]
    ) -> Callable[[], object]:
        def identify() -> object:
            client = clients.resolve(peer, request)
            return resolver.identify(request, client.ip)

        return identify

    cases = {
        "anonymous, no auth configured (baseline)": case(no_auth, direct, "192.0.2.1", headers()),
        "anonymous, auth configured, no credential": case(with_auth, direct, "192.0.2.1", headers()),
        "JWT HS256 (Bearer), cached": case(
            with_auth, direct, "192.0.2.1", headers(Authorization=f"Bearer {hs256}")
        ),
        "JWT RS256 (Bearer), cached": case(
            with_auth, direct, "192.0.2.1", headers(Authorization=f"Bearer {rs256}")
        ),
        "signed cookie (4 cookies), cached": case(
            with_auth, direct, "192.0.2.1", headers(Cookie=f"theme=dark; lang=en; session={cookie}; ab=b")
        ),
        "anonymous behind a trusted proxy, 3-hop XFF": case(
            no_auth, behind, "10.0.0.2", headers(X_Forwarded_For="6.6.6.6, 203.0.113.9, 10.1.1.1")
        ),
    }
    for label, identify in cases.items():
        result = identify()  # the first call verifies and caches
        if "cached" in label:
            assert getattr(result, "authenticated", False), (label, result)

    def uncached(token: str) -> float:
        fresh = Authenticator(auth, time.time)
        request = headers(Authorization=f"Bearer {token}")
        start = time.perf_counter()
        fresh.identify(request, "192.0.2.1")
        return (time.perf_counter() - start) * 1e9

    print(f"identify cost per request; {args.number} requests per measurement, {args.repeat} repeats")
    baseline: float | None = None
    for label, identify in cases.items():
        times = timeit.repeat(identify, number=args.number, repeat=args.repeat)
        best = min(times) / args.number * 1e9
        median = statistics.median(times) / args.number * 1e9
        baseline = best if baseline is None else baseline
        extra = f"{best - baseline:+7.0f} ns" if label != next(iter(cases)) else "    (baseline)"
        print(f"  {label:<46} {best:7.0f} ns best {median:7.0f} ns median  {extra}")
    print(f"  {'first sight of a JWT (signature check), HS256':<46} {uncached(hs256):7.0f} ns once")
    print(f"  {'first sight of a JWT (signature check), RS256':<46} {uncached(rs256):7.0f} ns once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
