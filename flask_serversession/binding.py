"""Device binding (DBSC): the state a bound session keeps, its challenges and its bound cookie.

A bound session's record holds, under :data:`BINDING_KEY`, a random binding
id (the DBSC ``session_identifier``), the public key the browser registered
and when the last accepted challenge was issued. Challenges and bound
cookies are not stored: each is a time, a nonce and an HMAC with the app's
secret key over what it is bound to (the storage key for a registration,
the binding id for a refresh or a cookie). None of them holds or reveals
the session id, the token or the storage key. A challenge is accepted once:
the record keeps when the last accepted one was issued, and only a later one
passes, so a replayed proof, or an older challenge, is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import time
import typing as t
from dataclasses import dataclass
from datetime import timedelta

if t.TYPE_CHECKING:
    import jwt

    from .serialization import SessionSerializer

#: The stored key of a bound session's binding state.
BINDING_KEY = "_serversession_dbsc"
#: The signature algorithms offered and accepted, most preferred first.
ALGORITHMS = ("ES256", "RS256")
#: How long a challenge may be answered after it was issued.
CHALLENGE_LIFETIME = timedelta(minutes=5)
#: How long after a binding is made a request that brings no bound cookie at
#: all still opens the session: the browser sends the page it was redirected
#: to after the sign-in while it registers, before the answer gives it the cookie.
REGISTRATION_GRACE = timedelta(seconds=10)
#: How far ahead of this server's clock a challenge's time may be: the clock
#: of the server that issued it may run ahead of this one's by that much.
CLOCK_SKEW = timedelta(seconds=30)
#: The JOSE ``typ`` of a DBSC proof.
PROOF_TYPE = "dbsc+jwt"
# The public members of the key types each algorithm signs with.
_PUBLIC_MEMBERS = {"ES256": ("kty", "crv", "x", "y"), "RS256": ("kty", "n", "e")}
_KEY_TYPES = {"ES256": "EC", "RS256": "RSA"}
_SHORTEST_RSA_BITS = 2048
_MAC_CHARS = 43
_NS = 1_000_000_000


class ProofError(Exception):
    """A DBSC proof, challenge or bound cookie is not acceptable; the message says why."""


class StaleChallenge(ProofError):
    """A challenge issued here for this session, answered too late."""


@dataclass(frozen=True)
class Binding:
    """The binding of one session to one device key.

    :param id: the DBSC ``session_identifier``: random, unrelated to the session id.
    :param jwk: the registered public key, as a JWK of its public members.
    :param alg: ``"ES256"`` or ``"RS256"``.
    :param proved: when the last accepted challenge was issued (ns since the epoch).
    :param bound_at: when the registration was accepted (ns since the epoch).
    """

    id: str
    jwk: dict[str, str]
    alg: str
    proved: int
    bound_at: int

    def in_grace(self, now: int) -> bool:
        """Whether ``now`` (ns since the epoch) is within :data:`REGISTRATION_GRACE` of binding."""
        return now - self.bound_at <= REGISTRATION_GRACE.total_seconds() * _NS


def read(serializer: SessionSerializer, meta: t.Mapping[str, str]) -> Binding | None:
    """The binding kept in a record's metadata, None for an unbound session.

    :raises ValueError: the stored state is not of the shape written here.
    """
    text = meta.get(BINDING_KEY)
    if text is None:
        return None
    value = serializer.loads(text)
    if type(value) is not list or len(value) != 5:
        raise ValueError(f"the device binding is {value!r}")
    binding_id, jwk, alg, proved, bound_at = value
    if (
        type(binding_id) is not str
        or alg not in ALGORITHMS
        or type(jwk) is not dict
        or set(jwk) != set(_PUBLIC_MEMBERS[alg])
        or not all(type(v) is str for v in jwk.values())
        or type(proved) is not int
        or type(bound_at) is not int
    ):
        raise ValueError("the device binding is not of the shape written here")
    return Binding(binding_id, jwk, alg, proved, bound_at)


def text(serializer: SessionSerializer, binding: Binding) -> str:
    """The stored form of ``binding``."""
    return serializer.dumps(
        [binding.id, binding.jwk, binding.alg, binding.proved, binding.bound_at]
    )


def new_binding_id() -> str:
    return secrets.token_urlsafe(24)


def _mac(keys: t.Sequence[bytes], message: str) -> list[str]:
    """The MAC of ``message`` under each key, newest key last."""
    return [
        base64.urlsafe_b64encode(hmac.new(key, message.encode(), hashlib.sha256).digest())
        .rstrip(b"=")
        .decode()
        for key in keys
    ]


class Signer:
    """Makes and checks challenges and bound cookies with the app's secret keys.

    :param secret_keys: returns the app's keys, oldest first; the last one
        signs, all of them verify (``SECRET_KEY_FALLBACKS``).
    """

    _salt = "flask-serversession dbsc"
    #: Returns the current time in seconds since the epoch.
    clock: t.Callable[[], float] = staticmethod(time.time)

    def __init__(self, secret_keys: t.Callable[[], t.Sequence[str | bytes]]) -> None:
        self._secret_keys = secret_keys

    def _keys(self) -> list[bytes]:
        keys = [k.encode() if isinstance(k, str) else k for k in self._secret_keys() if k]
        if not keys:
            raise RuntimeError(
                "SECRET_KEY is not set: device-bound sessions sign their challenges and"
                " cookies with it. Set app.secret_key."
            )
        return keys

    def _sign(self, purpose: str, subject: str, stamp: int) -> str:
        nonce = secrets.token_urlsafe(16)
        message = f"{self._salt}\x00{purpose}\x00{subject}\x00{stamp}\x00{nonce}"
        return f"{stamp}.{nonce}.{_mac(self._keys()[-1:], message)[0]}"

    def _open(self, purpose: str, subject: str, value: str) -> int:
        """The time in a value signed for ``purpose`` and ``subject``; ProofError if not one."""
        parts = value.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or len(parts[2]) != _MAC_CHARS:
            raise ProofError("it is not of the shape issued here")
        stamp, nonce, mac = parts
        message = f"{self._salt}\x00{purpose}\x00{subject}\x00{stamp}\x00{nonce}"
        if not any(hmac.compare_digest(mac, m) for m in _mac(self._keys(), message)):
            raise ProofError("it was not issued for this session")
        return int(stamp)

    def now(self) -> int:
        """The current time in ns since the epoch, by :attr:`clock`."""
        return int(self.clock() * _NS)

    def challenge(self, purpose: str, subject: str, *, after: int = 0) -> str:
        """A new challenge for a registration (``"register"``) or a refresh (``"refresh"``).

        :param after: a time (ns) it must be issued after, even where the clock
            has not moved on since (a coarse clock, or one server's clock behind another's).
        """
        return self._sign(purpose, subject, max(self.now(), after + 1))

    def challenge_time(
        self,
        purpose: str,
        subject: str,
        challenge: str,
        lifetime: timedelta = CHALLENGE_LIFETIME,
    ) -> int:
        """When a fresh challenge issued for ``subject`` was issued (ns).

        :param lifetime: how long after it was issued it may be answered.
        :raises ProofError: not one issued here for it, or older than ``lifetime``.
        """
        issued = self._open(purpose, subject, challenge)
        age = self.now() - issued
        if not -CLOCK_SKEW.total_seconds() * _NS <= age <= lifetime.total_seconds() * _NS:
            raise StaleChallenge("the challenge is stale")
        return issued

    def cookie(self, binding_id: str, lifetime: timedelta) -> str:
        """A bound cookie's value for the binding ``binding_id``, good for ``lifetime``."""
        # Rounded up: never before the browser drops it (Max-Age counts whole seconds).
        expires = math.ceil(self.clock() + lifetime.total_seconds())
        return self._sign("cookie", binding_id, expires)

    def cookie_valid(self, binding_id: str, value: str | None, *, expired_ok: bool = False) -> bool:
        """Whether ``value`` is an unexpired bound cookie of the binding ``binding_id``.

        :param expired_ok: one issued for it is enough, expired or not.
        """
        if not value:
            return False
        try:
            expires = self._open("cookie", binding_id, value)
        except ProofError:
            return False
        return expired_ok or self.clock() < expires


