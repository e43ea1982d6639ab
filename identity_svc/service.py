"""gRPC servicer of the app identity service: the caller's app, validation, the keyring."""

from __future__ import annotations

from typing import Any

import grpc

from identity_svc import errors, keys
from identity_svc.keyring import Keyring
from kiln.pb.identity.v1 import identity_pb2 as pb
from kiln.pb.identity.v1 import identity_pb2_grpc
from kiln_platform import auth, grpcserver

# The method anyone may call: certificates are public, and looking them up never makes a key.
PUBLIC_METHODS = frozenset({"GetAppCertificates"})


def service_account(app: str, apps_domain: str) -> str:
    """The app's service account name: ``APP@DOMAIN``."""
    return f"{app}@{apps_domain}"


class IdentityService(identity_pb2_grpc.IdentityServiceServicer):
    """Implements ``kiln.pb.identity.v1.IdentityService`` over a :class:`Keyring`."""

    def __init__(self, keyring: Keyring, *, apps_domain: str, token_seconds: int) -> None:
        self._keyring = keyring
        self._apps_domain = apps_domain
        self._token_seconds = token_seconds

    async def SignForApp(self, request: pb.SignForAppRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.SignForAppResponse:
        app = grpcserver.caller_app()
        if len(request.bytes_to_sign) > keys.MAX_BLOB_BYTES:
            raise errors.BlobTooLargeError(f"{len(request.bytes_to_sign)} bytes to sign; the limit is "
                                           f"{keys.MAX_BLOB_BYTES}")
        stored, private_key = await self._keyring.current(app)
        return pb.SignForAppResponse(key_name=stored.key_name, signature=keys.sign(private_key, request.bytes_to_sign))

    async def GetPublicCertificates(self, request: pb.GetPublicCertificatesRequest,
                                    context: grpc.aio.ServicerContext[Any, Any]) -> pb.GetPublicCertificatesResponse:
        found = await self._keyring.published(grpcserver.caller_app())
        return pb.GetPublicCertificatesResponse(certificates=_certificates(found),
                                                max_client_cache_time_seconds=self._keyring.rotation.cache_seconds())

    async def GetAccessToken(self, request: pb.GetAccessTokenRequest,
                             context: grpc.aio.ServicerContext[Any, Any]) -> pb.GetAccessTokenResponse:
        app = grpcserver.caller_app()
        scopes = list(request.scopes)
        problem = keys.scope_problem(scopes)
        if problem is not None:
            raise errors.UnknownScopeError(problem)
        stored, private_key = await self._keyring.current(app)
        account = service_account(app, self._apps_domain)
        token, expires = keys.access_token(app=app, account=account, scopes=scopes, key=stored,
                                           private_key=private_key, now=int(self._keyring.now()),
                                           lifetime=self._token_seconds)
        return pb.GetAccessTokenResponse(access_token=token, expiration_time=expires, service_account_name=account)

    async def GetAppCertificates(self, request: pb.GetAppCertificatesRequest,
                                 context: grpc.aio.ServicerContext[Any, Any]) -> pb.GetAppCertificatesResponse:
        if not auth.APP_ID_RE.match(request.app_id):
            raise errors.NotAValidAppError(f"{request.app_id[:80]!r} is not an app id")
        found = await self._keyring.published_existing(request.app_id)
        return pb.GetAppCertificatesResponse(certificates=_certificates(found),
                                             max_client_cache_time_seconds=self._keyring.rotation.cache_seconds())


def _certificates(found: list[keys.StoredKey]) -> list[pb.PublicCertificate]:
    return [pb.PublicCertificate(key_name=k.key_name, x509_certificate_pem=k.certificate_pem) for k in found]
