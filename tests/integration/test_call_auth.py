"""Every method of every kiln gRPC service is behind one authentication rule (kiln_platform.grpcserver): a call
without valid credentials is refused with UNAUTHENTICATED before its handler runs, whatever the method; health
checking stays open. Methods are enumerated from the contracts, so a new method is covered the day it is added."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.control import tokens
from kiln.errors import UnauthenticatedError
from kiln.pb.blobstore.v1 import blobstore_pb2
from kiln.pb.cron.v1 import cron_pb2, cron_pb2_grpc
from kiln.pb.datastore.v1 import datastore_pb2
from kiln.pb.identity.v1 import identity_pb2
from kiln.pb.deploy.v1 import deploy_pb2
from kiln.pb.images.v1 import images_pb2
from kiln.pb.mail.v1 import mail_pb2
from kiln.pb.memcache.v1 import memcache_pb2
from kiln.pb.urlfetch.v1 import urlfetch_pb2
from kiln_platform import auth, grpcserver
from kiln_platform.config import GrpcServiceConfig, load
from tests.integration.conftest import SECRET
from tests.integration.test_control_plane import start_control

pytestmark = pytest.mark.nats

SERVICES = {
    "datastore": datastore_pb2.DESCRIPTOR.services_by_name["DatastoreService"],
    "memcache": memcache_pb2.DESCRIPTOR.services_by_name["MemcacheService"],
    "urlfetch": urlfetch_pb2.DESCRIPTOR.services_by_name["UrlFetchService"],
    "mail": mail_pb2.DESCRIPTOR.services_by_name["MailService"],
    "images": images_pb2.DESCRIPTOR.services_by_name["ImagesService"],
    "cron": cron_pb2.DESCRIPTOR.services_by_name["CronService"],
    "identity": identity_pb2.DESCRIPTOR.services_by_name["IdentityService"],
    "blobstore": blobstore_pb2.DESCRIPTOR.services_by_name["BlobstoreService"],
}
# Methods open to anyone by design: identity_svc's certificate lookup (certificates are public; it makes no key).
PUBLIC = {"kiln.pb.identity.v1.IdentityService": {"GetAppCertificates"}}
BAD_CREDENTIALS = {
    "none": (),
    "other-deployment": (("authorization", f"Bearer {auth.mint_app_token('another-secret', 'guestbook')}"),),
    "forged-app": (("authorization", "Bearer guestbook." + "0" * 64),),
    "uppercase-mac": (("authorization", "Bearer guestbook." + "A" * 64),),
    "huge": (("authorization", "Bearer " + "g" * 6000),),
    "non-ascii-bytes": (("authorization-bin", b"\xff\xfe"),),
    "not-bearer": (("authorization", "Basic Z3Vlc3Rib29rOng="),),
    "expired": (("authorization", f"Bearer {auth.mint_app_token(SECRET, 'guestbook', expires_at=1)}"),),
}


def _methods(service):
    return [(service.full_name, m) for m in service.methods if m.name not in PUBLIC.get(service.full_name, ())]


def _call(channel: grpc.Channel, full_name: str, method, metadata) -> grpc.RpcError:
    path = f"/{full_name}/{method.name}"
    kinds = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
             (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    call = kinds[(method.client_streaming, method.server_streaming)](path)
    request = iter([b""]) if method.client_streaming else b""
    with pytest.raises(grpc.RpcError) as caught:
        result = call(request, metadata=metadata, timeout=20)
        if method.server_streaming:
            list(result)
    return caught.value


@pytest.mark.parametrize("credentials", BAD_CREDENTIALS)
@pytest.mark.parametrize("service", SERVICES)
def test_every_method_refuses_a_call_without_valid_app_credentials(grpc_services, service, credentials):
    with grpc.insecure_channel(grpc_services[service]) as channel:
        for full_name, method in _methods(SERVICES[service]):
            error = _call(channel, full_name, method, BAD_CREDENTIALS[credentials])
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (method.name, error.details())


@pytest.mark.parametrize("service", SERVICES)
def test_health_checking_needs_no_credentials(grpc_services, service):
    with grpc.insecure_channel(grpc_services[service]) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=20)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def control_addr(supervisor, tmp_path_factory, nats_url):
    return start_control(supervisor, tmp_path_factory, nats_url, "control-auth")


@pytest.mark.parametrize("credentials", [*BAD_CREDENTIALS, "app-token-not-deploy-token"])
def test_every_control_plane_method_refuses_a_call_without_a_deploy_token(control_addr, credentials):
    metadata = BAD_CREDENTIALS.get(credentials) or (
        ("authorization", f"Bearer {auth.mint_app_token(SECRET, 'guestbook')}"),)
    service = deploy_pb2.DESCRIPTOR.services_by_name["DeployService"]
    with grpc.insecure_channel(control_addr) as channel:
        for full_name, method in _methods(service):
            error = _call(channel, full_name, method, metadata)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (method.name, error.details())


def test_a_deploy_token_of_another_deployment_is_refused_by_the_control_plane(control_addr):
    forged = tokens.mint("another-admin-secret", "*", "admin", "mallory")
    with grpc.insecure_channel(control_addr) as channel:
        error = _call(channel, "kiln.pb.deploy.v1.DeployService",
                      deploy_pb2.DESCRIPTOR.services_by_name["DeployService"].methods_by_name["ListApps"],
                      (("authorization", f"Bearer {forged}"),))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


class _WhoCalls(cron_pb2_grpc.CronServiceServicer):
    """A servicer that answers with who called it, as far as the server verified (as a real one reads it)."""

    async def ListJobs(self, request, context):
        try:
            caller = grpcserver.caller_app()
        except UnauthenticatedError:
            caller = "anonymous"
        return cron_pb2.ListJobsResponse(jobs=[cron_pb2.Job(url=caller)])

    async def ValidateSchedule(self, request, context):
        return cron_pb2.ValidateScheduleResponse(next_runs=[{"seconds": len(grpcserver.caller_app())}])


@pytest.fixture
async def opted_out_server():
    cfg = load(GrpcServiceConfig, prefix="TEST", env={"KILN_TEST_SERVICE_SECRET": SECRET})
    registration = grpcserver.Registration("kiln.pb.cron.v1.CronService",
                                           cron_pb2_grpc.add_CronServiceServicer_to_server, _WhoCalls(),
                                           public_methods=frozenset({"ListJobs"}))
    server = await grpcserver.start(cfg, [registration])
    yield server.address
    await server.stop(0)


async def test_a_method_listed_as_public_is_served_without_credentials_and_knows_no_caller(opted_out_server):
    async with grpc.aio.insecure_channel(opted_out_server) as channel:
        reply = await cron_pb2_grpc.CronServiceStub(channel).ListJobs(cron_pb2.ListJobsRequest(), timeout=20)
    assert [job.url for job in reply.jobs] == ["anonymous"]


async def test_the_other_methods_of_a_service_with_a_public_one_still_need_credentials(opted_out_server):
    async with grpc.aio.insecure_channel(opted_out_server) as channel:
        stub = cron_pb2_grpc.CronServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ValidateSchedule(cron_pb2.ValidateScheduleRequest(), timeout=20)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        token = auth.mint_app_token(SECRET, "guestbook")
        reply = await stub.ValidateSchedule(cron_pb2.ValidateScheduleRequest(), timeout=20,
                                            metadata=(("authorization", f"Bearer {token}"),))
    assert [t.seconds for t in reply.next_runs] == [len("guestbook")]
