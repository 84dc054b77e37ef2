from __future__ import annotations

import typing as t

from flask import Blueprint
from flask import current_app
from flask import jsonify
from flask import request

from ..binding import Binding
from ..binding import new_binding_id
from ..binding import ProofError
from ..binding import refresh_proof
from ..binding import registration_proof
from ..binding import sf_string
from ..log import logger
from .devices import challenge_header

if t.TYPE_CHECKING:
    from flask import Response

    from ..stored import StoredSession
    from .devices import Devices

#: The request header that carries a DBSC proof (a JWS).
PROOF_HEADER = "Secure-Session-Response"
#: The request header that names the DBSC session a refresh is for.
ID_HEADER = "Sec-Secure-Session-Id"
#: The response header that gives the browser a challenge to sign.
CHALLENGE_HEADER = "Secure-Session-Challenge"


def _answer(body: t.Any, status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    # Neither the instructions nor a refusal may be replayed from a cache.
    response.headers["Cache-Control"] = "no-store"
    return response


def _refused(reason: str) -> Response:
    logger.info("A device-bound session request was refused: %s", reason)
    return _answer({"error": reason}, 403)


def _ended() -> Response:
    """The answer to a refresh of a binding that no longer exists: the browser drops it."""
    return _answer({"continue": False}, 403)


def _challenged(devices: Devices, binding: Binding, reason: str) -> Response:
    if reason:
        logger.info("A device-bound session refresh was refused: %s", reason)
    response = _answer({"error": reason or "a proof over a new challenge is needed"}, 403)
    challenge = devices.signer.challenge("refresh", binding.id)
    response.headers[CHALLENGE_HEADER] = challenge_header(challenge, binding.id)
    return response


def _bound(devices: Devices, binding: Binding, accepted: int) -> Response:
    """A registration's or a refresh's answer: the instructions, a new bound cookie, and
    the challenge for the next refresh, so that it needs no 403 first.

    :param accepted: when the challenge just accepted was issued (ns).
    """
    response = _answer(devices.instructions(current_app, binding))
    devices.set_cookie(current_app, response, binding)
    response.headers[CHALLENGE_HEADER] = devices.challenge_ahead(binding, accepted)
    return response


def _session(devices: Devices) -> StoredSession | None:
    """The live session the request's session cookie names, bound or not."""
    name = devices.interface.get_cookie_name(current_app)
    return devices.store.open(request.cookies.get(name)).stored


def blueprint(devices: Devices) -> Blueprint:
    """The registration and refresh endpoints of DBSC, under ``devices.base``."""
    bp = Blueprint("serversession_dbsc", __name__, url_prefix=devices.base)

    @bp.post("/register")
    def register() -> Response:
        proof = sf_string(request.headers.get(PROOF_HEADER))
        if proof is None:
            return _refused(f"no {PROOF_HEADER} header")
        stored = _session(devices)
        if stored is None:
            return _refused("no live session")
        try:
            jwk, alg, challenge = registration_proof(proof)
            issued = devices.signer.challenge_time("register", stored.key, challenge)
        except ProofError as e:
            return _refused(f"the registration proof is refused: {e}")
        binding = Binding(new_binding_id(), jwk, alg, issued, bound_at=devices.signer.now())
        if not devices.bind(stored, binding):
            return _refused("the session ended or is bound already")
        return _bound(devices, binding, issued)

    @bp.post("/refresh")
    def refresh() -> Response:
        stored = _session(devices)
        try:
            binding = None if stored is None else devices.binding(stored)
        except ValueError:
            binding = None
        if stored is None or binding is None:
            return _ended()
        if sf_string(request.headers.get(ID_HEADER)) != binding.id:
            return _ended()
        proof = sf_string(request.headers.get(PROOF_HEADER))
        if proof is None:
            return _challenged(devices, binding, "")
        try:
            challenge = refresh_proof(proof, binding)
            issued = devices.refresh_challenge_time(binding, challenge)
        except ProofError as e:
            return _challenged(devices, binding, f"the refresh proof is refused: {e}")
        if not devices.prove(stored, binding, issued):
            return _challenged(devices, binding, "the challenge was answered already")
        return _bound(devices, binding, issued)

    return bp