def _public_jwk(header: t.Mapping[str, t.Any], alg: str) -> dict[str, str]:
    """The public key a registration proof carries in its ``jwk`` header."""
    jwk = header.get("jwk")
    if not isinstance(jwk, dict) or jwk.get("kty") != _KEY_TYPES[alg]:
        raise ProofError(f"its jwk header is not an {_KEY_TYPES[alg]} public key")
    members = _PUBLIC_MEMBERS[alg]
    if not all(isinstance(jwk.get(m), str) for m in members):
        raise ProofError("its jwk header lacks a member of a public key")
    return {m: jwk[m] for m in members}


def _key(jwk: dict[str, str], alg: str) -> jwt.PyJWK:
    import jwt
    from jwt.algorithms import RSAAlgorithm

    try:
        key = jwt.PyJWK(dict(jwk), algorithm=alg)
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as e:
        raise ProofError(f"its key is not usable: {e}") from e
    if alg == "ES256" and jwk.get("crv") != "P-256":
        raise ProofError("its key is not on the P-256 curve that ES256 needs")
    if alg == "RS256" and RSAAlgorithm.from_jwk(dict(jwk)).key_size < _SHORTEST_RSA_BITS:
        raise ProofError(f"its RSA key is shorter than {_SHORTEST_RSA_BITS} bits")
    return key


