"""What device binding costs: checking a bound cookie (every request of a bound
session) and verifying a DBSC proof (each registration and refresh).

Run from the repository root: ``python benchmarks/device_bound.py``. It prints
microseconds per call, the best of five rounds.
"""

from __future__ import annotations

import sys
import timeit
import typing as t
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flask_serversession.binding import Binding
from flask_serversession.binding import refresh_proof
from flask_serversession.binding import registration_proof
from flask_serversession.binding import Signer
from tests.support.dbsc_client import DeviceKey


def best_us(call: t.Callable[[], object], number: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


def proofs(alg: str, signer: Signer) -> tuple[float, float]:
    """Microseconds to verify a registration proof and a refresh proof signed with ``alg``."""
    key = DeviceKey(alg)
    challenge = signer.challenge("refresh", "binding")
    registration = key.proof(challenge, jwk=key.jwk)
    jwk, verified_alg, _ = registration_proof(registration)
    binding = Binding("binding", jwk, verified_alg, 0, 0)
    refresh = key.proof(challenge)
    return (
        best_us(lambda: registration_proof(registration), 300),
        best_us(lambda: refresh_proof(refresh, binding), 300),
    )


def main() -> None:
    signer = Signer(lambda: ["k" * 64])
    cookie = signer.cookie("binding", timedelta(minutes=10))
    check = best_us(lambda: signer.cookie_valid("binding", cookie), 20000)
    print(f"bound cookie check: {check:.1f} µs")
    for alg in ("ES256", "RS256"):
        registration, refresh = proofs(alg, signer)
        print(f"{alg}: registration proof {registration:.0f} µs, refresh proof {refresh:.0f} µs")


if __name__ == "__main__":
    main()
