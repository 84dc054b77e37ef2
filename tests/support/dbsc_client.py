"""A DBSC client that follows the W3C draft, as Chromium 156 does, over Flask's test client.

It holds a real ES256 (P-256) or RS256 (2048-bit RSA) key made with
cryptography and signs its proofs with PyJWT: the registration proof carries
the public key in its ``jwk`` header, a refresh proof does not.
"""

from __future__ import annotations

import re
import typing as t

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa
from flask.testing import FlaskClient
from jwt.algorithms import ECAlgorithm
from jwt.algorithms import RSAAlgorithm
from werkzeug.test import TestResponse

HTTPS = "https://localhost"
_OFFER = re.compile(r'\(([A-Z0-9 ]+)\);path="([^"]+)";challenge="([^"]+)"')
_CHALLENGE = re.compile(r'"([^"]+)";id="([^"]+)"')


class DeviceKey:
    """A device's key pair and the proofs it signs."""

    def __init__(self, alg: str = "ES256") -> None:
        self.alg = alg
        if alg == "ES256":
            self.private: t.Any = ec.generate_private_key(ec.SECP256R1())
            self.jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)

    def proof(self, challenge: str, *, jwk: dict[str, t.Any] | None = None) -> str:
        """A proof over ``challenge``; ``jwk`` goes into the header (registration)."""
        headers: dict[str, t.Any] = {"typ": "dbsc+jwt"}
        if jwk is not None:
            headers["jwk"] = jwk
        return jwt.encode({"jti": challenge}, self.private, algorithm=self.alg, headers=headers)


def offer_of(response: TestResponse) -> tuple[list[str], str, str] | None:
    """The algorithms, registration path and challenge a response offers, if it does."""
    header = response.headers.get("Secure-Session-Registration")
    if header is None:
        return None
    match = _OFFER.fullmatch(header)
    assert match is not None, header
    return match[1].split(), match[2], match[3]


def challenge_of(response: TestResponse) -> tuple[str, str]:
    """The challenge and the session identifier of a ``Secure-Session-Challenge`` header."""
    match = _CHALLENGE.fullmatch(response.headers["Secure-Session-Challenge"])
    assert match is not None
    return match[1], match[2]


class DbscBrowser:
    """A browser that supports DBSC: registers when offered, refreshes when asked.

    :param client: the Flask test client whose cookie jar it uses.
    :param key: its device key.
    """

    def __init__(self, client: FlaskClient, key: DeviceKey | None = None) -> None:
        self.client = client
        self.key = key or DeviceKey()
        self.identifier: str | None = None
        self.refresh_url: str | None = None
        self.instructions: dict[str, t.Any] | None = None
        #: The challenge the last answer gave ahead for the next refresh, if it did.
        self.cached_challenge: str | None = None
        #: How many requests the last :meth:`refresh` made.
        self.refresh_requests = 0

    def register(self, response: TestResponse) -> TestResponse:
        """Answer the offer on ``response`` (a sign-in's) with a registration proof."""
        offer = offer_of(response)
        assert offer is not None, "the sign-in response made no offer"
        algorithms, path, challenge = offer
        assert self.key.alg in algorithms
        proof = self.key.proof(challenge, jwk=self.key.jwk)
        answer = self.client.post(
            path, base_url=HTTPS, headers={"Secure-Session-Response": f'"{proof}"'}
        )
        if answer.status_code == 200:
            self.instructions = answer.get_json()
            self.identifier = self.instructions["session_identifier"]
            self.refresh_url = self.instructions["refresh_url"]
            self._keep_challenge(answer)
        return answer

    def _keep_challenge(self, answer: TestResponse) -> None:
        """Keep the challenge ``answer`` gives for this session, as the draft's cached challenge."""
        if "Secure-Session-Challenge" in answer.headers:
            challenge, identifier = challenge_of(answer)
            if identifier == self.identifier:
                self.cached_challenge = challenge

    def ask_challenge(self) -> TestResponse:
        """The first refresh request: no proof, only the session identifier."""
        assert self.refresh_url is not None
        return self.client.post(
            self.refresh_url,
            base_url=HTTPS,
            headers={"Sec-Secure-Session-Id": f'"{self.identifier}"'},
        )

    def send_proof(self, proof: str) -> TestResponse:
        assert self.refresh_url is not None
        answer = self.client.post(
            self.refresh_url,
            base_url=HTTPS,
            headers={
                "Sec-Secure-Session-Id": f'"{self.identifier}"',
                "Secure-Session-Response": f'"{proof}"',
            },
        )
        if answer.status_code == 200:
            self._keep_challenge(answer)
        return answer

    def refresh(self, *, use_cached: bool = True) -> TestResponse:
        """Refresh as the draft says: sign the cached challenge if there is one, else ask;
        on a 403 with a challenge, sign that one and retry.

        :param use_cached: False to ask first, as a browser that keeps no challenge does.
        """
        self.refresh_requests = 1
        challenge = self.cached_challenge if use_cached else None
        self.cached_challenge = None
        if challenge is not None:
            first = self.send_proof(self.key.proof(challenge))
            if first.status_code != 403 or "Secure-Session-Challenge" not in first.headers:
                return first
        else:
            first = self.ask_challenge()
            assert first.status_code == 403, first.get_data(as_text=True)
        challenge, identifier = challenge_of(first)
        assert identifier == self.identifier
        self.refresh_requests = 2
        return self.send_proof(self.key.proof(challenge))