def _claims(proof: str, key: jwt.PyJWK, alg: str) -> dict[str, t.Any]:
    import jwt

    try:
        claims: dict[str, t.Any] = jwt.decode(
            proof,
            key,
            algorithms=[alg],
            options={"require": ["jti"], "verify_aud": False, "verify_iat": False},
        )
    except jwt.PyJWTError as e:
        raise ProofError(f"its signature or claims do not verify: {e}") from e
    if not isinstance(claims.get("jti"), str):
        raise ProofError("its jti claim is not a string")
    return claims


def _header(proof: str) -> tuple[dict[str, t.Any], str]:
    # PyJWT is loaded by the first proof, never by an app without device binding.
    import jwt

    try:
        header = jwt.get_unverified_header(proof)
    except jwt.PyJWTError as e:
        raise ProofError(f"it is not a JWS: {e}") from e
    if header.get("typ") != PROOF_TYPE:
        raise ProofError(f"its typ header is not {PROOF_TYPE!r}")
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise ProofError(f"its alg header {alg!r} is not one of {', '.join(ALGORITHMS)}")
    return header, t.cast(str, alg)


def registration_proof(proof: str) -> tuple[dict[str, str], str, str]:
    """Verify a registration proof, self-signed by the key in its ``jwk`` header.

    :return: the public key, the algorithm and the challenge (``jti``).
    :raises ProofError: the proof does not verify.
    """
    header, alg = _header(proof)
    jwk = _public_jwk(header, alg)
    claims = _claims(proof, _key(jwk, alg), alg)
    return jwk, alg, claims["jti"]


def refresh_proof(proof: str, binding: Binding) -> str:
    """Verify a refresh proof against the key ``binding`` registered; return its challenge.

    :raises ProofError: the proof does not verify with that key.
    """
    _header_value, alg = _header(proof)
    if alg != binding.alg:
        raise ProofError(f"it is signed with {alg}, the key registered is {binding.alg}")
    return t.cast(str, _claims(proof, _key(binding.jwk, alg), alg)["jti"])


_PLAIN = re.compile(r"[A-Za-z0-9._~+/=-]+")


def sf_string(value: str | None) -> str | None:
    """The string of a structured-field string header (``"..."``), parameters ignored.

    A bare value of token characters is taken as it is, as some clients send one.
    """
    if value is None:
        return None
    value = value.strip()
    if not value.startswith('"'):
        plain = value.split(";", 1)[0]
        return plain if _PLAIN.fullmatch(plain) else None
    end = value.find('"', 1)
    inner = value[1:end]
    return inner if end > 0 and "\\" not in inner else None
